#!/usr/bin/env python3
"""Photos mode on photos stored sideways or upside down without an orientation tag.

A portrait shot of a camera without an orientation sensor is stored lying on its side, and nothing in the file
says so. Takes N LFW dev photos, turns them by 90, 180 and 270 degrees, embeds them in photos mode as by default
(a photo whose faces score under ``EmbedOptions.photo_upright_score`` at the median is tried turned) and never turned
(``photo_upright_score=0``), and prints for each how many photos' largest faces are embedded as the same photo
upright is (cosine above 0.9), and a third way: photos without a face upright tried turned too
(``--turn-faceless``). Then the cost: photos mode's images/s on N UTKFace portraits (faces of every age, often
blurred or turned away, so that more score low and are tried turned) the first two ways, and on photos without
a face (crops, flipped and scaled, of scikit-image's sample pictures of things: coffee, coins, a page of text,
…) with and without ``--turn-faceless``, with the faces it finds in them (none is right), in alternating rounds.

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

from face_organizer import embfile  # noqa: E402
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
            "never turned": EmbedOptions(mode="photos", photo_upright_score=0),
            "faceless ones too (--turn-faceless)": EmbedOptions(mode="photos", photo_turn_faceless=True)}
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
    two = dict(list(ways.items())[:2])
    with tempfile.TemporaryDirectory() as tmp:
        speeds = alternating_speeds(portraits, two, models, streams, args.rounds, Path(tmp))
        print(f"{len(portraits)} UTKFace portraits, photos mode, {streams} streams; images/s: {speeds_line(speeds)}")
        things = faceless_photos(Path(tmp) / "things", args.count)
        faceless_ways = {"default": ways["tried turned (default)"], "--turn-faceless": ways[
            "faceless ones too (--turn-faceless)"]}
        speeds = alternating_speeds(things, faceless_ways, models, streams, args.rounds, Path(tmp))
        found = [len(embfile.load(Path(tmp) / f"way{n}.pkl").rows) for n in range(len(faceless_ways))]
    print(f"{len(things)} photos without a face, photos mode, {streams} streams; images/s: {speeds_line(speeds)}; "
          f"faces found in them: {', '.join(f'{name} {n}' for name, n in zip(faceless_ways, found))}")
    return 0


def faceless_photos(folder: Path, count: int) -> list[str]:
    """``count`` photos without a face: crops of scikit-image's sample pictures of things (no person, no animal),
    each taken at another place and scale and flipped every other time, so that no two have the same bytes."""
    from skimage import data

    folder.mkdir()
    names = ("coffee", "rocket", "coins", "page", "text", "brick", "grass", "gravel", "moon", "clock",
             "hubble_deep_field", "retina", "immunohistochemistry", "colorwheel", "cell")
    pictures = []
    for name in names:
        picture = getattr(data, name)()
        pictures.append(cv2.cvtColor(picture, cv2.COLOR_GRAY2BGR if picture.ndim == 2 else cv2.COLOR_RGB2BGR))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        picture = pictures[i % len(pictures)]
        h, w = picture.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = cv2.resize(picture[y : y + ch, x : x + cw], None, fx=1.5, fy=1.5)
        path = folder / f"thing_{i:04d}.jpg"
        cv2.imwrite(str(path), crop[:, ::-1] if i % 2 else crop, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(str(path))
    return paths


if __name__ == "__main__":
    sys.exit(main())
