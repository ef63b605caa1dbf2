"""benchmark_backends: which face detector suits these images?"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import backends as b
from .. import images
from ..deepface_import import deepface_home_default
from ..errors import FaceOrganizerError, SetupError
from ..gender import InsightFaceGender, attribute_crop
from ..modelpack import default_model_root, resolve_pack
from ..providers import open_session
from ..detection import SCRFD
from . import common

EXAMPLES = """\
  python scripts/benchmark_backends.py --input /workspace/input/2017 --samples 200
  python scripts/benchmark_backends.py --input faces --samples 100 --backends scrfd,yunet,mtcnn --gender Woman
  # offline: put DeepFace's detector weights in place from files already on disk
  python scripts/benchmark_backends.py --prepare-deepface-weights /models/yunet /path/to/weight/files
"""


def backend_names(value: str) -> list[str]:
    """The names of a comma-separated list, each once, in order."""
    names = list(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"no backend named in {value!r}: scrfd, yunet, or DeepFace's detectors "
                                         f"({', '.join(b.DEEPFACE_BACKENDS)}, …), separated by commas")
    return names


def build_parser():
    p = common.parser("benchmark_backends.py", "Compare face-detector backends (InsightFace SCRFD, OpenCV YuNet, "
                      "DeepFace's detectors) on a sample of your images.", EXAMPLES)
    p.add_argument("--input", metavar="DIR", type=common.path, help="folder of images to sample (sub-folders included)")
    p.add_argument("--samples", type=common.positive, default=100,
                   help="images drawn at random from --input, the same for every backend (default: 100)")
    p.add_argument("--backends", type=backend_names, default="scrfd,yunet," + ",".join(b.DEEPFACE_BACKENDS),
                   help="comma-separated: scrfd, yunet and DeepFace's names (default: all)")
    p.add_argument("--gender", type=common.gender, metavar="{Woman,Man}", default=None,
                   help="also classify gender (insightface genderage on each backend's face): Matched counts the faces "
                        "of that gender, Failed the images with no face found")
    p.add_argument("--yunet-model", default=os.environ.get("FACE_ORGANIZER_YUNET") or None, type=common.path,
                   help="YuNet ONNX file for the yunet backend (default: $FACE_ORGANIZER_YUNET, else the newest "
                        "*yunet*.onnx in the yunet/ folder of the model root)")
    p.add_argument("--prepare-deepface-weights", nargs="*", metavar="SOURCE", type=common.path, default=None,
                   help="copy weight files (or folders of them) into $DEEPFACE_HOME/.deepface/weights and exit")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sample (default: 0)")
    common.add_model_args(p)
    common.add_logging_args(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    common.setup_logging(args.verbose, args.quiet, args.log)
    if args.prepare_deepface_weights is not None:
        home = deepface_home_default()
        placed = b.prepare_deepface_weights(home, [Path(s) for s in args.prepare_deepface_weights])
        print(f"{home / '.deepface' / 'weights'}: placed {', '.join(placed) or 'nothing new'}")
        return 0
    if not args.input:
        parser.error("--input is required")
    paths = common.find_images([args.input])
    sample = sorted(random.Random(args.seed).sample(paths, min(args.samples, len(paths))))
    loaded = [(l.path, l.image) for l in images.load_many(sample) if l.image is not None]
    if not loaded:
        raise SetupError("none of the sampled images could be read")
    pack = None
    try:
        pack = resolve_pack(args.model, common.model_root(args.model_root), download=False)
    except FaceOrganizerError as err:
        pack_error = str(err)
    yunet = args.yunet_model or b.find_yunet(common.model_root(args.model_root) or default_model_root())
    gpu_id = common.gpu_id_from_env()
    factories: dict[str, Callable[[], b.BoxFinder] | None] = {}
    for name in args.backends:
        if name == "scrfd":
            factories[name] = (lambda: b.scrfd_finder(SCRFD(open_session(str(pack.detector), pack.detector.name, "auto", gpu_id, quiet=True)[0]))) \
                if pack else None
        elif name == "yunet":
            factories[name] = (lambda: b.yunet_finder(str(yunet))) if yunet else None
        else:
            factories[name] = functools.partial(b.deepface_finder, name)
    classify = None
    if args.gender:
        if pack is None or pack.genderage is None:
            raise SetupError("--gender needs a model pack with genderage.onnx (--model/--model-root)")
        predictor = InsightFaceGender(pack, "auto", gpu_id)
        classify = lambda image, box: predictor.predict_crop(attribute_crop(image, box, predictor.size))  # noqa: E731

    results = []
    for name, factory in factories.items():
        if factory is None:
            reason = ("no model pack: " + pack_error) if name == "scrfd" else "no YuNet file: pass --yunet-model, set FACE_ORGANIZER_YUNET or put it in the model root's yunet/ folder"
            results.append(b.BackendResult(name, False, reason))
            continue
        finder, reason = b.try_backend(name, factory, loaded[0][1])
        if finder is None:
            results.append(b.BackendResult(name, False, reason))
            continue
        results.append(b.run_backend(name, finder, loaded, args.gender, classify))
    print(f"{len(loaded)} sampled images of {len(paths):,} in {args.input}")
    print("\n".join(b.table(results, args.gender)))
    print(b.recommendation(results, len(paths)))
    return 0


def cli() -> None:
    sys.exit(common.run(main))
