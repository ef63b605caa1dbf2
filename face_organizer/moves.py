"""Images moved since they were embedded, told without reading them: a folder renamed, or moved with ``mv`` or
``cp -a``, keeps each file's name, size and modification time to the nanosecond.

An embeddings run finds a moved image by the digest of its bytes, which takes reading it (``embed_run``); this is
what can be told before that: which GPU a launcher gives such an image (``multigpu``), and what a dry run counts
(``embed_plan``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from . import images


def follow_moves(gone: Mapping[str, images.Signature], found: Iterable[str]) -> dict[str, str]:
    """Path found now -> the path in ``gone`` (held in an embeddings file, with the signature it was read with,
    and gone from the disk since) whose file it is: the same name, size and modification time. A name and
    signature that two gone paths share is followed by neither."""
    by_key: dict[tuple[str, images.Signature], str | None] = {}
    for path, signature in gone.items():
        key = (os.path.basename(path), signature)
        by_key[key] = path if key not in by_key else None
    follows = {}
    for path in found if by_key else ():
        now = images.file_signature(path)
        if now is not None and (old := by_key.get((os.path.basename(path), now))) is not None:
            follows[path] = old
    return follows
