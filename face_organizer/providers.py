"""ONNX Runtime execution providers: what to ask for, and what is really running.

ONNX Runtime silently drops a provider it cannot load (missing CUDA or cuDNN
libraries, a CPU-only wheel, a GPU the kernels were not built for) and runs on
the CPU instead. Everything here therefore reads back ``session.get_providers()``
and proves the session with one real inference before trusting it.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .cpus import usable_cpus
from .errors import DeviceError
from .tensors import random_input

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
ProviderSpec = tuple[str, dict[str, Any]]

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def plan_providers(
    device: Device,
    gpu_id: int,
    available: Sequence[str],
    *,
    tensorrt: bool = False,
    trt_cache_dir: str | None = None,
) -> list[ProviderSpec]:
    """Providers to request, best first, always ending with the CPU.

    ``device='cuda'`` raises ``DeviceError`` when this ONNX Runtime build has no
    CUDA provider; ``'auto'`` logs a warning and plans the CPU.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu or cuda")
    if gpu_id < 0:
        raise DeviceError(f"GPU_ID must be 0 or more, got {gpu_id}")
    if device == "cpu":
        return [(CPU, {})]
    plan: list[ProviderSpec] = []
    if tensorrt and TENSORRT in available:
        options: dict[str, Any] = {"device_id": gpu_id, "trt_fp16_enable": True}
        if trt_cache_dir:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=trt_cache_dir)
        plan.append((TENSORRT, options))
    if CUDA in available:
        plan.append((CUDA, {"device_id": gpu_id}))
    elif device == "cuda":
        raise DeviceError(
            "--device cuda: this ONNX Runtime has no CUDAExecutionProvider "
            f"(available: {', '.join(available) or 'none'}). Install onnxruntime-gpu and "
            "uninstall the CPU 'onnxruntime' package (both installed shadow each other); "
            "run scripts/diagnostic_test.py for details"
        )
    else:
        _warn_once(f"no CUDA provider in this ONNX Runtime ({', '.join(available)}): running on the CPU")
    plan.append((CPU, {}))
    return plan


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def device_of(applied: Sequence[str]) -> str:
    """'tensorrt', 'cuda' or 'cpu': the first provider ONNX Runtime really applied."""
    first = applied[0] if applied else CPU
    return {TENSORRT: "tensorrt", CUDA: "cuda"}.get(first, "cpu")


@dataclass(frozen=True)
class SessionReport:
    model: str
    requested: tuple[str, ...]
    applied: tuple[str, ...]
    device: str
    gpu_id: int | None

    def describe(self) -> str:
        where = f"{self.device} (GPU {self.gpu_id})" if self.gpu_id is not None else self.device
        return f"{self.model}: running on {where}; providers applied: {', '.join(self.applied)}"


def _preload_cudnn() -> None:
    """Let ONNX Runtime (>= 1.21) load cuDNN from the nvidia-cudnn-cu12 wheel, which is how
    the Docker image pins cuDNN; harmless where cuDNN comes from the system instead."""
    import onnxruntime as ort

    preload = getattr(ort, "preload_dlls", None)
    if callable(preload):
        try:
            preload(cuda=False, cudnn=True, msvc=False)
        except Exception as err:  # noqa: BLE001 - a failed preload shows up in the self-test below
            log.debug("onnxruntime.preload_dlls: %s", err)


SessionFactory = Callable[[Any, Any, list[ProviderSpec]], Any]


def _ort_factory(model: Any, options: Any, plan: list[ProviderSpec]) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(
        model,
        sess_options=options,
        providers=[name for name, _ in plan],
        provider_options=[opts for _, opts in plan],
    )


def session_options(threads: int = 0) -> Any:
    """Options for a session with ``threads`` intra-op threads (0: one per physical core this
    process may use, which is ONNX Runtime's own default unless a CPU quota or share is lower)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # shape-mismatch warnings on every run otherwise flood stderr
    options.intra_op_num_threads = threads or usable_cpus(physical=True)
    return options


def probe_input(session: Any) -> dict[str, np.ndarray]:
    """A deterministic input for every session input, symbolic sizes filled in."""
    rng = np.random.default_rng(0)
    return {arg.name: random_input(arg, rng) for arg in session.get_inputs()}


def visible_gpus() -> list[int]:
    """GPU indices nvidia-smi lists (honouring CUDA_VISIBLE_DEVICES when it holds numbers)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None and env.strip():
        items = [i.strip() for i in env.split(",") if i.strip()]
        if all(i.isdigit() for i in items):
            return list(range(len(items)))
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [i for i, line in enumerate(l for l in out.splitlines() if l.startswith("GPU "))]


_NO_SUCH_GPU = ("GPU_ID={gpu_id} names no GPU this process can see ({visible}GPUs are numbered from 0 among those "
                "CUDA_VISIBLE_DEVICES leaves visible; nvidia-smi -L lists them)")


def _missing_gpu(gpu_id: int) -> str | None:
    """Why ``gpu_id`` cannot work, when it names no visible GPU (ONNX Runtime 1.31 then drops the
    CUDA provider as it does for missing libraries); None when it does, or nothing lists GPUs."""
    gpus = visible_gpus()
    if not gpus or gpu_id in gpus:
        return None
    return _NO_SUCH_GPU.format(gpu_id=gpu_id, visible=f"{len(gpus)} visible; ")


def open_session(
    model: Any,
    name: str,
    device: Device,
    gpu_id: int,
    *,
    threads: int = 0,
    tensorrt: bool = False,
    trt_cache_dir: str | None = None,
    available: Sequence[str] | None = None,
    factory: SessionFactory = _ort_factory,
    quiet: bool = False,
) -> tuple[Any, SessionReport]:
    """Create a verified ONNX Runtime session for ``model`` (a path or serialized bytes).

    The session is proved with one real inference. With ``device='cuda'`` any sign
    that the GPU is not really used (provider dropped, inference failing) raises
    ``DeviceError``; with ``'auto'`` it is logged as a warning and a CPU session is
    returned instead.
    """
    available = list(available) if available is not None else available_providers()
    plan = plan_providers(device, gpu_id, available, tensorrt=tensorrt, trt_cache_dir=trt_cache_dir)
    wants_gpu = plan[0][0] in GPU_PROVIDERS
    if wants_gpu and factory is _ort_factory:
        _preload_cudnn()
    problem = None
    try:
        session = factory(model, session_options(threads), plan)
        applied = tuple(session.get_providers())
        if wants_gpu and device_of(applied) == "cpu":
            problem = f"ONNX Runtime dropped the GPU providers for {name} and applied only {', '.join(applied)}: " + (
                _missing_gpu(gpu_id) or "the CUDA or cuDNN libraries it needs were not found or do not match this onnxruntime-gpu")
        else:
            outputs = session.run(None, probe_input(session))
            if not all(np.all(np.isfinite(o)) for o in outputs):
                problem = f"{name}: the self-test inference on {device_of(applied)} returned non-finite values"
    except DeviceError:
        raise
    except Exception as err:  # noqa: BLE001 - ORT raises bare RuntimeError/Fail for provider failures
        if not wants_gpu:
            raise
        problem = f"{name}: the GPU session failed its self-test: {str(err).splitlines()[0][:300]}"
        if "invalid device ordinal" in str(err):
            problem += f" ({_missing_gpu(gpu_id) or _NO_SUCH_GPU.format(gpu_id=gpu_id, visible='')})"
    if problem is not None:
        if device == "cuda":
            raise DeviceError(problem + "; run scripts/diagnostic_test.py")
        log.warning("%s; falling back to the CPU", problem)
        cpu_plan: list[ProviderSpec] = [(CPU, {})]
        session = factory(model, session_options(threads), cpu_plan)
        applied = tuple(session.get_providers())
        plan = cpu_plan
    report = SessionReport(
        model=name,
        requested=tuple(n for n, _ in plan),
        applied=applied,
        device=device_of(applied),
        gpu_id=gpu_id if device_of(applied) != "cpu" else None,
    )
    log.log(logging.DEBUG if quiet else logging.INFO, "%s", report.describe())
    return session, report
