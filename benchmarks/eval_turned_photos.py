#!/usr/bin/env python3
"""Photos mode on photos stored sideways or upside down without an orientation tag.

A portrait shot of a camera without an orientation sensor is stored lying on its side, and nothing in the file
says so. Takes N LFW dev photos, turns them by 90, 180 and 270 degrees, embeds them in photos mode as by default
(a photo whose best face scores under ``EmbedOptions.photo_upright_score`` is tried turned) and never turned
(``photo_upright_score=0``), and prints for each how many photos' largest faces are embedded as the same photo
upright is (cosine above 0.9). Then the cost: photos mode's images/s on N UTKFace portraits (faces of every age,
often blurred or turned away, so that more score low and are tried turned) both ways, in alternating rounds.

  python benchmarks/eval_turned_photos.py --count 200
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import (add_shared_argument, alternating_speeds, lfw_testpack, read_labels,  # noqa: E402
                         speeds_line)
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from face_organizer.faces import EmbedOptions, FaceRows, embed_batch  # noqa: E402
from face_organizer.images import discover_images, read_image  # noqa: E402

TURNS = {"90° clockwise": cv2.ROTATE_90_CLOCKWISE, "180°": cv2.ROTATE_180,
         "90° counter-clockwise": cv2.ROTATE_90_COUNTERCLOCKWISE}


def largest_faces(rows: FaceRows) -> dict[str, np.ndarray]:
    """Each photo's widest face's embedding."""
    widths = rows.bbox[:, 2] - rows.bbox[:, 0]
    return {rows.paths[i]: rows.embeddings[i] for i in np.argsort(widths)}  # the widest last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="photos of each dataset (default: 200)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the timing (default: 2)")
    add_shared_argument(parser)
    args = parser.parse_args()
    shared, lfw, models, streams = lfw_testpack(args.shared)
    ways = {"tried turned (default)": EmbedOptions(mode="photos"),
            "never turned": EmbedOptions(mode="photos", photo_upright_score=0)}
    photos = [(row["path"], read_image(lfw / row["path"])) for row in read_labels(lfw)[: args.count]]
    upright = largest_faces(embed_batch(photos, models, ways["never turned"]).rows)
    for turn_name, turn in TURNS.items():
        turned = [(path, cv2.rotate(image, turn)) for path, image in photos]
        for name, options in ways.items():
            faces = largest_faces(embed_batch(turned, models, options).rows)
            right = sum(float(upright[path] @ embedding) > 0.9 for path, embedding in faces.items() if path in upright)
            print(f"{len(photos)} LFW photos turned {turn_name}, {name}: {right} embedded as upright "
                  f"(cosine > 0.9 to the photo upright); a face found in {len(faces)}", flush=True)
    portraits = discover_images([str(shared / "datasets" / "utkface_gender_dev")])[: args.count]
    with tempfile.TemporaryDirectory() as tmp:
        speeds = alternating_speeds(portraits, ways, models, streams, args.rounds, Path(tmp))
    print(f"{len(portraits)} UTKFace portraits, photos mode, {streams} streams; images/s: {speeds_line(speeds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
