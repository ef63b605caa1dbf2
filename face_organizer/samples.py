"""Video-extraction-style face crops made from ordinary photos, and bundled sample faces.

Face extractors for video write tight, aligned crops: the face fills most of a
256x256 frame, often with a microphone or hand in front of it. No such dataset
ships anywhere, so tests, benchmarks and the quick start make them from photos.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from .alignment import similarity_transform, template_for
from .detection import SCRFD, pick_central


def video_crop(image: NDArray[np.uint8], kps: NDArray[np.floating], size: int = 256, zoom: float = 1.3,
               occlude: str | None = None, seed: int = 0) -> NDArray[np.uint8]:
    """An aligned ``size`` crop where the face fills the frame (``zoom`` > 1 tightens it).

    ``occlude``: None, ``"bar"`` (a microphone-like bar across the lower face) or
    ``"blob"`` (a hand-like ellipse over one cheek).
    """
    dst = template_for(112) * (size / 112.0)
    centre = np.array([size / 2, size / 2])
    dst = (dst - centre) * zoom + centre
    crop = cv2.warpAffine(image, similarity_transform(kps, dst), (size, size), borderMode=cv2.BORDER_REPLICATE)
    rng = np.random.default_rng(seed)
    if occlude == "bar":
        y = int(size * rng.uniform(0.72, 0.85))
        cv2.rectangle(crop, (int(size * 0.25), y), (int(size * 0.6), y + size // 12), (30, 30, 30), -1)
    elif occlude == "blob":
        x = int(size * rng.choice([0.2, 0.8]))
        cv2.ellipse(crop, (x, int(size * 0.7)), (size // 7, size // 5), 20, 0, 360, (120, 150, 200), -1)
    return crop


def crop_from_photo(image: NDArray[np.uint8], detector: SCRFD, **kwargs: object) -> NDArray[np.uint8] | None:
    """Detect the main face of a photo and return its video-style crop, or None."""
    dets = detector.detect(image, (640, 640), 0.5)
    if not len(dets):
        return None
    return video_crop(image, dets.kps[pick_central(dets, image.shape)], **kwargs)  # type: ignore[arg-type]


def insightface_sample(name: str = "t1.jpg") -> Path:
    """A sample image that ships inside the insightface package (``t1.jpg``: six people)."""
    import insightface

    path = Path(os.path.dirname(insightface.__file__)) / "data" / "images" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in this insightface installation")
    return path
