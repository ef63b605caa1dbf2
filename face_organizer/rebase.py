"""An embeddings file's image paths under a new folder: the images moved, or are mounted elsewhere.

Embeddings made inside the container name ``/workspace/input/2017/…``; on the host the same
images may be ``/srv/faces/input/2017/…``, and a collection copied to another disk has a new
root too. Every stage finds images by the paths their embeddings file holds, so such a file
would have them all missing. Re-embedding half a million images takes hours on a GPU; the
paths can instead be rewritten, one folder prefix for another: rows, failures, photos without
a face, reused frames, file signatures and the run's input folders alike. The embeddings are
untouched, and the rewrite is undone by the reverse one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from .embfile import UNTRIED_KEY, EmbeddingsFile
from .errors import SetupError
from .progress import count

CHECKED = 1_000  # images looked for at their new paths, spread over the file (a NAS answers slowly)


def folder_prefix(path: str) -> str:
    """``path`` as an absolute folder prefix without a trailing separator ("/" stays "/")."""
    return os.path.normpath(os.path.abspath(path))


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or lies below it (whole path components only)."""
    return path == prefix or path.startswith(prefix if prefix.endswith(os.sep) else prefix + os.sep)


def moved(path: str, old: str, new: str) -> str:
    """``path`` under ``new`` instead of ``old`` when it lies under ``old``; otherwise as it is."""
    if not under(path, old):
        return path
    rest = path[len(old):].lstrip(os.sep)
    return os.path.join(new, rest) if rest else new


def spread(items: Sequence[str], most: int) -> list[str]:
    """Up to ``most`` of ``items``, evenly spread over them (first and last included)."""
    if not items or most <= 0:
        return []
    return [items[int(i)] for i in np.unique(np.linspace(0, len(items) - 1, min(most, len(items))).astype(np.intp))]


def guess_move(paths: Sequence[str], near: Sequence[str], *, tries: int = 20) -> tuple[str, str] | None:
    """(old folder, new folder) that would find ``paths`` again, where their end lies under one of
    the folders ``near`` (such as the output's parent and the working folder: where the images
    usually sit beside it); None when no such folder holds most of ``tries`` paths spread over them."""
    sample = spread(paths, tries)
    if not sample:
        return None
    parts = sample[0].split(os.sep)
    for root in dict.fromkeys(folder_prefix(n) for n in near):
        for keep in range(len(parts) - 1, 0, -1):  # the longest end of the path first
            tail = os.sep.join(parts[-keep:])
            if not os.path.lexists(os.path.join(root, tail)):
                continue
            old = os.sep.join(parts[:-keep]) or os.sep
            found = sum(1 for p in sample if under(p, old) and os.path.lexists(moved(p, old, root)))
            if old != root and 2 * found > len(sample):
                return old, root
            break
    return None


def steps(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (from, to) folders of each rewrite an embeddings file's ``meta["rebased"]`` records, oldest
    first; entries that are not such a record (a file edited by hand) are left out."""
    records = meta.get("rebased")
    return [(r["from"], r["to"]) for r in (records if isinstance(records, list) else [])
            if isinstance(r, dict) and isinstance(r.get("from"), str) and isinstance(r.get("to"), str)]


def done_before(ef: EmbeddingsFile, old: str, new: str) -> str | None:
    """When ``ef`` was rebased from ``old`` to ``new`` last, where that is its latest rewrite and no
    path lies under ``old`` any more (the same command run again); else None."""
    old, new = folder_prefix(old), folder_prefix(new)
    records = ef.meta.get("rebased")
    last = records[-1] if isinstance(records, list) and records else None
    if not isinstance(last, dict) or steps({"rebased": [last]}) != [(old, new)]:
        return None
    if any(under(p, old) for p in [*ef.rows.paths, *ef.no_face, *(p for p, _ in ef.failed)]):
        return None
    return str(last.get("when", "earlier"))


def former_paths(paths: Sequence[str], rewrites: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Each path an image of ``paths`` may have had before the ``rewrites`` (oldest first) -> its path
    now, such as the path an output clustered before a rebase names it by. Files merged from several
    embeddings files (one per GPU) list each one's rewrites, which need not all have touched an
    image: every order-keeping choice of them is undone (a few names an image never had are
    looked up in vain). A former path that is the path of another image now stays that image's."""
    rewrites = list(rewrites)[-MAX_REWRITES:]
    if not rewrites:
        return {}
    now = set(paths)
    former: dict[str, str] = {}
    for path in now:
        names = {path}
        for old, new in reversed(rewrites):
            names |= {moved(name, new, old) for name in names if under(name, new)}
        for name in names - now:
            former.setdefault(name, path)
    return former


MAX_REWRITES = 6  # up to 2**6 former names an image; a file is rebased once or twice


def near(output: str) -> list[str]:
    """Where moved images usually sit: beside ``output``, and in the working folder (where it still
    exists: a shell may stand in a folder deleted since)."""
    try:
        return [os.path.dirname(output), os.getcwd()]
    except OSError:
        return [os.path.dirname(output)]


@dataclass(frozen=True)
class Rebased:
    """The file with its paths rewritten, and what changed: ``images`` distinct image paths
    rewritten of ``total``; ``checked`` of them looked for at their new paths, ``found`` there."""

    file: EmbeddingsFile
    images: int
    total: int
    checked: int
    found: int

    def lines(self, old: str, new: str, output: str) -> list[str]:
        out = [f"{count(self.images, 'image')} of {self.total:,} moved from {old} to {new} → {output}"]
        if self.images < self.total:
            out.append(f"{count(self.total - self.images, 'image')} not under {old}: left as they were")
        if self.checked:
            out.append(f"found at the new paths: {self.found:,} of {self.checked:,} looked for"
                       + ("" if self.found else f"; none is there now (is {new} mounted? images that a "
                                                        "--link-mode move took are found with --moved-to)"))
        return out


def renaming(paths: Sequence[str], old: str, new: str, what: str, *, also: Sequence[str] = ()) -> dict[str, str]:
    """Each of ``paths`` (distinct, sorted) -> itself under folder ``new`` instead of ``old`` (both
    ``folder_prefix``es). Raises ``SetupError`` when ``old`` is ``new``, when nothing of ``paths``
    or ``also`` lies under ``old`` (the prefix is mistyped, or the rewrite was done already), and
    when two paths would become one. ``what``: where the paths come from, for the messages."""
    if old == new:
        raise SetupError(f"--from and --to are the same folder ({old}): nothing to rewrite")
    renamed = {p: moved(p, old, new) for p in paths}
    if all(q == p for p, q in renamed.items()) and not any(under(p, old) for p in also):
        example = f" (they look like {paths[0]})" if paths else ""
        raise SetupError(f"no image {what} lies under {old}{example}: nothing to rewrite")
    if len(set(renamed.values())) < len(renamed):
        first: dict[str, str] = {}
        for p, q in renamed.items():
            if q in first:
                raise SetupError(f"{first[q]} and {p} would both become {q}: choose --from and --to so that "
                                 "every image keeps a path of its own")
            first[q] = p
    return renamed


def rebase(ef: EmbeddingsFile, old: str, new: str, *, check: int = CHECKED) -> Rebased:
    """``ef`` with every path under folder ``old`` moved under ``new`` (see ``moved``); ``check``
    of the rewritten image paths, spread evenly, are looked for on disk. Raises ``SetupError``
    when no path lies under ``old``: the prefix is mistyped, or the file was rebased already."""
    old, new = folder_prefix(old), folder_prefix(new)
    distinct = sorted(set(ef.rows.paths) | set(ef.no_face))
    renamed = renaming(distinct, old, new, "in the embeddings file", also=[p for p, _ in ef.failed])
    changed = [q for p, q in renamed.items() if q != p]

    def path(p: str) -> str:
        return renamed[p] if p in renamed else moved(p, old, new)

    rows = replace(ef.rows, paths=[renamed[p] for p in ef.rows.paths])
    meta = dict(ef.meta, inputs=[path(i) for i in ef.meta.get("inputs", [])])
    if isinstance(untried := ef.meta.get(UNTRIED_KEY), list):
        meta[UNTRIED_KEY] = [path(p) for p in untried if isinstance(p, str)]
    earlier = ef.meta.get("rebased")
    meta["rebased"] = [*(earlier if isinstance(earlier, list) else []),
                       {"from": old, "to": new, "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}]
    file = EmbeddingsFile(rows, [(path(p), reason) for p, reason in ef.failed], [path(p) for p in ef.no_face], meta,
                          [(path(p), path(source)) for p, source in ef.reused],
                          {path(p): signature for p, signature in ef.signatures.items()},
                          {path(p): digest for p, digest in ef.digests.items()})
    sample = spread(changed, check)
    found = sum(1 for p in sample if os.path.lexists(p))
    return Rebased(file, len(changed), len(distinct), len(sample), found)
