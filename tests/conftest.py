"""Shared fixtures. Real models and faces are read in place from ``../shared``
(or ``$FACE_ORGANIZER_SHARED``); with ``FACE_ORGANIZER_REQUIRE_SHARED=1`` (as in CI)
a missing folder fails the run instead of skipping those tests."""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACE_ORGANIZER_SHARED", ROOT.parent / "shared")).resolve()
REQUIRE_SHARED = os.environ.get("FACE_ORGANIZER_REQUIRE_SHARED") == "1"


# Settings of the user's own environment that would steer the stages under test: a calibration stored by
# `search_faces.py --calibrate` (in ~/.config, as the README shows), a CPU share, the container's marker (the
# suite run in the image), a GPU chosen. Tests that need one set it themselves.
ISOLATED = ("FACE_ORGANIZER_CPUS", "FACE_ORGANIZER_CONTAINER", "FACE_ORGANIZER_STOP_SECONDS", "FACE_ORGANIZER_YUNET",
            "GPU_ID")


@pytest.fixture(scope="session", autouse=True)
def _no_user_settings(tmp_path_factory):
    saved = {name: os.environ.get(name) for name in (*ISOLATED, "FACE_ORGANIZER_CALIBRATION")}
    for name in ISOLATED:
        os.environ.pop(name, None)
    os.environ["FACE_ORGANIZER_CALIBRATION"] = str(tmp_path_factory.mktemp("settings") / "no_calibration.json")
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _need(path: Path) -> Path:
    if path.exists():
        return path
    message = f"{path} is missing: tests on real models and faces need ../shared (set FACE_ORGANIZER_SHARED)"
    if REQUIRE_SHARED:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def testpack_dir(shared: Path) -> Path:
    return _need(shared / "models" / "testpack")


@pytest.fixture(scope="session")
def testpack(testpack_dir: Path):
    from face_organizer.modelpack import resolve_pack

    return resolve_pack(str(testpack_dir))


@pytest.fixture(scope="session")
def models(testpack):
    from face_organizer.faces import load_face_models

    return load_face_models(testpack, "cpu", 0, batch_size=32)


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` grey pixels (a decompression bomb's
    shape): decoders size their buffer from the header before reading any pixel."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1)))
            + chunk(b"IEND", b""))


def read_labels(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="session")
def lfw(shared: Path) -> Path:
    return _need(shared / "datasets" / "lfw_dev")


@pytest.fixture(scope="session")
def lfw_labels(lfw: Path) -> list[dict[str, str]]:
    return read_labels(lfw)


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command's name: state, parent, …"""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def running(pid: int) -> bool:
    try:
        return _stat(pid)[0] not in ("Z", "X")
    except OSError:
        return False


def child_processes(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int(_stat(entry.name)[1]) == pid:
                found.append(int(entry.name))
        except OSError:
            pass
    return found


def wait_gone(pids: list[int], seconds: float = 15) -> list[int]:
    """The processes of ``pids`` still running after ``seconds`` (killed then)."""
    deadline = time.monotonic() + seconds
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if running(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def interrupted_at(paths: list[str], stop: str, out: Path, models, batch_size: int = 2, **options) -> None:
    """Embed ``paths`` into ``out`` ``batch_size`` at a time on one stream, checkpointing each batch, and stop
    (Ctrl-C) when the batch holding ``stop`` is read; ``options`` go to ``run_embeddings``."""
    from face_organizer import images
    from face_organizer.embed_run import run_embeddings

    def interrupted(chunk: list[str]) -> list[images.Loaded]:
        if stop in chunk:
            raise KeyboardInterrupt
        return images.load_many(chunk)

    with pytest.raises(KeyboardInterrupt):
        run_embeddings(paths, out, models, batch_size=batch_size, streams=1, checkpoint_seconds=0, progress=False,
                       loader=interrupted, **options)


def row_of_small_faces(lfw: Path, rows: list[dict[str, str]], path: Path) -> Path:
    """A 12-megapixel JPEG of a row of LFW photos at 140 pixels (faces about 60 pixels wide: 10 as the
    detector sees the photo at 640, where it misses them), one for each of ``rows`` (at most 10)."""
    canvas = np.full((3024, 4032, 3), 90, np.uint8)
    for j, row in enumerate(rows[:10]):
        canvas[1400:1540, 200 + j * 360 : 340 + j * 360] = cv2.resize(cv2.imread(str(lfw / row["path"])), (140, 140),
                                                                      interpolation=cv2.INTER_AREA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix if path.suffix.lower() != ".jpeg" else ".jpg", image)
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.fixture(scope="session")
def video_crops(lfw: Path, lfw_labels, models, tmp_path_factory) -> dict[str, list[Path]]:
    """Video-style 256x256 PNG crops (face filling the frame, some occluded) of 3 LFW people."""
    from face_organizer.images import read_image
    from face_organizer.samples import crop_from_photo

    out = tmp_path_factory.mktemp("video_crops")
    people = ["Junichiro_Koizumi", "Jean_Chretien", "Tony_Blair"]
    crops: dict[str, list[Path]] = {}
    for person in people:
        rows = [r for r in lfw_labels if r["identity"] == person][:12]
        for i, row in enumerate(rows):
            occlusion = (None, "bar", "blob")[i % 3]
            crop = crop_from_photo(read_image(lfw / row["path"]), models.detector, occlude=occlusion, seed=i)
            if crop is not None:
                crops.setdefault(person, []).append(write_image(out / person / f"frame_{i:04d}.png", crop))
    return crops


def copies_of(video_crops: dict[str, list[Path]], folder: Path, copies: int) -> Path:
    """``folder`` holding ``copies`` copies of the video crops (``copy0/Tony_Blair/frame_0000.png``, …):
    enough images for a run still going a few seconds after it started."""
    for i in range(copies):
        for crop in (p for c in video_crops.values() for p in c):
            target = folder / f"copy{i}" / crop.parent.name / crop.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(crop.read_bytes())
    return folder


@pytest.fixture(scope="session")
def two_person(lfw, models, tmp_path_factory):
    """(embeddings file, {path: label}, input folder): 2 LFW people as occluded video crops
    across year folders with colliding names, plus strangers and junk crops."""
    from face_organizer.embed_run import run_embeddings
    from face_organizer.samples import two_person_collection

    root = tmp_path_factory.mktemp("two_person")
    items = two_person_collection(lfw, root / "input", models.detector, ("Tony_Blair", "Donald_Rumsfeld"),
                                  per_person=24, strangers=0.125, junk=0.07)
    out = root / "emb.pkl"
    run_embeddings([str(i.path) for i in items], out, models, inputs=[str(root / "input")], progress=False)
    return out, {str(i.path): i.label for i in items}, root / "input"


@pytest.fixture(scope="session")
def interviewer(lfw, lfw_labels, models, tmp_path_factory) -> tuple[Path, list[str]]:
    """(embeddings file, paths): 16 video-style crops of a third person who recurs beside the
    two of ``two_person`` (an interviewer), in an input folder and embeddings file of their own."""
    from face_organizer.embed_run import run_embeddings
    from face_organizer.images import read_image
    from face_organizer.samples import crop_from_photo

    root = tmp_path_factory.mktemp("interviewer")
    rows = [r for r in lfw_labels if r["identity"] == "Junichiro_Koizumi"][-16:]
    paths = []
    for i, row in enumerate(rows):
        crop = crop_from_photo(read_image(lfw / row["path"]), models.detector, occlude=(None, "bar", "blob")[i % 3], seed=50 + i)
        if crop is not None:
            paths.append(str(write_image(root / "interviews" / f"frame_{i:04d}.png", crop)))
    out = root / "emb.pkl"
    run_embeddings(paths, out, models, inputs=[str(root / "interviews")], progress=False)
    return out, paths


@pytest.fixture(scope="session")
def blurred_strangers(lfw, lfw_labels, models, tmp_path_factory) -> tuple[Path, list[str]]:
    """(embeddings file, paths): video-style crops of 16 people other than the ``two_person``
    and ``interviewer`` ones, blurred past recognition (Gaussian sigma 8 on the 256-pixel crop)."""
    import cv2

    from face_organizer.embed_run import run_embeddings
    from face_organizer.images import read_image
    from face_organizer.samples import crop_from_photo

    taken = {"Tony_Blair", "Donald_Rumsfeld", "Junichiro_Koizumi"}
    rows = list({r["identity"]: r for r in lfw_labels if r["identity"] not in taken}.values())[::7][:16]
    root = tmp_path_factory.mktemp("blurred")
    paths = []
    for i, row in enumerate(rows):
        crop = crop_from_photo(read_image(lfw / row["path"]), models.detector, seed=70 + i)
        if crop is not None:
            paths.append(str(write_image(root / "shaky" / f"frame_{i:04d}.png", cv2.GaussianBlur(crop, (0, 0), 8.0))))
    out = root / "emb.pkl"
    run_embeddings(paths, out, models, inputs=[str(root / "shaky")], progress=False)
    return out, paths


@pytest.fixture(scope="session")
def lfw_subset(lfw, lfw_labels, models, tmp_path_factory):
    """Embeddings of ~700 LFW dev photos: every big/main identity image plus 120 singles."""
    from face_organizer.embed_run import run_embeddings

    rows = [r for r in lfw_labels if r["kind"] in ("big", "main")][::2] + [r for r in lfw_labels if r["kind"] == "single"][:120]
    out = tmp_path_factory.mktemp("lfw_subset") / "lfw.pkl"
    run_embeddings([str(lfw / r["path"]) for r in rows], out, models, inputs=[str(lfw)], progress=False)
    return out, {str(lfw / r["path"]): r["identity"] for r in rows}


@pytest.fixture(scope="session")
def lfw_crops(lfw, lfw_labels, models, tmp_path_factory):
    """(embeddings file, {path: identity}): LFW dev as occluded video-style crops, six photos each
    of 60 people with five or more and 60 people with one (about 400 crops)."""
    from face_organizer.embed_run import run_embeddings
    from face_organizer.images import read_image
    from face_organizer.samples import crop_from_photo

    by_person: dict[str, list[dict[str, str]]] = {}
    for row in lfw_labels:
        by_person.setdefault(row["identity"], []).append(row)
    many = sorted(p for p, rows in by_person.items() if len(rows) >= 5)[:60]
    chosen = [r for p in many for r in by_person[p][:6]] + [r for r in lfw_labels if r["kind"] == "single"][:60]
    out = tmp_path_factory.mktemp("lfw_crops")
    identity = {}
    for i, row in enumerate(chosen):
        crop = crop_from_photo(read_image(lfw / row["path"]), models.detector, zoom=1.1 + 0.03 * (i * 7 % 10),
                               occlude=(None, "bar", "blob")[i % 3], seed=i)
        if crop is not None:
            identity[str(write_image(out / "input" / f"frame_{i:04d}.png", crop))] = row["identity"]
    run_embeddings(list(identity), out / "emb.pkl", models, inputs=[str(out / "input")], progress=False)
    return out / "emb.pkl", identity


@pytest.fixture(scope="session")
def utkface(shared: Path) -> Path:
    return _need(shared / "datasets" / "utkface_gender_dev")


def tree_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``folder``, with its size and modification time (to tell that nothing was written)."""
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")}
