"""diagnostic_test: is the GPU stack really working?"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence

from .. import diagnostics as d
from ..errors import ModelPackError
from ..modelpack import resolve_pack
from . import common

EXAMPLES = """\
  docker exec face-organizer python /app/scripts/diagnostic_test.py --expect-gpu
  python scripts/diagnostic_test.py --model testpack --model-root ../shared/models
"""


def build_parser():
    p = common.parser("diagnostic_test.py", "Report versions, GPUs and a real inference on every ONNX Runtime provider "
                      "compared with the CPU; name known bad combinations.", EXAMPLES)
    p.add_argument("--expect-gpu", action="store_true", help="exit 1 unless a GPU provider passes its self-test")
    common.add_model_args(p)
    p.add_argument("--skip-tensorflow", action="store_true", help="do not import TensorFlow (slow) to list its GPUs")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    common.setup_logging(quiet=True)
    gpu_id = common.gpu_id_from_env()
    out: list[str] = ["== versions"]
    vers = d.versions()
    out += [f"  {k}: {v}" for k, v in vers.items()]
    out += ["  native libraries: " + ", ".join(f"{k}={v or 'not found'}" for k, v in d.native_libraries().items())]
    out += [f"  {line}" for line in d.image_formats()]
    ort_build = d.onnxruntime_cuda_build()
    if ort_build is not None:
        out.append(f"  ONNX Runtime CUDA provider built for: {ort_build.describe()}")
    gpus, smi_error = d.nvidia_smi_gpus()
    out.append("== GPUs")
    out.append(f"  nvidia-smi: {smi_error}" if smi_error else f"  nvidia-smi: {len(gpus)} GPU(s)")
    out += [f"    GPU {g.index}: {g.name}, compute capability {g.compute_capability}, driver {g.driver}" for g in gpus]
    import onnxruntime as ort

    out.append(f"  ONNX Runtime providers: {', '.join(ort.get_available_providers())}")
    out.append(f"  FAISS GPUs: {d.faiss_gpus()}")
    if not args.skip_tensorflow:
        tf = d.tensorflow_gpus()
        out.append("  TensorFlow: not installed" if tf.gpus is None else f"  TensorFlow GPUs: {tf.gpus or 'none'}")
        out += [f"    TensorFlow says: {note}" for note in tf.notes]
    out.append("== CPUs")
    out += [f"  {line}" for line in d.cpu_plan()]
    out.append("== model pack")
    model: bytes | Callable[[str], bytes]
    try:
        pack = resolve_pack(args.model, common.model_root(args.model_root), download=False)
        for name, size, sha in d.pack_files(pack):
            out.append(f"  {name}: {size:,} bytes, sha256 {sha}")
        missing = d.missing_pack_files(pack)
        if missing:
            out.append(f"  MISSING from {pack.folder}: {', '.join(missing)}")
        model = functools.partial(d.recogniser_as_stage_1_runs_it, pack.recognizer)
        model_name = f"{pack.recognizer.name}, uint8 images in as in stage 1"
    except ModelPackError as err:
        out.append(f"  {err}")
        model, model_name = d.probe_model(), "a built-in probe model"
    out.append(f"== provider self-test ({model_name}, GPU_ID={gpu_id})")
    tests = d.provider_self_tests(model, gpu_id)
    out += [f"  {t.provider}: {'PASS' if t.passed else 'FAIL'}: {t.detail}" + (f", {t.ms:.2f} ms" if t.ms else "")
            + (f"; {t.placement}" if t.placement else "") for t in tests]
    problems = d.known_problems(vers, gpus, ort_build)
    out.append("== known problems")
    out += [f"  - {p}" for p in problems] or ["  none found"]
    gpu_ok = any(t.passed and t.provider != "CPUExecutionProvider" for t in tests)
    out.append("== verdict")
    out.append("  GPU: working" if gpu_ok else "  GPU: NOT in use; everything runs on the CPU"
               + ("" if not smi_error else " (no NVIDIA driver visible)"))
    print("\n".join(out))
    if args.expect_gpu and not gpu_ok:
        print("Error: --expect-gpu: no GPU provider passed the self-test (see above; GPU_TROUBLESHOOTING_LOG.md)", file=sys.stderr)
        return 1
    return 0


def cli() -> None:
    sys.exit(common.run(main))
