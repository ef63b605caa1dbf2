"""gender_filter: keep the faces of one gender."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..cpus import default_workers, warn_of_extra_workers
from ..fsutil import exclusive
from ..gender import DeepFaceGender, InsightFaceGender
from ..gender_stage import DRY_RUN_HEADER, Deferred, filter_by_gender, plan_gender_run
from ..modelpack import resolve_pack
from . import common

EXAMPLES = """\
  for YEAR in 2006 2007 2008; do
    docker exec face-organizer python /app/scripts/gender_filter.py --input /workspace/input/$YEAR \\
        --output /workspace/faces_female/$YEAR --gender Woman
  done
  python scripts/gender_filter.py --input faces --output men --gender Man --backend deepface --detector-backend retinaface
  # a year folder grown since: how many images the same command would predict, before it starts
  python scripts/gender_filter.py --input /workspace/input/2008 --output /workspace/faces_female/2008 --gender Woman \\
      --dry-run
"""


def build_parser():
    p = common.parser("gender_filter.py", "Copy (or link) the images whose face is of the given gender; writes "
                      "predictions.csv with gender, confidence and age for every image.", EXAMPLES)
    p.add_argument("--input", nargs="+", required=True, metavar="DIR", type=common.path,
                   help="folders (searched recursively) or image files")
    p.add_argument("--output", required=True, metavar="DIR", type=common.path,
                   help="folder for the matching images and predictions.csv (new, or this command's own: it goes on)")
    p.add_argument("--gender", required=True, type=common.gender, metavar="{Woman,Man}",
                   help="the gender whose images are kept (any case; women/female, men/male too)")
    p.add_argument("--backend", choices=("insightface", "deepface"), default="insightface",
                   help="insightface: the pack's genderage model, batched, GPU when present (default); "
                        "deepface: DeepFace.analyze, as the original tool")
    p.add_argument("--detector-backend", default=None,
                   help="DeepFace detector (opencv, ssd, mtcnn, retinaface, yunet, …; default: opencv); --backend "
                        "deepface only")
    p.add_argument("--min-confidence", type=common.probability, default=0.5,
                   help="minimum probability of the gender (default: 0.5)")
    p.add_argument("--link-mode", choices=("copy", "hardlink", "symlink"), default="copy",
                   help="how matching images reach --output (default: copy)")
    p.add_argument("--workers", type=common.non_negative, default=default_workers(),
                   help="image-decoding processes; 0: the images are decoded between predictions (default: CPUs "
                        f"minus 2, at most 8: here {default_workers()})")
    p.add_argument("--dry-run", action="store_true",
                   help="write nothing, load no model: print how many images would be predicted (new, rewritten "
                        "since) and how many predictions of earlier runs stand")
    p.add_argument("--batch-size", type=common.batch_size, default=64,
                   help="images decoded and predicted together (default: 64; at most 4,096)")
    common.add_model_args(p)
    common.add_device_args(p)
    common.add_logging_args(p)
    return p


def options_without_effect(args: argparse.Namespace) -> str | None:
    """Why options given would change nothing, or not what they say, with the backend chosen (None: they act)."""
    if args.backend == "insightface" and args.detector_backend is not None:
        return ("--detector-backend is for --backend deepface: the insightface backend finds faces with the pack's "
                "own detector; leave it out, or add --backend deepface")
    if args.backend == "deepface" and (args.device == "cuda" or args.tensorrt):
        return (f"{'--device cuda' if args.device == 'cuda' else '--tensorrt'} is for --backend insightface: "
                "DeepFace runs on the CPU here (TensorFlow is kept off the GPU, beside ONNX Runtime's CUDA libraries)")
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(build_parser(), argv, options_without_effect)
    args.detector_backend = args.detector_backend or "opencv"
    common.check_device_args(args)
    common.setup_logging(args.verbose, args.quiet, args.log)
    args.input = common.shell_patterns(args.input, "--input")
    warn_of_extra_workers(args.workers)
    paths = common.find_images(args.input)
    # Made only when there are images to predict: the same command again, with nothing new, loads no model.
    if args.backend == "insightface":
        pack = resolve_pack(args.model, common.model_root(args.model_root))
        predictor = Deferred(InsightFaceGender.name_for(pack), lambda: InsightFaceGender(
            pack, args.device, common.gpu_id_from_env(), batch_size=args.batch_size))
    else:
        predictor = Deferred(DeepFaceGender.name_for(args.detector_backend), lambda: DeepFaceGender(args.detector_backend))
    if args.dry_run:
        plan = plan_gender_run(paths, [os.path.abspath(i) for i in args.input], args.output, args.gender,
                               predictor.name, min_confidence=args.min_confidence, link_mode=args.link_mode)
        print("\n".join([DRY_RUN_HEADER, *plan.lines()]))
        return 0
    with exclusive(args.output, common.OTHER_RUN):
        summary = filter_by_gender(paths, [os.path.abspath(i) for i in args.input], args.output, args.gender, predictor,
                                   min_confidence=args.min_confidence, link_mode=args.link_mode, workers=args.workers,
                                   batch_size=args.batch_size, progress=not args.quiet)
    print("\n".join(summary.lines()))
    return 0


def cli() -> None:
    sys.exit(common.run(main))
