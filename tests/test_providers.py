"""Provider selection and fallback. The GPU cannot exist here, so only it is faked:
a session factory that behaves like ONNX Runtime does when CUDA is dropped or fails."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest

from face_organizer.cli.common import gpu_id_from_env
from face_organizer.errors import DeviceError, SetupError
from face_organizer.providers import CPU, CUDA, TENSORRT, device_of, open_session, plan_providers

from conftest import needs_proc

GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
CPU_BUILD = ["CPUExecutionProvider"]


def test_plan_cuda_on_gpu_id() -> None:
    plan = plan_providers("cuda", 3, GPU_BUILD)
    assert plan == [(CUDA, {"device_id": 3}), (CPU, {})]
    with_trt = plan_providers("auto", 1, GPU_BUILD, tensorrt=True, trt_cache_dir="/cache")
    assert [name for name, _ in with_trt] == [TENSORRT, CUDA, CPU]
    assert with_trt[0][1]["device_id"] == 1 and with_trt[0][1]["trt_engine_cache_path"] == "/cache"


def test_plan_cpu_and_fallbacks(caplog: pytest.LogCaptureFixture) -> None:
    assert plan_providers("cpu", 0, GPU_BUILD) == [(CPU, {})]
    with caplog.at_level(logging.WARNING):
        assert plan_providers("auto", 0, ["AzureExecutionProvider", CPU]) == [(CPU, {})]
    with pytest.raises(DeviceError, match="onnxruntime-gpu"):
        plan_providers("cuda", 0, CPU_BUILD)
    with pytest.raises(DeviceError):
        plan_providers("cuda", -1, GPU_BUILD)


class FakeSession:
    """Answers like an ORT session whose providers are ``applied``."""

    def __init__(self, applied: list[str], fail_run: bool = False, output: float = 1.0,
                 error: str = "CUDNN_STATUS_EXECUTION_FAILED\nmore detail"):
        self.applied, self.fail_run, self.output, self.error = applied, fail_run, output, error

    def get_providers(self) -> list[str]:
        return self.applied

    def get_inputs(self):
        class Arg:
            name, shape = "x", [1, 3, 8, 8]

        return [Arg()]

    def run(self, names, feeds):
        if self.fail_run:
            raise RuntimeError(self.error)
        return [np.full((1, 4), self.output, np.float32)]


def factory_for(gpu: FakeSession):
    calls = []

    def factory(model, options, plan):
        calls.append([name for name, _ in plan])
        return gpu if plan[0][0] != CPU else FakeSession([CPU])

    factory.calls = calls  # type: ignore[attr-defined]
    return factory


def test_real_cuda_session_is_reported() -> None:
    factory = factory_for(FakeSession([CUDA, CPU]))
    _, report = open_session(b"m", "rec.onnx", "cuda", 2, available=GPU_BUILD, factory=factory)
    assert report.device == "cuda" and report.gpu_id == 2
    assert "GPU 2" in report.describe() and CUDA in report.describe()


@pytest.mark.parametrize("gpu", [FakeSession([CPU]), FakeSession([CUDA, CPU], fail_run=True),
                                 FakeSession([CUDA, CPU], output=float("nan"))],
                         ids=["provider-dropped", "inference-fails", "non-finite"])
def test_cuda_not_really_in_use_fails_loudly(gpu: FakeSession) -> None:
    with pytest.raises(DeviceError, match="diagnostic_test"):
        open_session(b"m", "rec.onnx", "cuda", 0, available=GPU_BUILD, factory=factory_for(gpu))


def test_gpu_id_beyond_the_visible_gpus_is_explained() -> None:
    error = "CUDA failure 101: invalid device ordinal ; GPU=3 ; hostname=x ; expr=cudaSetDevice(info_.device_id);"
    gpu = FakeSession([CUDA, CPU], fail_run=True, error=error)
    with pytest.raises(DeviceError, match="GPU_ID=3 names no GPU this process can see.*CUDA_VISIBLE_DEVICES"):
        open_session(b"m", "rec.onnx", "cuda", 3, available=GPU_BUILD, factory=factory_for(gpu))


def test_dropped_provider_names_a_gpu_id_beyond_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # ONNX Runtime 1.31 on a one-GPU machine with GPU_ID=1 drops the CUDA provider, as for missing libraries.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(DeviceError, match=r"GPU_ID=1 names no GPU this process can see \(1 visible; "):
        open_session(b"m", "rec.onnx", "cuda", 1, available=GPU_BUILD, factory=factory_for(FakeSession([CPU])))
    with pytest.raises(DeviceError, match="CUDA or cuDNN libraries") as caught:
        open_session(b"m", "rec.onnx", "cuda", 0, available=GPU_BUILD, factory=factory_for(FakeSession([CPU])))
    assert "GPU_ID" not in str(caught.value)


@pytest.mark.parametrize("gpu", [FakeSession([CPU]), FakeSession([CUDA, CPU], fail_run=True)],
                         ids=["provider-dropped", "inference-fails"])
def test_auto_falls_back_with_warning(gpu: FakeSession, caplog: pytest.LogCaptureFixture) -> None:
    factory = factory_for(gpu)
    with caplog.at_level(logging.WARNING):
        session, report = open_session(b"m", "rec.onnx", "auto", 0, available=GPU_BUILD, factory=factory)
    assert report.device == "cpu" and report.applied == (CPU,)
    assert factory.calls[-1] == [CPU]
    assert "falling back to the CPU" in caplog.text


def test_real_cpu_session(testpack) -> None:
    session, report = open_session(str(testpack.recognizer), testpack.recognizer.name, "auto", 0)
    assert report.applied[0] == CPU and report.device == "cpu" and report.gpu_id is None
    assert device_of(session.get_providers()) == "cpu"


def test_cuda_requested_on_this_machine_fails(testpack) -> None:
    import onnxruntime as ort

    if CUDA in ort.get_available_providers():
        pytest.skip("this machine has a CUDA build of ONNX Runtime")
    with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
        open_session(str(testpack.recognizer), "rec", "cuda", 0)


def test_gpu_id_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPU_ID", raising=False)
    assert gpu_id_from_env() == 0
    monkeypatch.setenv("GPU_ID", "3")
    assert gpu_id_from_env() == 3
    monkeypatch.setenv("GPU_ID", "first")
    with pytest.raises(SetupError, match="GPU_ID"):
        gpu_id_from_env()
    # Taken for a list of GPUs, or for insightface's ctx_id=-1 (the CPU): the line says what to do instead.
    for listed in ("0,1", "0, 1", "2 3"):
        monkeypatch.setenv("GPU_ID", listed)
        with pytest.raises(SetupError, match="one GPU per process.*embed_all_gpus.py --gpus"):
            gpu_id_from_env()
    monkeypatch.setenv("GPU_ID", "-1")
    with pytest.raises(SetupError, match="--device cpu"):
        gpu_id_from_env()


_SLEEPER = ("import sys, time, multiprocessing as m\n"
            "if __name__ == '__main__':\n"
            "    m.get_context('fork').Process(target=time.sleep, args=(10,), daemon=True).start()\n"
            "    print('ready', flush=True); sys.stdin.read()")


@needs_proc
def test_another_run_given_the_same_gpu_is_found(monkeypatch) -> None:
    # GPU_ID=1 docker exec … sets GPU_ID on the host only: the run in the container took GPU 0 beside the
    # run meant for it, both at half speed, and nothing said so.
    import subprocess
    import sys

    from face_organizer.processes import embedding_runs_on_gpu

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    base = {k: v for k, v in os.environ.items() if k not in ("GPU_ID", "CUDA_VISIBLE_DEVICES")}
    runs = {name: subprocess.Popen([sys.executable, "-c", _SLEEPER, "/app/scripts/generate_embeddings.py", *args],
                                   env={**base, **env}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   start_new_session=True)
            for name, args, env in (("unset", ["--input", "x"], {}), ("cpu", ["--device", "cpu"], {}),
                                    ("one", [], {"GPU_ID": " 01"}), ("other", [], {"GPU_ID": "0",
                                                                                   "CUDA_VISIBLE_DEVICES": "1"}))}
    sessions = {run.pid for run in runs.values()}

    def session(pid: int) -> int | None:
        try:
            return os.getsid(pid)
        except OSError:
            return None  # ended since

    def found(gpu_id: int) -> list[int]:  # of these runs and their forks: a real run here at the time is not one
        return [pid for pid in embedding_runs_on_gpu(gpu_id) if session(pid) in sessions]

    try:
        assert all(run.stdout.readline() == b"ready\n" for run in runs.values())
        # GPU_ID unset is GPU 0; its decoding process (a fork) is the same run; --device cpu takes no GPU.
        assert found(0) == [runs["unset"].pid]
        assert found(1) == [runs["one"].pid]
        assert found(2) == []
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # GPU 0 of another set of visible GPUs
        assert found(0) == [runs["other"].pid]
    finally:
        for run in runs.values():
            os.killpg(run.pid, signal.SIGKILL)  # its fork too
            run.wait()
