#!/usr/bin/env python3
"""Small faces: crops of faces a few dozen pixels wide (a distant face in a video frame, a low-resolution
year of footage), enlarged to the recogniser's 112 pixels, warped bicubically (``alignment.align``, the
default for a face enlarged more than ``alignment.CUBIC_ABOVE`` times) against bilinearly (as insightface's
``norm_crop``).

The central half of each LFW dev photo of Tony Blair (144) and Donald Rumsfeld (121) and of 30 people with one
photo (strangers), shrunk to --sides pixels a side (the face fills most of it), crops mode. For each side and
warp: same-vs-different ROC AUC and d' over all pairs, and ``cluster_faces.py --clusters 2``: each person's
folder's purity and recall, and the share of the strangers in ``outliers/``.

  python benchmarks/eval_small_faces.py --sides 24 28 32 48
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import add_shared_argument, lfw_testpack, read_labels  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from face_organizer import alignment, embfile  # noqa: E402
from face_organizer.cli import common  # noqa: E402
from face_organizer.cli.cluster import main as cluster_main  # noqa: E402
from face_organizer.embed_run import run_embeddings  # noqa: E402
from face_organizer.evaluation import d_prime, folder_report, roc_auc  # noqa: E402
from face_organizer.images import read_image  # noqa: E402

PEOPLE = ("Tony_Blair", "Donald_Rumsfeld")
STRANGERS = 30


def small_crops(lfw: Path, rows: list[dict[str, str]], side: int, folder: Path) -> dict[str, str]:
    """Each photo's central half shrunk to ``side`` pixels, as a PNG under ``folder``: {path: label}."""
    folder.mkdir(parents=True)
    labels = {}
    for i, row in enumerate(rows):
        photo = read_image(lfw / row["path"])
        h, w = photo.shape[:2]
        crop = cv2.resize(photo[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4], (side, side), interpolation=cv2.INTER_AREA)
        path = folder / f"face_{i:04d}.png"
        cv2.imwrite(str(path), crop)
        labels[str(path)] = row["identity"] if row["identity"] in PEOPLE else f"stranger:{row['identity']}"
    return labels


def separation(ef: embfile.EmbeddingsFile, labels: dict[str, str]) -> tuple[float, float]:
    who = np.array([labels[p] for p in ef.rows.paths])
    upper = np.triu_indices(len(who), 1)
    scores, same = (ef.rows.embeddings @ ef.rows.embeddings.T)[upper], (who[:, None] == who[None])[upper]
    return roc_auc(scores, same), d_prime(scores, same)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[24, 28, 32, 48])
    add_shared_argument(parser)
    args = parser.parse_args()
    _, lfw, models, streams = lfw_testpack(args.shared)
    labels = read_labels(lfw)
    rows = [r for r in labels if r["identity"] in PEOPLE] + [r for r in labels if r["kind"] == "single"][:STRANGERS]
    ways = {"bicubic (default)": alignment.CUBIC_ABOVE, "bilinear": float("inf")}
    for side in args.sides:
        with tempfile.TemporaryDirectory() as tmp:
            truth = small_crops(lfw, rows, side, Path(tmp) / "input")
            for way, (name, cubic_above) in enumerate(ways.items()):
                alignment.CUBIC_ABOVE = cubic_above
                out = Path(tmp) / f"way{way}"
                run_embeddings(list(truth), out / "emb.pkl", models, inputs=[str(Path(tmp) / "input")],
                               streams=streams, progress=False)
                auc, separated = separation(embfile.load(out / "emb.pkl"), truth)
                with contextlib.redirect_stdout(io.StringIO()):  # its summary: the folders are scored below
                    code = common.run(cluster_main, ["--embeddings", str(out / "emb.pkl"), "--output",
                                                     str(out / "sorted"), "--link-mode", "symlink", "--no-previews",
                                                     "-q"])
                assert code == 0
                with open(out / "sorted" / "clusters.csv", newline="", encoding="utf-8") as handle:
                    placed = list(csv.DictReader(handle))
                report = folder_report([truth[r["path"]] for r in placed], [r["cluster"] for r in placed], PEOPLE)
                folders = "; ".join(f"{person}: purity {report.purity[report.folder_of[person]]:.3f}, recall "
                                    f"{report.recall[report.folder_of[person]]:.3f}" for person in PEOPLE)
                print(f"{side} px, {name}: AUC {auc:.4f}, d' {separated:.2f}; --clusters 2: {folders}; strangers in "
                      f"outliers/ {report.strangers_out:.2f}", flush=True)
    alignment.CUBIC_ABOVE = ways["bicubic (default)"]
    return 0


if __name__ == "__main__":
    sys.exit(main())
