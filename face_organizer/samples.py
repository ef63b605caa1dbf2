"""Video-extraction-style face crops made from ordinary photos, and bundled sample faces.

Face extractors for video write tight, aligned crops: the face fills most of a
256x256 frame, often with a microphone or hand in front of it. No such dataset
ships anywhere, so tests, benchmarks and the quick start make them from photos.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
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


def central_landmarks(image: NDArray[np.uint8], detector: SCRFD) -> NDArray[np.float32] | None:
    """The five landmarks of the face nearest the centre of a photo, or None.

    Labelled sets such as LFW centre the named person exactly, so the nearest face to
    the centre (not the largest, which may be someone in front) carries the label.
    """
    dets = detector.detect(image, (640, 640), 0.5)
    if not len(dets):
        return None
    centres = (dets.boxes[:, :2] + dets.boxes[:, 2:]) / 2
    h, w = image.shape[:2]
    return dets.kps[int(np.argmin(np.hypot(centres[:, 0] - w / 2, centres[:, 1] - h / 2)))]


def crop_from_photo(image: NDArray[np.uint8], detector: SCRFD, **kwargs: object) -> NDArray[np.uint8] | None:
    """The video-style crop of the face nearest the centre of a photo, or None."""
    kps = central_landmarks(image, detector)
    return None if kps is None else video_crop(image, kps, **kwargs)  # type: ignore[arg-type]


def varied_frames(image: NDArray[np.uint8], kps: NDArray[np.floating], count: int,
                  rng: np.random.Generator) -> list[NDArray[np.uint8]]:
    """``count`` video-style crops of one face, as the frames of a long shot differ: the
    zoom, the occluder (none, a bar or a hand-like blob), the exposure and the side the
    face turns to (mirrored) change from one to the next."""
    frames = []
    for i in range(count):
        crop = video_crop(image, kps, zoom=float(rng.uniform(1.05, 1.45)), occlude=(None, "bar", "blob")[int(rng.integers(3))],
                          seed=int(rng.integers(1 << 31)))
        crop = np.clip(crop.astype(np.float32) * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
        frames.append(np.ascontiguousarray(crop[:, ::-1]) if i % 2 else crop)
    return frames


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package (importing
    insightface would add a fraction of a second to every start of the stage-1 command)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{package} is not installed")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not in this {package} installation")
    return path


def insightface_sample(name: str = "t1.jpg") -> Path:
    """A sample image that ships inside the insightface package (``t1.jpg``: six people)."""
    return package_file("insightface", "data", "images", name)


def sample_photos() -> tuple[NDArray[np.uint8], list[NDArray[np.uint8]]]:
    """The sample photos that ship inside pip packages, BGR: insightface's ``t1.jpg`` (six people),
    then the single faces: its ``Tom_Hanks_54745.png`` and, when scikit-image is installed, its astronaut."""
    from .images import read_image

    group = read_image(insightface_sample("t1.jpg"))
    singles = [read_image(insightface_sample("Tom_Hanks_54745.png"))]
    try:
        singles.append(read_image(package_file("skimage", "data", "astronaut.png")))
    except (ImportError, FileNotFoundError):
        pass
    return group, singles


def junk_crop(image: NDArray[np.uint8], rng: np.random.Generator, size: int = 256) -> NDArray[np.uint8]:
    """A non-face 'face crop' as extractors produce by mistake: a background corner,
    a blurred smear, or a flat wall, scaled to ``size``."""
    h, w = image.shape[:2]
    kind = rng.integers(0, 3)
    if kind == 0:
        side = max(16, min(h, w) // 5)
        x, y = int(rng.choice([0, w - side])), int(rng.choice([0, h - side]))
        patch = image[y : y + side, x : x + side]
    elif kind == 1:
        patch = cv2.GaussianBlur(image, (0, 0), sigmaX=25)
    else:
        patch = np.full((32, 32, 3), rng.integers(40, 220, 3), np.uint8)
        patch = np.clip(patch + rng.normal(0, 6, patch.shape), 0, 255).astype(np.uint8)
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)


def shot_frames(crop: NDArray[np.uint8], count: int, rng: np.random.Generator, shift: float = 1.0) -> list[NDArray[np.uint8]]:
    """``count`` consecutive frames of one video shot as a face extractor writes them: the
    crop moved by about ``shift`` pixels and rescaled slightly each time, with small
    changes of exposure and sensor noise. The first frame is the crop itself."""
    h, w = crop.shape[:2]
    frames = [crop]
    for _ in range(count - 1):
        dx, dy = rng.normal(0.0, shift, 2)
        scale = 1.0 + rng.normal(0.0, shift / 100.0)
        warp = np.array([[scale, 0.0, dx + (1 - scale) * w / 2], [0.0, scale, dy + (1 - scale) * h / 2]], np.float32)
        frame = cv2.warpAffine(crop, warp, (w, h), borderMode=cv2.BORDER_REFLECT).astype(np.float32)
        frame = frame * rng.uniform(0.95, 1.05) + rng.normal(0.0, 2.0, frame.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str  # an identity, "stranger:<identity>" or "junk"
    blur: float = 0.0  # sigma of the Gaussian blur applied to the crop, in pixels (0: sharp)


def two_person_collection(lfw: Path, out: Path, detector: SCRFD, people: tuple[str, ...] = ("Tony_Blair", "Donald_Rumsfeld"),
                          per_person: int | None = None, strangers: float = 0.10, junk: float = 0.03,
                          seed: int = 0, recurring: Sequence[str] = (), blurred: int = 0,
                          blur_sigmas: Sequence[float] = (3.0, 5.0, 8.0)) -> list[LabelledImage]:
    """A video-extraction-like collection from LFW: two people as occluded tight crops,
    plus ``strangers`` (share) other people and ``junk`` (share) non-face crops, spread
    over year folders with colliding file names. Every photo of each ``recurring``
    identity (a third person seen again and again, such as an interviewer) is added too,
    labelled ``stranger:<identity>``. With ``blurred``, that many more crops of the two
    people and that many of other people are added for each of ``blur_sigmas`` (Gaussian
    blur of the 256-pixel crop, as in badly focused or fast-moving video frames). Without
    recurring or blurred images the draw is the same as before."""
    import csv

    rng = np.random.default_rng(seed)
    with open(lfw / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for r in rows if r["identity"] in people]
    if per_person:
        chosen = [r for p in people for r in [x for x in chosen if x["identity"] == p][:per_person]]
    others = [r for r in rows if r["identity"] not in people and r["identity"] not in recurring]
    n_main = len(chosen)
    picks = rng.choice(len(others), int(round(n_main * strangers)) + int(round(n_main * junk)), replace=False)
    n_strangers = int(round(n_main * strangers))
    plan = [(r, r["identity"]) for r in chosen]
    plan += [(others[i], "stranger:" + others[i]["identity"]) for i in picks[:n_strangers]]
    plan += [(others[i], "junk") for i in picks[n_strangers:]]
    plan += [(r, "stranger:" + r["identity"]) for r in rows if r["identity"] in recurring]
    sigma = [0.0] * len(plan)
    if blurred:
        own = [r for r in rows if r["identity"] in people]
        pick = np.random.default_rng(seed + 10_000)  # a separate stream: the sharp images stay as drawn
        for blur in blur_sigmas:
            plan += [(own[i], own[i]["identity"]) for i in pick.choice(len(own), blurred, replace=False)]
            plan += [(others[i], "stranger:" + others[i]["identity"]) for i in pick.choice(len(others), blurred, replace=False)]
            sigma += [float(blur)] * (2 * blurred)
    out_items: list[LabelledImage] = []
    for i, (row, label) in enumerate(plan):
        from .images import read_image

        photo = read_image(lfw / row["path"])
        if label == "junk":
            crop = junk_crop(photo, rng)
        else:
            face = crop_from_photo(photo, detector, zoom=float(rng.uniform(1.1, 1.4)),
                                   occlude=(None, "bar", "blob")[i % 3], seed=i)
            if face is None:
                continue
            crop = cv2.GaussianBlur(face, (0, 0), sigma[i]) if sigma[i] else face
        year = 2000 + i % 4
        path = out / str(year) / f"frame_{i // 4:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), crop)
        out_items.append(LabelledImage(path, label, sigma[i]))
    return out_items


def sample_collection(out: Path, detector: SCRFD, frames: int = 6) -> list[Path]:
    """Video-style crops of the faces that ship with pip packages: the six people of
    insightface's ``t1.jpg``, its ``Tom_Hanks_54745.png`` and scikit-image's astronaut,
    ``frames`` variations each (zoom, brightness, occlusion), split over two year folders
    with repeating file names, as a face extractor would write them."""
    sources: list[NDArray[np.uint8]] = []
    group, singles = sample_photos()
    dets = detector.detect(group, (640, 640), 0.5)
    kps_list = [dets.kps[i] for i in np.argsort(dets.boxes[:, 0])]
    for image in singles:
        found = detector.detect(image, (640, 640), 0.5, pad_ratio=0.3)  # Tom Hanks is a tight 112x112 crop
        if len(found):
            kps_list.append(found.kps[pick_central(found, image.shape)])
            sources.append(image)
    images = [group] * (len(kps_list) - len(sources)) + sources
    written: list[Path] = []
    rng = np.random.default_rng(7)
    for person, (image, kps) in enumerate(zip(images, kps_list)):
        for frame in range(frames):
            crop = video_crop(image, kps, zoom=float(rng.uniform(1.05, 1.35)), occlude=(None, "bar", "blob")[frame % 3], seed=frame)
            crop = np.clip(crop.astype(np.float32) * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
            path = out / ("2017" if frame % 2 else "2018") / f"face{person:02d}_frame_{frame // 2:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), crop)
            written.append(path)
    return written
