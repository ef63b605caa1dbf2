"""Model input tensors: the values insightface's models expect, in the layout they take."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from face_organizer.detection import SCRFD
from face_organizer.tensors import planar_rgb


@pytest.mark.parametrize(("mean", "std"), [(127.5, 127.5), (0.0, 1.0), (127.5, 128.0)])
def test_planar_rgb_is_the_normalised_rgb_planes(mean: float, std: float) -> None:
    images = np.random.default_rng(3).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    got = planar_rgb(images, mean, std)
    want = ((images[..., ::-1].astype(np.float32) - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2)
    assert got.dtype == np.float32 and got.shape == (5, 3, 7, 9) and got.flags.c_contiguous
    assert np.array_equal(got, want)
    assert got[1, 0, 2, 3] == (float(images[1, 2, 3, 2]) - mean) / std  # plane 0 is red, BGR's last channel


def test_detector_blob_matches_opencv_and_places_each_image() -> None:
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((256, 256), (120, 200), (300, 90))]
    blob, places = SCRFD._blob(images, (192, 160), pad_ratio=0.25)
    assert blob.shape == (3, 3, 160, 192)
    canvases = []
    for image, (scale, offset) in zip(images, places):
        h, w = image.shape[:2]
        border = round(max(h, w) * 0.25)
        assert scale == pytest.approx(min(192 / (w + 2 * border), 160 / (h + 2 * border)))
        assert offset == round(border * scale)
        canvas = np.zeros((160, 192, 3), np.uint8)
        new_w, new_h = min(round(w * scale), 192 - offset), min(round(h * scale), 160 - offset)
        canvas[offset : offset + new_h, offset : offset + new_w] = cv2.resize(image, (new_w, new_h))
        canvases.append(canvas)
    want = cv2.dnn.blobFromImages(canvases, 1.0 / 128.0, (192, 160), (127.5, 127.5, 127.5), swapRB=True)
    assert np.array_equal(blob, want)
    assert np.all(blob[:, :, :2, :2] == -127.5 / 128.0)  # the black border
