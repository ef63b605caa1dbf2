"""Finding image files under input folders and decoding them robustly.

Decoding never raises for a bad file: it returns a reason, so one corrupt frame
among half a million is reported, not fatal.
"""

from __future__ import annotations

import glob
import hashlib
import heapq
import io
import logging
import os
import re
import struct
from stat import S_ISREG
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from . import exif
from .detection import is_panorama
from .fsutil import OUTPUT_MARKER, missing_path_hint
from .progress import count, listed, some

log = logging.getLogger(__name__)


def _quiet_opencv() -> None:
    """OpenCV logs each file it cannot decode on stderr (``[ERROR:0@1.4] global loadsave.cpp:1377 imdecode_
    … can't read header``), between the progress lines: the run lists those files with their reason instead.
    ``OPENCV_LOG_LEVEL``, where the user set it, is left to rule (OpenCV 4 builds may have no such logging)."""
    logs = getattr(cv2.utils, "logging", None)
    if logs is not None and "OPENCV_LOG_LEVEL" not in os.environ:
        logs.setLogLevel(logs.LOG_LEVEL_SILENT)


_quiet_opencv()

# HEIC, as iPhones save photos, read through pi-heif (libheif's decoder) where it is installed, as it is with
# face-organizer; without it such photos are counted with the formats not read here.
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})  # .hif: Canon's and Fujifilm's cameras


def _heif() -> Any:
    """The ``pi_heif`` module, set up for one decoding thread per stream (as OpenCV's decoding is) and
    the main image alone, or None where it is not installed."""
    global _HEIF
    if _HEIF is False:
        try:
            import pi_heif
        except ImportError:
            _HEIF = None
        else:
            pi_heif.options.DECODE_THREADS = 1
            pi_heif.options.THUMBNAILS = pi_heif.options.DEPTH_IMAGES = pi_heif.options.AUX_IMAGES = False
            _HEIF = pi_heif
    return _HEIF


_HEIF: Any = False  # not yet looked for


# AVIF (a format of photos from some Android phones and of pictures saved from the web) read through Pillow,
# installed with pi-heif, where its build has an AVIF decoder (wheels since Pillow 11.3): OpenCV's, where a build
# has one, shows the photo as stored, not turned as its rotation says.
def _avif() -> Any:
    """Pillow's AVIF plugin where it can decode AVIF, set up for one decoding thread per stream, or None."""
    global _AVIF
    if _AVIF is False:
        try:
            from PIL import features

            if not features.check("avif"):
                raise ImportError("Pillow without an AVIF decoder")
            from PIL import AvifImagePlugin
        except ImportError:
            _AVIF = None
        else:
            AvifImagePlugin.DEFAULT_MAX_THREADS = 1
            _AVIF = AvifImagePlugin
    return _AVIF


_AVIF: Any = False  # not yet looked for


# GIF (animations a photo library keeps beside its photos, such as those Google Photos makes of a burst): its
# first frame, read through Pillow (every build reads GIF; OpenCV's wheels only from 4.11 on).
def _gif() -> Any:
    """Pillow's GIF plugin, or None where Pillow is not installed."""
    try:
        from PIL import GifImagePlugin
    except ImportError:
        return None
    return GifImagePlugin


def _opencv_reads_jpeg2000() -> bool:
    """Whether this OpenCV build decodes JPEG 2000 (through OpenJPEG, as its wheels are built)."""
    info = cv2.getBuildInformation()
    line = next((line for line in info.splitlines() if line.strip().startswith("JPEG 2000:")), "")
    return bool(line) and line.split(":", 1)[1].strip().upper() != "NO"


# JPEG 2000 (scanned photo archives; macOS can save it): read by OpenCV itself where its build has a decoder.
JPEG2000_EXTENSIONS = frozenset({".jp2", ".j2k"})  # the file format, and the bare codestream
# .jfif: JPEG photos saved from the web on Windows (browsers named them so for years); .jpe: JPEG too.
# .ppm, .pgm, .pnm: Netpbm, as ffmpeg writes frames asked for by those names; OpenCV reads them itself.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm",
                              ".pgm", ".pnm"}) | (
    HEIF_EXTENSIONS if _heif() is not None else frozenset()) | (
    frozenset({".avif"}) if _avif() is not None else frozenset()) | (
    frozenset({".gif"}) if _gif() is not None else frozenset()) | (
    JPEG2000_EXTENSIONS if _opencv_reads_jpeg2000() else frozenset())
# As messages name them.
READ_FORMATS = "jpg, jpeg, jfif, png, webp, bmp, tif, ppm, pgm" + "".join(
    f", {name}" for name, ext in (("heic", ".heic"), ("avif", ".avif"), ("gif", ".gif"), ("jp2", ".jp2"))
    if ext in IMAGE_EXTENSIONS)
# Photo formats a library may hold that are not read here: named in a warning, not left out silently.
OTHER_PHOTO_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".avif", ".gif", ".jxl", ".jp2", ".j2k", ".dng", ".cr2",
                                    ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf", ".tga"}) - IMAGE_EXTENSIONS
# Videos: the crops this tool sorts are extracted from them first (by another tool); counted, so that a folder of
# videos alone is not simply "no images".
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".m4v", ".webm", ".wmv", ".mts", ".m2ts", ".3gp",
                              ".mpg", ".mpeg", ".flv", ".ts"})
# The photo of an iPhone's Live Photo, whose motion is a .MOV of the same name beside it.
_LIVE_PHOTO_EXTENSIONS = (".HEIC", ".heic", ".JPG", ".jpg", ".JPEG", ".jpeg")
# Folders of images that are no one's photos, kept beside them by a NAS or an operating system: Synology's
# thumbnails (@eaDir/<photo>/SYNOPHOTO_THUMB_*.jpg, five per photo) and recycle bins, QNAP's, and Windows'
# recycle bin on a USB drive (deleted photos as $R*.jpg), and Nextcloud's (ownCloud's) beside a user's files/
# (a deleted folder keeps its photos' names there). Hidden ones (.@__thumb, .Trashes) are left out anyway.
SYSTEM_FOLDERS = frozenset(name.casefold() for name in ("@eaDir", "#recycle", "#snapshot", "@Recycle",
                                                        "@Recently-Snapshot", "$RECYCLE.BIN", "RECYCLER",
                                                        "System Volume Information", "lost+found", "files_trashbin"))
# An Apple Photos library (a folder wherever it is copied from a Mac): its photos as imported are in originals/
# (Masters/ before Photos 5); resources/ holds resized copies of each one, edited versions and shared albums,
# which would give every photo again (and again) as faces of their own. Only the first two are read. So it is
# with the libraries of iPhoto 9 and Aperture, which Photos replaced: Masters/ beside Previews/ and Thumbnails/.
PHOTOS_LIBRARY_SUFFIXES = (".photoslibrary", ".photolibrary", ".aplibrary")
PHOTOS_ORIGINALS = frozenset({"originals", "masters"})


@dataclass(frozen=True)
class _ServerFolder:
    """A folder where a photo server keeps its users' photos and, beside them, images it made of them:
    found by ``markers`` among its entries; its subfolders ``made`` (names, or name prefixes ending in
    ``*``) are left out and said once, with ``what``."""

    name: str
    plural: str
    markers: frozenset[str]
    made: tuple[str, ...]
    what: str

    def makes(self, name: str) -> bool:
        return any(name.startswith(m[:-1]) if m.endswith("*") else name == m for m in self.made)


# Immich's media folder (its UPLOAD_LOCATION: library/, upload/, thumbs/, encoded-video/, profile/); Nextcloud's
# data folder (a .ocdata file beside each user's folder: appdata_<instance id>/preview/ holds previews in several
# sizes of every photo); PhotoPrism's storage folder (cache/thumbnails/ holds thumbnails in several sizes of every
# photo; sidecar/ is read: its JPEGs of camera raw photos are the only copy of those read here).
SERVER_FOLDERS = (
    _ServerFolder("the media folder of Immich", "media folders of Immich",
                  frozenset({"thumbs", "encoded-video"}), ("thumbs", "profile"),
                  "whose thumbs/ and profile/ are left out (the previews, thumbnails and face crops that Immich made "
                  "of the photos, and its users' pictures)"),
    _ServerFolder("the data folder of Nextcloud", "data folders of Nextcloud", frozenset({".ocdata"}), ("appdata_*",),
                  "whose appdata_* folder is left out (the previews that Nextcloud made of the photos, in several "
                  "sizes, and its users' pictures)"),
    _ServerFolder("the storage folder of PhotoPrism", "storage folders of PhotoPrism",
                  frozenset({"cache", "sidecar"}), ("cache",),
                  "whose cache/ is left out (the thumbnails that PhotoPrism made of the photos, in several sizes)"),
)
MIN_SIDE = 8
# The contact sheets that cluster_faces and search_faces write in an output's previews/ folder: not
# images of the collection, left out when an output is an input (gender_filter over sorted folders).
SHEETS_FOLDER = "previews"
SHEET_NAME = re.compile(r"(person_[A-Z]+|outliers|matches)\.jpg")

BGRImage = NDArray[np.uint8]


def is_image_name(name: str) -> bool:
    """True for visible files with a supported extension in any letter case."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def discover_images(inputs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Absolute paths of every image under ``inputs``, sorted, without duplicates.

    Hidden files and folders (including macOS ``._*`` files) are skipped, folders
    named like images are walked but never returned, symlinked files are kept under
    their own (unresolved) path, and symlinked folders are followed once. A folder
    reached twice (through a symlinked folder, or named twice through different paths)
    gives its images once, under the path of the first input that holds it and, within
    an input, under a path without symlinked folders where there is one: the same
    command finds the same paths, whatever order the file system lists folders in.
    Raises ``FileNotFoundError`` for an input that does not exist. Directory entries
    tell files from folders, so a plain file costs no ``stat`` (on a network share, half
    a million of them would take minutes). A face-organizer output (sorted copies) found
    below an input beside other images is skipped with a warning: its copies would be
    embedded a second time. An input holding only outputs (say, one gender_filter output
    per year) is embedded as it is, but for the contact sheets in their ``previews/`` folders.
    """
    found: dict[str, str] = {}  # the image's real folder and name: the path it is found under first
    missed = _Missed()
    empty: list[str] = []  # input folders that hold no image
    for raw in inputs:
        root = os.path.abspath(os.fspath(raw))
        if os.path.isfile(root):
            if is_image_name(os.path.basename(root)):
                found.setdefault(_real_key(os.path.realpath(os.path.dirname(root)), os.path.basename(root)), root)
            else:
                _not_an_image(root, missed)
            continue
        if not os.path.isdir(root):
            if os.path.exists(root):  # a FIFO, a socket, a device: nothing to read as an image
                log.warning("%s is neither a file nor a folder: left out", root)
                continue
            if glob.has_magic(os.fspath(raw)):  # a pattern neither the shell nor the stage matched to anything
                raise FileNotFoundError(f"no input folder matches {os.fspath(raw)}")
            raise FileNotFoundError(f"input folder not found: {root}{missing_path_hint(os.fspath(raw))}")
        own, in_outputs = _walk(root, missed)
        if not own and not in_outputs:
            empty.append(os.fspath(raw))
        if own:
            for folder in sorted(in_outputs):
                log.warning("skipping %s: it holds copies sorted by face-organizer, and %s holds other images "
                            "(name it as an input of its own to embed it)", folder, root)
            taken = [own]
        else:
            taken = list(in_outputs.values())
        for images in taken:
            for key, path in images.items():
                found.setdefault(key, path)
    missed.warn()
    if found and empty:  # where no input holds one, the stage says so itself
        log.warning("no images (%s) found under %s: nothing is read from %s", READ_FORMATS, listed(empty, "folder"),
                    "it" if len(empty) == 1 else "them")
    return sorted(found.values())


ARCHIVE_EXTENSIONS = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar")


def _not_an_image(path: str, missed: _Missed) -> None:
    """A file named as an input that is not read as an image: a photo in another format is counted
    with those found in folders; anything else (an archive of the images, a list of them meant for
    ``--file-list``) is named, not left out without a word."""
    extension = os.path.splitext(path)[1].lower()
    if extension in OTHER_PHOTO_EXTENSIONS and not os.path.basename(path).startswith("."):
        missed.formats[extension] += 1
    elif path.lower().endswith(ARCHIVE_EXTENSIONS):
        log.warning("%s is an archive: left out (unpack it and name the folder)", path)
    else:
        log.warning("%s is not an image (%s): left out", path, READ_FORMATS)


def _real_key(real_folder: str, name: str) -> str:
    return os.path.join(real_folder, name)  # as os.scandir joins an entry's path


@dataclass
class _Missed:
    """What a walk could not include: folders it could not read, photos in formats not read here."""

    folders: list[tuple[str, str]] = field(default_factory=list)
    formats: Counter[str] = field(default_factory=Counter)
    videos: Counter[str] = field(default_factory=Counter)
    live: int = 0  # of the videos, those beside a photo of the same name: the motion of an iPhone's Live Photo
    sheets: int = 0
    system: Counter[str] = field(default_factory=Counter)  # SYSTEM_FOLDERS found, by name
    libraries: list[str] = field(default_factory=list)  # Apple Photos libraries, of which only originals/ is read
    servers: dict[_ServerFolder, list[str]] = field(default_factory=dict)  # a photo server's folders found

    def warn(self) -> None:
        if self.sheets:
            log.info("left out %d contact sheet%s that face-organizer made in the previews/ folders of its outputs",
                     self.sheets, "" if self.sheets == 1 else "s")
        if self.system:
            log.info("left out %s that a NAS or an operating system keeps (thumbnails, recycle bins: %s)",
                     count(sum(self.system.values()), "folder"),
                     ", ".join(f"{name}: {n:,}" for name, n in sorted(self.system.items())))
        if self.libraries:
            log.info("%s: %s, of which only the photos as imported (originals/, Masters/) are read; the rest "
                     "(resources/, Previews/, Thumbnails/) holds resized copies and edited versions of the same photos",
                     some(self.libraries), "an Apple photo library (Photos, iPhoto or Aperture)"
                     if len(self.libraries) == 1 else "Apple photo libraries (Photos, iPhoto or Aperture)")
        for server, folders in self.servers.items():
            log.info("%s: %s, %s", some(folders), server.name if len(folders) == 1 else server.plural, server.what)
        for folder, reason in self.folders[:20]:
            log.warning("cannot read folder %s (%s): its images are left out", folder, reason)
        if len(self.folders) > 20:
            log.warning("… and %d more folders that cannot be read", len(self.folders) - 20)
        if self.videos:
            n = sum(self.videos.values())
            if self.live == n:
                log.info("left out %s (%s), each the motion of a Live Photo beside its photo, which is read",
                         count(n, "video"), _by_count(self.videos))
            else:
                live = f"; {self.live:,} of them the motion of a Live Photo beside its photo, which is read" \
                    if self.live else ""
                log.info("left out %s (%s%s): face-organizer reads images; extract the frames or face crops from "
                         "them first", count(n, "video"), _by_count(self.videos), live)
        if self.formats:
            log.warning("left out %s in formats not read here (%s); convert them to JPEG or PNG to include them",
                        count(sum(self.formats.values()), "photo"), _by_count(self.formats))


def _by_count(counts: Counter[str]) -> str:
    """``.heic: 12; .dng: 3``: the extensions counted, most first."""
    return "; ".join(f"{ext}: {n:,}" for ext, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _walk(root: str, missed: _Missed | None = None) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Images under ``root``: those outside face-organizer outputs, and those inside each output
    folder below ``root`` (keyed by the output folder), each keyed by its real folder and name.
    Folders reached through a symlinked folder are walked after all others, in order of path,
    so a folder reached both ways gives the path without the link. Unreadable folders, photos
    in other formats and the contact sheets of outputs are counted in ``missed``."""
    missed = missed if missed is not None else _Missed()
    own: dict[str, str] = {}
    in_outputs: dict[str, dict[str, str]] = {}
    seen_dirs: set[str] = set()
    sheet_folders: set[str] = set()  # previews/ of each output found
    pending: list[tuple[str, str | None]] = [(root, None)]
    linked: list[tuple[str, str | None]] = []  # a heap: symlinked folders, by path
    while pending or linked:
        folder, output = pending.pop() if pending else heapq.heappop(linked)
        real = os.path.realpath(folder)
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        try:
            entries = list(os.scandir(folder))
        except OSError as err:
            missed.folders.append((folder, err.strerror or str(err)))  # skipped, and said so
            continue
        names = {entry.name for entry in entries}
        if OUTPUT_MARKER in names:
            sheet_folders.add(os.path.join(folder, SHEETS_FOLDER))
            if output is None and folder != root:
                output = folder
        bucket = own if output is None else in_outputs.setdefault(output, {})
        sheets = folder in sheet_folders
        library = folder.casefold().endswith(PHOTOS_LIBRARY_SUFFIXES)
        if library:
            missed.libraries.append(folder)
        server = next((server for server in SERVER_FOLDERS if server.markers <= names), None)
        if server is not None:
            missed.servers.setdefault(server, []).append(folder)
        direct = real == folder  # no symbolic link on the way: the path is its own key (no second string)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    if entry.name.casefold() in SYSTEM_FOLDERS:
                        missed.system[entry.name] += 1
                    elif library and entry.name.casefold() not in PHOTOS_ORIGINALS:
                        continue  # resources/, database/, private/, …: said once for the library
                    elif server is not None and server.makes(entry.name):
                        continue
                    elif entry.is_symlink():
                        heapq.heappush(linked, (entry.path, output))
                    else:
                        pending.append((entry.path, output))
                elif sheets and SHEET_NAME.fullmatch(entry.name):
                    missed.sheets += 1
                elif is_image_name(entry.name) and (entry.is_file() or entry.is_symlink()):
                    # a link whose target is gone too: it is reported, not lost silently
                    path = entry.path
                    bucket[path if direct else _real_key(real, entry.name)] = path
                elif (ext := os.path.splitext(entry.name)[1].lower()) in OTHER_PHOTO_EXTENSIONS:
                    missed.formats[ext] += 1
                elif ext in VIDEO_EXTENSIONS:
                    missed.videos[ext] += 1
                    stem = entry.name[: -len(ext)]
                    missed.live += any(is_image_name(stem + e) and stem + e in names for e in _LIVE_PHOTO_EXTENSIONS)
            except OSError:
                continue  # a dangling or unreadable entry
    return own, in_outputs


Signature = tuple[int, int]  # (size in bytes, modification time in ns)


def file_signature(path: str) -> Signature | None:
    """What changes when a file is rewritten; None for a file that cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class DecodeError(Exception):
    """A file could not be turned into an image; ``str(err)`` is the reason."""


def _jpeg_truncated(data: bytes) -> bool:
    # libjpeg decodes a cut-off JPEG with a grey tail and only a warning; a complete
    # file has an end-of-image marker after its last start-of-scan marker.
    if not data.startswith(b"\xff\xd8"):
        return False
    last_scan = data.rfind(b"\xff\xda")
    return last_scan < 0 or data.find(b"\xff\xd9", last_scan) < 0


def to_bgr8(image: np.ndarray) -> BGRImage:
    """Normalise any decoded image (grey, alpha, 16-bit, float) to HxWx3 uint8 BGR."""
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        scale = 255.0 if float(np.nanmax(image, initial=0.0)) <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image) * scale, 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DecodeError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if channels == 4:
        # Composite over black so transparent pixels of arbitrary colour do not leak in.
        alpha = image[:, :, 3:4].astype(np.uint16)
        return ((image[:, :, :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    if channels == 3:
        return np.ascontiguousarray(image)
    raise DecodeError(f"unsupported channel count {channels}")


def _png_has_exif(data: bytes) -> bool:
    """Whether a PNG holds an ``eXIf`` chunk, found by stepping from chunk header to chunk header:
    searching all of a 256-pixel crop's bytes took ten times as long, and could be fooled by
    compressed pixels that happen to spell the name."""
    pos = 8  # after the signature; each chunk: length (4, big-endian), type (4), data, CRC (4)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf":
            return True
        if kind == b"IEND":
            break
        pos += 12 + length
    return False


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def _turns(a: np.ndarray) -> Iterator[np.ndarray]:
    """The eight rotations and mirror images of ``a`` (views, no copies), the identity first."""
    for mirrored in (a, np.fliplr(a)):
        for quarter_turns in range(4):
            yield np.rot90(mirrored, quarter_turns)


def _turned_like(image: np.ndarray, upright: np.ndarray) -> np.ndarray:
    """``image`` turned by the rotation or mirroring that makes its colour channels equal ``upright``."""
    colour = image[:, :, :3] if image.ndim == 3 and image.shape[2] == 4 else image
    for turned_colour, turned in zip(_turns(colour), _turns(image)):
        if turned_colour.shape == upright.shape and np.array_equal(turned_colour, upright):
            return np.ascontiguousarray(turned)
    return image


_REDUCED_COLOUR = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                   8: cv2.IMREAD_REDUCED_COLOR_8}


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as a JPEG's frame header gives them (before any EXIF turn), None for other bytes."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def reduction_keeping(length: float, at_least: float) -> int:
    """1, 2, 4 or 8: the largest factor a JPEG decoder can shrink by (in its DCT, several times faster than
    decoding whole) that leaves ``length`` pixels at least ``at_least``."""
    return next((r for r in (8, 4, 2) if length / r >= at_least), 1)


def _shrinkable(data: bytes) -> tuple[int, int] | None:
    """The size of a JPEG a decoder may shrink; None for other formats, and for a JPEG over OpenCV's pixel
    limit, which is refused as too large whichever way it is decoded."""
    size = jpeg_size(data)
    return size if size is not None and size[0] * size[1] <= _max_pixels() else None


def jpeg_reduction(data: bytes, min_side: int) -> int:
    """The factor (``reduction_keeping``) that leaves a JPEG's longer side at least ``min_side``, or its shorter
    side where it is a panorama (``is_panorama``), whose faces are detected in tiles of that side; 1 for other
    formats and a JPEG over OpenCV's pixel limit (``_shrinkable``)."""
    size = _shrinkable(data) if min_side > 0 else None
    if size is None:
        return 1
    return reduction_keeping(min(size) if is_panorama(size[1], size[0]) else max(size), min_side)


def _decode_upright(data: bytes, reduction: int = 1) -> np.ndarray | None:
    """Decode as stored (16-bit, grey and alpha kept), turned upright as the file's EXIF orientation
    says: phone and camera photos are often stored sideways with an orientation tag, and a face
    lying on its side is not found. OpenCV applies the tag itself except for ``IMREAD_UNCHANGED``
    (also when it shrinks a JPEG by ``reduction``)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    if data.startswith(b"\xff\xd8"):  # JPEG: 8-bit without alpha, so the colour decode loses nothing
        return cv2.imdecode(buffer, _REDUCED_COLOUR[reduction])
    image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    if _is_webp(data):  # read here: OpenCV 4 does not apply a WebP's orientation
        return exif.upright(image, exif.webp_orientation(data)) if b"EXIF" in data else image
    if data.startswith(b"\x89PNG") and _png_has_exif(data):
        upright = cv2.imdecode(buffer, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)  # oriented, alpha dropped
        if upright is not None:
            image = _turned_like(image, upright)
    return image


def _opencv_reason(err: cv2.error) -> str:
    message = str(err)
    if "CV_IO_MAX_IMAGE_PIXELS" in message:
        # The header asks for more pixels than OpenCV will allocate (2^30 by default): a giant
        # panorama, or a small file crafted to exhaust memory when decoded.
        return "image too large to decode (over OpenCV's pixel limit; OPENCV_IO_MAX_IMAGE_PIXELS raises it)"
    detail = next((line.strip() for line in message.splitlines() if "error:" in line), message.strip())
    return f"not a decodable image (OpenCV: {detail[:200]})"


# ISO media files (HEIF, AVIF) start with an 'ftyp' box: its brand says which. iPhones save HEIC, and some
# transfer tools keep its bytes under a .jpg name.
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC",
                b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}


def _iso_photo_kind(data: bytes) -> str | None:
    """The kind of an ISO media photo by its 'ftyp' box (HEIC, HEIF or AVIF), else None. A file whose major
    brand is the general one (``mif1``) is AVIF where its compatible brands say so (some encoders write it so)."""
    if data[4:8] != b"ftyp":
        return None
    kind = _HEIF_BRANDS.get(data[8:12])
    if kind == "HEIF":
        size = int.from_bytes(data[:4], "big")
        compatible = {_HEIF_BRANDS.get(data[i:i + 4]) for i in range(16, min(size, 64) - 3, 4)}
        if "AVIF" in compatible and "HEIC" not in compatible:
            return "AVIF"
    return kind


def _undecoded_reason(data: bytes) -> str:
    """Why OpenCV decoded nothing: a photo in a format not read here, said as such, or a broken file."""
    kind = _iso_photo_kind(data)
    if kind is not None:
        return f"{'an' if kind == 'AVIF' else 'a'} {kind} photo, not read here (convert it to JPEG or PNG)"
    return "not a decodable image (corrupt, truncated or not an image)"


def _decode_heif(heif: Any, data: bytes) -> np.ndarray:
    """A HEIC or HEIF photo, upright (libheif applies its rotation and mirroring), in 8 bits per channel."""
    try:
        photo = heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True, bgr_mode=True)
        return np.array(photo, copy=True)  # a view of its pixels would outlive the buffer libheif frees with it
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - libheif's errors for broken files come as several types
        detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DecodeError(f"not a decodable HEIC photo (libheif: {detail})") from None


def _max_pixels() -> int:
    """OpenCV's limit on the pixels of one image, which Pillow's decoders here keep too."""
    try:
        return int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", "")) or 1 << 30
    except ValueError:
        return 1 << 30


def _decode_pillow(opener: Any, data: bytes, kind: str) -> np.ndarray:
    """An AVIF photo or a GIF's first frame through Pillow: upright (Pillow gives an AVIF's rotation and
    mirroring as an EXIF orientation), in 8 bits per channel, BGR or BGRA (a GIF's transparent colour
    included). Opened by the plugin itself (``opener``, its image class), whose errors say what is wrong
    (``Image.open`` gives "cannot identify image file" for all)."""
    from PIL import ImageOps

    try:
        with opener(io.BytesIO(data)) as photo:
            if photo.size[0] * photo.size[1] > _max_pixels():
                raise DecodeError(f"image too large to decode ({photo.size[0]}x{photo.size[1]}, over OpenCV's pixel "
                                  "limit; OPENCV_IO_MAX_IMAGE_PIXELS raises it)")
            upright = ImageOps.exif_transpose(photo)
            if upright.mode not in ("RGB", "RGBA"):
                see_through = "A" in upright.mode or "transparency" in upright.info
                upright = upright.convert("RGBA" if see_through else "RGB")
            pixels = np.asarray(upright)
    except (MemoryError, DecodeError):
        raise
    except Exception as err:  # noqa: BLE001 - Pillow's errors for broken files come as several types
        detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise DecodeError(f"not a decodable {kind} (Pillow: {detail})") from None
    return cv2.cvtColor(pixels, cv2.COLOR_RGBA2BGRA if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR)


def decode_bytes(data: bytes, reduction: int = 1) -> BGRImage:
    """Decode encoded image bytes to BGR uint8, raising ``DecodeError`` with a reason; a JPEG shrunk by
    ``reduction`` (``jpeg_reduction``)."""
    if not data:
        raise DecodeError("empty file")
    if _jpeg_truncated(data):
        raise DecodeError("truncated JPEG")
    image: np.ndarray | None
    try:
        kind = _iso_photo_kind(data)
        heif = _heif() if kind in ("HEIC", "HEIF") else None
        avif = _avif() if kind == "AVIF" else None
        gif = _gif() if data[:6] in (b"GIF87a", b"GIF89a") else None
        if heif is not None:
            image = _decode_heif(heif, data)
        elif avif is not None:
            image = _decode_pillow(avif.AvifImageFile, data, "AVIF photo")
        elif gif is not None:
            image = _decode_pillow(gif.GifImageFile, data, "GIF")
        else:
            image = _decode_upright(data, reduction)
    except cv2.error as err:  # OpenCV raises, rather than returning None, for some files
        raise DecodeError(_opencv_reason(err)) from None
    if image is None:
        raise DecodeError(_undecoded_reason(data))
    if image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise DecodeError(f"image too small ({image.shape[1]}x{image.shape[0]})")
    return to_bgr8(image)


GONE = "file no longer exists"
BROKEN_LINK = "broken symbolic link (its target is missing)"
UNREADABLE = "unreadable: "


def not_reached(reason: str) -> bool:
    """A reason of ``Loaded`` that says the file could not be reached (gone, or an I/O error), not
    that its bytes are no image: what a whole folder gives when its drive or share goes away."""
    return reason in (GONE, BROKEN_LINK) or reason.startswith(UNREADABLE)


NOT_A_FILE = "not a regular file (a device, a pipe or a socket, named like an image)"


def _read(path: str | os.PathLike[str]) -> tuple[bytes, Signature]:
    """The file's bytes and, from the same open file, its signature; raises ``DecodeError``. Opened
    without blocking and read only when it is a regular file: a link named like an image to a pipe
    would wait for a writer for ever, and one to ``/dev/zero`` would read until memory ran out."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
            stat = os.fstat(handle.fileno())
            if not S_ISREG(stat.st_mode):
                raise DecodeError(NOT_A_FILE)
            os.set_blocking(handle.fileno(), True)  # read as any open file would (FUSE passes the flag on)
            return handle.read(), (stat.st_size, stat.st_mtime_ns)
    except FileNotFoundError as err:
        raise DecodeError(BROKEN_LINK if os.path.islink(path) else GONE) from err
    except OSError as err:
        raise DecodeError(f"{UNREADABLE}{err.strerror or err}") from err


def read_image(path: str | os.PathLike[str]) -> BGRImage:
    """Read and decode one file; raises ``DecodeError`` (never ``OSError``)."""
    return decode_bytes(_read(path)[0])


def read_image_shrunk(path: str | os.PathLike[str], reduction: int) -> tuple[BGRImage, int]:
    """``read_image``, a JPEG shrunk by ``reduction`` (1, 2, 4 or 8) while decoding: the image, and the factor
    it was shrunk by (1 for other formats, and where ``_shrinkable`` says it may not be)."""
    data = _read(path)[0]
    reduction = reduction if _shrinkable(data) is not None else 1
    return decode_bytes(data, reduction), reduction


def read_again(path: str | os.PathLike[str], reduction: int, digest: bytes) -> BGRImage | None:
    """The JPEG at ``path`` decoded again, shrunk by ``reduction`` (1, 2, 4 or 8), where its bytes are still
    those of ``digest`` (``content_digest``); None where they are not (rewritten or gone since), or where it no
    longer decodes."""
    try:
        data = _read(path)[0]
        if content_digest(data) != digest or _shrinkable(data) is None:
            return None
        return decode_bytes(data, reduction)
    except (DecodeError, MemoryError):
        return None


@dataclass(frozen=True)
class Loaded:
    """One file after decoding: either ``image`` or a failure ``reason``."""

    path: str
    image: BGRImage | None
    reason: str | None = None
    signature: Signature | None = None  # the file as it was read (None if it could not be opened)
    digest: bytes | None = None  # of its bytes (``content_digest``), where it was decoded: copies share it
    reduction: int = 1  # ``image`` is the file's pixels shrunk by this factor (a large JPEG photo, ``load``)


def content_digest(data: bytes) -> bytes:
    """A digest of a file's bytes, the same in every process (Python's own ``hash`` is not): 128-bit
    BLAKE2b, about a tenth of a millisecond for a 100 kB face crop."""
    return hashlib.blake2b(data, digest_size=16).digest()


def load(path: str, min_side: int = 0) -> Loaded:
    """``path`` read and decoded; with ``min_side``, a JPEG larger than twice that is shrunk while decoding
    as far as its longer side stays at least ``min_side`` (``jpeg_reduction``)."""
    signature = None
    try:
        data, signature = _read(path)
        reduction = jpeg_reduction(data, min_side)
        return Loaded(path, decode_bytes(data, reduction), signature=signature, digest=content_digest(data),
                      reduction=reduction)
    except DecodeError as err:
        return Loaded(path, None, str(err), signature)
    except MemoryError:  # a huge image within OpenCV's limit, on a machine short of memory
        return Loaded(path, None, "out of memory while decoding (image too large for this machine)", signature)


def load_many(paths: Sequence[str], min_side: int = 0) -> list[Loaded]:
    return [load(p, min_side) for p in paths]
