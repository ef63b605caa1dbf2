#!/usr/bin/env python3
"""Photos mode on phone-sized photos: large JPEGs decoded shrunk (the default) against decoded whole.

Makes N JPEG photos of 4032 pixels a side (quality 92) from DeepFace's and face_recognition's labelled
photos in ../shared, enlarged (Lanczos), then runs ``run_embeddings`` in photos mode over them in
alternating rounds: as ``generate_embeddings.py --mode photos`` (a JPEG of more than 4,000 pixels a side
decoded at half size), as with ``--full-resolution``, and without finding small faces' landmarks again
(``EmbedOptions.photo_refine_below=0``), and with ``--det-size N`` as by default but detected at N pixels.
Prints images/s for each round, and how alike the first two ways' faces are (the same faces found, box offsets
against the face's width, embedding cosines).

  python benchmarks/bench_photos.py --count 60
  python benchmarks/bench_photos.py --count 60 --det-size 1280
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import (add_shared_argument, alternating_speeds, lfw_testpack, read_labels,  # noqa: E402
                         speeds_line)
import numpy as np  # noqa: E402

from face_organizer import embfile  # noqa: E402
from face_organizer.faces import EmbedOptions  # noqa: E402

SIDE = 4032


def make_photos(datasets: Path, count: int, folder: Path) -> list[str]:
    from PIL import Image

    sources = [datasets / name / row["path"] for name in ("deepface_tests", "face_recognition_examples")
               for row in read_labels(datasets / name)]
    paths = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as opened:
            photo = opened.convert("RGB")
        scale = SIDE / max(photo.size)
        big = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS)
        paths.append(str(folder / f"IMG_{i:04d}.jpg"))
        big.save(paths[-1], quality=92)
    return paths


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60, help="photos to make (default: 60)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    parser.add_argument("--det-size", type=int, default=0, help="also a round as by default but detected at this size")
    add_shared_argument(parser)
    args = parser.parse_args()
    shared, _, models, streams = lfw_testpack(args.shared)
    ways = {"shrunk (default)": EmbedOptions(mode="photos"),
            "whole (--full-resolution)": EmbedOptions(mode="photos", photo_min_side=0),
            "shrunk, small faces not refined": EmbedOptions(mode="photos", photo_refine_below=0)}
    if args.det_size:
        ways[f"shrunk, --det-size {args.det_size}"] = EmbedOptions(mode="photos", photo_det_size=args.det_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        paths = make_photos(shared / "datasets", args.count, folder)
        speeds = alternating_speeds(paths, ways, models, streams, args.rounds, Path(tmp))  # the last round's files:
        shrunk, whole = (embfile.load(Path(tmp) / f"way{way}.pkl") for way in (0, 1))
        larger = embfile.load(Path(tmp) / "way3.pkl") if args.det_size else None
    same = shrunk.rows.paths == whole.rows.paths and (shrunk.rows.face_index == whole.rows.face_index).all()
    print(f"{len(paths)} photos of {SIDE} pixels a side, {streams} streams; images/s: {speeds_line(speeds)}"
          + f"; ratio {np.median(speeds['shrunk (default)']) / np.median(speeds['whole (--full-resolution)']):.2f}")
    if larger is not None:
        print(f"faces found: {len(shrunk.rows)} by default, {len(larger.rows)} with --det-size {args.det_size}")
    if not same:
        print(f"faces found: {len(shrunk.rows)} shrunk, {len(whole.rows)} whole (not the same faces)")
        return 0
    width = whole.rows.bbox[:, 2] - whole.rows.bbox[:, 0]
    offset = np.abs(shrunk.rows.bbox - whole.rows.bbox).max(axis=1) / width
    cosine = np.sum(shrunk.rows.embeddings * whole.rows.embeddings, axis=1)
    print(f"the same {len(whole.rows)} faces; box offsets up to {offset.max():.3f} of the face's width; "
          f"embedding cosine shrunk vs whole: min {cosine.min():.4f}, median {np.median(cosine):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
