#!/usr/bin/env python3
"""How many repeated video frames ``--reuse-similar-frames`` still finds when ``embed_all_gpus.py``
spreads the frames over several GPUs: files sharded by a hash of each path, against runs of
consecutive frames of a folder kept together (what the launcher does with that option).

Makes video-style crops of LFW dev photos, each followed by jittered copies a pixel apart as the
consecutive frames of one shot (as ``bench_embeddings.py --frames`` does), shards them as the
launcher would for each number of GPUs, and runs the frame comparison each worker runs, batch by
batch, on its own share. No model runs but the detector that makes the crops, so the counts are
the comparison's alone.

  python benchmarks/bench_frame_shards.py --shots 300 --frames 5 --gpus 2 4 8
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_embeddings import make_crops, make_shots  # noqa: E402
from bench_setup import add_shared_argument, testpack_streams  # noqa: E402

from face_organizer.frames import DEFAULT_THRESHOLD, repeated_frames  # noqa: E402
from face_organizer.images import read_image  # noqa: E402
from face_organizer.multigpu import FRAME_BLOCK, shard  # noqa: E402


def reused(paths: list[str], images: dict, gpus: int, block: int, batch_size: int) -> int:
    """Frames that take an earlier frame's embedding, summed over the workers' batches."""
    total = 0
    for part in shard(paths, gpus, block):
        for start in range(0, len(part), batch_size):
            batch = [images[p] for p in part[start:start + batch_size]]
            total += sum(source >= 0 for source in repeated_frames(batch, DEFAULT_THRESHOLD))
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_argument(parser)
    parser.add_argument("--shots", type=int, default=300, help="crops, each made into one shot (default: 300)")
    parser.add_argument("--frames", type=int, default=5, help="frames per shot (default: 5)")
    parser.add_argument("--gpus", type=int, nargs="+", default=[2, 4, 8], help="numbers of GPUs (default: 2 4 8)")
    parser.add_argument("--batch-size", type=int, default=64, help="a worker's batch (default: 64)")
    args = parser.parse_args()
    models, _ = testpack_streams(Path(args.shared))
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_shots(make_crops(Path(args.shared), models.detector, args.shots, Path(tmp)), args.frames)
        images = {p: read_image(p) for p in paths}
    alone = reused(paths, images, 1, 0, args.batch_size)
    print(f"{len(paths)} frames in {args.shots} shots of {args.frames}; batches of {args.batch_size}")
    print(f"one process: {alone} frames reused")
    print("| GPUs | sharded by path | runs of consecutive frames kept together |")
    print("|---|---|---|")
    for gpus in args.gpus:
        by_path = reused(paths, images, gpus, 0, args.batch_size)
        by_run = reused(paths, images, gpus, FRAME_BLOCK, args.batch_size)
        print(f"| {gpus} | {by_path} | {by_run} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
