#!/usr/bin/env python3
"""Stage 1 speed: our pipeline vs the straightforward insightface loop, on the same images.

Makes N video-style 256x256 PNG face crops from LFW photos (in ../shared), then times
  baseline: cv2.imread + insightface FaceAnalysis.get at det_size=(640, 640), one image at a time
  ours:     face_organizer.embed_run.run_embeddings (one single-threaded stream per core, each
            decoding its batch, padded small-size detection, batched recognition; checkpointing
            and the final file write included)
in alternating rounds over slices of the images (--rounds), and prints images/s for each and the ratio.
Each is warmed up on one image first; loading the models is not timed for either.
With --device cuda both run on the GPU selected by $GPU_ID (ONNX Runtime's CUDA provider).

  python benchmarks/bench_embeddings.py --count 1500 --stages
  GPU_ID=0 python benchmarks/bench_embeddings.py --count 3000 --device cuda
  python benchmarks/bench_embeddings.py --count 3000 --cached-inference --workers 1 --streams 1
"""

from __future__ import annotations

import argparse
import csv
import functools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import add_shared_argument  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from face_organizer.alignment import align, centre_crop  # noqa: E402
from face_organizer.cli.common import gpu_id_from_env  # noqa: E402
from face_organizer.cpus import default_workers, usable_cpus  # noqa: E402
from face_organizer.embed_run import plan_streams, run_embeddings  # noqa: E402
from face_organizer.faces import EmbedOptions, embed_batch, find_crop_face, load_face_models  # noqa: E402
from face_organizer.images import read_image  # noqa: E402
from face_organizer.modelpack import resolve_pack  # noqa: E402
from face_organizer.frames import DEFAULT_THRESHOLD  # noqa: E402
from face_organizer.samples import crop_from_photo, shot_frames  # noqa: E402


def make_crops(shared: Path, detector, count: int, folder: Path) -> list[str]:
    lfw = shared / "datasets" / "lfw_dev"
    with open(lfw / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths: list[str] = []
    for i, row in enumerate(rows):
        if len(paths) >= count:
            break
        crop = crop_from_photo(read_image(lfw / row["path"]), detector, occlude=(None, "bar", "blob")[i % 3], seed=i)
        if crop is not None:
            path = folder / f"frame_{i:05d}.png"
            cv2.imwrite(str(path), crop)
            paths.append(str(path))
    return paths


def make_shots(crops: list[str], frames: int) -> list[str]:
    """Each crop followed by ``frames - 1`` jittered copies, as consecutive files of one shot."""
    rng = np.random.default_rng(0)
    paths = []
    for crop in crops:
        stem = crop[: -len(".png")]
        for f, frame in enumerate(shot_frames(read_image(crop), frames, rng)):
            path = f"{stem}_{f:03d}.png"
            cv2.imwrite(path, frame)
            paths.append(path)
        os.remove(crop)
    return paths


class Baseline:
    """The straightforward loop: cv2.imread + FaceAnalysis.get at det_size 640, one image at a time."""

    def __init__(self, pack_dir: Path, warm_up: str, device: str, gpu_id: int):
        import onnxruntime as ort
        from insightface.app import FaceAnalysis

        ort.set_default_logger_severity(3)
        if device == "cuda":
            providers: list = [("CUDAExecutionProvider", {"device_id": gpu_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self.app = FaceAnalysis(name=str(pack_dir), providers=providers)
        self.app.prepare(ctx_id=gpu_id if device == "cuda" else -1, det_size=(640, 640))
        applied = {model.session.get_providers()[0] for model in self.app.models.values()}
        if device == "cuda" and applied != {"CUDAExecutionProvider"}:
            raise SystemExit(f"baseline: insightface runs on {sorted(applied)}, not CUDA")
        self.app.get(cv2.imread(warm_up))

    def run(self, paths: list[str]) -> tuple[float, int]:
        """(seconds, images with a face found)."""
        found = 0
        start = time.perf_counter()
        for path in paths:
            found += bool(self.app.get(cv2.imread(path)))
        return time.perf_counter() - start, found


def stage_costs(pack, paths: list[str]) -> str:
    """Milliseconds per image of each step, one image at a time on one core: the work any schedule must do."""
    models = load_face_models(pack, "cpu", 0, threads=1)
    options = EmbedOptions()
    started = time.perf_counter()
    decoded = [read_image(p) for p in paths]
    decode = time.perf_counter() - started
    find_crop_face(decoded[0], models.detector, options)
    started = time.perf_counter()
    found = [find_crop_face(image, models.detector, options) for image in decoded]
    detect = time.perf_counter() - started
    started = time.perf_counter()
    faces = np.stack([align(image, f[0], models.recognizer.input_size) if f else centre_crop(image, models.recognizer.input_size)
                      for image, f in zip(decoded, found)])
    aligning = time.perf_counter() - started
    started = time.perf_counter()
    models.recognizer.embed(faces)
    recognise = time.perf_counter() - started
    n = len(paths) / 1000.0
    total = decode + detect + aligning + recognise
    return (f"one core, per image: decode {decode / n:.2f} ms, detect ({options.crop_det_sizes[0]} px) {detect / n:.2f} ms, "
            f"align {aligning / n:.2f} ms, recognise {recognise / n:.2f} ms = {total / n:.2f} core-ms; "
            f"{usable_cpus()} cores cannot pass {usable_cpus() / (total / len(paths)):.0f} images/s")


class CachedSession:
    """Stands in for an accelerator's session: the real outputs for each input shape, computed once,
    then copies of them; what is left of a run is the work on the CPU side."""

    def __init__(self, session) -> None:
        self.session, self.outputs = session, dict[tuple[object, ...], list[np.ndarray]]()

    def __getattr__(self, name: str):
        return getattr(self.session, name)

    def run(self, names, feeds):
        key = (tuple(names or ()), tuple((k, v.shape) for k, v in feeds.items()))
        if key not in self.outputs:
            self.outputs[key] = self.session.run(names, feeds)
        return [o.copy() for o in self.outputs[key]]


def cpu_side(models, paths: list[str], folder: Path, workers: int, streams: int, batch_size: int) -> str:
    """``run_embeddings`` with inference answered from a cache, batches as on an accelerator: images/s
    and this process's CPU time per image (decoding processes not counted)."""
    for model in (models.detector, models.recognizer):
        model.session, model.max_batch, model.pad_batches = CachedSession(model.session), batch_size, True
    run = functools.partial(run_embeddings, models=models, options=EmbedOptions(), workers=workers, streams=streams,
                            batch_size=batch_size, resume=False, progress=False)
    run(paths[: 2 * batch_size], folder / "warm.pkl")  # fills the cache for the full batch shapes
    started, cpu = time.perf_counter(), time.process_time()
    run(paths, folder / "cached.pkl")
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return (f"ours with inference answered from a cache ({workers} decoding processes, {streams} streams, batch {batch_size}): "
            f"{len(paths) / seconds:.1f} images/s, {1000 * cpu / len(paths):.2f} ms of this process's CPU per image\n"
            f"embed_batch alone on decoded images, the same cache: {batch_cpu(models, paths, batch_size):.3f} ms of CPU per image "
            "(median of 7 passes)")


def batch_cpu(models, paths: list[str], batch_size: int, passes: int = 7) -> float:
    """Milliseconds of CPU per image that ``embed_batch`` takes on decoded full batches (up to 512
    images): the per-batch work of a stream, without decoding, threads or file writing."""
    decoded = [(p, read_image(p)) for p in paths[: max(batch_size, 512 - 512 % batch_size)]]
    batches = [decoded[i : i + batch_size] for i in range(0, len(decoded) - batch_size + 1, batch_size)]
    options, times = EmbedOptions(), []
    for _ in range(passes):
        cpu = time.process_time()
        for batch in batches:
            embed_batch(batch, models, options)
        times.append(1000 * (time.process_time() - cpu) / sum(map(len, batches)))
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="run both on the CPU (default) or on the GPU selected by $GPU_ID")
    parser.add_argument("--workers", type=int, default=None,
                        help="decoding processes (default: as generate_embeddings: 0 on the CPU, so streams decode)")
    parser.add_argument("--streams", type=int, default=0, help="embedding streams (default: as generate_embeddings)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=1,
                        help="make shots of this many consecutive frames (about 1 pixel apart) from each crop (default: 1)")
    parser.add_argument("--reuse", action="store_true", help="ours with --reuse-similar-frames")
    parser.add_argument("--rounds", type=int, default=3, help="alternate baseline and ours over this many slices (default: 3)")
    parser.add_argument("--stages", action="store_true", help="also time each step on one core")
    parser.add_argument("--cached-inference", action="store_true",
                        help="instead: ours alone, its sessions answering from a cache of their outputs, batches as on an "
                             "accelerator: the CPU-side work per image that bounds a run on a fast GPU (the whole "
                             "run, then embed_batch alone on decoded images)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log which sessions and batch sizes are used")
    add_shared_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    shared = Path(args.shared)
    pack = resolve_pack(str(shared / "models" / "testpack"))
    on_cpu = args.device == "cpu"
    gpu_id = gpu_id_from_env()
    streams, threads = plan_streams(on_cpu, args.streams)
    workers = args.workers if args.workers is not None else (0 if on_cpu else default_workers())
    models = load_face_models(pack, args.device, gpu_id, batch_size=args.batch_size, threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_crops(shared, models.detector, -(-args.count // args.frames), Path(tmp))
        if args.frames > 1:
            paths = make_shots(paths, args.frames)[: args.count]
        if args.cached_inference:
            print(cpu_side(models, paths, Path(tmp), workers, streams, args.batch_size))
            return 0
        options = EmbedOptions(reuse_similar_frames=DEFAULT_THRESHOLD if args.reuse else 0.0)
        print(f"{len(paths)} PNG crops of 256x256" + (f" in shots of {args.frames} frames" if args.frames > 1 else "")
              + f", {usable_cpus()} CPUs, model pack {pack.name}, {streams} streams x {threads} threads, "
              f"{workers} decoding processes, device {models.device}" + (", --reuse-similar-frames" if args.reuse else ""))
        # Alternate the two over --rounds slices of the images, so that a machine whose speed drifts
        # (shared virtual CPUs) slows both alike; totals are over all images.
        base = Baseline(pack.folder, paths[0], args.device, gpu_id)
        # Both sides warmed up on one image, as one-off costs are nothing over a run of many: the baseline's
        # first inference, and ours' (with the blurred-face centre each run works out once, about 0.3 s).
        run_embeddings(paths[:1], Path(tmp) / "warm-up.pkl", models, options, workers=workers, streams=streams,
                       batch_size=args.batch_size, resume=False, progress=False)
        base_time = ours_time = 0.0
        base_found = ours_found = 0
        ratios = []
        reused = 0
        for r in range(args.rounds):
            part = paths[r * len(paths) // args.rounds : (r + 1) * len(paths) // args.rounds]
            seconds, found = base.run(part)
            started = time.perf_counter()
            summary = run_embeddings(part, Path(tmp) / f"emb{r}.pkl", models, options, workers=workers, streams=streams,
                                     batch_size=args.batch_size, resume=False, progress=False)
            ours_seconds = time.perf_counter() - started
            base_time, base_found = base_time + seconds, base_found + found
            ours_time, ours_found = ours_time + ours_seconds, ours_found + summary.embedded - summary.fallback
            reused += summary.reused
            ratios.append(seconds / ours_seconds)
        print(f"baseline  insightface FaceAnalysis.get(det_size=640): {len(paths) / base_time:7.1f} images/s, face found in {base_found}/{len(paths)}")
        print(f"ours      face_organizer run_embeddings:              {len(paths) / ours_time:7.1f} images/s, face found in {ours_found}/{len(paths)}")
        if args.reuse:
            print(f"          of which near-identical frames that took another frame's embedding: {reused}/{len(paths)}")
        print(f"speed-up: {base_time / ours_time:.1f}x (rounds: {', '.join(f'{x:.1f}x' for x in ratios)})")
        if args.stages:
            print(stage_costs(pack, paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
