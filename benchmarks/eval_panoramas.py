#!/usr/bin/env python3
"""Photos mode on panoramas: are the faces of a photo much longer than it is high found, and embedded as well as in
a photo of its height?

Pastes the first LFW dev photo of each of --counts people after a 100-pixel grey margin (so that no tile is one of
the photos), side by side into a strip 250 pixels high and one above the other into a strip 250 pixels wide, and the
first strip turned a quarter (a panorama stored sideways without an orientation tag), and close-ups side by side
(the central 170 pixels of LFW photos enlarged to 250, where the face is wider than half of that: larger than half a
tile, so that every tile may cut it), saves each as JPEG, and embeds it in photos mode two ways: as by default (a
photo at least ``detection.PANORAMA_RATIO`` times as long as it is high is detected in square tiles of its shorter
side too) and letterboxed whole only (as before tiles). Prints, for each, in how many of the photos' places a face
was found, how alike the best face there is to the photo's own face embedded on its own (cosine: mean and lowest),
the faces found in all, and the time.

  python benchmarks/eval_panoramas.py --counts 8 16 24 64
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import add_shared_argument, lfw_testpack, read_labels  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from face_organizer import detection, embfile  # noqa: E402
from face_organizer.embed_run import run_embeddings  # noqa: E402
from face_organizer.faces import EmbedOptions, embed_batch  # noqa: E402
from face_organizer.images import read_image  # noqa: E402

SIDE, MARGIN = 250, 100  # LFW's photos, and the grey margin before the first
CLOSE = 170  # the central part of an LFW photo enlarged to SIDE for a close-up: its face about 150-190 pixels wide


def own_face(photo: np.ndarray, models) -> tuple[np.ndarray, float]:
    """A photo's face embedded on its own in photos mode: the face nearest its centre, and its width."""
    found = embed_batch([("photo.jpg", photo)], models, EmbedOptions(mode="photos")).rows
    centre = (found.bbox[:, :2] + found.bbox[:, 2:4]) / 2 - SIDE / 2
    nearest = int(np.argmin((centre ** 2).sum(axis=1)))
    return found.embeddings[nearest], float(found.bbox[nearest, 2] - found.bbox[nearest, 0])


def close_ups(lfw: Path, paths: list[str], count: int, models) -> tuple[list[np.ndarray], np.ndarray]:
    """``count`` photos of faces larger than half a tile: the central ``CLOSE`` pixels of LFW photos enlarged to
    ``SIDE``, those whose face (found on its own, padded as photos mode tries a photo without a face) is wider than
    half of it, and those faces."""
    photos, own = [], []
    for path in paths:
        cut = (SIDE - CLOSE) // 2
        photo = cv2.resize(read_image(lfw / path)[cut:cut + CLOSE, cut:cut + CLOSE], (SIDE, SIDE),
                           interpolation=cv2.INTER_CUBIC)
        face, width = own_face(photo, models)
        if width > SIDE / 2:
            photos.append(photo)
            own.append(face)
        if len(photos) == count:
            break
    return photos, np.stack(own)


def in_place(ef: embfile.EmbeddingsFile, own: np.ndarray, upright: bool) -> np.ndarray:
    """For each photo, the best cosine to its own face among the faces found in its place in the strip (0: none)."""
    box = ef.rows.bbox
    centre = (box[:, 1] + box[:, 3] if upright else box[:, 0] + box[:, 2]) / 2
    place = ((centre - MARGIN) // SIDE).astype(int)
    best = np.zeros(len(own))
    for i in range(len(own)):
        here = np.nonzero(place == i)[0]
        if len(here):
            best[i] = float((ef.rows.embeddings[here] @ own[i]).max())
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[8, 16, 24, 64],
                        help="photos side by side in each strip")
    add_shared_argument(parser)
    args = parser.parse_args()
    _, lfw, models, streams = lfw_testpack(args.shared)
    first: dict[str, str] = {}
    for row in read_labels(lfw):
        first.setdefault(row["identity"], row["path"])
    paths = list(first.values())
    tiles_at = detection.PANORAMA_RATIO
    for count in args.counts:
        photos = [read_image(lfw / path) for path in paths[:count]]
        own = np.stack([own_face(photo, models)[0] for photo in photos])
        close, own_close = close_ups(lfw, paths, count, models)
        margin = np.full((SIDE, MARGIN, 3), 90, np.uint8)
        across = np.hstack([margin, *photos])
        for layout, strip, upright, faces in (  # side by side, one above the other, side by side stored sideways
                ("", across, False, own),
                ("", np.vstack([margin.transpose(1, 0, 2), *photos]), True, own),
                (" (side by side, stored turned a quarter)", cv2.rotate(across, cv2.ROTATE_90_CLOCKWISE), True, own),
                (" (close-ups side by side)", np.hstack([margin, *close]), False, own_close)):
            with tempfile.TemporaryDirectory() as tmp:
                image = Path(tmp) / "strip.jpg"
                cv2.imwrite(str(image), strip, [cv2.IMWRITE_JPEG_QUALITY, 95])
                for name, ratio in (("tiles (default)", tiles_at), ("letterboxed whole", math.inf)):
                    detection.PANORAMA_RATIO = ratio
                    out = Path(tmp) / f"{ratio}.pkl"
                    started = time.perf_counter()
                    run_embeddings([str(image)], out, models, EmbedOptions(mode="photos"), streams=streams,
                                   progress=False)
                    elapsed = time.perf_counter() - started
                    ef = embfile.load(out)
                    best = in_place(ef, faces, upright)
                    found = best > 0
                    alike = (f"; cosine to its own face {best[found].mean():.3f} on average, lowest "
                             f"{best[found].min():.3f}" if found.any() else "")
                    print(f"{count} photos, {strip.shape[1]}x{strip.shape[0]}{layout}, {name}: a face in "
                          f"{int(found.sum())} of {count} places{alike}; {len(ef.rows.paths)} faces in all; "
                          f"{elapsed:.1f} s", flush=True)
    detection.PANORAMA_RATIO = tiles_at
    return 0


if __name__ == "__main__":
    sys.exit(main())
