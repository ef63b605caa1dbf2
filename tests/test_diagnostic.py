from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from face_organizer import diagnostics as d
from face_organizer.cli import common
from face_organizer.cli.diagnostic import main as diag_main


def run_cli(args: list[str]) -> int:
    return common.run(diag_main, args)


def test_cpu_self_test_passes_and_report_is_complete(testpack_dir, capsys) -> None:
    assert run_cli(["--model", str(testpack_dir), "--skip-tensorflow"]) == 0
    out = capsys.readouterr().out
    for section in ("== versions", "== GPUs", "== CPUs", "== model pack", "== provider self-test", "== known problems",
                    "== verdict"):
        assert section in out
    assert "CPUExecutionProvider: PASS" in out
    assert "  image formats read: jpg, jpeg, jfif, png, webp, bmp, tif, ppm, pgm, heic, avif, gif, jp2\n" in out
    assert "sha256 b7120c095d60094f28a4a54ba6a8bf51b297a6273fb40ef6350dfec1f63d9507" in out  # MobileFaceNet.onnx
    # the recogniser as stage 1 runs it (uint8 images in), every kernel of a profiled run accounted for
    assert "(MobileFaceNet.onnx, uint8 images in as in stage 1, GPU_ID=0)" in out
    assert re.search(r"CPUExecutionProvider: PASS: reference output, [0-9.]+ ms; all \d+ kernels on CPUExecutionProvider", out)


def test_image_formats_and_why_heic_or_avif_would_not_be_read(monkeypatch) -> None:
    # A user whose HEIC or AVIF photos are counted as "formats not read here" learns why from the diagnostic.
    from face_organizer import images

    assert d.image_formats() == ["image formats read: jpg, jpeg, jfif, png, webp, bmp, tif, ppm, pgm, heic, avif, gif, "
                                 "jp2"]
    monkeypatch.setattr(images, "IMAGE_EXTENSIONS", images.IMAGE_EXTENSIONS - {".heic", ".heif", ".avif", ".jp2"})
    monkeypatch.setattr(images, "READ_FORMATS", "jpg, jpeg, png, webp, bmp, tif")
    monkeypatch.setattr(d.metadata, "version", lambda name: {"pillow": "11.1.0"}[name])
    assert d.image_formats() == [
        "image formats read: jpg, jpeg, png, webp, bmp, tif",
        "HEIC photos (iPhones) are not read: pi-heif is not installed (pip install pi-heif)",
        "AVIF photos are not read: Pillow 11.1.0 has no AVIF decoder (its wheels have one from 11.3 on)",
        "JPEG 2000 photos are not read: this OpenCV build has no JPEG 2000 decoder (see its cv2.getBuildInformation())"]


def test_cpus_and_what_stage_1_plans_from_them_are_reported(monkeypatch) -> None:
    from face_organizer import cpus

    monkeypatch.delenv(cpus.CPUS_ENV, raising=False)
    monkeypatch.setattr(cpus.joblib, "cpu_count", lambda only_physical_cores=False: 6)  # e.g. docker run --cpus=6
    monkeypatch.setattr(d.os, "cpu_count", lambda: 64)
    assert d.cpu_plan() == [
        "visible: 64; usable: 6 (CPU affinity, container CPU quota, $FACE_ORGANIZER_CPUS)",
        "stage 1 plans: on a GPU 2 streams and 4 decoding processes; on the CPU 6 stream(s) x 1 thread(s)"]


def test_kernels_left_to_the_cpu_are_named() -> None:
    def kernel(provider: str, op: str) -> dict[str, Any]:
        return {"cat": "Node", "name": f"n_{op}_kernel_time", "args": {"provider": provider, "op_name": op}}

    session: list[dict[str, Any]] = [{"cat": "Session", "name": "model_run"},
                                     {"cat": "Node", "name": "n_fence_before", "args": {}}]
    profile = session + [kernel("CPUExecutionProvider", "Transpose"), kernel("CPUExecutionProvider", "Gather"),
                         kernel("CPUExecutionProvider", "Transpose")] + [kernel("CUDAExecutionProvider", "Conv")] * 50
    placement = d.kernel_placement(profile)
    assert placement == {"CPUExecutionProvider": ["Transpose", "Gather", "Transpose"], "CUDAExecutionProvider": ["Conv"] * 50}
    assert d.describe_placement(placement, "CUDAExecutionProvider") == (
        "50 of 53 kernels on CUDAExecutionProvider, the others on CPUExecutionProvider: Gather, Transpose")
    assert d.describe_placement({"CUDAExecutionProvider": ["Conv"] * 3}, "CUDAExecutionProvider") == "all 3 kernels on CUDAExecutionProvider"
    assert d.describe_placement({}, "CUDAExecutionProvider") == ""


def test_expect_gpu_fails_without_a_working_gpu(testpack_dir, capsys) -> None:
    if any(p in ort.get_available_providers() for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")):
        pytest.skip("this machine has a GPU build of ONNX Runtime")
    assert run_cli(["--model", str(testpack_dir), "--skip-tensorflow", "--expect-gpu"]) == 1
    captured = capsys.readouterr()
    assert "GPU: NOT in use" in captured.out and "--expect-gpu" in captured.err


def test_missing_pack_still_tests_providers_with_probe_model(tmp_path, capsys) -> None:
    assert run_cli(["--model", "buffalo_l", "--model-root", str(tmp_path), "--skip-tensorflow"]) == 0
    out = capsys.readouterr().out
    assert "not found" in out and "built-in probe model" in out and "CPUExecutionProvider: PASS" in out


def test_known_bad_combinations_are_named() -> None:
    pascal = [d.Gpu(0, "Tesla P4", 6.1, "550.54")]
    problems = d.known_problems({"onnxruntime": "1.23.2", "onnxruntime-gpu": "1.23.2", "nvidia-cudnn-cu12": "9.11.0.98"}, pascal)
    assert any("both installed" in p for p in problems)
    assert any("Pascal" in p and "<9.11" in p for p in problems)
    assert not d.known_problems({"onnxruntime-gpu": "1.23.2", "nvidia-cudnn-cu12": "9.10.2.21"}, pascal)
    assert "Pascal/Maxwell" in d._hint("CUDNN_STATUS_EXECUTION_FAILED")
    # OpenCV: a GUI build beside a headless one, or builds of different versions, share one cv2 folder.
    headless = {"opencv-python-headless": "5.0.0.93", "opencv-contrib-python-headless": "5.0.0.93"}
    assert not d.known_problems(headless, [])
    (gui,) = d.known_problems({**headless, "opencv-python": "5.0.0.93"}, [])
    assert "opencv-python (a GUI build, needing libGL) beside a headless one" in gui
    (mixed,) = d.known_problems({**headless, "opencv-python-headless": "4.10.0.84"}, [])
    assert "of different versions" in mixed


# TensorFlow 2.21's start-up output on a machine with its CUDA wheel but no NVIDIA driver, as printed.
TENSORFLOW_STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796490791.176044    4647 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796490791.177715    4647 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796490791.228501    4647 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796490793.209460    4647 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
E0000 00:00:1796490793.583539    4647 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)
"""


def test_tensorflows_gpu_lines_are_kept_once_and_the_rest_dropped() -> None:
    assert d.gpu_notes(TENSORFLOW_STARTUP) == [
        "Could not find cuda drivers on your machine, GPU will not be used.",
        "failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    ]


def test_tensorflows_startup_lines_land_in_its_section_not_above_the_report(testpack_dir) -> None:
    # TensorFlow's C++ side writes to the process's stderr as it starts: it is held back and what it says
    # about CUDA is shown under "TensorFlow GPUs" (with no GPU, its CUDA wheel says why: at least one line).
    script = Path(__file__).resolve().parents[1] / "scripts" / "diagnostic_test.py"
    done = subprocess.run([sys.executable, str(script), "--model", str(testpack_dir)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert not re.search(r"^[IWEF]\d{4} ", done.stderr, re.MULTILINE) and "absl::InitializeLog" not in done.stderr
    section = done.stdout.split("== GPUs\n", 1)[1].split("== CPUs", 1)[0]
    assert "  TensorFlow GPUs: " in section
    assert "  TensorFlow GPUs: none\n" not in section or re.search(r"^    TensorFlow says: .*(cuda|CUDA|GPU)", section, re.MULTILINE), section
