"""The EXIF orientation of a WebP file, read from its ``EXIF`` chunk, and the turn that puts its pixels upright.

OpenCV 5 applies a WebP's orientation as it decodes in colour; OpenCV 4 does not, and a photo
stored sideways stayed on its side, where the detector finds no face. Read here, it is applied
alike on every OpenCV release.
"""

from __future__ import annotations

import struct

import numpy as np

ORIENTATION_TAG = 0x0112


def webp_orientation(data: bytes) -> int:
    """The orientation (1-8) of a WebP's EXIF chunk; 1 (as stored) where there is none, or it cannot be read."""
    # After "RIFF", the size and "WEBP"; each chunk: name (4), size (4, little-endian), data, a pad byte if odd.
    pos = 12
    while pos + 8 <= len(data):
        name, size = struct.unpack_from("<4sI", data, pos)
        if name == b"EXIF":
            return tiff_orientation(data[pos + 8:pos + 8 + size])
        pos += 8 + size + (size & 1)
    return 1


def tiff_orientation(exif: bytes) -> int:
    """The orientation tag of EXIF data (a TIFF header and its first directory); 1 where there is none."""
    if exif.startswith(b"Exif\0\0"):
        exif = exif[6:]
    order = {b"II": "<", b"MM": ">"}.get(exif[:2])
    if order is None:
        return 1
    try:
        directory = struct.unpack_from(order + "I", exif, 4)[0]
        entries = struct.unpack_from(order + "H", exif, directory)[0]
        for i in range(entries):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", exif, directory + 2 + 12 * i)
            if tag == ORIENTATION_TAG and kind == 3:  # SHORT
                orientation = struct.unpack_from(order + "H", value)[0]
                return orientation if 1 <= orientation <= 8 else 1
    except struct.error:  # cut short: as stored
        return 1
    return 1


def upright(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` as stored, turned as EXIF ``orientation`` says (2: mirrored, 3: upside down, 6: turned
    a quarter anticlockwise, …), so that it shows the scene upright."""
    turned = {
        2: lambda a: np.fliplr(a),
        3: lambda a: np.rot90(a, 2),
        4: lambda a: np.flipud(a),
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(np.swapaxes(a, 0, 1), 2),
        8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return image if turned is None else np.ascontiguousarray(turned(image))
