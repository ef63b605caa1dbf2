"""Images moved since they were embedded, told without reading them: a folder renamed, or moved with ``mv`` or
``cp -a``, keeps each file's name, size and modification time to the nanosecond; copied with a plain ``cp -r``
(then deleted where it was), its name and size. A folder named through a symbolic link one time and not another
gives the same files under other paths (``reached_elsewhere``): the old paths are not gone, but are dropped alike.

An embeddings run finds a moved image by the digest of its bytes, which takes reading it (``embed_run``); this is
what can be told before that: which GPU a launcher gives such an image (``multigpu``), and what a dry run counts
(``embed_plan``). A file taken for another costs nothing but that: the run embeds it as a new image.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Collection, Iterable, Mapping

from . import images


def follow_moves(gone: Mapping[str, images.Signature], found: Iterable[str]) -> dict[str, str]:
    """Path found now -> the path in ``gone`` (held in an embeddings file, with the signature it was read with,
    and gone from the disk since) whose file it is: the same name, size and modification time, else the same
    name and size where no other gone path has them and no other path found takes that one so."""
    exact: dict[tuple[str, images.Signature], str | None] = {}
    loose: dict[tuple[str, int], str | None] = {}
    for path, signature in gone.items():
        name = os.path.basename(path)
        exact[name, signature] = path if (name, signature) not in exact else None
        loose[name, signature[0]] = path if (name, signature[0]) not in loose else None
    follows: dict[str, str] = {}
    loosely: dict[str, list[str]] = {}
    for path in found if gone else ():
        now, name = images.file_signature(path), os.path.basename(path)
        if now is None:
            continue
        if (old := exact.get((name, now))) is not None:
            follows[path] = old
        elif (old := loose.get((name, now[0]))) is not None:
            loosely.setdefault(old, []).append(path)
    taken = set(follows.values())
    follows.update({paths[0]: old for old, paths in loosely.items() if len(paths) == 1 and old not in taken})
    return follows


def reached_elsewhere(held: Collection[str], found: Collection[str]) -> set[str]:
    """The paths of ``held`` that name the same file as a path of ``found`` through other folders: the same real
    folder and name, as an input named one time through a symbolically linked folder and another time not (a
    mount point reached by a link). The file is still at the old path, so it is not gone; the run took it as a
    copy of itself. Each folder is resolved once: half a million paths cost a ``realpath`` per folder."""
    if not held or not found:
        return set()
    real = functools.cache(os.path.realpath)

    def entry(path: str) -> str:
        folder, name = os.path.split(path)
        return os.path.join(real(folder), name)

    by_entry: dict[str, list[str]] = {}
    for path in held:
        by_entry.setdefault(entry(path), []).append(path)
    return {old for path in found for old in by_entry.get(entry(path), ()) if old != path}
