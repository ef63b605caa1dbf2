"""ArcFace-style recognisers: aligned faces in, L2-normalised embeddings out.

Some exported recognisers fix the batch dimension at 1 (the testpack's
MobileFaceNet); insightface's w600k models take any batch. ``batchable_model``
tries to lift a fixed batch of 1 so that GPUs get whole batches, and keeps the
change only if it reproduces the original outputs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .buckets import BATCH_TOLERANCE, relative_error, run_batched
from .tensors import model_input, random_input, takes_uint8_images

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)


def input_normalisation(model: onnx.ModelProto) -> tuple[float, float]:
    """(mean, std) as insightface's ``ArcFaceONNX`` infers it: MXNet exports normalise inside."""
    names = [node.name for node in model.graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def _fixed_batch_of_one(model: onnx.ModelProto) -> bool:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value == 1


def with_dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with a symbolic batch dimension; Reshape targets of (1, ...) become (0, ...)."""
    import onnx  # here: the stages that only read embeddings files need no ONNX (0.8 s to import)
    from onnx import numpy_helper

    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    graph = dynamic.graph
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    del graph.value_info[:]
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    initializers = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        if node.input[1] in initializers:
            tensor = initializers[node.input[1]]
        elif node.input[1] in constants:
            tensor = constants[node.input[1]].attribute[0].t
        else:
            continue
        shape = numpy_helper.to_array(tensor).copy()
        if shape.ndim == 1 and shape.size and shape[0] == 1:
            shape[0] = 0  # 0 copies the incoming batch size (allowzero defaults to 0)
            tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
    return dynamic


class NonFiniteEmbedding(RuntimeError):
    """The recogniser gave an embedding that is no direction (NaN, infinity or all zeros): as
    TensorRT's fp16 can give, where a value passes 65,504. Stored, it would break the clustering."""


class Recognizer:
    """Embeds aligned BGR face crops with an ONNX Runtime session.

    ``model`` is the recogniser as exported, which tells its input normalisation; ``session`` may run
    it as it is or with ``tensors.with_uint8_bgr_input`` in front.
    """

    def __init__(self, session: Any, model: onnx.ModelProto, max_batch: int, pad_batches: bool = False):
        self.session = session
        self.pad_batches = pad_batches  # round batches up to a few shapes (see buckets.py); for accelerators
        arg = session.get_inputs()[0]
        self.input_name = arg.name
        self.output_name = session.get_outputs()[0].name
        self.takes_uint8 = takes_uint8_images(session)
        self.input_size = int(arg.shape[1] if self.takes_uint8 else arg.shape[2])  # (n, s, s, 3) or (n, 3, s, s)
        self.mean, self.std = input_normalisation(model)
        batch_dim = arg.shape[0]
        self.max_batch = max_batch if not (isinstance(batch_dim, int) and batch_dim > 0) else batch_dim
        # The size only: a black face may well give no direction (NaN in TensorRT's fp16, or zeros).
        self.dim = int(self.raw(np.zeros((1, self.input_size, self.input_size, 3), np.uint8)).shape[1])

    def raw(self, faces: NDArray[np.uint8]) -> NDArray[np.float32]:
        blob = model_input(faces, self.takes_uint8, self.mean, self.std)  # (n, s, s, 3) uint8 or float planes
        out = run_batched(self.session, self.output_name, self.input_name, blob, self.max_batch, self.pad_batches)
        return out.reshape(len(blob), -1).astype(np.float32)

    def embed(self, faces: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(n, s, s, 3) uint8 aligned faces -> (n, d) float32 unit vectors."""
        if len(faces) == 0:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        raw = self.raw(faces)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        unusable = ~(np.isfinite(norms) & (norms > 0))
        if unusable.any():
            raise NonFiniteEmbedding(f"the recogniser gave {int(unusable.sum())} of {len(raw)} embeddings as NaN, "
                                     "infinity or zeros")
        return (raw / norms).astype(np.float32, copy=False)


def l2_normalise(x: NDArray[np.floating]) -> NDArray[np.float32]:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def batchable_model(model: onnx.ModelProto, open_session: Any, reference_session: Any) -> tuple[Any, bool]:
    """A session that takes any batch if the model can be made to, else ``reference_session``.

    ``open_session(serialized_model)`` creates a session like the reference one.
    The rewrite is kept only if a batch of 3 gives the reference's per-face outputs
    (within ``BATCH_TOLERANCE``).
    """
    if not _fixed_batch_of_one(model):
        return reference_session, True
    try:
        session = open_session(with_dynamic_batch(model).SerializeToString())
        arg = reference_session.get_inputs()[0]
        probe = random_input(arg, np.random.default_rng(1), batch=3)
        out_name = reference_session.get_outputs()[0].name
        expected = np.concatenate([reference_session.run([out_name], {arg.name: p[None]})[0] for p in probe])
        got = session.run([out_name], {arg.name: probe})[0]
        error = max(relative_error(g, e) for g, e in zip(got, expected)) if got.shape == expected.shape else float("inf")
        if error <= BATCH_TOLERANCE:
            return session, True
        log.info("recogniser batch stays at 1: batched outputs differ from single ones (relative error %.2g)", error)
    except Exception as err:  # noqa: BLE001 - any failure means: keep the original model
        log.info("recogniser batch stays at 1: %s", str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
    return reference_session, False
