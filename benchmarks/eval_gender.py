#!/usr/bin/env python3
"""Gender accuracy on UTKFace dev (../shared/datasets/utkface_gender_dev: 500 tight
200x200 crops, 250 male / 250 female, ages 18-70) with the insightface backend.

  python benchmarks/eval_gender.py
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import add_shared_argument  # noqa: E402
from face_organizer.gender import InsightFaceGender  # noqa: E402
from face_organizer.images import read_image  # noqa: E402
from face_organizer.modelpack import resolve_pack  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    root = Path(args.shared) / "datasets" / "utkface_gender_dev"
    with open(root / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    predictor = InsightFaceGender(resolve_pack(str(Path(args.shared) / "models" / "testpack")), "cpu")
    items = [(r["path"], read_image(root / r["path"])) for r in rows]
    start = time.perf_counter()
    preds = predictor.predict(items)
    elapsed = time.perf_counter() - start
    truth = {r["path"]: "Man" if r["gender"] == "male" else "Woman" for r in rows}
    correct = np.array([p.gender == truth[p.path] for p in preds])
    ages = np.array([(p.age, float(r["age"])) for p, r in zip(preds, rows) if p.age is not None])
    print(f"UTKFace dev, {len(rows)} crops: gender accuracy {correct.mean():.3f} "
          f"(Man {np.mean([c for c, r in zip(correct, rows) if r['gender'] == 'male']):.3f}, "
          f"Woman {np.mean([c for c, r in zip(correct, rows) if r['gender'] == 'female']):.3f}); "
          f"no face {sum(p.gender is None for p in preds)}; age MAE {np.abs(ages[:, 0] - ages[:, 1]).mean():.1f} years; "
          f"{len(rows) / elapsed:.0f} images/s (decoded images in, CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
