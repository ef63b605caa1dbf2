#!/usr/bin/env python3
"""Clustering accuracy on real faces (LFW dev in ../shared), with the testpack model.

1. Two people + strangers + junk, --clusters 2: video-style occluded crops of Tony Blair
   and Donald Rumsfeld, ~10% crops of other people and ~3% non-face crops, in year
   folders with colliding names. Reports purity/recall of the two person folders and
   how much of the strangers and junk ended in outliers/, for each of --seeds (each seed
   draws other strangers and junk and other zooms and occlusions).
2. Many people, --clusters auto: all 2,805 LFW dev photos (610 identities, 400 of them
   with one photo); outliers count as singletons. Reports BCubed and pairwise P/R/F.

  python benchmarks/eval_clustering.py
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from face_organizer.cluster_stage import ClusterConfig, run_clustering  # noqa: E402
from face_organizer.clustering import cluster_name  # noqa: E402
from face_organizer.embed_run import plan_streams, run_embeddings  # noqa: E402
from face_organizer import embfile  # noqa: E402
from face_organizer.evaluation import bcubed, folder_report, pairwise  # noqa: E402
from face_organizer.faces import load_face_models  # noqa: E402
from face_organizer.images import discover_images  # noqa: E402
from face_organizer.modelpack import resolve_pack  # noqa: E402
from face_organizer.samples import two_person_collection  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="two-person collections to draw (default: 0 1 2 3 4 5)")
    parser.add_argument("--shared", default=os.environ.get("FACE_ORGANIZER_SHARED", str(Path(__file__).resolve().parents[2] / "shared")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    shared = Path(args.shared)
    lfw = shared / "datasets" / "lfw_dev"
    streams, threads = plan_streams(True)
    models = load_face_models(resolve_pack(str(shared / "models" / "testpack")), "cpu", 0, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        people = ("Tony_Blair", "Donald_Rumsfeld")
        for seed in args.seeds:
            root = Path(tmp) / f"two{seed}"
            items = two_person_collection(lfw, root / "input", models.detector, people, seed=seed)
            run_embeddings([str(i.path) for i in items], root / "two.pkl", models, inputs=[str(root / "input")],
                           streams=streams, progress=False)
            ef = embfile.load(root / "two.pkl")
            label = {str(i.path): i.label for i in items}
            clustering = run_clustering(ef, ClusterConfig(clusters=2))
            folders = [cluster_name(int(c)) for c in clustering.labels]
            report = folder_report([label[p] for p in ef.rows.paths], folders, people)
            counts = {k: sum(1 for i in items if (i.label == k if k in people else i.label.startswith(k))) for k in (*people, "stranger", "junk")}
            print(f"[two people, --clusters 2, seed {seed}] images: {counts}; cut-off {clustering.threshold:.3f} ({clustering.threshold_source})")
            print("\n".join("  " + line for line in report.lines()))

        paths = discover_images([lfw])
        run_embeddings(paths, Path(tmp) / "lfw.pkl", models, inputs=[str(lfw)], streams=streams, progress=False)
        ef = embfile.load(Path(tmp) / "lfw.pkl")
        with open(lfw / "labels.csv", newline="") as handle:
            identity = {str((lfw / r["path"]).absolute()): r["identity"] for r in csv.DictReader(handle)}
        truth = [identity[p] for p in ef.rows.paths]
        clustering = run_clustering(ef, ClusterConfig(clusters=None))
        pred = [f"c{c}" if c >= 0 else f"outlier{i}" for i, c in enumerate(clustering.labels)]
        b, pw = bcubed(truth, pred), pairwise(truth, pred)
        print(f"[LFW dev, --clusters auto] {len(truth)} faces, {len(set(truth))} identities -> {clustering.n_clusters} clusters, "
              f"{int((clustering.labels < 0).sum())} outliers; cut-off {clustering.threshold:.3f}")
        print(f"  BCubed precision {b.precision:.4f} recall {b.recall:.4f} F {b.f:.4f}")
        print(f"  pairwise precision {pw.precision:.4f} recall {pw.recall:.4f} F {pw.f:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
