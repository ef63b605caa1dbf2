#!/usr/bin/env python3
"""Photos mode on group photos of small faces: are a person's faces still told from strangers'?

Pastes LFW dev photos (people with four photos or more, 432 photos) side by side into 12-megapixel group photos
(4,032 x 3,024, JPEG), each photo scaled by --scales (1.0: LFW's 250 pixels, a face about 110 pixels wide, 17
as the detector sees the group photo at 640 pixels), and embeds them in photos mode four ways: as by default;
without small faces' landmarks found again around each (``EmbedOptions.photo_refine_below=0``); with small faces
aligned from the photo as decoded at half size rather than decoded again (``photo_face_pixels=0``); and with the
photos decoded whole (``--full-resolution``). Prints for each the same-vs-different ROC AUC and d' over the face
of each pasted photo (its largest face), and the time; first the same for the photos on their own in crops mode.
``--det-size 1280`` adds a fifth way: as by default, detected at 1,280 pixels.

  python benchmarks/eval_group_photos.py --scales 0.6 1.0 2.0
  python benchmarks/eval_group_photos.py --scales 0.4 0.5 0.6 --det-size 1280
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import add_shared_argument, lfw_testpack, read_labels  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from face_organizer import embfile  # noqa: E402
from face_organizer.embed_run import run_embeddings  # noqa: E402
from face_organizer.evaluation import d_prime, roc_auc  # noqa: E402
from face_organizer.faces import EmbedOptions  # noqa: E402

WIDTH, HEIGHT = 4032, 3024


def group_photos(lfw: Path, rows: list[dict[str, str]], scale: float, folder: Path) -> tuple[list[str], int]:
    """The photos pasted into group photos, row by row: their paths, and the side of each photo's slot."""
    side = round(250 * scale)
    slot = side + 16
    columns, per_photo = WIDTH // slot, (WIDTH // slot) * (HEIGHT // slot)
    paths: list[str] = []
    for start in range(0, len(rows), per_photo):
        canvas = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
        for j, row in enumerate(rows[start : start + per_photo]):
            photo = cv2.resize(cv2.imread(str(lfw / row["path"])), (side, side),
                               interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
            y, x = (j // columns) * slot + 8, (j % columns) * slot + 8
            canvas[y : y + side, x : x + side] = photo
        paths.append(str(folder / f"group_{len(paths):03d}.jpg"))
        cv2.imwrite(paths[-1], canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return paths, slot


def separation(ef: embfile.EmbeddingsFile, paths: list[str], rows: list[dict[str, str]],
               slot: int) -> tuple[float, float, int]:
    """(AUC, d', faces) over the largest face in each pasted photo's slot."""
    columns, per_photo = WIDTH // slot, (WIDTH // slot) * (HEIGHT // slot)
    order = {p: i for i, p in enumerate(paths)}
    best: dict[int, tuple[float, int]] = {}
    for i, (path, (x1, y1, x2, y2)) in enumerate(zip(ef.rows.paths, ef.rows.bbox)):
        k = order[path] * per_photo + int((y1 + y2) / 2 // slot) * columns + int((x1 + x2) / 2 // slot)
        if k < len(rows) and (k not in best or x2 - x1 > best[k][0]):
            best[k] = (x2 - x1, i)
    who = np.array([rows[k]["identity"] for k in best])
    x = ef.rows.embeddings[[i for _, i in best.values()]]
    upper = np.triu_indices(len(who), 1)
    scores, same = (x @ x.T)[upper], (who[:, None] == who[None])[upper]
    return roc_auc(scores, same), d_prime(scores, same), len(who)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.6, 1.0, 2.0])
    parser.add_argument("--det-size", type=int, nargs="+", default=[],
                        help="also embed as by default but detected at these sizes (--det-size)")
    add_shared_argument(parser)
    args = parser.parse_args()
    _, lfw, models, streams = lfw_testpack(args.shared)
    labels = read_labels(lfw)
    photos_of = Counter(r["identity"] for r in labels)
    rows = [r for r in labels if photos_of[r["identity"]] >= 4][:432]
    ways = {"default": EmbedOptions(mode="photos"),
            "small faces' landmarks not found again": EmbedOptions(mode="photos", photo_refine_below=0),
            "small faces aligned from the photo shrunk": EmbedOptions(mode="photos", photo_face_pixels=0),
            "whole (--full-resolution)": EmbedOptions(mode="photos", photo_min_side=0),
            **{f"--det-size {size}": EmbedOptions(mode="photos", photo_det_size=size) for size in args.det_size}}
    with tempfile.TemporaryDirectory() as tmp:  # the reference: the same photos on their own, as crops
        run_embeddings([str(lfw / r["path"]) for r in rows], Path(tmp) / "crops.pkl", models, streams=streams,
                       progress=False)
        ef = embfile.load(Path(tmp) / "crops.pkl")
        identity = {str(lfw / r["path"]): r["identity"] for r in rows}
        who = np.array([identity[p] for p in ef.rows.paths])  # the file's rows are in path order
        upper = np.triu_indices(len(who), 1)
        scores, same = (ef.rows.embeddings @ ef.rows.embeddings.T)[upper], (who[:, None] == who[None])[upper]
        print(f"the photos on their own, --mode crops: AUC {roc_auc(scores, same):.4f}, "
              f"d' {d_prime(scores, same):.2f}")
    for scale in args.scales:
        with tempfile.TemporaryDirectory() as tmp:
            paths, slot = group_photos(lfw, rows, scale, Path(tmp))
            for way, (name, options) in enumerate(ways.items()):
                started = time.perf_counter()
                out = Path(tmp) / f"way{way}.pkl"
                run_embeddings(paths, out, models, options, streams=streams, progress=False)
                elapsed = time.perf_counter() - started
                auc, separated, faces = separation(embfile.load(out), paths, rows, slot)
                groups = f"{len(paths)} group photo{'s' * (len(paths) > 1)}"
                print(f"scale {scale} (faces about {110 * scale:.0f} px wide), {name}: {faces} of {len(rows)} photos' "
                      f"faces found; AUC {auc:.4f}, d' {separated:.2f}; {groups} in {elapsed:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
