#!/usr/bin/env python3
"""cluster_faces end to end at scale: the command users run, from embeddings files to person folders.

Makes N small image files in year folders whose names collide across years (frame_000000.png in
every year), synthetic embeddings for them (as bench_clustering.py: two people, 60/40, plus 5%
strangers) split into one embeddings file per GPU, then runs scripts/cluster_faces.py as its own
process and reports its wall time and peak memory. Then it checks that nothing was lost: one row
per face in clusters.csv, every destination a file, as many files in the folders as faces, and
the folders' BCubed F against the people the embeddings were made for.

  python benchmarks/bench_cluster_cli.py --n 500000 --dim 512 --files 2 --link-mode hardlink
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_clustering import synthetic  # noqa: E402
from face_organizer import embfile  # noqa: E402
from face_organizer.evaluation import bcubed  # noqa: E402
from face_organizer.faces import FaceRows  # noqa: E402

YEARS = 10
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cluster_faces.py"


def make_images(root: Path, labels: np.ndarray) -> list[str]:
    """One small PNG per face, ``YEARS`` year folders with the same file names in each; a person's
    files share a colour, so the contact sheets show which folder holds whom."""
    colours = {-1: (128, 128, 128), 0: (40, 40, 200), 1: (200, 120, 40)}
    encoded = {label: cv2.imencode(".png", np.full((16, 16, 3), colour, np.uint8))[1].tobytes()
               for label, colour in colours.items()}
    per_year = -(-len(labels) // YEARS)
    paths = []
    for i, label in enumerate(labels):
        folder = root / str(2008 + i // per_year)
        if i % per_year == 0:
            folder.mkdir(parents=True)
        path = folder / f"frame_{i % per_year:06d}.png"
        path.write_bytes(encoded[int(label)])
        paths.append(str(path))
    return paths


def write_files(folder: Path, paths: list[str], x: np.ndarray, files: int) -> list[str]:
    """The faces split into ``files`` embeddings files, interleaved as the multi-GPU launcher's shards are."""
    n, dim = x.shape
    names = []
    for part in range(files):
        rows = np.arange(part, n, files)
        face_rows = FaceRows([paths[i] for i in rows], x[rows], np.ones(len(rows), bool), np.ones(len(rows), np.float32),
                             np.zeros((len(rows), 4), np.float32), np.zeros(len(rows), np.int32))
        meta = embfile.make_meta(pack_name="synthetic", model_files={"recognition": "synthetic.onnx"}, dim=dim,
                                 device="cpu", inputs=[str(Path(paths[0]).parents[1])], mode="crops")
        name = str(folder / f"embeddings_gpu{part}.pkl")
        embfile.save(name, embfile.EmbeddingsFile(face_rows, [], [], meta))
        names.append(name)
    return names


def check(output: Path, paths: list[str], labels: np.ndarray) -> str:
    """What the run left: rows, destinations, files in the folders, BCubed F; raises on a loss."""
    with open(output / "clusters.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if sorted(r["path"] for r in rows) != sorted(paths):
        raise SystemExit(f"clusters.csv has {len(rows):,} rows, not one per face ({len(paths):,})")
    missing = [r["destination"] for r in rows if not os.path.isfile(r["destination"])]
    if missing:
        raise SystemExit(f"{len(missing):,} destinations are not files, for example {missing[0]}")
    placed = sum(len(files) for folder, _, files in os.walk(output)
                 if Path(folder).relative_to(output).parts[:1] not in ((), ("previews",)))
    if placed != len(paths):
        raise SystemExit(f"{placed:,} files in the folders for {len(paths):,} faces")
    truth_of = dict(zip(paths, labels))
    truth = [int(truth_of[r["path"]]) if truth_of[r["path"]] >= 0 else -1 - i for i, r in enumerate(rows)]
    pred = [r["cluster"] if r["cluster"] != "outliers" else f"o{i}" for i, r in enumerate(rows)]
    folders = sorted({r["cluster"] for r in rows})
    return (f"{len(rows):,} rows in clusters.csv, every destination a file, {placed:,} files in {', '.join(folders)}; "
            f"BCubed F {bcubed(truth, pred).f:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--files", type=int, default=2, help="embeddings files, one per GPU (default: 2)")
    parser.add_argument("--clusters", default="2")
    parser.add_argument("--link-mode", default="hardlink", choices=("copy", "hardlink", "symlink", "move"))
    parser.add_argument("--dir", default=None, help="where the images and the output go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        x, labels = synthetic(args.n, args.dim, 2)
        paths = make_images(root / "input", labels)
        files = write_files(root, paths, x, args.files)
        del x
        print(f"{args.n:,} images in {YEARS} year folders and {args.files} embeddings files of {args.dim}-d rows "
              f"made in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        output = root / "clustered"
        command = [sys.executable, str(SCRIPT), "--embeddings", *files, "--output", str(output),
                   "--clusters", args.clusters, "--link-mode", args.link_mode, "-q"]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        print(f"cluster_faces --clusters {args.clusters} --link-mode {args.link_mode} on {args.files} files, "
              f"{args.n:,} x {args.dim}: {seconds:.1f} s, peak memory {peak:.2f} GB")
        print(check(output, paths, labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
