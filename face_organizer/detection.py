"""SCRFD face detection (the detector of every insightface pack) over an ORT session.

The decoding follows insightface's ``SCRFD`` but is vectorised end to end and
caches anchor grids per input size: at the small sizes used for face crops the
per-call Python overhead of the reference implementation costs more than the
network itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

NMS_THRESHOLD = 0.4


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


def letterbox(image: NDArray[np.uint8], size: tuple[int, int], border: int = 0) -> tuple[NDArray[np.uint8], float, int]:
    """Fit ``image`` plus a black ``border`` on every side into a ``size`` (w, h) canvas.

    Keeps the aspect ratio, top-left aligned. Resizing first and padding on the small
    canvas costs a fraction of padding the full image. Returns (canvas, scale, offset):
    a pixel (x, y) of ``image`` lands at (x * scale + offset, y * scale + offset).
    """
    width, height = size
    h, w = image.shape[:2]
    scale = min(width / (w + 2 * border), height / (h + 2 * border))
    new_w, new_h = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    offset = int(round(border * scale))
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    new_w, new_h = min(new_w, width - offset), min(new_h, height - offset)
    canvas[offset : offset + new_h, offset : offset + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, scale, offset


class SCRFD:
    """SCRFD detector; ``detect(image, size, threshold)`` returns ``Detections``."""

    def __init__(self, session: Any):
        self.session = session
        self.input_name = session.get_inputs()[0].name
        outputs = session.get_outputs()
        self.output_names = [o.name for o in outputs]
        self.batched = len(outputs[0].shape) == 3
        count = len(outputs)
        if count not in (6, 9, 10, 15):
            raise ValueError(f"not an SCRFD detector: {count} outputs")
        self.fmc = 3 if count in (6, 9) else 5
        self.strides = [8, 16, 32] if self.fmc == 3 else [8, 16, 32, 64, 128]
        self.num_anchors = 2 if self.fmc == 3 else 1
        self.use_kps = count in (9, 15)
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
        border = int(round(max(image.shape[:2]) * pad_ratio))
        canvas, scale, offset = letterbox(image, size, border)
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / 128.0, size, (127.5, 127.5, 127.5), swapRB=True)
        outs = self.session.run(self.output_names, {self.input_name: blob})
        if self.batched:
            outs = [o[0] for o in outs]
        width, height = size
        boxes, scores, kps = [], [], []
        for level, stride in enumerate(self.strides):
            level_scores = outs[level].reshape(-1)
            keep = np.nonzero(level_scores >= threshold)[0]
            if keep.size == 0:
                continue
            centers = self._anchor_centers(height // stride, width // stride, stride)[keep]
            dist = outs[level + self.fmc][keep] * stride
            boxes.append(np.concatenate([centers - dist[:, :2], centers + dist[:, 2:4]], axis=1))
            scores.append(level_scores[keep])
            if self.use_kps:
                k = outs[level + 2 * self.fmc][keep].reshape(-1, 5, 2) * stride
                kps.append(k + centers[:, None, :])
        if not scores:
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        all_boxes = ((np.concatenate(boxes) - offset) / scale).astype(np.float32)
        all_scores = np.concatenate(scores).astype(np.float32)
        all_kps = ((np.concatenate(kps) - offset) / scale).astype(np.float32) if kps else np.zeros((len(all_scores), 5, 2), np.float32)
        xywh = np.concatenate([all_boxes[:, :2], all_boxes[:, 2:] - all_boxes[:, :2]], axis=1)
        keep = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), all_scores.tolist(), threshold, NMS_THRESHOLD), dtype=np.intp).reshape(-1)
        keep = keep[np.argsort(-all_scores[keep], kind="stable")]
        return Detections(all_boxes[keep], all_scores[keep], all_kps[keep])


def pick_central(dets: Detections, image_shape: tuple[int, ...]) -> int:
    """Index of the face a face crop is about: large and near the centre.

    Area is discounted by the distance of the box centre from the image centre,
    so a big interviewer's shoulder-face at the edge loses to the centred subject.
    """
    h, w = image_shape[:2]
    boxes = dets.boxes
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    offset = np.hypot(centre[:, 0] - w / 2, centre[:, 1] - h / 2) / (0.5 * np.hypot(w, h))
    return int(np.argmax(area * np.clip(1.0 - offset, 0.05, 1.0) ** 2))
