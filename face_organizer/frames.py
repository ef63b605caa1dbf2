"""Near-identical consecutive video frames.

A face extractor run over video writes the same face many times in a row
(``frame_0001.png``, ``frame_0002.png``, …) with a pixel or two of movement. Their
embeddings differ by no more than the recogniser's own noise: two crops one pixel
apart measured cosine 0.99 at the median, and as low as 0.86. So a frame that nearly
repeats a recent one can take that frame's embedding instead of being detected and
embedded again. The comparison is a 16 x 16 grey thumbnail, normalised for brightness and
contrast; a frame is compared with the last few frames that *were* embedded (so a slow
pan starts a new reference once it has moved far enough), and only with frames of the
same size.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

SIGNATURE_SIDE = 16
# Mean absolute difference between signatures (in standard deviations of the thumbnail).
# Measured once on 150 video-style LFW crops: a 1-pixel shift gives 0.05 at the median,
# 2 pixels 0.09; two different photos of the same person never came closer than 0.26, and
# consecutive crops of different photos 0.43. tests/test_frames.py holds both sides.
DEFAULT_THRESHOLD = 0.15
MAX_THRESHOLD = 0.25  # the most allowed: beyond it, different photos would share an embedding
RECENT = 4  # frames with several faces interleave them: frame_0001_0, frame_0001_1, frame_0002_0, ...


def signature(image: NDArray[np.uint8]) -> NDArray[np.float32]:
    """A brightness- and contrast-normalised 16 x 16 grey thumbnail, flattened."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (SIGNATURE_SIDE, SIGNATURE_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
    small -= small.mean()
    return small / max(float(small.std()), 1.0)


def repeated_frames(images: Sequence[NDArray[np.uint8]], threshold: float = DEFAULT_THRESHOLD,
                    recent: int = RECENT) -> list[int]:
    """For each image, the index of an earlier image it nearly repeats, or -1.

    The earlier image is always one that repeats nothing itself, so following the index
    once reaches an image that is embedded.
    """
    source = [-1] * len(images)
    kept: list[tuple[int, tuple[int, ...], NDArray[np.float32]]] = []
    for i, image in enumerate(images):
        sig = signature(image)
        for j, shape, other in reversed(kept):
            if shape == image.shape and float(np.abs(sig - other).mean()) < threshold:
                source[i] = j
                break
        else:
            kept.append((i, image.shape, sig))
            del kept[:-recent]
    return source
