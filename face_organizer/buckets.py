"""Batch sizes rounded up to a few fixed shapes, for accelerators that tune per input shape.

ONNX Runtime's CUDA provider benchmarks cuDNN's convolution algorithms for every input shape
it has not seen before (``cudnn_conv_algo_search`` EXHAUSTIVE, its default; onnxruntime issues
#10746 and #19838 report the slow first runs this causes). Batches of faces come in every size
from 1 to the batch size: the last batch of a stream, crops retried at a second detection size,
the faces of a batch of photos, the frames left after reused ones. Unpadded, a run would pay
that search up to batch-size times per model. Padding each batch with blank rows to the next
power of two bounds it to log2(batch size) + 1 shapes; rows are computed independently, so the
padded ones are dropped. The CPU provider does no such search and gets no padding.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

_Pixel = TypeVar("_Pixel", bound=np.generic)

# A model whose batch size was rewritten is used batched only if a batch gives the per-image
# outputs within this relative error. A model that mixes images across the batch, or a wrong
# split of its outputs, is off by about 1; GPU convolutions differ by batch size far less (cuDNN
# picks its algorithms per shape, and ONNX Runtime's CUDA provider allows TF32), so an exact
# comparison would keep every model at one image per call on a GPU.
BATCH_TOLERANCE = 1e-2


def relative_error(got: NDArray[np.floating], expected: NDArray[np.floating]) -> float:
    """||got - expected|| / ||expected|| (inf for different shapes)."""
    if got.shape != expected.shape:
        return float("inf")
    diff = np.linalg.norm(np.asarray(got, np.float64) - expected)
    return float(diff / max(float(np.linalg.norm(np.asarray(expected, np.float64))), 1e-12))


def bucket(n: int, cap: int) -> int:
    """The smallest power of two >= ``n``, but never above ``cap`` (the largest batch sent)."""
    size = 1
    while size < n:
        size *= 2
    return max(n, min(size, cap))


def pad_batch(blob: NDArray[_Pixel], cap: int) -> NDArray[_Pixel]:
    """``blob`` (n, ...) with zero rows appended up to ``bucket(n, cap)`` rows."""
    target = bucket(len(blob), cap)
    if target == len(blob):
        return blob
    return np.concatenate([blob, np.zeros((target - len(blob), *blob.shape[1:]), blob.dtype)])


def run_batched(session: Any, output: str | None, input_name: str, blob: NDArray[np.generic], max_batch: int,
                pad: bool) -> NDArray[np.float32]:
    """The first output of ``session`` for ``blob`` (n, ...), run ``max_batch`` rows at a time,
    each batch padded to a bucket size when ``pad``; one row per input row."""
    parts = []
    for start in range(0, len(blob), max_batch):
        chunk = np.ascontiguousarray(blob[start : start + max_batch])
        feed = pad_batch(chunk, max_batch) if pad else chunk
        parts.append(session.run([output] if output else None, {input_name: feed})[0][: len(chunk)])
    return np.concatenate(parts)
