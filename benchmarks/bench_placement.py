#!/usr/bin/env python3
"""Placement speed: copying N face crops into person folders, one fsync per copy against
face-organizer's batched flushes (organize.place_all: a filesystem flush every SYNC_EVERY copies,
with the count recorded so a re-run checks only the copies after the last flush).

Makes N files of --size bytes (random, so nothing compresses or deduplicates) in a temporary
folder on the filesystem of --dir, then alternates the two over --rounds, each into a fresh folder.

  python benchmarks/bench_placement.py --count 20000 --size 100000 --dir /tmp
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from face_organizer import organize  # noqa: E402
from face_organizer.fsutil import sync_filesystem  # noqa: E402


def per_file_fsync(sources: list[str], out: Path) -> None:
    for i, source in enumerate(sources):
        dest = out / "person_A" / f"{i // 1000:03d}" / os.path.basename(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        organize._copy_atomic(source, str(dest), durable=True)


def batched(sources: list[str], root: str, out: Path) -> None:
    organize.place_all(str(out), sources, ["person_A"] * len(sources), [root], "copy", progress=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=100_000, help="bytes per file (default: 100000, a 256x256 PNG crop)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to make the files (default: the temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "input"
        sources = []
        rng = os.urandom
        for i in range(args.count):
            path = root / f"{2000 + i % 10}" / f"frame_{i:07d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng(args.size))
            sources.append(str(path))
        sources.sort()
        sync_filesystem(tmp)
        times: dict[str, list[float]] = {"fsync per copy": [], "batched flushes": []}
        for r in range(args.rounds):
            for name in times:
                out = Path(tmp) / f"out_{r}_{name.split()[0]}"
                started = time.perf_counter()
                if name == "fsync per copy":
                    per_file_fsync(sources, out)
                    sync_filesystem(tmp)  # both end with everything on disk
                else:
                    batched(sources, str(root), out)
                times[name].append(time.perf_counter() - started)
                shutil.rmtree(out)
                sync_filesystem(tmp)
        print(f"{args.count:,} files of {args.size:,} bytes under {args.dir}, {args.rounds} rounds")
        for name, seconds in times.items():
            print(f"{name:16s} " + ", ".join(f"{args.count / s:,.0f} files/s ({s:.1f} s)" for s in seconds))
        ratio = [a / b for a, b in zip(times["fsync per copy"], times["batched flushes"])]
        print("speed-up: " + ", ".join(f"{x:.1f}x" for x in ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
