"""generate_embeddings: face images -> one embeddings file per process/GPU."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import embed_run, embfile, frames
from ..cpus import default_workers, warn_of_extra_workers
from ..embed_plan import HEADER, plan_run
from ..errors import SetupError
from ..faces import EmbedOptions, load_face_models
from ..fsutil import check_writable_dir, exclusive
from ..modelpack import resolve_pack
from ..multigpu import read_file_list
from ..progress import count
from ..processes import describe, embedding_runs_on_gpu
from ..providers import CUDA, available_providers
from . import common

log = logging.getLogger(__name__)

EXAMPLES = """\
  GPU_ID=0 python scripts/generate_embeddings.py --input /workspace/input/2017 /workspace/input/2008 \\
      --output /workspace/embeddings_gpu0.pkl --workers 8
  python scripts/generate_embeddings.py --input ~/Pictures --output photos.pkl --mode photos --device cpu
  # group photos of many people (a class, a wedding): detect at 1280 to find faces too small for 640
  python scripts/generate_embeddings.py --input /workspace/weddings --output weddings.pkl --mode photos --det-size 1280
  # interrupted or new images added? run the same command again: only what is missing is embedded;
  # with --dry-run first, it says how many images that is, and nothing runs
  GPU_ID=0 python scripts/generate_embeddings.py --input /workspace/input/2017 /workspace/input/2018 \\
      --output /workspace/embeddings_gpu0.pkl --dry-run
  # every video frame extracted? let near-identical consecutive frames share one embedding
  python scripts/generate_embeddings.py --input /workspace/input/2017 --output emb.pkl --reuse-similar-frames
"""


def frame_distance(value: str) -> float:
    """``--reuse-similar-frames``' distance: 0 (off) up to ``frames.MAX_THRESHOLD``."""
    distance = common.non_negative_float(value)
    if distance > frames.MAX_THRESHOLD:
        raise argparse.ArgumentTypeError(
            f"a thumbnail difference from 0 to {frames.MAX_THRESHOLD} (default {frames.DEFAULT_THRESHOLD}), not "
            f"{value}: different photos of one person differ by 0.26 or more, so a larger one would give one face's "
            "embedding to another")
    return distance


def det_size(value: str) -> int:
    """``--det-size``: a multiple of 32 (the detector's coarsest stride) from 320 to 4,096 pixels."""
    try:
        size = int(value)
    except ValueError:
        size = 0
    if not 320 <= size <= 4096 or size % 32:
        raise argparse.ArgumentTypeError(f"a multiple of 32 from 320 to 4096 pixels (default "
                                         f"{EmbedOptions.photo_det_size}), not {value}")
    return size


def build_parser():
    p = common.parser("generate_embeddings.py", "Compute ArcFace embeddings for face images (InsightFace model packs, "
                      "ONNX Runtime on the GPU selected by $GPU_ID, or the CPU).", EXAMPLES)
    p.add_argument("--input", nargs="+", required=True, metavar="DIR", type=common.path,
                   help="folders (searched recursively) or image files")
    p.add_argument("--output", required=True, metavar="FILE.pkl", type=common.path,
                   help="embeddings file to write (resumed if it exists)")
    p.add_argument("--workers", type=common.non_negative, default=None,
                   help="image-decoding processes; 0: each stream decodes its own images "
                        f"(default: 0 on the CPU; on a GPU, CPUs minus 2, at most 8: here {default_workers()}; "
                        "CPUs are those this process may use: its affinity and container CPU quota, at most "
                        "$FACE_ORGANIZER_CPUS)")
    p.add_argument("--batch-size", type=common.batch_size, default=64,
                   help="faces per recogniser batch (default: 64; at most 4,096)")
    p.add_argument("--mode", choices=("crops", "photos"), default="crops",
                   help="crops: one face per image (default); photos: every face in each image")
    p.add_argument("--full-resolution", action="store_true",
                   help="photos mode: decode every JPEG whole (default: one of more than 4,000 pixels a side is "
                        "shrunk while decoding, several times faster, as far as it keeps 2,000, and decoded again "
                        "for faces it leaves smaller than 112 pixels)")
    p.add_argument("--det-size", type=det_size, default=None, metavar="PIXELS",
                   help=f"photos mode: the size photos are detected at (default: {EmbedOptions.photo_det_size}, "
                        "where a face of a 12-megapixel photo needs to be 60-70 pixels wide to be found; at 1280, "
                        "faces 44 pixels wide were found too: for large group photos, at about half the speed)")
    p.add_argument("--turn-faceless", action="store_true",
                   help="photos mode: try the photos in which no face is found upright turned by 90, 180 and 270 "
                        "degrees too, as prints scanned sideways need (default: only photos whose faces score low "
                        "are; every photo without a face costs about two detections more); a re-run with it over "
                        "a file made without it tries only the photos that had no face")
    common.add_model_args(p)
    common.add_device_args(p)
    p.add_argument("--reuse-similar-frames", nargs="?", type=frame_distance, const=frames.DEFAULT_THRESHOLD, default=0.0,
                   metavar="DISTANCE",
                   help="crops mode: a frame that nearly repeats one of the last few embedded frames of the same size "
                        "takes that frame's embedding instead of being embedded again, and is listed under 'reused' "
                        f"in the file (default: off; the flag alone uses distance {frames.DEFAULT_THRESHOLD})")
    p.add_argument("--resume", dest="resume", action="store_true", default=True,
                   help="continue an interrupted or earlier run into the same --output (the default)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="ignore an existing --output and start over")
    p.add_argument("--checkpoint-seconds", type=common.non_negative_float, default=60.0,
                   help="seconds between checkpoints (default: 60; 0: after every batch)")
    p.add_argument("--dry-run", action="store_true",
                   help="say what a run would embed (images new, changed or failed before) and exit: no model is "
                        "loaded, nothing is written")
    p.add_argument("--file-list", default=None, metavar="FILE", type=common.path,
                   help="embed only the images listed in FILE (one path per line, or NUL-separated as find -print0 "
                        "writes; - reads it from standard input); --input still names the folders, and a relative "
                        "name is found under them, as in a list made by find . in an input folder")
    p.add_argument("--status-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--launcher-pid", type=int, default=None, help=argparse.SUPPRESS)  # embed_all_gpus
    p.add_argument("--streams", type=common.non_negative, default=0,
                   help="batches embedded concurrently (default: one per core on the CPU, 2 on a GPU)")
    p.add_argument("--threads", type=common.non_negative, default=0,
                   help="ONNX Runtime threads per session on the CPU (default: cores divided by --streams)")
    common.add_logging_args(p)
    return p


def _any_exists(paths: Sequence[str]) -> bool:
    """Whether any of ``paths`` exists: a stat per folder first, so that half a million host paths, whose
    folders are not there, cost no stat each (on a network share, minutes)."""
    return any(os.path.isdir(f) for f in {os.path.dirname(p) for p in paths}) and any(map(os.path.lexists, paths))


def embed_options(args: argparse.Namespace) -> EmbedOptions:
    """The ``EmbedOptions`` the options ask for; ``SetupError`` for options of the other mode, or of a GPU on the
    CPU."""
    common.check_device_args(args)
    if args.reuse_similar_frames and args.mode != "crops":
        raise SetupError("--reuse-similar-frames is for --mode crops (video frames), not for photo libraries")
    if args.full_resolution and args.mode != "photos":
        raise SetupError("--full-resolution is for --mode photos: crops are always decoded whole")
    if args.turn_faceless and args.mode != "photos":
        raise SetupError("--turn-faceless is for --mode photos: a crop without a face found is embedded centred")
    if args.det_size is not None and args.mode != "photos":
        raise SetupError("--det-size is for --mode photos: crops are detected padded at 192 and 320 pixels, the "
                         "sizes for a face that fills its image")
    return EmbedOptions(mode=args.mode, reuse_similar_frames=args.reuse_similar_frames,
                        photo_det_size=args.det_size or EmbedOptions.photo_det_size,
                        photo_min_side=0 if args.full_resolution else EmbedOptions.photo_min_side,
                        photo_turn_faceless=args.turn_faceless)


def _dry_run(args: argparse.Namespace, paths: Sequence[str], output: str, options: EmbedOptions) -> int:
    """``--dry-run``: the run's plan on stdout; the model pack is looked for, not loaded."""
    pack = resolve_pack(args.model, common.model_root(args.model_root))
    plan = plan_run(paths, output, pack.recognizer.name, options, resume=args.resume)
    folder = next(f for f in Path(output).parents if f.is_dir())  # the run makes the others
    if not os.access(folder, os.W_OK | os.X_OK):
        log.warning("cannot write to %s: the run would stop there", folder)
    print("\n".join([HEADER, *plan.lines()]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging(args.verbose, args.quiet, args.log)
    args.input = common.shell_patterns(args.input, "--input")
    if args.launcher_pid is not None:
        common.stop_when_launcher_ends(args.launcher_pid)
    gpu_id = common.gpu_id_from_env()
    options = embed_options(args)
    output = common.file_output(args.output, f"embeddings_gpu{gpu_id}.pkl")
    if args.file_list:
        paths = read_file_list(args.file_list, args.input)
        if not paths:
            raise SetupError(f"--file-list {args.file_list} names no images")
        if not (args.resume and os.path.isfile(output)) and not _any_exists(paths):
            raise SetupError(f"--file-list {args.file_list}: none of the {count(len(paths), 'file')} it names "
                             f"exists (first: {paths[0]}); a list made on the host names the host's paths, not the "
                             "container's: make it in the container, or with names relative to the input folder "
                             "(find . in it)")
    else:
        # Folders emptied since an earlier run into this file (its images moved into person folders,
        # or deleted) leave that file as it is; a shell loop over year folders goes on.
        paths = common.find_images(args.input, none_ok=args.resume and os.path.isfile(output))
    if not output.endswith(".pkl"):
        log.warning("--output %s does not end in .pkl: embeddings files are pickles, and a pattern such as "
                    "embeddings_gpu*.pkl given to cluster_faces would leave this one out", output)
    if args.dry_run:
        return _dry_run(args, paths, output, options)
    if not args.resume:
        embfile.check_replaceable(output)  # before the models load (with TensorRT, minutes)
    try:
        check_writable_dir(os.path.dirname(output))
    except OSError as err:
        raise SetupError(f"cannot write to {os.path.dirname(output)}: {err.strerror or err}") from None
    # One writer per output: two processes on the same file would interleave their checkpoints.
    with exclusive(output, "give each process its own --output, e.g. embeddings_gpu0.pkl and embeddings_gpu1.pkl"):
        pack = resolve_pack(args.model, common.model_root(args.model_root))
        state, unchanged = embed_run.rerun_without_models(
            paths, output, pack.recognizer.name, options, inputs=args.input, status_file=args.status_file,
        ) if args.resume else (None, None)
        if unchanged is not None:  # nothing to embed: the models are not loaded
            print("\n".join(unchanged.lines()))
            return 0
        on_cpu = args.device == "cpu" or CUDA not in available_providers()
        streams, threads = embed_run.plan_streams(on_cpu, args.streams, args.threads)
        models = load_face_models(pack, args.device, gpu_id, batch_size=args.batch_size, threads=threads,
                                  tensorrt=args.tensorrt)
        if not on_cpu and models.device == "cpu":
            # CUDA was listed but failed its self-test (already warned): plan for the CPU
            # instead of two GPU streams whose sessions would each take every core.
            on_cpu = True
            streams, threads = embed_run.plan_streams(True, args.streams, args.threads)
            models = load_face_models(pack, "cpu", gpu_id, batch_size=args.batch_size, threads=threads)
        if not on_cpu and (others := embedding_runs_on_gpu(gpu_id)):
            log.warning("GPU %d is given to another generate_embeddings run too (pid %s): each runs at about "
                        "half speed. Give each process its own GPU_ID: docker exec -e GPU_ID=1 … (GPU_ID=1 docker "
                        "exec … sets it on the host only, not in the container)", gpu_id, describe(others[0]))
        workers = args.workers if args.workers is not None else (0 if on_cpu else default_workers())
        warn_of_extra_workers(workers)
        summary = embed_run.run_embeddings(
            paths, output, models, options, inputs=args.input, batch_size=args.batch_size,
            workers=workers, streams=streams, resume=args.resume, checkpoint_seconds=args.checkpoint_seconds, progress=not args.quiet,
            status_file=args.status_file, state=state,
        )
    print("\n".join(summary.lines()))
    return 0


def cli() -> None:
    sys.exit(common.run(main))
