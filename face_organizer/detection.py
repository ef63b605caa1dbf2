"""SCRFD face detection (the detector of every insightface pack) over an ORT session.

The decoding follows insightface's ``SCRFD`` but is vectorised end to end and
caches anchor grids per input size: at the small sizes used for face crops the
per-call Python overhead of the reference implementation costs more than the
network itself.

insightface's SCRFD exports fix the batch at 1, but their graphs take any batch once
the input says so: the outputs then interleave the images (rows ordered by anchor
position, then image). ``batchable_detector`` lifts the fixed batch and keeps the
change only if a batch reproduces the single-image outputs, so that ``detect_many``
runs a whole batch of same-size canvases in one call (on a GPU one call per image
leaves it waiting on kernel launches at crop sizes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
from numpy.typing import NDArray

from .buckets import BATCH_TOLERANCE, pad_batch, relative_error
from .tensors import model_input, random_input, takes_uint8_images, with_uint8_bgr_input

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

NMS_THRESHOLD = 0.4
DETECTOR_NORMALISATION = (127.5, 128.0)  # (mean, std) of SCRFD's input, as insightface feeds it
# How a batched output stacks its images: "image" = image-major blocks (the native
# batched exports), "anchor" = interleaved per anchor position (insightface's batch-1 exports).
Layout = Literal["image", "anchor"]


@dataclass(frozen=True)
class Detections:
    """``boxes``: (n, 4) float32 x1,y1,x2,y2; ``scores``: (n,); ``kps``: (n, 5, 2), in image pixels."""

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]
    kps: NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, order: NDArray[np.intp]) -> Detections:
        return Detections(self.boxes[order], self.scores[order], self.kps[order])

    @staticmethod
    def joined(parts: Sequence[Detections]) -> Detections:
        """The faces of ``parts``, one after the other."""
        return Detections(np.concatenate([d.boxes for d in parts]).astype(np.float32).reshape(-1, 4),
                          np.concatenate([d.scores for d in parts]).astype(np.float32),
                          np.concatenate([d.kps for d in parts]).astype(np.float32).reshape(-1, 5, 2))

    def turned_back(self, turn: int, shape: tuple[int, ...]) -> Detections:
        """These detections, found in ``cv2.rotate(image, turn)``, in the pixels of ``image`` (of ``shape``). The
        landmarks keep their order (the same eye is the same point), so aligning on them turns the face upright."""
        h, w = shape[:2]

        def back(x: NDArray[np.float32], y: NDArray[np.float32], edge: int) -> tuple[NDArray[np.float32], ...]:
            # edge 1: box corners, on pixel edges (0 to w); 0: landmarks, on pixel centres (0 to w - 1)
            if turn == cv2.ROTATE_90_CLOCKWISE:
                return y, (h - 1 + edge) - x
            if turn == cv2.ROTATE_180:
                return (w - 1 + edge) - x, (h - 1 + edge) - y
            if turn == cv2.ROTATE_90_COUNTERCLOCKWISE:
                return (w - 1 + edge) - y, x
            raise ValueError(f"not a cv2.rotate code: {turn}")

        ax, ay = back(self.boxes[:, 0], self.boxes[:, 1], 1)
        bx, by = back(self.boxes[:, 2], self.boxes[:, 3], 1)
        boxes = np.stack([np.minimum(ax, bx), np.minimum(ay, by), np.maximum(ax, bx), np.maximum(ay, by)], axis=1)
        kx, ky = back(self.kps[..., 0], self.kps[..., 1], 0)
        return Detections(boxes.astype(np.float32), self.scores, np.stack([kx, ky], axis=-1).astype(np.float32))


# A photo at least this many times as long as it is high, or as high as it is long (a panorama, a strip of photos),
# is also detected in tiles: letterboxed whole into the detector's square canvas, it shows its faces shrunk with its
# longer side (a 16,000 x 1,000 strip of LFW photos put each 250-pixel photo's face at about 4 pixels at 640, and no
# face was found). Phones' screenshots (about 2.2 to 1) stay below it.
PANORAMA_RATIO = 2.5
# A face found this close to a tile's edge inside the photo (not the photo's own edge) may be cut by it; the tiles
# overlap by half, so that a face up to half the tile's side less twice this lies whole in another one.
TILE_EDGE = 2
# Each tile costs a detection at 640 pixels, however small it is, and there is one every half of the photo's
# shorter side along it: a banner 2 pixels high and 2,000 long took a minute as 1,999 tiles. A photo less high than
# this (whose faces, at most as high, would be enlarged tenfold onto the canvas) or more than this many tiles long
# (no camera's panorama: a 16,100 x 250 strip of 64 photos is 128) is detected whole only.
TILE_MIN_SIDE = 64
TILES_AT_MOST = 256


def _tile_starts(side: int, length: int) -> list[int]:
    """Where the square tiles of ``side`` begin along a photo's ``length``: every half of ``side``, the last ending at
    the photo's end."""
    return list(range(0, length - side, max(1, side // 2))) + [length - side]


def _tile_at(start: int, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the square tile of a photo's shorter side that begins at ``start`` along its length."""
    h, w = shape[:2]
    side = min(h, w)
    return (start, 0, start + side, h) if w >= h else (0, start, w, start + side)


def is_panorama(height: int, width: int) -> bool:
    """Whether a photo of this size is elongated enough (``PANORAMA_RATIO``) to be detected in tiles as well, and
    neither too thin nor too long for it (``TILE_MIN_SIDE``, ``TILES_AT_MOST``)."""
    side, length = min(height, width), max(height, width)
    return (side >= TILE_MIN_SIDE and length >= PANORAMA_RATIO * side
            and len(_tile_starts(side, length)) <= TILES_AT_MOST)


def panorama_tiles(shape: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) of the square tiles, of the photo's shorter side, that an elongated photo (of ``shape``;
    ``is_panorama``) is detected in too: along its longer side, each overlapping the next by half, the last
    ending at the photo's end; none for a photo less elongated."""
    h, w = shape[:2]
    if not is_panorama(h, w):
        return []
    return [_tile_at(start, shape) for start in _tile_starts(min(h, w), max(h, w))]


def tile_around(box: NDArray[np.floating], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the square tile of an elongated photo's shorter side (as ``panorama_tiles``) centred along
    its length on ``box`` (x1, y1, x2, y2), within the photo: where a face larger than half a tile, which each of
    ``panorama_tiles`` may cut, is whole."""
    h, w = shape[:2]
    side = min(h, w)
    along = 0 if w >= h else 1
    start = int(round((box[along] + box[along + 2]) / 2 - side / 2))
    return _tile_at(min(max(0, start), max(h, w) - side), shape)


def in_tile(dets: Detections, tile: tuple[int, int, int, int], shape: tuple[int, ...]) -> Detections:
    """``dets``, found in the ``tile`` (x0, y0, x1, y1) of a photo of ``shape``, in the photo's pixels, less the
    faces that reach within ``TILE_EDGE`` of a tile edge that lies inside the photo: those the tile may cut."""
    x0, y0, x1, y1 = tile
    h, w = shape[:2]
    boxes = dets.boxes
    cut = np.zeros(len(dets), bool)
    if x0 > 0:
        cut |= boxes[:, 0] < TILE_EDGE
    if x1 < w:
        cut |= boxes[:, 2] > (x1 - x0) - TILE_EDGE
    if y0 > 0:
        cut |= boxes[:, 1] < TILE_EDGE
    if y1 < h:
        cut |= boxes[:, 3] > (y1 - y0) - TILE_EDGE
    keep = np.nonzero(~cut)[0]
    shift = np.array([x0, y0], np.float32)
    return Detections(boxes[keep] + np.tile(shift, 2), dets.scores[keep], dets.kps[keep] + shift)


def _nms(dets: Detections, threshold: float = 0.0) -> Detections:
    """``dets`` scoring above ``threshold``, each face found more than once kept once (non-maximum suppression at
    ``NMS_THRESHOLD``), highest score first."""
    if not len(dets):
        return dets
    xywh = np.concatenate([dets.boxes[:, :2], dets.boxes[:, 2:4] - dets.boxes[:, :2]], axis=1)
    keep = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), dets.scores.tolist(), threshold, NMS_THRESHOLD),
                      np.intp).reshape(-1)
    return dets.take(keep[np.argsort(-dets.scores[keep], kind="stable")])


def iou(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.floating]:
    """(len(a), len(b)) intersection over union of two sets of x1, y1, x2, y2 boxes."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    return inter / np.maximum(_areas(a)[:, None] + _areas(b)[None, :] - inter, 1e-9)


def merged(whole: Detections, tiles: Sequence[Detections]) -> tuple[Detections, NDArray[np.bool_]]:
    """The faces of an elongated photo: those of its ``tiles`` (``in_tile``), each once, and those of the ``whole``
    photo that no tile found (faces larger than half a tile, cut by every tile), and which of them are the whole
    photo's (seen at its scale, coarser than a tile's). A face found both ways is kept as its tile saw it: larger,
    so with landmarks as fine as in a photo of that tile's size."""
    found = _nms(Detections.joined(tiles))
    if len(whole) and len(found):
        whole = whole.take(np.nonzero(iou(whole.boxes, found.boxes).max(axis=1) < NMS_THRESHOLD)[0])
    both = Detections.joined([found, whole])
    order = np.argsort(-both.scores, kind="stable")
    return both.take(order), (order >= len(found))


def _border(shape: tuple[int, ...], pad_ratio: float) -> int:
    return int(round(max(shape[:2]) * pad_ratio))


def canvas_scale(shape: tuple[int, ...], size: tuple[int, int], pad_ratio: float) -> float:
    """The scale at which ``SCRFD`` letterboxes an image of ``shape`` into a canvas of ``size`` (w, h),
    with a border of ``pad_ratio`` of its longer side (``letterbox``)."""
    h, w = shape[:2]
    border = _border(shape, pad_ratio)
    return min(size[0] / (w + 2 * border), size[1] / (h + 2 * border))


def letterbox(image: NDArray[np.uint8], canvas: NDArray[np.uint8], border: int = 0) -> tuple[float, int]:
    """Fit ``image`` plus a black ``border`` on every side into a black (h, w, 3) ``canvas``.

    Keeps the aspect ratio, top-left aligned. Resizing first and padding on the small
    canvas costs a fraction of padding the full image. Returns (scale, offset):
    a pixel (x, y) of ``image`` lands at (x * scale + offset, y * scale + offset).
    """
    height, width = canvas.shape[:2]
    h, w = image.shape[:2]
    scale = min(width / (w + 2 * border), height / (h + 2 * border))
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    offset = int(round(border * scale))
    new_w, new_h = min(new_w, width - offset), min(new_h, height - offset)
    canvas[offset : offset + new_h, offset : offset + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return scale, offset


def _anchors_per_position(outputs: int) -> int:
    return 2 if outputs in (6, 9) else 1


def split_batch(output: NDArray[np.float32], images: int, layout: Layout, anchors: int) -> list[NDArray[np.float32]]:
    """One batched output (rows, c) or (n, rows, c) -> each image's rows, as views of it:
    (rows / n, c), or (positions, anchors, c) for the "anchor" layout, whose rows are not
    contiguous (``take_rows`` reads either). Copying them out would be the largest CPU cost of
    decoding a batch."""
    if output.ndim == 3:
        return list(output)
    channels = output.shape[-1]
    if layout == "image":
        return list(output.reshape(images, -1, channels))
    return list(output.reshape(-1, images, anchors, channels).transpose(1, 0, 2, 3))


def take_rows(output: NDArray[np.float32], keep: NDArray[np.intp]) -> NDArray[np.float32]:
    """Rows ``keep`` of one image's output as (len(keep), c), from (rows, c) or from the
    (positions, anchors, c) view of ``split_batch``, where row r is [r // anchors, r % anchors]."""
    if output.ndim == 2:
        return output[keep]
    positions, anchors = np.divmod(keep, output.shape[1])
    return output[positions, anchors]


def load_detector_model(path: str | os.PathLike[str], *, cast_first: bool = False) -> onnx.ModelProto:
    """A pack's SCRFD detector, taking the uint8 images and normalising them itself (see tensors.py)."""
    import onnx  # here: the stages that only read embeddings files need no ONNX (0.8 s to import)

    return with_uint8_bgr_input(onnx.load(os.fspath(path)), *DETECTOR_NORMALISATION, cast_first=cast_first)


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0][:200] if str(err) else type(err).__name__


def coarse_levels(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of the SCRFD ``model`` that computes only its coarser levels (strides 16 and 32 of 8, 16 and 32):
    the finest level finds the small faces, and its head and upsampling cost about a quarter of the network at
    a crop's canvas (192 pixels, one-off timings on the CPU: 1.34 against 1.81 ms). Its outputs are the
    model's own, bit for bit, less the finest level's. None where the outputs are not SCRFD's."""
    from onnx.utils import Extractor

    names = [value.name for value in model.graph.output]
    if len(names) not in (6, 9, 10, 15) or not model.graph.input:
        return None
    levels = 3 if len(names) in (6, 9) else 5
    try:
        return Extractor(model).extract_model([model.graph.input[0].name],
                                              [name for i, name in enumerate(names) if i % levels])
    except Exception as err:  # noqa: BLE001 - a graph the extractor cannot read keeps the whole network
        log.info("detector: no coarse copy for face crops: %s", _first_line(err))
        return None


def with_dynamic_input_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose input and outputs have symbolic sizes (the graph computes them)."""
    import onnx  # here: the stages that only read embeddings files need no ONNX (0.8 s to import)

    dynamic = onnx.ModelProto()
    dynamic.CopyFrom(model)
    graph = dynamic.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    if dims:
        dims[0].ClearField("dim_value")
        dims[0].dim_param = "batch"
    for value in graph.output:
        for index, dim in enumerate(value.type.tensor_type.shape.dim):
            dim.ClearField("dim_value")
            dim.dim_param = f"{value.name}_{index}"
    del graph.value_info[:]
    return dynamic


def batchable_detector(model: onnx.ModelProto, open_session: Callable[[bytes], Any],
                       reference_session: Any) -> tuple[Any, Layout | None]:
    """(session, layout) taking a batch of canvases, or (``reference_session``, None).

    A batch of 3 random canvases must give the single-image outputs (within
    ``BATCH_TOLERANCE``) under one of the known layouts; anything else keeps the
    original model, one image per call.
    ``open_session(serialized_model)`` creates a session like the reference one.
    """
    arg = reference_session.get_inputs()[0]
    if len(reference_session.get_outputs()[0].shape) == 3:
        return reference_session, "image"  # a batched export: (n, rows, c)
    fixed = isinstance(arg.shape[0], int) and arg.shape[0] > 0
    try:
        # A symbolic batch already: only the layout of its outputs is left to find.
        session = open_session(with_dynamic_input_batch(model).SerializeToString()) if fixed else reference_session
        probe = random_input(arg, np.random.default_rng(1), batch=3, side=96)
        names = [o.name for o in reference_session.get_outputs()]
        anchors = _anchors_per_position(len(names))
        single = [reference_session.run(names, {arg.name: p[None]}) for p in probe]
        batched = session.run(names, {arg.name: probe})
        errors: dict[Layout, float] = {"anchor": float("inf"), "image": float("inf")}
        if all(o.shape[0] % 3 == 0 for o in batched):
            for layout in errors:
                errors[layout] = max(relative_error(part.reshape(single[i][k].shape), single[i][k]) for k, o in enumerate(batched)
                                     for i, part in enumerate(split_batch(o, 3, layout, anchors)))
                if errors[layout] <= BATCH_TOLERANCE:
                    return session, layout
        log.info("detector batch stays at 1: batched outputs differ from single ones (relative error %.2g)",
                 min(errors.values()))
    except Exception as err:  # noqa: BLE001 - any failure means: keep the original model
        log.info("detector batch stays at 1: %s", _first_line(err))
    return reference_session, None


# ``SCRFD.detect_crops``: a crop whose chosen face weighs less than this side's square on the canvas (its area,
# discounted off the centre: ``central_weights``) is detected again with the finest level. In 3,290 LFW crops at
# zooms 0.2-2.4 on a 192-pixel canvas, the whole network chose another face than its coarse levels in 819, all
# zoomed out to 0.8 or less, where the coarse levels' choice weighed at most 44.8 pixels squared, and found one in
# 8 where they found none; at zooms 0.9-2.4 (faces filling the frame, as video extractors crop them) their choice
# weighed 69.6 or more, and 72.9 or more in the crops of ``bench_embeddings.py`` (one-off analyses, testpack).
COARSE_MIN_SIDE = 64

BATCH_PIXELS = 640 * 640  # a canvas's pixels up to which the detector's batches are whole (``SCRFD.batch_at``)


class SCRFD:
    """SCRFD detector; ``detect(image, size, threshold)`` returns ``Detections``,
    ``detect_many`` the same for several images in batches of ``max_batch``.

    ``layout`` says how the session stacks a batch (see ``batchable_detector``);
    None means it takes one image per call.
    """

    def __init__(self, session: Any, layout: Layout | None = None, max_batch: int = 1, pad_batches: bool = False,
                 *, coarse_of: SCRFD | None = None):
        self.session = session
        self.pad_batches = pad_batches  # round batches up to a few shapes (see buckets.py); for accelerators
        self.layout = layout
        self.max_batch = max(1, max_batch) if layout is not None else 1
        self.input_name = session.get_inputs()[0].name
        self.takes_uint8 = takes_uint8_images(session)  # the images themselves (see tensors.py), else float planes
        outputs = session.get_outputs()
        self.output_names = [o.name for o in outputs]
        self.batched = len(outputs[0].shape) == 3
        count = len(outputs)
        self.strides: list[int]
        self.num_anchors: int
        self.use_kps: bool
        if coarse_of is not None:  # ``coarse_levels`` of that detector's model
            self.strides = coarse_of.strides[1:]
            self.num_anchors, self.use_kps = coarse_of.num_anchors, coarse_of.use_kps
            if count != len(self.strides) * (3 if self.use_kps else 2):
                raise ValueError(f"not the coarse levels of an SCRFD detector: {count} outputs")
        else:
            if count not in (6, 9, 10, 15):
                raise ValueError(f"not an SCRFD detector: {count} outputs")
            self.strides = [8, 16, 32] if count in (6, 9) else [8, 16, 32, 64, 128]
            self.num_anchors = _anchors_per_position(count)
            self.use_kps = count in (9, 15)
        self.fmc = len(self.strides)  # levels: each has scores, boxes and (use_kps) landmarks
        # The same network without its finest level, for face crops (``detect_crops``); None: the whole one.
        self.coarse: SCRFD | None = None
        self._centers: dict[tuple[int, int, int], NDArray[np.float32]] = {}

    def _anchor_centers(self, height: int, width: int, stride: int) -> NDArray[np.float32]:
        key = (height, width, stride)
        centers = self._centers.get(key)
        if centers is None:
            ys, xs = np.mgrid[:height, :width]
            centers = (np.stack([xs, ys], axis=-1).reshape(-1, 2) * stride).astype(np.float32)
            if self.num_anchors > 1:
                centers = np.repeat(centers, self.num_anchors, axis=0)
            self._centers[key] = centers
        return centers

    def detect(self, image: NDArray[np.uint8], size: tuple[int, int], threshold: float = 0.5, pad_ratio: float = 0.0) -> Detections:
        """Faces in a BGR image, detected at input ``size`` (w, h, multiples of 32).

        ``pad_ratio`` > 0 surrounds the image with a black border of that fraction of
        its longer side first: a face filling its frame leaves the detector's anchors no
        context, and the border makes it look like the faces it was trained on.
        Coordinates are returned in ``image`` pixels either way.
        """
        blob, places = self._input([image], size, pad_ratio)
        scale, offset = places[0]
        outs = self.session.run(self.output_names, {self.input_name: blob})
        if self.batched:
            outs = [o[0] for o in outs]
        return self._decode(outs, size, threshold, scale, offset)

    def batch_at(self, size: tuple[int, int]) -> int:
        """Canvases per inference at ``size``: ``max_batch`` up to 640 x 640 pixels, fewer above, so that one
        inference holds no more pixels than ``max_batch`` canvases of 640 (at 4,096 pixels, a batch of 8 photos
        took 6 GB on the CPU)."""
        return max(1, min(self.max_batch, self.max_batch * BATCH_PIXELS // (size[0] * size[1])))

    def detect_many(self, images: Sequence[NDArray[np.uint8]], size: tuple[int, int], threshold: float = 0.5,
                    pad_ratio: float = 0.0) -> list[Detections]:
        """``detect`` for each image, with up to ``batch_at(size)`` canvases per inference."""
        per_call = self.batch_at(size)
        if per_call == 1:
            return [self.detect(image, size, threshold, pad_ratio) for image in images]
        found: list[Detections] = []
        for start in range(0, len(images), per_call):
            blob, places = self._input(images[start : start + per_call], size, pad_ratio)
            feed = pad_batch(blob, per_call) if self.pad_batches else blob
            outs = self.session.run(self.output_names, {self.input_name: feed})
            per_output = [split_batch(o, len(feed), self.layout or "image", self.num_anchors) for o in outs]
            for i, (scale, offset) in enumerate(places):
                found.append(self._decode([parts[i] for parts in per_output], size, threshold, scale, offset))
        return found

    def detect_crops(self, images: Sequence[NDArray[np.uint8]], size: tuple[int, int], threshold: float = 0.5,
                     pad_ratio: float = 0.0) -> list[Detections]:
        """``detect_many`` for face crops, whose face ``pick_central`` then chooses, and ``has_rival`` weighs
        against the others: what they make of it is the same, at less cost. The coarse network (``coarse``)
        detects every crop; a crop whose chosen face is not large on the canvas (``COARSE_MIN_SIDE``), or that
        shows none, is detected again by the whole network, as a small face of its finest level could be the
        one chosen. Faces that only the finest level finds are left out of the other crops' results; in the
        crops and photos tried (see ``COARSE_MIN_SIDE``) none would have been the face chosen or its rival."""
        coarse = self.coarse
        if coarse is None:
            return self.detect_many(images, size, threshold, pad_ratio)
        found = coarse.detect_many(images, size, threshold, pad_ratio)
        again = [i for i, (image, dets) in enumerate(zip(images, found))
                 if not len(dets) or float(central_weights(dets, image.shape).max())
                 * canvas_scale(image.shape, size, pad_ratio) ** 2 < COARSE_MIN_SIDE ** 2]
        for i, dets in zip(again, self.detect_many([images[i] for i in again], size, threshold, pad_ratio)):
            found[i] = dets
        return found

    def _input(self, images: Sequence[NDArray[np.uint8]], size: tuple[int, int],
               pad_ratio: float) -> tuple[NDArray[np.uint8] | NDArray[np.float32], list[tuple[float, int]]]:
        """The images letterboxed into ``size`` canvases, as the session takes them, and each one's (scale, offset)."""
        width, height = size
        canvases = np.zeros((len(images), height, width, 3), np.uint8)
        places = [letterbox(image, canvas, _border(image.shape, pad_ratio)) for image, canvas in zip(images, canvases)]
        return model_input(canvases, self.takes_uint8, *DETECTOR_NORMALISATION), places

    def _decode(self, outs: Sequence[NDArray[np.float32]], size: tuple[int, int], threshold: float,
                scale: float, offset: int) -> Detections:
        """One image's outputs (see ``split_batch``) -> detections in the image's pixels, after NMS."""
        width, height = size
        boxes, scores, kps = [], [], []
        for level, stride in enumerate(self.strides):
            level_scores = outs[level].reshape(-1)
            keep = np.nonzero(level_scores >= threshold)[0]
            if keep.size == 0:
                continue
            centers = self._anchor_centers(height // stride, width // stride, stride)[keep]
            dist = take_rows(outs[level + self.fmc], keep) * stride
            boxes.append(np.concatenate([centers - dist[:, :2], centers + dist[:, 2:4]], axis=1))
            scores.append(level_scores[keep])
            if self.use_kps:
                k = take_rows(outs[level + 2 * self.fmc], keep).reshape(-1, 5, 2) * stride
                kps.append(k + centers[:, None, :])
        if not scores:
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        all_boxes = ((np.concatenate(boxes) - offset) / scale).astype(np.float32)
        all_scores = np.concatenate(scores).astype(np.float32)
        all_kps = ((np.concatenate(kps) - offset) / scale).astype(np.float32) if kps else np.zeros((len(all_scores), 5, 2), np.float32)
        return _nms(Detections(all_boxes, all_scores, all_kps), threshold)


def coarse_detector(model: onnx.ModelProto, detector: SCRFD, open_session: Callable[[bytes], Any]) -> SCRFD | None:
    """``detector``'s coarse copy for ``SCRFD.detect_crops``: ``coarse_levels`` of ``model`` (the model of
    ``detector.session``), opened by ``open_session(serialized_model)``, and kept where it gives ``detector``'s
    outputs of those levels for a random canvas; else None."""
    coarse = coarse_levels(model)
    if coarse is None:
        return None
    try:
        copy = SCRFD(open_session(coarse.SerializeToString()), detector.layout, detector.max_batch,
                     detector.pad_batches, coarse_of=detector)
        arg = detector.session.get_inputs()[0]
        probe = random_input(arg, np.random.default_rng(2), batch=None if detector.layout is None else 2, side=96)
        whole = detector.session.run(detector.output_names, {arg.name: probe})
        part = copy.session.run(copy.output_names, {copy.input_name: probe})
        expected = [out for level, out in enumerate(whole) if level % detector.fmc]
        if len(part) != len(expected) or not all(a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-5)
                                                  for a, b in zip(part, expected)):
            log.info("detector: no coarse copy for face crops: its outputs differ from the whole network's")
            return None
    except Exception as err:  # noqa: BLE001 - any failure means: the whole network for crops too
        log.info("detector: no coarse copy for face crops: %s", _first_line(err))
        return None
    return copy


# Another face at least this share of the chosen face's area: an image with several people (a group
# photo in crops mode), not a crop with a cut-off face at its edge. On 933 video-style LFW crops none
# had one at 0.3, against 66 of 935 LFW photos, 4 of 82 library photos and every group photo at 0.5.
RIVAL_AREA = 0.5


def _areas(boxes: NDArray[np.floating]) -> NDArray[np.floating]:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def has_rival(dets: Detections, chosen: int) -> bool:
    """Whether ``dets`` holds another face at least ``RIVAL_AREA`` of the area of face ``chosen``."""
    area = _areas(dets.boxes)
    return bool((np.delete(area, chosen) >= RIVAL_AREA * area[chosen]).any())


def central_weights(dets: Detections, image_shape: tuple[int, ...]) -> NDArray[np.floating]:
    """Each face's area in pixels of the image, discounted by the distance of its box's centre from the image's
    centre (``pick_central``): at most its area."""
    h, w = image_shape[:2]
    boxes = dets.boxes
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    offset = np.hypot(centre[:, 0] - w / 2, centre[:, 1] - h / 2) / (0.5 * np.hypot(w, h))
    return _areas(boxes) * np.clip(1.0 - offset, 0.05, 1.0) ** 2


def pick_central(dets: Detections, image_shape: tuple[int, ...]) -> int:
    """Index of the face a face crop is about: large and near the centre.

    Area is discounted by the distance of the box centre from the image centre,
    so a big interviewer's shoulder-face at the edge loses to the centred subject.
    """
    return int(np.argmax(central_weights(dets, image_shape)))
