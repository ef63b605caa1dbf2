"""The GPU-stack diagnostic: what is installed, what the GPUs are, and whether each
ONNX Runtime provider really computes the same embedding as the CPU."""

from __future__ import annotations

import ctypes.util
import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from . import native_stderr
from .cpus import CPUS_ENV, default_workers, usable_cpus
from .cudabuild import CudaBuild, onnxruntime_cuda_library, read_cuda_build
from .embed_run import plan_streams
from .modelpack import KNOWN_PACKS, ModelPack
from .providers import CPU, CUDA, TENSORRT, session_options
from .tensors import random_input, with_uint8_bgr_input

DISTRIBUTIONS = ("numpy", "onnxruntime", "onnxruntime-gpu", "insightface", "faiss-cpu", "faiss-gpu-cu12",
                 "opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless",
                 "nvidia-cudnn-cu12", "pi-heif", "pillow", "tensorflow", "tensorflow-cpu", "tf-keras", "deepface")
NATIVE_LIBRARIES = ("cudart", "cublas", "cudnn", "nvinfer")
PASCAL_OR_OLDER = 7.0  # compute capability below Volta: Pascal 6.x, Maxwell 5.x


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def cpu_plan() -> list[str]:
    """The CPUs this process may use and what stage 1 plans from them: on a fast GPU the CPU side
    (decoding, alignment) is what keeps it fed, and a container's CPU quota is easy to miss."""
    streams, threads = plan_streams(on_cpu=True)
    return [f"visible: {os.cpu_count()}; usable: {usable_cpus()} (CPU affinity, container CPU quota, ${CPUS_ENV})",
            f"stage 1 plans: on a GPU {plan_streams(on_cpu=False)[0]} streams and {default_workers()} decoding processes; "
            f"on the CPU {streams} stream(s) x {threads} thread(s)"]


def image_formats() -> list[str]:
    """The formats stage 1 reads, and why HEIC, AVIF or JPEG 2000 photos would not be (they are counted and
    left out)."""
    from . import images

    lines = [f"image formats read: {images.READ_FORMATS}"]
    if ".heic" not in images.IMAGE_EXTENSIONS:
        lines.append("HEIC photos (iPhones) are not read: pi-heif is not installed (pip install pi-heif)")
    if ".avif" not in images.IMAGE_EXTENSIONS:
        try:
            pillow = f"Pillow {metadata.version('pillow')} has no AVIF decoder (its wheels have one from 11.3 on)"
        except metadata.PackageNotFoundError:
            pillow = "Pillow is not installed"
        lines.append(f"AVIF photos are not read: {pillow}")
    if ".jp2" not in images.IMAGE_EXTENSIONS:
        lines.append("JPEG 2000 photos are not read: this OpenCV build has no JPEG 2000 decoder (see its "
                     "cv2.getBuildInformation())")
    return lines


def native_libraries() -> dict[str, str | None]:
    return {name: ctypes.util.find_library(name) for name in NATIVE_LIBRARIES}


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: float | None
    driver: str


def nvidia_smi_gpus() -> tuple[list[Gpu], str | None]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,compute_cap,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return [], "nvidia-smi not found (no NVIDIA driver in this system or container: start it with --gpus all)"
    except subprocess.SubprocessError as err:
        return [], f"nvidia-smi failed: {err}"
    if out.returncode != 0:
        return [], f"nvidia-smi failed: {(out.stderr or out.stdout).strip().splitlines()[:1]}"
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            try:
                cc = float(parts[2])
            except ValueError:
                cc = None
            gpus.append(Gpu(int(parts[0]), parts[1], cc, parts[3]))
    return gpus, None


def onnxruntime_cuda_build() -> CudaBuild | None:
    """What the installed onnxruntime-gpu's CUDA provider was built for, if there is one."""
    library = onnxruntime_cuda_library()
    try:
        return read_cuda_build(library) if library else None
    except (OSError, ValueError):  # unreadable, or empty (mmap refuses those): nothing to report
        return None


def known_problems(vers: dict[str, str], gpus: list[Gpu], ort_build: CudaBuild | None = None) -> list[str]:
    """Named bad combinations, each with its fix."""
    problems = []
    if ort_build is not None and (ort_build.sass or ort_build.ptx):  # nothing read: no verdict
        uncovered = [g for g in gpus if g.compute_capability is not None and not ort_build.runs_on(g.compute_capability)]
        if uncovered:
            problems.append(
                f"onnxruntime-gpu {vers.get('onnxruntime-gpu', '')} has no GPU code for "
                + ", ".join(f"{g.name} (compute capability {g.compute_capability})" for g in uncovered)
                + f": it was built for {ort_build.describe()}. Expect 'no kernel image is available'. "
                "Fix: pip install 'onnxruntime-gpu<1.27' (the CUDA 12 builds, with code from Pascal sm_60 up; "
                "constraints.txt pins one)")
    if "onnxruntime" in vers and "onnxruntime-gpu" in vers:
        problems.append("onnxruntime and onnxruntime-gpu are both installed: they share the module name and the "
                        "CPU one can win. Fix: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu")
    opencv = {n: v for n, v in vers.items() if n.startswith("opencv")}
    gui = sorted(n for n in opencv if not n.endswith("-headless"))
    if len(opencv) > 1 and (gui or len(set(opencv.values())) > 1):
        # They share one cv2 folder, so the last installed wins; builds of one version without a GUI
        # are interchangeable here, but a GUI build needs the desktop's libGL (ImportError on servers).
        why = (f"{', '.join(gui)} (a GUI build, needing libGL) beside a headless one" if gui
               else "of different versions")
        problems.append(f"several OpenCV distributions installed ({', '.join(f'{n} {v}' for n, v in sorted(opencv.items()))}), "
                        f"{why}: they overwrite each other's cv2. Fix: uninstall all, install one "
                        "(opencv-python-headless or opencv-contrib-python-headless)")
    cudnn = vers.get("nvidia-cudnn-cu12")
    old = [g for g in gpus if g.compute_capability is not None and g.compute_capability < PASCAL_OR_OLDER]
    if cudnn and old and tuple(int(x) for x in cudnn.split(".")[:2]) >= (9, 11):
        problems.append(f"cuDNN {cudnn} no longer supports Pascal/Maxwell GPUs ({', '.join(g.name for g in old)}): "
                        "expect CUDNN_STATUS_EXECUTION_FAILED. Fix: pip install 'nvidia-cudnn-cu12<9.11'")
    if "tensorflow" in vers and "onnxruntime-gpu" in vers and "nvidia-cudnn-cu12" not in vers:
        problems.append("TensorFlow and onnxruntime-gpu without a pinned nvidia-cudnn-cu12: each may load a different "
                        "cuDNN. Fix: install the versions in constraints.txt")
    return problems


def probe_model() -> bytes:
    """A tiny convolutional ONNX model, for testing providers when no pack is at hand."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])],
        "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 112, 112])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@dataclass(frozen=True)
class SelfTest:
    provider: str
    passed: bool
    detail: str
    ms: float | None = None
    placement: str = ""  # where the kernels of one run ran (see ``describe_placement``)


def kernel_placement(profile: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Provider -> op types of the kernels one profiled run executed, from ONNX Runtime's profile events."""
    placement: dict[str, list[str]] = {}
    for event in profile:
        args = event.get("args", {})
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time") and "provider" in args:
            placement.setdefault(args["provider"], []).append(str(args.get("op_name", "?")))
    return placement


def describe_placement(placement: dict[str, list[str]], provider: str) -> str:
    """'all 53 kernels on CUDAExecutionProvider', or how many ran elsewhere and which ops they were:
    a GPU provider that leaves part of a model to the CPU works, but copies tensors to and fro."""
    total = sum(len(ops) for ops in placement.values())
    if not total:
        return ""
    mine = len(placement.get(provider, []))
    if mine == total:
        return f"all {total} kernels on {provider}"
    others = "; ".join(f"{name}: {', '.join(sorted(set(ops)))}" for name, ops in sorted(placement.items()) if name != provider)
    return f"{mine} of {total} kernels on {provider}, the others on {others}"


def _profiled_run(session: Any, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """The first output of one run of a session opened with profiling, and where its kernels ran."""
    import json

    out = session.run(None, feeds)[0]
    path = session.end_profiling()  # later runs are not profiled
    with open(path, encoding="utf-8") as handle:
        placement = kernel_placement(json.load(handle))
    return out, describe_placement(placement, session.get_providers()[0])


def _hint(message: str) -> str:
    if "CUDNN_STATUS_EXECUTION_FAILED" in message or "no kernel image" in message:
        return (" (this GPU is not supported by these CUDA/cuDNN builds: Pascal/Maxwell need cuDNN < 9.11, "
                "Pascal/Volta need onnxruntime-gpu < 1.27; see known problems)")
    if "libcudnn" in message or "libcublas" in message or "cannot open shared object" in message:
        return " (CUDA/cuDNN libraries missing or of another major version than onnxruntime-gpu was built for)"
    return ""


def provider_self_tests(model: bytes | Callable[[str], bytes], gpu_id: int = 0, repeats: int = 10) -> list[SelfTest]:
    """Run ``model`` (or ``model(provider)``) on every available provider and compare with the CPU output;
    say where its kernels ran."""
    import tempfile

    import onnxruntime as ort

    available = ort.get_available_providers()
    order = [p for p in (TENSORRT, CUDA, "ROCMExecutionProvider", "CoreMLExecutionProvider", CPU) if p in available]
    results: list[SelfTest] = []
    reference = None
    feeds = None
    for provider in reversed(order):  # CPU first: it is the reference
        options = {"device_id": gpu_id} if provider in (TENSORRT, CUDA) else {}
        try:
            with tempfile.TemporaryDirectory() as profiles:
                sess_options = session_options()
                sess_options.enable_profiling = True
                sess_options.profile_file_prefix = str(Path(profiles) / "self_test")
                session = ort.InferenceSession(model(provider) if callable(model) else model, sess_options=sess_options,
                                               providers=[provider] + ([CPU] if provider != CPU else []),
                                               provider_options=[options] + ([{}] if provider != CPU else []))
                applied = session.get_providers()
                if applied[0] != provider:
                    results.append(SelfTest(provider, False, f"ONNX Runtime fell back to {applied[0]}: the provider did not load"))
                    continue
                if feeds is None:
                    rng = np.random.default_rng(0)
                    feeds = {arg.name: random_input(arg, rng, side=112) for arg in session.get_inputs()}
                first, placement = _profiled_run(session, feeds)
            out = first.ravel()
            start = time.perf_counter()
            for _ in range(repeats):
                session.run(None, feeds)
            ms = (time.perf_counter() - start) / repeats * 1000
        except Exception as err:  # noqa: BLE001 - every failure is a finding here
            text = str(err).splitlines()[0][:240] if str(err) else type(err).__name__
            results.append(SelfTest(provider, False, f"error: {text}{_hint(str(err))}"))
            continue
        if reference is None:
            reference = out
            results.append(SelfTest(provider, True, "reference output", ms, placement))
            continue
        cosine = float(out @ reference / (np.linalg.norm(out) * np.linalg.norm(reference) + 1e-12))
        ok = cosine > 0.999
        results.append(SelfTest(provider, ok, f"cosine to CPU output {cosine:.5f}" + ("" if ok else ": WRONG RESULTS"), ms,
                                placement))
    return results


def pack_files(pack: ModelPack) -> list[tuple[str, int, str]]:
    rows = []
    for path in sorted(pack.folder.glob("*.onnx")):
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        rows.append((path.name, path.stat().st_size, digest.hexdigest()))
    return rows


def missing_pack_files(pack: ModelPack) -> list[str]:
    expected = KNOWN_PACKS.get(pack.name, ())
    return [f for f in expected if not (pack.folder / f).exists()]


def faiss_gpus() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


# A line of TensorFlow's C++ log: severity, date, time, thread, file:line] message.
_NATIVE_LOG_LINE = re.compile(r"^([IWEF])\d{4} \S+\s+\d+ \S+:\d+\] (.*)$")
_GPU_WORDS = re.compile(r"cuda|gpu|cudnn|cuinit|libcu|tensorrt|nvidia", re.IGNORECASE)


@dataclass
class TensorFlowGpus:
    """The GPUs TensorFlow sees (``None``: not installed) and what its C++ side said about
    CUDA and GPUs as it started, once each."""

    gpus: list[str] | None
    notes: list[str]


def gpu_notes(startup: str) -> list[str]:
    """The lines of TensorFlow's start-up output about CUDA and GPUs, and any warning or error,
    without their log prefix and once each (two of its libraries print them)."""
    notes: list[str] = []
    for line in startup.splitlines():
        found = _NATIVE_LOG_LINE.match(line)
        if found and (found.group(1) != "I" or _GPU_WORDS.search(found.group(2))) and found.group(2) not in notes:
            notes.append(found.group(2))
    return notes


def tensorflow_gpus() -> TensorFlowGpus:
    if "tensorflow" not in sys.modules:
        try:
            metadata.version("tensorflow")
        except metadata.PackageNotFoundError:
            return TensorFlowGpus(None, [])
    with native_stderr.held() as startup:  # printed straight to stderr, above the report
        try:
            import tensorflow as tf

            gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        except Exception as err:  # noqa: BLE001
            gpus = [f"error: {err}"]
    return TensorFlowGpus(gpus, gpu_notes(startup.text))


def recogniser_as_stage_1_runs_it(path: Path, provider: str) -> bytes:
    """The pack's recogniser as stage 1 feeds it on ``provider``: uint8 images in (see tensors.py)."""
    import onnx

    from .recognition import input_normalisation

    model = onnx.load(str(path))
    return with_uint8_bgr_input(model, *input_normalisation(model), cast_first=provider == TENSORRT).SerializeToString()
