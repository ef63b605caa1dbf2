#!/usr/bin/env python3
"""Clustering speed and peak memory on synthetic embeddings (no files are placed).

Each mode runs in its own process so its peak memory is measured alone:
  --clusters 2:    two people (60/40) plus 5% scattered strangers
  2-plain:         the same with --no-extra-groups
  2+third:         --clusters 2 on two people (57%, 33%), a recurring third (5%) and 5% strangers
  2+crowd:         --clusters 2 on two people (30%, 20%) among 50% strangers: the strangers k-means gives each
                   folder pull its centre, so each is cut again against its group of alike faces
  2+many:          --clusters 2 on 200 people with long-tailed sizes (Zipf-like) and 5% strangers: the two
                   largest belong in the folders, the 198 others in outliers/ (most of them groups beyond k)
  2+blurred, auto+blurred: as 2 and auto through cluster_faces' own path, with 3% of the faces
                   turned into unrecognisable ones (near the model's blurred-face centre) to set aside
  2+copies, auto+copies: as 2 and auto through cluster_faces' own path, 20% of the faces being copies of
                   others (the same embedding under another name), clustered once
  --clusters auto: 20,000 people with long-tailed sizes (Zipf-like), plus 5% noise (n / 25 people below 500,000)
  a number K:      --clusters K over K such people (memory and time grow with faces times folders)
Embeddings are unit vectors of --dim dimensions whose same-person similarity is like
ArcFace's (about 0.4 between two faces, about 0 between people).

  python benchmarks/bench_clustering.py --n 500000 --dim 512 [--modes 2,2-plain,2+third,2+blurred,2+copies,auto,...]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic(n: int, dim: int, people: int, seed: int = 0, strangers: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if people == 2:
        sizes = np.array([int(n * round(0.6 * (1 - strangers), 6)), int(n * round(0.4 * (1 - strangers), 6))])
    elif people == 3:
        sizes = np.array([int(n * 0.57), int(n * 0.33), int(n * 0.05)])
    else:
        weights = 1.0 / np.arange(1, people + 1) ** 0.8
        sizes = np.maximum(1, (weights / weights.sum() * n * 0.95).astype(int))
    labels = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)] + [np.full(n - sizes.sum(), -1)])
    centres = rng.standard_normal((people, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 50_000):  # blockwise: no float64 temporaries of the whole set
        lab = labels[start : start + 50_000]
        block = rng.standard_normal((len(lab), dim), dtype=np.float32) * np.float32(1.2 / np.sqrt(dim))
        block[lab >= 0] += centres[lab[lab >= 0]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start : start + len(lab)] = block
    return x, labels


def blur(x: np.ndarray, labels: np.ndarray, share: float = 0.03, seed: int = 1) -> np.ndarray:
    """Turn ``share`` of the faces into unrecognisable ones (at about 0.6 to one centre) in
    place; they belong in outliers/. Returns that centre."""
    rng = np.random.default_rng(seed)
    centre = rng.standard_normal(int(x.shape[1])).astype(np.float32)
    centre /= np.linalg.norm(centre)
    rows = np.sort(rng.choice(len(x), int(len(x) * share), replace=False))
    noise = rng.standard_normal((len(rows), x.shape[1]), dtype=np.float32) * np.float32(1.2 / np.sqrt(x.shape[1]))
    x[rows] = centre + noise
    x[rows] /= np.linalg.norm(x[rows], axis=1, keepdims=True)
    labels[rows] = -1
    return centre


def child(mode: str, n: int, dim: int) -> None:
    from face_organizer.cluster_stage import ClusterConfig, run_clustering
    from face_organizer.clustering import graph_clusters, kmeans
    from face_organizer.embfile import EmbeddingsFile
    from face_organizer.evaluation import bcubed
    from face_organizer.faces import FaceRows
    from face_organizer.quality import META_KEY

    base = mode.split("+")[0]
    many = int(mode) if mode.isdigit() and mode != "2" else 0  # --clusters K over K people
    people = {"2": 2, "2-plain": 2, "2+third": 3, "2+crowd": 2, "2+blurred": 2, "2+copies": 2, "2+many": 200}.get(
        mode, min(20_000, n // 25))
    x, labels = synthetic(n, dim, many or people, strangers=0.5 if mode == "2+crowd" else 0.05)
    if mode in ("2+third", "2+many"):
        labels = np.where(labels >= 2, -1, labels)  # the people beyond the two belong in outliers/
    ef = None
    if mode.endswith(("+blurred", "+copies")):
        meta = {META_KEY: blur(x, labels).tolist()} if mode.endswith("+blurred") else {}
        if mode.endswith("+copies"):
            rng = np.random.default_rng(2)
            copied, originals = rng.choice(n, n // 5, replace=False), rng.choice(n, n // 5)
            x[copied], labels[copied] = x[originals], labels[originals]
        rows = FaceRows([f"/faces/{i:07d}.png" for i in range(n)], x, np.ones(n, bool), np.ones(n, np.float32),
                        np.zeros((n, 4), np.float32), np.zeros(n, np.int32))
        ef = EmbeddingsFile(rows, [], [], meta)
    start = time.perf_counter()
    if ef is not None:
        config = ClusterConfig(clusters=None if base == "auto" else 2, use_gpu=False,
                               set_aside_unrecognisable=mode.endswith("+blurred"))
        result = run_clustering(ef, config)
    else:
        result = graph_clusters(x) if mode == "auto" else kmeans(x, many or 2, extra_groups=mode != "2-plain")
    elapsed = time.perf_counter() - start
    pred = np.where(result.labels >= 0, result.labels, -np.arange(1, n + 1))
    truth = np.where(labels >= 0, labels, -np.arange(1, n + 1))
    score = bcubed(truth, pred)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"mode": mode, "n": n, "dim": dim, "seconds": round(elapsed, 1), "peak_gb": round(peak, 2),
                      "clusters": result.n_clusters, "outliers": int((result.labels < 0).sum()),
                      "bcubed_f": round(score.f, 4), "extra_groups": list(result.extra_groups),
                      "set_aside": 0 if result.set_aside is None else int(result.set_aside.sum()),
                      "copies": result.copies}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--modes", default="2,auto")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.dim)
        return 0
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--n", str(args.n), "--dim", str(args.dim)],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"--clusters {mode:>12}: {r['n']:,} x {r['dim']}: {r['seconds']} s (clustering, data generation excluded), "
              f"peak memory {r['peak_gb']} GB (process total), {r['clusters']:,} clusters, {r['outliers']:,} outliers "
              f"(groups beyond k among them: {r['extra_groups']}; set aside as unrecognisable: {r['set_aside']:,}"
              + (f"; copies clustered once: {r['copies']:,}" if r["copies"] else "") + "), "
              f"BCubed F {r['bcubed_f']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
