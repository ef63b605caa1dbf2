"""Domain exceptions. The CLI layer turns each into one line and an exit code."""

from __future__ import annotations

import re

# How ONNX Runtime, CUDA, cuBLAS, cuDNN and Python (``one_line`` of a MemoryError) say that memory ran out.
_OUT_OF_MEMORY = re.compile(r"out of memory|failed to allocate memory|memoryallocation|alloc_failed|^MemoryError:",
                            re.IGNORECASE)


class FaceOrganizerError(Exception):
    """A problem the user can fix: bad arguments, missing model, unusable file."""

    exit_code = 2


class SetupError(FaceOrganizerError):
    """The run cannot start: no inputs, unwritable output, incompatible files."""


class ModelPackError(SetupError):
    """A model pack is missing, incomplete or unusable."""


class DeviceError(SetupError):
    """The requested execution device is not really in use."""


class RunStopped(FaceOrganizerError):
    """A run stopped part-way because something other than its images failed (the device, the
    model, an input folder gone); what it had done is saved, and the same command goes on from there."""

    exit_code = 1


def one_line(err: BaseException, limit: int = 400) -> str:
    """``err`` as one line: ONNX Runtime's messages span lines and name its own source files."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'…' if len(text) > limit else ''}"


def device_failed(what: str, error: str, device: str,
                  then: str = "Progress is saved: run the same command again to go on from there") -> RunStopped:
    """``what`` failed with ``error`` (``one_line``) on ``device`` ('cpu', 'cuda', …), a fault of the
    device or the model, not of the images: the stop, with what to do, and ``then``."""
    gpu = device != "cpu"
    if _OUT_OF_MEMORY.search(error):
        advice = ("the GPU ran out of memory: stop other work on it (nvidia-smi lists what runs there) or give a "
                  "smaller --batch-size" if gpu else "the machine ran out of memory")
    elif error.startswith("NonFiniteEmbedding") and device == "tensorrt":
        advice = "the model overflows in TensorRT's fp16: run without --tensorrt"
    else:
        advice = f"the {'GPU' if gpu else 'model'} is failing, not the images"
    return RunStopped(f"{what} ({error}); {advice}. {then}")


class EmbeddingsFileError(FaceOrganizerError):
    """An embeddings file is unreadable, malformed or unsafe."""


class UnsafePickleError(EmbeddingsFileError):
    """A pickle asked to import something other than plain data and numpy arrays."""
