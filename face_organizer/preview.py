"""Contact sheets and an index page, so a user can tell which folder is which person
without opening thousands of files."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

import cv2
import numpy as np
from numpy.typing import NDArray

from .fsutil import atomic_write_bytes, atomic_write_text
from .images import DecodeError, read_image_shrunk, reduction_keeping
from .progress import count

TILE = 112


@dataclass(frozen=True)
class SheetFace:
    path: str
    bbox: NDArray[np.float32] | None  # crop to the face (photos mode), None for whole crops
    label: str


def placed_or_source(destination: str, source: str) -> str:
    """Where a face's image can be read now: the path in the embeddings file, else its placed
    file (the only one left after a move). Not the placed file first: where the output already
    held another file, that file stays, and it is not the face's image."""
    return source if os.path.exists(source) else destination


def _tile(face: SheetFace) -> NDArray[np.uint8]:
    box = face.bbox if face.bbox is not None and np.all(np.isfinite(face.bbox)) else None
    # A face in a large JPEG photo is read from the photo shrunk while decoding (several times faster) as far as
    # the face keeps a tile's pixels.
    reduction = 1 if box is None else reduction_keeping(_side(box), TILE)
    try:
        image, reduction = read_image_shrunk(face.path, reduction)
    except DecodeError:
        return np.full((TILE, TILE, 3), 200, np.uint8)
    if box is not None:
        x1, y1, x2, y2 = box / reduction
        cx, cy, half = (x1 + x2) / 2, (y1 + y2) / 2, _side(box) / reduction / 2
        h, w = image.shape[:2]
        l, t = int(max(0, cx - half)), int(max(0, cy - half))
        r, b = int(min(w, cx + half)), int(min(h, cy + half))
        if r > l and b > t:
            image = image[t:b, l:r]
    h, w = image.shape[:2]
    side = min(h, w)
    square = image[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    return cv2.resize(square, (TILE, TILE), interpolation=cv2.INTER_AREA)


def _side(box: NDArray[np.float32]) -> float:
    """The side of a face's tile in the photo: its box's longer side and a margin."""
    return float(max(box[2] - box[0], box[3] - box[1])) * 1.3


def contact_sheet(central: Sequence[SheetFace], borderline: Sequence[SheetFace], columns: int = 8) -> NDArray[np.uint8]:
    """Rows of the most central faces, then a red-framed row of borderline ones."""
    rows = []
    for group, colour in ((central, None), (borderline, (40, 40, 220))):
        tiles = [_tile(f) for f in group]
        for i in range(0, len(tiles), columns):
            row = tiles[i : i + columns]
            if colour is not None:
                row = [cv2.copyMakeBorder(t[3:-3, 3:-3], 3, 3, 3, 3, cv2.BORDER_CONSTANT, value=colour) for t in row]
            row += [np.full((TILE, TILE, 3), 255, np.uint8)] * (columns - len(row))
            rows.append(np.hstack(row))
    return np.vstack(rows) if rows else np.full((TILE, TILE * columns, 3), 255, np.uint8)


def write_sheet(path: str, sheet: NDArray[np.uint8]) -> None:
    ok, data = cv2.imencode(".jpg", sheet, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if ok:
        atomic_write_bytes(path, data.tobytes())


@dataclass(frozen=True)
class IndexEntry:
    name: str
    images: int
    folder: str
    sheet: str | None  # None: listed without a contact sheet
    caption: str = "top rows: nearest the cluster centre; red: borderline"  # how to read the sheet
    missing: int = 0  # of ``images``, those not placed: not where the embeddings file says
    warning: str = ""  # why the folder may not be one person, shown beside its count


def _url(relative: str) -> str:
    """A relative path as a link: a folder the user named ``Mom & Dad #1`` (followed by ``--people-from``)
    is no fragment, and a name that is not UTF-8 is its own bytes."""
    return quote(os.fsencode(relative), safe="/")


def write_index(path: str, title: str, entries: Sequence[IndexEntry], notes: Sequence[str]) -> None:
    """A self-contained HTML page: every cluster with its count, folder and contact sheet."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;background:#fafafa}section{margin-bottom:2em}"
        "img{max-width:100%;border:1px solid #ccc}h2{margin-bottom:.2em}.n{color:#555}.w{color:#a40}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "".join(f"<p class='n'>{html.escape(n)}</p>" for n in notes),
    ]
    for e in entries:
        rel_folder = os.path.relpath(e.folder, os.path.dirname(path))
        link = f"{count(e.images, 'image')} in <a href='{_url(rel_folder)}/'>{html.escape(rel_folder)}/</a>"
        if e.missing:
            link += (f" ({'all' if e.missing == e.images else f'{e.missing:,}'} missing, not placed: not where the "
                     "embeddings file says; blank tiles are such images)")
        if e.warning:
            link += f" <strong class='w'>{html.escape(e.warning)}</strong>"
        if e.sheet is None:
            parts.append(f"<p>{html.escape(e.name)}: {link}</p>")
            continue
        rel_sheet = os.path.relpath(e.sheet, os.path.dirname(path))
        parts.append(
            f"<section><h2>{html.escape(e.name)}</h2><p class='n'>{link} "
            f"({html.escape(e.caption)})</p>"
            f"<img src='{_url(rel_sheet)}' alt='{html.escape(e.name)}' loading='lazy'></section>"
        )
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
