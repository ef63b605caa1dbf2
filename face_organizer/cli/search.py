"""search_faces: every image of one person, from one or a few reference photos."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence

from ..cluster_stage import load_embeddings
from ..cpus import fit_openmp_threads
from ..errors import SetupError
from ..faces import load_face_models
from ..fsutil import check_writable_dir, exclusive, missing_path_hint
from ..modelpack import resolve_pack
from ..search_stage import calibrate_folder, check_search_output, find_person, search_settings
from ..thresholds import CALIBRATION_ENV, calibration_path, calibrations_to_keep, save_calibration
from . import common

DEFAULT_TARGET_FMR = 1e-3

EXAMPLES = """\
  python scripts/search_faces.py --embeddings /workspace/embeddings_gpu0.pkl /workspace/embeddings_gpu1.pkl \\
      --query /workspace/ref/her.jpg --output /workspace/faces_target
  python scripts/search_faces.py --embeddings emb.pkl --query ref1.jpg ref2.jpg ref3.png --output her --link-mode symlink
  python scripts/search_faces.py --embeddings emb.pkl --query /workspace/ref/her/ --output her   # every photo in the folder
  # how many match, and the weakest matches, before anything is copied:
  python scripts/search_faces.py --embeddings emb.pkl --query her.jpg --output her --dry-run
  # measure the model's cut-offs on a labelled folder (one sub-folder per person) and store them:
  python scripts/search_faces.py --calibrate ../shared/datasets/lfw_dev --model buffalo_l
"""


def build_parser():
    p = common.parser("search_faces.py", "Find every face of one person among embedded faces, from one or a few "
                      "reference photos (face crops or full photos; in a group photo, the face the references have in "
                      "common, else the largest).", EXAMPLES)
    p.add_argument("--embeddings", nargs="+", metavar="FILE", type=common.path, help="embeddings files to search")
    p.add_argument("--query", nargs="+", metavar="IMG", type=common.path,
                   help="reference photos of the person (several help; a folder: every image in it). Where most "
                        "are alike, one unlike all of them is left out as someone else")
    p.add_argument("--output", metavar="DIR", type=common.path, help="folder for matches.csv and the matched images")
    p.add_argument("--threshold", type=common.similarity, default=None,
                   help="minimum similarity (default: calibrated for the model, else derived from the data)")
    p.add_argument("--top-k", type=common.positive, default=None, help="keep at most this many matches")
    p.add_argument("--link-mode", choices=("copy", "hardlink", "symlink"), default=None,
                   help="how matched images reach --output (default: copy)")
    common.add_moved_to_arg(p)
    p.add_argument("--no-expand", dest="expand", action="store_false", help="no second search from confident matches")
    p.add_argument("--no-previews", dest="previews", action="store_false",
                   help="skip the contact sheet of matches and index.html")
    p.add_argument("--dry-run", action="store_true",
                   help="search, print how many images match and the weakest matches, and write nothing (with "
                        "--calibrate: print the calibration, and store nothing)")
    p.add_argument("--calibrate", metavar="DIR", type=common.path, default=None,
                   help="instead of searching: compute the model's thresholds on a labelled folder and store them")
    p.add_argument("--target-fmr", type=common.rate, default=None,
                   help="false-match rate for --calibrate (default: 0.001)")
    p.add_argument("--model", default=None, type=common.path,
                   help="model pack (default: the one that made the embeddings)")
    p.add_argument("--model-root", default=None, type=common.path, help="folder holding model packs")
    common.add_device_args(p)
    common.add_logging_args(p)
    return p


SEARCH_ONLY = (("embeddings", "--embeddings"), ("query", "--query"), ("output", "--output"),
               ("threshold", "--threshold"), ("top_k", "--top-k"), ("link_mode", "--link-mode"),
               ("moved_to", "--moved-to"))
SEARCH_FLAGS = (("expand", "--no-expand"), ("previews", "--no-previews"))


def options_without_effect(args: argparse.Namespace) -> str | None:
    """Why options given would change nothing (None: they all act): those of a search with ``--calibrate``, which
    searches nothing, and ``--target-fmr`` without it."""
    if not args.calibrate:
        return "--target-fmr is for --calibrate: a search's threshold is --threshold" if args.target_fmr else None
    given = [name for key, name in SEARCH_ONLY if getattr(args, key)]
    given += [name for key, name in SEARCH_FLAGS if not getattr(args, key)]
    if not given:
        return None
    return (f"{' and '.join([', '.join(given[:-1]), given[-1]] if len(given) > 1 else given)} "
            f"{'is' if len(given) == 1 else 'are'} for a search, and --calibrate only stores the model's cut-offs: "
            "calibrate first, then search in a command of its own")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = common.parse_args(parser, argv, options_without_effect)
    args.link_mode = args.link_mode or "copy"
    common.check_device_args(args)
    common.setup_logging(args.verbose, args.quiet, args.log)
    fit_openmp_threads()
    gpu_id = common.gpu_id_from_env()
    if args.calibrate:
        return _calibrate(args, gpu_id)
    missing = [f"--{n}" for n in ("embeddings", "query", "output") if not getattr(args, n)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    args.query = common.shell_patterns(args.query, "--query")
    if not any(os.path.lexists(q) for q in args.query):  # before minutes of loading (a TensorRT engine on a GPU)
        raise SetupError((f"query not found: {', '.join(args.query)}" if len(args.query) == 1 else
                          f"none of the queries is there: {', '.join(args.query)}") + missing_path_hint(args.query[0]))
    ef = load_embeddings(args.embeddings)
    settings = search_settings(ef, args.query, threshold=args.threshold, top_k=args.top_k, expand=args.expand,
                               link_mode=args.link_mode)
    if not args.dry_run:  # before the models load (minutes where TensorRT builds engines); a dry run's checks only warn
        check_search_output(os.path.abspath(args.output), settings)
    name = args.model or ef.meta.get("model_pack")
    if not name:
        raise SetupError("the embeddings file does not say which model pack made it; pass --model")
    pack = resolve_pack(name, common.model_root(args.model_root))
    models = load_face_models(pack, args.device, gpu_id, tensorrt=args.tensorrt)
    from ..clustering import gpu_count

    with contextlib.nullcontext() if args.dry_run else exclusive(args.output, common.OTHER_RUN):
        report = find_person(ef, models, args.query, args.output, threshold=args.threshold, top_k=args.top_k,
                             expand=args.expand, link_mode=args.link_mode, use_gpu=gpu_count() > 0, progress=not args.quiet,
                             previews=args.previews, moved_to=args.moved_to, dry_run=args.dry_run, settings=settings)
    print("\n".join(report.lines()))
    return 0


def _calibrate(args: argparse.Namespace, gpu_id: int) -> int:
    """``--calibrate``: the model's cut-offs on a labelled folder, stored (with ``--dry-run``: printed only)."""
    store = calibration_path()
    if not args.dry_run:
        try:  # before minutes of embedding, which a store that cannot be written would throw away
            check_writable_dir(store.parent)
        except OSError as err:
            raise SetupError(f"cannot store the calibration in {store}: {err.strerror or err}; set ${CALIBRATION_ENV} "
                             "to a file in a folder you can write") from None
        calibrations_to_keep(store)
    pack = resolve_pack(args.model or "buffalo_l", common.model_root(args.model_root))
    models = load_face_models(pack, args.device, gpu_id, tensorrt=args.tensorrt)
    entry = calibrate_folder(args.calibrate, models, args.target_fmr or DEFAULT_TARGET_FMR, progress=not args.quiet)
    print(json.dumps(entry, indent=2))
    if args.dry_run:
        print(f"dry run: not stored (the command without --dry-run stores it for {pack.recognizer.name} in {store})")
        return 0
    path = save_calibration(pack.recognizer.name, entry, store)
    print(f"stored for {pack.recognizer.name} in {path} (override the location with $FACE_ORGANIZER_CALIBRATION)")
    return 0


def cli() -> None:
    sys.exit(common.run(main))
