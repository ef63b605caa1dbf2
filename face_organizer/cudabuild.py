"""Which GPUs a CUDA library can run on, read from the library file itself.

A CUDA library such as ONNX Runtime's ``libonnxruntime_providers_cuda.so`` carries its GPU
code in fat binaries: machine code (SASS) for a list of architectures, and optionally PTX
that the driver can compile for newer ones. A GPU outside that list fails at its first
kernel with ``no kernel image is available``. PyPI's onnxruntime-gpu changed the list under
the same package name: up to 1.26 it is built for CUDA 12 with code for sm_60 (Pascal) and
up; from 1.27 it is built for CUDA 13 with code for sm_75 (Turing) and up, so a Tesla P4
cannot run it at all. This module reads both facts without CUDA or a GPU, for the diagnostic.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path

FATBIN_MAGIC = struct.pack("<I", 0xBA55ED50)
_FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, size of the entries that follow
_ENTRY_HEADER = struct.Struct("<HHIQ")  # kind (1 PTX, 2 SASS), -, header size, payload size
_ENTRY_ARCH_OFFSET = 28
_KIND_PTX, _KIND_SASS = 1, 2
_CUDART = re.compile(rb"libcudart\.so\.(\d+)\x00")


@dataclass(frozen=True)
class CudaBuild:
    """The CUDA runtime major version a library links against and the architectures it holds code for."""

    cuda_major: int | None
    sass: frozenset[int]  # sm numbers: 60 for sm_60, 120 for sm_120
    ptx: frozenset[int]

    def runs_on(self, compute_capability: float) -> bool:
        """Machine code for the same major version at or below the GPU's minor one, or PTX at or below it."""
        cc = round(compute_capability * 10)
        major, minor = divmod(cc, 10)
        if any(a // 10 == major and a % 10 <= minor for a in self.sass):
            return True
        return any(p <= cc for p in self.ptx)

    def describe(self) -> str:
        cuda = f"CUDA {self.cuda_major}" if self.cuda_major else "CUDA version unknown"
        code = ", ".join(f"sm_{a}" for a in sorted(self.sass)) or "none"
        ptx = ", ".join(f"compute_{p}" for p in sorted(self.ptx))
        return f"{cuda}; GPU code for {code}" + (f"; PTX for {ptx}" if ptx else "")


def _entries(data: mmap.mmap, start: int) -> tuple[list[tuple[int, int]], int] | None:
    """((kind, arch) of each entry, end) of the fat binary at ``start``, or None where it is not one."""
    if start + _FATBIN_HEADER.size > len(data):
        return None
    _, version, header_size, size = _FATBIN_HEADER.unpack_from(data, start)
    end = start + header_size + size
    if version != 1 or header_size != _FATBIN_HEADER.size or end > len(data):
        return None
    entries = []
    pos = start + header_size
    while pos < end:
        if pos + _ENTRY_ARCH_OFFSET + 4 > end:
            return None
        kind, _, entry_header, payload = _ENTRY_HEADER.unpack_from(data, pos)
        if kind not in (_KIND_PTX, _KIND_SASS) or entry_header < _ENTRY_ARCH_OFFSET + 4:
            return None
        entries.append((kind, struct.unpack_from("<I", data, pos + _ENTRY_ARCH_OFFSET)[0]))
        pos += entry_header + payload
    return (entries, end) if pos == end else None


def read_cuda_build(path: str | Path) -> CudaBuild:
    """Scan a shared library for its libcudart dependency and its fat binaries' architectures."""
    sass: set[int] = set()
    ptx: set[int] = set()
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        found = _CUDART.search(data)
        cuda_major = int(found.group(1)) if found else None
        pos = data.find(FATBIN_MAGIC)
        while pos >= 0:
            fatbin = _entries(data, pos)
            if fatbin is None:
                pos = data.find(FATBIN_MAGIC, pos + 4)
                continue
            for kind, arch in fatbin[0]:
                (ptx if kind == _KIND_PTX else sass).add(arch)
            pos = data.find(FATBIN_MAGIC, fatbin[1])
    return CudaBuild(cuda_major, frozenset(sass), frozenset(ptx))


def onnxruntime_cuda_library() -> Path | None:
    """The installed ONNX Runtime's CUDA provider library, where this build has one."""
    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    return path if path.is_file() else None
