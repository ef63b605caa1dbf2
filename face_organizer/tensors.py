"""Model inputs: batches of uint8 BGR images as insightface's models take them.

The models take (n, 3, h, w) float32 RGB planes, each value ``(x - mean) / std``. ``planar_rgb`` makes
that tensor on the CPU; ``with_uint8_bgr_input`` instead puts the same steps in front of the model's
graph, so that the session takes the (n, h, w, 3) uint8 images themselves. On the CPU the values are
the same bit for bit, ONNX Runtime computes them as fast as numpy does and without holding the GIL; an
accelerator computes them with the rest of the model, from a copy a quarter the size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import onnx

UINT8 = "tensor(uint8)"
_PREFIX = "face_organizer_bgr_"
_Step = tuple[str, list[str], dict[str, Any]]  # an ONNX operator, its constant inputs and its attributes


def planar_rgb(images: NDArray[np.uint8], mean: float, std: float) -> NDArray[np.float32]:
    """(n, h, w, 3) BGR uint8 -> (n, 3, h, w) float32 RGB, each value ``(x - mean) / std``.

    Written one colour plane at a time into the output: for a batch of 64 at 112 or 192 pixels,
    about a quarter of the time that converting, normalising and then transposing the whole batch
    takes, and half that of OpenCV's ``blobFromImages``, with the same values.
    """
    n, h, w, _ = images.shape
    out = np.empty((n, 3, h, w), np.float32)
    for plane, channel in enumerate((2, 1, 0)):
        np.subtract(images[..., channel], np.float32(mean), out=out[:, plane], dtype=np.float32)
    np.divide(out, np.float32(std), out=out)
    return out


def model_input(images: NDArray[np.uint8], takes_uint8: bool, mean: float, std: float) -> NDArray[np.uint8] | NDArray[np.float32]:
    """(n, h, w, 3) BGR uint8 images as a session takes them: as they are, or as ``planar_rgb``."""
    return images if takes_uint8 else planar_rgb(images, mean, std)


def takes_uint8_images(session: Any) -> bool:
    """Whether ``session``'s first input is the (n, h, w, 3) uint8 images of ``with_uint8_bgr_input``."""
    return getattr(session.get_inputs()[0], "type", "") == UINT8


def with_uint8_bgr_input(model: onnx.ModelProto, mean: float, std: float, *, cast_first: bool = False) -> onnx.ModelProto:
    """A copy of an image model whose first input takes (n, h, w, 3) uint8 BGR images: Transpose,
    Gather (BGR to RGB), Cast, Sub ``mean`` and Div ``std`` in front of the graph feed its (n, 3, h, w)
    float32 input. ``model`` itself when its input is not that (then use ``planar_rgb``).

    ``cast_first`` moves the Cast before the Transpose, for TensorRT, which takes a uint8 input only
    straight into a Cast. Elsewhere the uint8 order is cheaper: on the CPU, about 0.1 ms less per
    192-pixel detector canvas than transposing floats, and on par with normalising in numpy."""
    import onnx
    from onnx import helper, numpy_helper

    if not model.graph.input:
        return model
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)  # 7: broadcasting Sub, Div
    tensor = model.graph.input[0].type.tensor_type
    dims = tensor.shape.dim
    if (opset < 7 or tensor.elem_type != onnx.TensorProto.FLOAT or len(dims) != 4
            or not (dims[1].HasField("dim_value") and dims[1].dim_value == 3)):
        return model
    wrapped = onnx.ModelProto()
    wrapped.CopyFrom(model)
    graph = wrapped.graph
    original = graph.input[0]
    images = onnx.ValueInfoProto()
    images.name = _PREFIX + "images"
    images.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    for index in (0, 2, 3, 1):  # n, h, w, c
        images.type.tensor_type.shape.dim.add().CopyFrom(original.type.tensor_type.shape.dim[index])
    p = _PREFIX
    cast: _Step = ("Cast", [], {"to": onnx.TensorProto.FLOAT})
    # NHWC -> NCHW, BGR -> RGB
    layout: list[_Step] = [("Transpose", [], {"perm": [0, 3, 1, 2]}), ("Gather", [p + "rgb"], {"axis": 1})]
    chain = ([cast, *layout] if cast_first else [*layout, cast]) + [("Sub", [p + "mean"], {}), ("Div", [p + "std"], {})]
    steps, value = [], images.name
    for position, (op, constants, attributes) in enumerate(chain):
        out = original.name if position == len(chain) - 1 else p + op.lower()
        steps.append(helper.make_node(op, [value, *constants], [out], name=p + op.lower(), **attributes))
        value = out
    graph.initializer.extend([
        numpy_helper.from_array(np.array([2, 1, 0], np.int64), p + "rgb"),
        numpy_helper.from_array(np.array(mean, np.float32), p + "mean"),
        numpy_helper.from_array(np.array(std, np.float32), p + "std"),
    ])
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(steps + nodes)
    graph.input.remove(original)
    graph.input.insert(0, images)
    return wrapped


def random_input(arg: Any, rng: np.random.Generator, batch: int | None = None, side: int = 64) -> np.ndarray:
    """An input for the session input ``arg``: uint8 images or standard normal float32, sizes the model
    leaves open set to ``side`` (the first to ``batch`` when given, else to 1 where open)."""
    dims = [d if isinstance(d, int) and d > 0 else side for d in arg.shape]
    if batch is not None:
        dims[0] = batch
    elif not (isinstance(arg.shape[0], int) and arg.shape[0] > 0):
        dims[0] = 1
    if getattr(arg, "type", "") == UINT8:
        return rng.integers(0, 256, dims, dtype=np.uint8)
    return rng.standard_normal(dims).astype(np.float32)
