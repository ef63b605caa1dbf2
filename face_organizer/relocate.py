"""Images that an earlier ``cluster_faces --link-mode move`` took from where they were embedded,
found again through that run's ``clusters.csv`` (each row: the path as embedded and its destination).

An embeddings file keeps the paths its images had when they were embedded. After a move, a
second clustering (another number of people) or a search would find none of them; with the
earlier output named, each image is read from where the move put it, and the new output names
it as before (by the path it was embedded at).

Destinations are read relative to the folder that run wrote (``summary.json``'s ``output``) and
found under the folder named now: an output moved or renamed since, or mounted elsewhere, is
still found, and a table cannot name a file outside its own folder (a move would take it away).
A folder of the output renamed since (``person_A/`` to ``alice/``), or whose images were moved
into another of its folders (two folders of one person made one), is found by its files
(``renamed_folders``): later runs follow the names the user gave. An image moved by hand into
another folder (a wrong face corrected) is found there too, in the same subfolder or at the top
of the folder it was dropped on (or of the output).
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from .errors import SetupError
from .fsutil import missing_path_hint, same_bytes
from .rebase import former_paths

TABLE = "clusters.csv"
SUMMARY = "summary.json"

log = logging.getLogger(__name__)


def moved_locations(outputs: Sequence[str], former: Mapping[str, str] | None = None,
                    option: str = "--moved-to") -> dict[str, list[str]]:
    """Path as embedded -> the files an earlier placement made of it (a group photo goes to the
    folder of each of its faces), read from the ``clusters.csv`` of each earlier output, in the
    folders as they are named now (``renamed_folders``); an image moved by hand to another
    folder of the output is found there (``_StrayFinder``). ``former``: a path a table may name
    an image by -> its path now (the embeddings file was rebased since that output was made).
    Errors name ``option``, the option that named the outputs ("" for none)."""
    former = former or {}
    found: dict[str, list[str]] = {}
    for output in outputs:
        here = os.path.realpath(output)
        rows = list(_table_rows(output, option))
        samples = samples_of(rows)
        renamed = renamed_folders(here, samples)
        gone = {f for f, files in samples.items() if f not in renamed and not _present(here, f, files)}
        strays = _StrayFinder(here, rows)
        for row in rows:
            path = former.get(row.path, row.path)
            places = found.setdefault(path, [])
            place = os.path.join(here, renamed.get(row.folder, row.folder), row.rest)
            if row.folder not in gone and not os.path.lexists(place) and not os.path.lexists(path):
                place = strays.find(row, place)
            if place not in places:
                places.append(place)
    return found


@dataclass(frozen=True)
class Placed:
    """A row of an earlier output's ``clusters.csv``: the image embedded at ``path`` went to
    ``rest`` in its ``folder``; ``size``: its bytes (None in tables written before they were kept)."""

    path: str
    folder: str
    rest: str
    size: int | None


def _is(file: str, placed: Placed) -> bool:
    """Whether ``file`` is that image: there under its name, and of its size where it is known."""
    if placed.size is None:
        return os.path.lexists(file)
    try:
        return os.stat(file).st_size == placed.size
    except OSError:
        return False


OCCUPIED = "kept"  # a table's status for an image not placed: its destination held another file, left as it is


def _table_rows(output: str, option: str = "--moved-to") -> Iterator[Placed]:
    """Each row of ``output``'s ``clusters.csv`` whose destination is in ``output`` and holds its
    image (not one whose destination held another file: ``OCCUPIED``); errors name ``option``,
    which named the folder ("" for none). A table saved by Excel is read too (``_table_format``)."""
    table = os.path.join(output, TABLE)
    named = f"{option} {output}" if option else output
    roots = _written_to(output)
    try:
        encoding, delimiter = _table_format(table, output, roots)
        with open(table, encoding=encoding, errors="surrogateescape", newline="") as handle:
            yield from _rows(csv.DictReader(handle, delimiter=delimiter), roots)
    except OSError as err:
        if not os.path.lexists(output):
            raise SetupError(f"{named}: no such folder{missing_path_hint(output)}") from None
        raise SetupError(f"{named}: cannot read {table} ({err.strerror or err}); name the folder "
                         "an earlier cluster_faces run wrote") from None
    except (KeyError, TypeError, csv.Error):
        raise SetupError(f"{named}: {table} is not a cluster_faces table (no path and "
                         "destination columns)") from None


def _rows(reader: csv.DictReader, roots: Sequence[str]) -> Iterator[Placed]:
    """The rows of a table that ``_table_rows`` yields, read by ``reader``."""
    for row in reader:
        dest = os.path.normpath(row["destination"])  # no '..' leads out of the folder
        root = next((r for r in roots if dest.startswith(r)), None)
        if root is None or not os.path.isabs(row["path"]) or row.get("status") == OCCUPIED:
            continue  # not in the folder that run wrote, not a path an image was embedded at, or not placed
        folder, _, rest = dest[len(root):].partition(os.sep)
        size = row.get("bytes") or ""
        if rest:
            yield Placed(row["path"], folder, rest, int(size) if size.isdigit() else None)


# The code pages of Excel's "CSV (Comma delimited)", by the language Windows is set up for (and Excel for Mac's
# "Comma Separated Values"), the most common first: a tie goes to the earlier.
EXCEL_CODE_PAGES = {"cp1252": "Western European", "cp1250": "Central European", "cp1251": "Cyrillic",
                    "cp1253": "Greek", "cp1254": "Turkish", "mac_roman": "Mac Roman"}
CODE_PAGE_SAMPLE = 20


def _table_format(table: str, output: str, roots: Sequence[str]) -> tuple[str, str]:
    """How ``clusters.csv`` reads: (encoding, delimiter). As written: UTF-8 (names of images that are
    not UTF-8 keep their bytes) and commas; Excel saves a byte-order mark before it ("CSV UTF-8").
    Excel's "CSV (Comma delimited)" is in the Windows code page, which writes ``ü`` as one byte, and
    has semicolons where the system's list separator is one (much of Europe). A code page is
    taken where the table is not UTF-8 and its names find more of its files in ``output`` than
    UTF-8's do (the one that finds the most): a table of images named in Latin-1 on disk is not
    UTF-8 either."""
    with open(table, "rb") as handle:
        header = handle.readline()
        delimiter = ";" if b";" in header and b"," not in header else ","
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            decoder.decode(header)
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
            return "utf-8-sig", delimiter
        except UnicodeDecodeError:
            pass
    best, most = "utf-8-sig", -1
    for encoding in ("utf-8-sig", *EXCEL_CODE_PAGES):
        with open(table, encoding=encoding, errors="surrogateescape", newline="") as handle:
            rows = (r for r in _rows(csv.DictReader(handle, delimiter=delimiter), roots)
                    if not (r.folder + r.rest).isascii())
            sample = list(itertools.islice(rows, CODE_PAGE_SAMPLE))
            found = sum(os.path.lexists(os.path.join(output, r.folder, r.rest)) for r in sample)
        if found > most:
            best, most = encoding, found
        if sample and found == len(sample):
            break  # every name found: no code page finds more (none at all: the output's own path may not match)
    if best != "utf-8-sig":
        log.info("%s is in the %s code page %s (saved by Excel as CSV): read as such", table,
                 EXCEL_CODE_PAGES[best], best)
    return best, delimiter


def samples_of(rows: Sequence[Placed]) -> dict[str, list[Placed]]:
    """A few files of each folder, for ``renamed_folders``: images placed in that folder alone,
    where it has any. The copies a group photo got in the folders of its other faces are the same
    file in each, so they would make a folder look renamed to each of those."""
    placed = {(row.path, row.folder): row for row in rows}  # a photo's faces in one folder: one file
    copies = Counter(path for path, _ in placed)
    alone: dict[str, list[Placed]] = {}
    shared: dict[str, list[Placed]] = {}
    for row in placed.values():
        kept = (alone if copies[row.path] == 1 else shared).setdefault(row.folder, [])
        if len(kept) < RENAME_SAMPLES:
            kept.append(row)
    for folder, more in shared.items():
        alone.setdefault(folder, more)  # a folder of group photos only
    return alone


class _StrayFinder:
    """An image the user moved by hand from its folder to another of the output (a wrong face
    corrected): looked for under the same name, and of the same size, in each folder (``2017/x.png``
    of ``person_A/`` in ``outliers/2017/``); failing that, dropped at the top of a folder or of the
    output (``outliers/x.png``, as a file manager drops a file onto a folder), where no other image
    of the output (``rows``) has that name and size. Taken only where exactly one folder holds it.
    At most ``STRAY_LOOKUPS`` images an output are looked for (a folder gone whole is not looked
    for image by image)."""

    def __init__(self, output: str, rows: Sequence[Placed]):
        self.output, self.left = output, STRAY_LOOKUPS
        self.folders: list[str] | None = None
        self.rows = rows
        self.names: Counter[tuple[str, int | None]] | None = None

    def find(self, placed: Placed, place: str) -> str:
        """Where ``placed`` is now in another folder; ``place`` if in none, or in several."""
        if self.left <= 0:
            return place
        self.left -= 1
        if self.folders is None:
            self.folders = _folders(self.output, exclude={"previews"})
        held = [p for f in self.folders if _is(p := os.path.join(self.output, f, placed.rest), placed)]
        name = os.path.basename(placed.rest)
        if not held and name != placed.rest and self._unique(name, placed.size):
            held = [p for f in ["", *self.folders] if _is(p := os.path.join(self.output, f, name), placed)]
        return held[0] if len(held) == 1 else place

    def _unique(self, name: str, size: int | None) -> bool:
        """Whether one image alone of the output is named ``name`` with ``size`` bytes (the copies
        of a group photo in the folders of its faces are one image)."""
        if self.names is None:
            images = {(row.path, os.path.basename(row.rest), row.size) for row in self.rows}
            self.names = Counter((base, bytes_) for _, base, bytes_ in images)
        return self.names[name, size] == 1


STRAY_LOOKUPS = 1_000  # images moved by hand are few; each lookup stats every folder
RENAME_SAMPLES = 8  # files of a folder no longer there looked for in the others
NOT_A_PERSON = frozenset({"previews", "outliers"})


def renamed_folders(output: str, samples: Mapping[str, Sequence[Placed]]) -> dict[str, str]:
    """Folder as an earlier run named it -> the folder of ``output`` that holds its files now, for
    each folder of ``samples`` whose files are no longer there: renamed (``person_A`` to
    ``alice``), or emptied into another (``person_F``'s images moved into ``person_C``).
    ``samples``: a few of each folder's files; most of them must be in one other folder, and no
    more than half in any other (two input folders of the same name give different images the
    same names). A folder whose files are nowhere (deleted) is left out, and so are moves into
    ``outliers/`` and ``previews/``."""
    missing = [f for f, files in samples.items() if files and not _present(output, f, files)]
    if not missing:
        return {}
    candidates = _folders(output, exclude=NOT_A_PERSON)
    renamed = {}
    for folder in missing:
        files = samples[folder][:RENAME_SAMPLES]
        votes = Counter(c for placed in files for c in candidates
                        if _is(os.path.join(output, c, placed.rest), placed)).most_common(2)
        if votes and 2 * votes[0][1] > len(files) and (len(votes) == 1 or 2 * votes[1][1] <= len(files)):
            renamed[folder] = votes[0][0]
            log.info("%s/ of %s is not there now; its images are in %s/", folder, output, votes[0][0])
    return renamed


def _present(output: str, folder: str, files: Sequence[Placed]) -> bool:
    """Whether most of ``files`` are in ``folder`` of ``output``."""
    return 2 * sum(_is(os.path.join(output, folder, placed.rest), placed) for placed in files) > len(files)


def _folders(output: str, exclude: frozenset[str] | set[str]) -> list[str]:
    """The folders of ``output`` but ``exclude`` and hidden ones, sorted."""
    try:
        return sorted(e.name for e in os.scandir(output)
                      if e.is_dir() and e.name not in exclude and not e.name.startswith("."))
    except OSError:
        return []


def _holds_a_file(folder: str) -> bool:
    """Whether ``folder`` or a folder in it holds a file (it stops at the first one)."""
    return any(files for _, _, files in os.walk(folder))


def renamed_in(output: str) -> dict[str, str]:
    """The folders of the earlier run in ``output`` (its own ``clusters.csv``) renamed since; none
    where it holds no readable table."""
    if not os.path.isfile(os.path.join(output, TABLE)):
        return {}
    try:
        return renamed_folders(os.path.realpath(output), samples_of(list(_table_rows(output, "--output"))))
    except SetupError:
        return {}  # not a table of ours: the output's other checks say so


def folder_names(output: str, folders: Sequence[str], option: str) -> list[str]:
    """The names ``folders`` of the earlier output ``output`` have now (``renamed_folders``); a
    folder that still holds its images, or whose images are nowhere, keeps its name. Its table is
    read only when a folder is gone or empty."""
    if all(_holds_a_file(os.path.join(output, f)) for f in folders):
        return list(folders)
    try:
        samples = samples_of(list(_table_rows(output, option)))
    except SetupError as err:
        log.warning("%s; folders renamed there since are not followed", err)
        return list(folders)
    renamed = renamed_folders(os.path.realpath(output), {f: samples.get(f, []) for f in folders})
    return [renamed.get(f, f) for f in folders]


def _written_to(output: str) -> list[str]:
    """Where an earlier run's destinations may begin, each ending in a separator: the folder as
    that run named it (its ``summary.json``) and as the real path of that name, then where the
    folder is now."""
    try:
        with open(os.path.join(output, SUMMARY), encoding="utf-8") as handle:
            named = json.load(handle).get("output")
    except (OSError, ValueError, AttributeError):
        named = None
    roots = [named, os.path.realpath(named)] if isinstance(named, str) and os.path.isabs(named) else []
    roots.append(os.path.realpath(output))
    return list(dict.fromkeys(os.path.join(os.path.normpath(r), "") for r in roots))


def locate(paths: Sequence[str], moved: dict[str, list[str]], output: str) -> list[str]:
    """Where each image is now: where it was embedded while it is still there (an interrupted
    move leaves some), else the first file an earlier placement made of it that exists outside
    ``output``. Files inside it are this placement's own (the same command naming its own output):
    read from there, a move would delete a photo's copy in one folder as the source of another."""
    if not moved:
        return list(paths)
    own = os.path.join(os.path.realpath(output), "")
    where: dict[str, str] = {}
    for path in paths:
        if path not in where:
            where[path] = path if os.path.lexists(path) else next(
                (d for d in moved.get(path, ()) if not d.startswith(own) and os.path.lexists(d)), path)
    return [where[p] for p in paths]


def current_locations(paths: Sequence[str], moved_to: Sequence[str], output: str,
                      rewrites: Sequence[tuple[str, str]] = ()) -> list[str]:
    """Where each of ``paths`` is now, given the earlier outputs a move put images in (none: the
    paths), for a placement into ``output``. ``rewrites``: the (from, to) folders the embeddings
    file's paths were rebased by (``rebase.steps``), oldest first; an earlier output may name
    its images by their paths before them."""
    if not moved_to:
        return list(paths)
    where = locate(paths, moved_locations(moved_to, former_paths(paths, rewrites)), output)
    found = len({p for p, w in zip(paths, where) if p != w})
    log.info("%d image%s read from where an earlier move put %s (%s)", found, "" if found == 1 else "s",
             "it" if found == 1 else "them", ", ".join(moved_to))
    return where


def remove_moved_copies(placed: dict[str, str], moved_to: Sequence[str], output: str,
                        rewrites: Sequence[tuple[str, str]] = ()) -> int:
    """After a move onward from the earlier outputs ``moved_to`` (outputs a move filled; one of
    copies keeps its files, which the caller sees to): the copies a group photo got
    there in the folders of its other faces stay behind when the photo itself moves on (one file
    is the source). Each is removed once ``placed[path]``, the photo's file in ``output``, holds
    the same bytes, so the earlier output empties as a move leaves it. ``rewrites``: as for
    ``current_locations``. Returns how many went."""
    own = os.path.join(os.path.realpath(output), "")
    removed = 0
    for path, files in moved_locations(moved_to, former_paths(list(placed), rewrites)).items():
        dest = placed.get(path)
        if dest is None or not os.path.isfile(dest):
            continue
        for copy in files:
            if (not copy.startswith(own) and os.path.isfile(copy) and not os.path.islink(copy)
                    and same_bytes(copy, dest)):
                os.unlink(copy)
                removed += 1
    if removed:
        log.info("removed %d cop%s of group photos that stayed in %s when the photos moved on", removed,
                 "y" if removed == 1 else "ies", ", ".join(moved_to))
    return removed


__all__ = ["Placed", "current_locations", "folder_names", "locate", "moved_locations", "remove_moved_copies",
           "renamed_folders", "renamed_in", "samples_of"]
