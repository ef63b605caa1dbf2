"""Reading which GPUs a CUDA library was built for, and the diagnostic's verdict from it.

The libraries are laid out as CUDA writes them: a dynamic-string table naming libcudart,
and fat binaries (a 16-byte header, then entries with a 64-byte header each: kind at 0,
header size at 4, payload size at 8, architecture at 28). The architecture lists are those
read from PyPI's onnxruntime-gpu 1.23.2 (CUDA 12) and 1.27.0 (CUDA 13) wheels.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnxruntime as ort

from face_organizer import diagnostics as d
from face_organizer.cudabuild import FATBIN_MAGIC, onnxruntime_cuda_library, read_cuda_build

PTX, SASS = 1, 2


def fatbin(entries: list[tuple[int, int]], rng: np.random.Generator) -> bytes:
    body = b""
    for kind, arch in entries:
        payload = rng.integers(0, 256, int(rng.integers(100, 3000)), dtype=np.uint8).tobytes()
        header = bytearray(64)
        struct.pack_into("<HHIQ", header, 0, kind, 0x0101, 64, len(payload))
        struct.pack_into("<I", header, 28, arch)
        body += bytes(header) + payload
    return FATBIN_MAGIC + struct.pack("<HHQ", 1, 16, len(body)) + body


def library(path: Path, cuda: int, fatbins: list[list[tuple[int, int]]]) -> Path:
    rng = np.random.default_rng(cuda)
    parts = [b"\x7fELF" + bytes(60), b"libcublas.so.%d\x00libcudart.so.%d\x00libc.so.6\x00" % (cuda, cuda)]
    # a stray magic number that does not start a valid fat binary must be passed over
    parts.append(FATBIN_MAGIC + struct.pack("<HHQ", 7, 16, 10**12))
    for entries in fatbins:
        parts += [rng.integers(0, 256, 500, dtype=np.uint8).tobytes(), fatbin(entries, rng)]
    path.write_bytes(b"".join(parts))
    return path


def cuda12(tmp_path: Path) -> Path:  # as onnxruntime-gpu 1.23.2-1.26
    archs = [(SASS, a) for a in (60, 70, 75, 80, 86, 90)]
    return library(tmp_path / "cuda12.so", 12, [archs + [(PTX, 90)], [(SASS, 90)]])


def cuda13(tmp_path: Path) -> Path:  # as onnxruntime-gpu 1.27+
    archs = [(SASS, a) for a in (75, 80, 86, 89, 90, 120)]
    return library(tmp_path / "cuda13.so", 13, [archs, [(SASS, 100), (PTX, 120)], [(SASS, 90)]])


def test_reads_cuda_version_and_architectures(tmp_path) -> None:
    old, new = read_cuda_build(cuda12(tmp_path)), read_cuda_build(cuda13(tmp_path))
    assert old.cuda_major == 12 and old.sass == {60, 70, 75, 80, 86, 90} and old.ptx == {90}
    assert new.cuda_major == 13 and new.sass == {75, 80, 86, 89, 90, 100, 120} and new.ptx == {120}
    assert new.describe() == "CUDA 13; GPU code for sm_75, sm_80, sm_86, sm_89, sm_90, sm_100, sm_120; PTX for compute_120"


def test_which_gpus_a_build_runs_on(tmp_path) -> None:
    old, new = read_cuda_build(cuda12(tmp_path)), read_cuda_build(cuda13(tmp_path))
    # Tesla P4 6.1 runs sm_60 code; V100 7.0; T4 7.5; A10 8.6; L4 8.9 runs sm_86 code; H100 9.0;
    # B200 10.0 and RTX 5090 12.0 only through the CUDA 12 build's PTX.
    for cc in (6.1, 7.0, 7.5, 8.6, 8.9, 9.0, 10.0, 12.0):
        assert old.runs_on(cc), cc
    assert not new.runs_on(6.1) and not new.runs_on(7.0) and not new.runs_on(5.2)
    assert all(new.runs_on(cc) for cc in (7.5, 8.0, 8.7, 9.0, 10.0, 12.0, 12.1))
    sass_only = read_cuda_build(library(tmp_path / "a.so", 12, [[(SASS, 80)]]))
    assert sass_only.runs_on(8.6) and not sass_only.runs_on(9.0) and not sass_only.runs_on(7.5)


def test_not_a_cuda_library(tmp_path) -> None:
    plain = tmp_path / "plain.so"
    plain.write_bytes(b"\x7fELF" + bytes(1000) + FATBIN_MAGIC + bytes(8))
    build = read_cuda_build(plain)
    assert build.cuda_major is None and not build.sass and not build.ptx and not build.runs_on(8.6)


def test_diagnostic_names_a_build_without_code_for_the_gpu(tmp_path) -> None:
    p4, h100 = d.Gpu(0, "Tesla P4", 6.1, "580.95"), d.Gpu(1, "NVIDIA H100", 9.0, "580.95")
    vers = {"onnxruntime-gpu": "1.27.0", "nvidia-cudnn-cu12": "9.10.2.21"}
    problems = d.known_problems(vers, [p4, h100], read_cuda_build(cuda13(tmp_path)))
    assert len(problems) == 1
    assert "Tesla P4 (compute capability 6.1)" in problems[0] and "H100" not in problems[0]
    assert "CUDA 13" in problems[0] and "onnxruntime-gpu<1.27" in problems[0]
    assert not d.known_problems(vers, [h100], read_cuda_build(cuda13(tmp_path)))
    assert not d.known_problems({**vers, "onnxruntime-gpu": "1.23.2"}, [p4, h100], read_cuda_build(cuda12(tmp_path)))
    unread = read_cuda_build(library(tmp_path / "future.so", 14, []))  # a layout this reader does not know
    assert not d.known_problems(vers, [p4], unread)
    assert "onnxruntime-gpu < 1.27" in d._hint("CUDA failure 209: no kernel image is available for execution on the device")


def test_installed_onnxruntime() -> None:
    """A CPU build has no CUDA provider library; a GPU build's is found and read."""
    library = onnxruntime_cuda_library()
    assert (library is not None) == ("CUDAExecutionProvider" in ort.get_available_providers())
    if library is not None:
        assert read_cuda_build(library).sass
