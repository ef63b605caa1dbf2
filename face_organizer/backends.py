"""Face-detector backends compared on a user's own images: InsightFace SCRFD from the
pack, OpenCV YuNet (``cv2.FaceDetectorYN``) and DeepFace's detectors.

Machines without internet are normal here, so a backend whose weights are missing is
reported as unavailable with the reason, never as a traceback, and DeepFace's weights
folder can be prepared offline from files already on disk.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from .deepface_import import import_deepface
from .detection import SCRFD
from .faces import EmbedOptions, find_crop_face
from .fsutil import atomic_open

log = logging.getLogger(__name__)

# DeepFace's own "yunet" is the same cv2.FaceDetectorYN as our yunet backend, so it is not listed twice.
DEEPFACE_BACKENDS = ("opencv", "ssd", "mtcnn", "retinaface", "centerface", "mediapipe", "dlib")
# DeepFace's weight file names for the detectors this project can supply offline.
DEEPFACE_YUNET_FILE = "face_detection_yunet_2023mar.onnx"
BoxFinder = Callable[[NDArray[np.uint8]], "NDArray[np.float32] | None"]  # one face box (x1, y1, x2, y2) or None


@dataclass
class BackendResult:
    name: str
    available: bool
    reason: str = ""
    images: int = 0
    detected: int = 0
    seconds: float = 0.0
    matched: int = 0
    failed: int = 0

    @property
    def speed(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def rate(self) -> float:
        return self.detected / self.images if self.images else 0.0


def scrfd_finder(detector: SCRFD) -> BoxFinder:
    options = EmbedOptions()

    def find(image: NDArray[np.uint8]) -> NDArray[np.float32] | None:
        found = find_crop_face(image, detector, options)
        return None if found is None else found[1]

    return find


def find_yunet(model_root: Path) -> Path | None:
    """A YuNet ONNX file kept beside the model packs (``<root>/yunet/…yunet….onnx``), the
    newest by name when there are several (OpenCV names them by release date)."""
    found = sorted(p for p in (model_root / "yunet").glob("*.onnx") if "yunet" in p.name.lower())
    return found[-1] if found else None


@contextlib.contextmanager
def _opencv_errors_only() -> Iterator[None]:
    """Within, OpenCV logs only errors (OpenCV 5's ``cv2.utils.logging``; OpenCV 4 has none, nor the warnings)."""
    logs = getattr(cv2.utils, "logging", None)
    if logs is None:
        yield
        return
    level = logs.getLogLevel()
    logs.setLogLevel(logs.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logs.setLogLevel(level)


def yunet_finder(model: str, pad_ratio: float = 0.3, threshold: float = 0.6) -> BoxFinder:
    """YuNet through OpenCV; tight crops get the same padding as SCRFD."""
    with _opencv_errors_only():  # OpenCV 5's DNN engine warns that it takes no target, which create() always sets
        net = cv2.FaceDetectorYN.create(model, "", (320, 320), threshold)

    def find(image: NDArray[np.uint8]) -> NDArray[np.float32] | None:
        border = int(round(max(image.shape[:2]) * pad_ratio))
        padded = cv2.copyMakeBorder(image, border, border, border, border, cv2.BORDER_CONSTANT, value=0)
        scale = 640 / max(padded.shape[:2])
        small = cv2.resize(padded, None, fx=scale, fy=scale) if scale < 1 else padded
        net.setInputSize((small.shape[1], small.shape[0]))
        _, faces = net.detect(small)
        if faces is None or len(faces) == 0:
            return None
        x, y, w, h = faces[int(np.argmax(faces[:, 2] * faces[:, 3])), :4] / min(scale, 1.0)
        return np.array([x - border, y - border, x + w - border, y + h - border], np.float32)

    return find


def deepface_finder(name: str) -> BoxFinder:
    DeepFace = import_deepface()

    def find(image: NDArray[np.uint8]) -> NDArray[np.float32] | None:
        faces = DeepFace.extract_faces(image, detector_backend=name, enforce_detection=False)
        faces = [f for f in faces if f.get("confidence", 0) and f["confidence"] > 0]
        if not faces:
            return None
        area = max(faces, key=lambda f: f["facial_area"]["w"] * f["facial_area"]["h"])["facial_area"]
        return np.array([area["x"], area["y"], area["x"] + area["w"], area["y"] + area["h"]], np.float32)

    return find


def prepare_deepface_weights(home: Path, sources: Sequence[Path]) -> list[str]:
    """Fill ``home/.deepface/weights`` from files on disk (no network): a YuNet ONNX file is
    stored under the name DeepFace looks for; other files keep their names. Returns what was placed."""
    target = home / ".deepface" / "weights"
    target.mkdir(parents=True, exist_ok=True)
    placed = []
    for source in sources:
        files = sorted(source.iterdir()) if source.is_dir() else [source]
        for f in files:
            if not f.is_file():
                continue
            name = DEEPFACE_YUNET_FILE if "yunet" in f.name.lower() and f.suffix == ".onnx" else f.name
            if not (target / name).exists():
                _copy_whole(f, target / name)
                placed.append(name)
    haar = Path(cv2.__file__).parent / "data" / "haarcascade_frontalface_default.xml"
    if haar.is_file() and not (target / haar.name).exists():
        _copy_whole(haar, target / haar.name)
        placed.append(haar.name)
    return placed


def _copy_whole(source: Path, dest: Path) -> None:
    """Copy ``source`` to ``dest`` through a temporary name: a copy cut short (a full disk, Ctrl-C in the
    middle of a 500 MB weight file) leaves no ``dest``, which the next run would take as placed and
    DeepFace fail to load."""
    with open(source, "rb") as handle, atomic_open(dest) as out:
        shutil.copyfileobj(handle, out, 1 << 20)


def try_backend(name: str, finder_factory: Callable[[], BoxFinder], probe: NDArray[np.uint8]) -> tuple[BoxFinder | None, str]:
    """Build a backend and run it once; any failure (missing weights, no network) is a reason."""
    try:
        finder = finder_factory()
        finder(probe)
        return finder, ""
    except ImportError as err:
        return None, f"not installed ({err.name or err})"
    except Exception as err:  # noqa: BLE001 - weight downloads fail in many ways offline
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if any(k in text.lower() for k in ("download", "url", "connection", "resolve", "http", "urlopen")):
            text = "weights missing and cannot be downloaded (offline?): " + text[:160]
        return None, text[:220]


def run_backend(name: str, finder: BoxFinder, images: Sequence[tuple[str, NDArray[np.uint8]]],
                gender: str | None = None, classify: Callable[[NDArray[np.uint8], NDArray[np.float32]], str | None] | None = None) -> BackendResult:
    result = BackendResult(name, True, images=len(images))
    start = time.perf_counter()
    boxes = [finder(image) for _, image in images]
    result.seconds = time.perf_counter() - start
    result.detected = sum(b is not None for b in boxes)
    if gender and classify:
        for (_, image), box in zip(images, boxes):
            predicted = classify(image, box) if box is not None else None
            if predicted is None:
                result.failed += 1
            elif predicted == gender:
                result.matched += 1
    return result


def recommendation(results: Sequence[BackendResult], folder_images: int) -> str:
    usable = [r for r in results if r.available and r.images]
    if not usable:
        return "Recommendation: no backend could run on these images."
    best_rate = max(r.rate for r in usable)
    # Within 2 points of the best detection rate, the fastest wins.
    candidates = [r for r in usable if r.rate >= best_rate - 0.02]
    pick = max(candidates, key=lambda r: r.speed)
    eta = folder_images / pick.speed if pick.speed else float("inf")
    return (f"Recommendation: {pick.name} (detects {pick.rate:.0%} at {pick.speed:.1f} img/s); "
            f"the whole folder of {folder_images:,} images would take about {_duration(eta)} on this machine.")


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(seconds, 1):.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def table(results: Sequence[BackendResult], gender: str | None) -> list[str]:
    head = f"{'Backend':<14}{'Speed (img/s)':>14}  {'Detection':>16}"
    if gender:
        head += f"  {'Matched':>8}  {'Failed':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        if not r.available:
            lines.append(f"{r.name:<14}{'unavailable':>14}  {r.reason}")
            continue
        row = f"{r.name:<14}{r.speed:>14.1f}  {f'{r.detected}/{r.images} ({r.rate:.0%})':>16}"
        if gender:
            row += f"  {r.matched:>8}  {r.failed:>7}"
        lines.append(row)
    return lines
