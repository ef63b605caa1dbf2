"""Putting images into cluster folders without overwriting or losing any file.

Destinations keep each file's path below the input folder it came from, prefixed
by that folder's name (``person_A/2017/frame_0001.png``), so the same file name in
every year folder never collides and every file stays traceable. Whatever paths an
embeddings file holds, nothing is written outside the output folder.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any, Literal

from .errors import FaceOrganizerError, SetupError
from .fsutil import (OUTPUT_MARKER, RUN_FILES, atomic_write_text, check_writable_dir, filesystem_type,
                     full_disk_hint, mount_of, same_bytes, same_size, sync_filesystem)
from .images import GONE, SYSTEM_FOLDERS
from .progress import bar as progress_bar
from .progress import count, listed, size
from .rebase import former_paths, guess_move, near, spread
from .relocate import OCCUPIED, Placed, moved_locations, renamed_folders, samples_of
from .vanished import Vanishing

log = logging.getLogger(__name__)

LinkMode = Literal["copy", "hardlink", "symlink", "move"]
STATE_FILE = OUTPUT_MARKER
SYNC_EVERY = 2000  # copies written between flushes of the output's filesystem
NAME_MAX = 255  # bytes in one file name, on every filesystem a collection is likely to sit on
PARTIAL_PREFIX = ".fo-partial-"  # a copy being written; hidden, so discovery never reads one as an image


def _undecodable_byte(ch: str) -> bool:
    """A byte of a file name that is not valid UTF-8, as Python's surrogateescape reads it."""
    return "\udc80" <= ch <= "\udcff"


WINDOWS_RESERVED = '<>:"|?*'  # not in a file name on FAT, exFAT, NTFS or a Windows share
WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                             *(f"LPT{i}" for i in range(1, 10))})
# Filesystems whose names cannot hold WINDOWS_RESERVED (fuseblk: exFAT and NTFS through FUSE; 9p and drvfs:
# Windows drives under WSL and Docker Desktop): copies there get portable names.
WINDOWS_NAMED = frozenset({"vfat", "msdos", "exfat", "ntfs", "ntfs3", "fuseblk", "cifs", "smb3", "smbfs", "9p",
                           "drvfs"})
_PORTABLE = str.maketrans({ch: "_" for ch in WINDOWS_RESERVED})


def _clean(component: str, portable: bool = False) -> str:
    """``component`` as a name of its own: no separators or unprintable characters. Undecodable
    bytes are kept, so that the copy's name has the same bytes as the original's, except where
    ``portable`` (an output on a filesystem with Windows' naming rules, which also takes no
    trailing dot or space, nor a device name such as ``CON``)."""
    if component.isprintable() and "/" not in component and "\\" not in component:
        cleaned = component  # nearly every name: one C-level check instead of one per character
    else:
        cleaned = "".join(ch for ch in component if (ch.isprintable() or _undecodable_byte(ch)) and ch not in "/\\\0")
    if portable:
        cleaned = cleaned.translate(_PORTABLE).rstrip(". ")
        if not cleaned.isascii():  # bytes that are not UTF-8 (read as lone surrogates): one check for most names
            cleaned = "".join("_" if _undecodable_byte(ch) else ch for ch in cleaned)
        if cleaned.split(".")[0].upper() in WINDOWS_DEVICES:
            cleaned = f"_{cleaned}"
    return cleaned if cleaned not in ("", ".", "..") else "_"


def portable_names(output: str) -> bool:
    """Whether the copies in ``output`` need names that Windows' rules allow: its filesystem is
    FAT, exFAT, NTFS or a Windows share (an external drive, a NAS), where a name such as
    ``clip 00:01:02.png`` cannot be made."""
    kind = filesystem_type(output)
    if kind in WINDOWS_NAMED:
        log.info("%s is on a filesystem of type %s, whose file names cannot hold %s: these characters in the names "
                 "of images are replaced with _ in the names of their copies (clusters.csv names each image's copy)",
                 output, kind, WINDOWS_RESERVED)
        return True
    return False


def portable_folders(names: Sequence[str], output: str) -> tuple[str, ...]:
    """The folders of known people (``--people-from``: as the user named them, on any system) as
    ``output``'s filesystem can hold them: on FAT, exFAT, NTFS or a Windows share the characters its
    names cannot hold become ``_`` (``Mom: 2019`` → ``Mom_ 2019``), and two names that would then
    be one get ``_2``, ``_3``, …; elsewhere, and where no name needs it, ``names`` as they are."""
    cleaned = [_clean(name, portable=True) for name in names]
    if cleaned == list(names) or (kind := filesystem_type(output)) not in WINDOWS_NAMED:
        return tuple(names)
    taken: set[str] = set()
    chosen = []
    for name in cleaned:
        unique, n = name, 1
        while unique.casefold() in taken:
            n += 1
            unique = f"{name}_{n}"
        taken.add(unique.casefold())
        chosen.append(unique)
    changed = [f"{old}/ → {new}/" for old, new in zip(names, chosen) if old != new]
    log.warning("%s is on a filesystem of type %s, whose names cannot hold %s or end in a dot or a space: the "
                "people's folders are made as %s", output, kind, WINDOWS_RESERVED, listed(changed, "folder"))
    return tuple(chosen)


def _normalise_roots(roots: Sequence[str]) -> list[str]:
    """Absolute, normalised roots, deepest first (the deepest root holding a path names it)."""
    return sorted({os.path.normpath(os.path.abspath(r)) for r in roots}, key=len, reverse=True)


def relative_name(path: str, roots: Sequence[str], *, normalised: bool = False, portable: bool = False) -> str:
    """``<input folder name>/<path below it>`` for the deepest root holding ``path``,
    else ``<parent folder name>/<file name>``; every component is made safe (``portable``: for
    Windows' naming rules too)."""
    folder, name = os.path.split(os.path.abspath(path))  # abspath also normalises
    roots = tuple(roots if normalised else _normalise_roots(roots))
    return f"{_folder_name(folder, roots, portable)}/{_clean(name, portable)}"


@functools.lru_cache(maxsize=65536)
def _folder_name(folder: str, roots: tuple[str, ...], portable: bool = False) -> str:
    """The destination's folders for the files of ``folder`` (``relative_name`` without the file
    name): worked out once per folder, not once per file."""
    for root in roots:
        prefix = root.rstrip(os.sep) + os.sep
        if (folder + os.sep).startswith(prefix):
            below = folder[len(prefix):]
            parts = [os.path.basename(root) or "input", *(below.split(os.sep) if below else ())]
            break
    else:
        parts = [os.path.basename(folder) or "input"]
    return "/".join(_clean(p, portable) for p in parts)


def plan_destinations(paths: Sequence[str], clusters: Sequence[str], roots: Sequence[str], *,
                      portable: bool = False) -> list[str]:
    """A relative destination per row; rows with the same (cluster, path) share one.

    Two different sources that would land on the same name get ``_2``, ``_3``, …
    before the extension, assigned in sorted order so the plan is reproducible. ``portable``:
    names that Windows' rules allow (``portable_names``).
    """
    chosen: dict[tuple[str, str], str] = {}
    taken: set[str] = set()
    normalised = tuple(_normalise_roots(roots))
    for cluster, path in sorted(set(zip(clusters, paths))):
        base = f"{cluster}/{relative_name(path, normalised, normalised=True, portable=portable)}"
        dest, n = base, 1
        while dest.casefold() in taken:  # case-insensitive filesystems collide too
            n += 1
            dest = numbered(base, n)
        taken.add(dest.casefold())
        chosen[(cluster, path)] = dest
    return [chosen[(c, p)] for c, p in zip(clusters, paths)]


def _name_bytes(name: str) -> int:
    return len(name.encode("utf-8", "surrogateescape"))


def numbered(relative: str, n: int) -> str:
    """``relative`` with ``_n`` before its extension, its stem shortened where the file name
    would otherwise pass ``NAME_MAX`` bytes (a long name that exists once exists twice)."""
    folder, name = os.path.split(relative)
    stem, ext = os.path.splitext(name)
    tag = f"_{n}{ext}"
    while stem and _name_bytes(stem + tag) > NAME_MAX:
        stem = stem[:-1]
    return os.path.join(folder, stem + tag)


def plan_digest(pairs: Sequence[tuple[str, str]], mode: str) -> str:
    digest = hashlib.sha256(mode.encode())
    for source, dest in sorted(set(pairs)):
        digest.update(f"\0{source}\0{dest}".encode("utf-8", "surrogateescape"))  # names need not be UTF-8
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _real(root: str) -> str:
    return os.path.realpath(root)


def inside(root: str, relative: str) -> str:
    """Absolute destination for ``relative`` under ``root``; refuses anything escaping it."""
    root = _real(root)  # once per output folder, not once per file
    target = os.path.normpath(os.path.join(root, relative))
    # Both normalised and absolute: below ``root`` means starting with it and a separator.
    if target == root or not target.startswith(root if root.endswith(os.sep) else root + os.sep):
        raise FaceOrganizerError(f"refusing to write outside the output folder: {relative!r}")
    return target


def check_output_folder(output: str, dry_run: bool = False) -> None:
    """Refuse an ``--output`` that no run could write into, before any long work starts:
    a file, a folder holding files that no face-organizer placement put there, or a folder
    that cannot be written, or cannot be made (a read-only mount); the last only warned about
    in a ``dry_run``, which writes nothing."""
    if os.path.lexists(output) and not os.path.isdir(output):
        raise SetupError(f"--output {output} is a file, not a folder; choose a new or empty folder")
    if (found := _first_entry(output)) is not None and not os.path.lexists(os.path.join(output, STATE_FILE)):
        raise SetupError(f"--output {output} is not empty (it holds {found}) and was not written by face-organizer; "
                         "choose a new or empty folder")
    try:
        _check_writable(output)
    except SetupError as err:
        if not dry_run:
            raise
        log.warning("%s: the run would stop there", err)


def _check_writable(output: str) -> None:
    """The folder, or where it does not exist yet the nearest folder above it: a file can be
    made there. Nothing is left behind."""
    folder = os.path.abspath(output)
    while not os.path.lexists(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise SetupError(f"cannot write to {output}: {folder} is a file")
    try:
        check_writable_dir(folder, make=False)
    except OSError as err:
        hint = full_disk_hint(err, os.path.join(folder, "_"))
        raise SetupError(f"cannot write to {folder}: {err.strerror or err}{hint}") from None


def check_images_reachable(paths: Sequence[str], output: str, rewrites: Sequence[tuple[str, str]] = ()) -> None:
    """Refuse a new ``output`` when not one of ``paths`` exists: the images were embedded where they
    sit at other paths (another container, another mount point), and every file would be 'missing'.
    An output already started is left to its run: after a move its sources are gone by design.
    ``rewrites``: the rebases of the embeddings file (``rebase.steps``), as an earlier output that a
    move filled may name the images by their paths before them."""
    if not paths or os.path.lexists(os.path.join(output, STATE_FILE)):
        return
    if any(os.path.lexists(p) for p in paths):  # stops at the first one found
        return
    guess = guess_move(paths, near(output))
    where = f" (here: --from {guess[0]} --to {guess[1]} finds them)" if guess else ""
    earlier = moved_into(paths, near(output), rewrites) if guess is None else None
    into = f" (here: --moved-to {earlier} finds them)" if earlier else ""
    raise SetupError(f"none of the {len(set(paths)):,} images named in the embeddings is where it was embedded "
                     f"(for example {paths[0]}): were they embedded in another container or with their folders "
                     "mounted elsewhere, or moved since? Mount them at the same paths, rewrite the file's paths "
                     f"(rebase_embeddings.py FILE --from OLD --to NEW{where}), or add --moved-to with the output "
                     f"folder of an earlier --link-mode move{into}")


def moved_into(paths: Sequence[str], roots: Sequence[str], rewrites: Sequence[tuple[str, str]],
               *, tries: int = 20) -> str | None:
    """An output of an earlier ``--link-mode move`` in one of the folders ``roots`` whose
    ``clusters.csv`` places most of ``tries`` of ``paths``, spread over them, in files that exist
    there now: the folder a forgotten ``--moved-to`` would name. None where there is none."""
    sample = spread(paths, tries)
    former = former_paths(sample, rewrites)
    for root in dict.fromkeys(roots):
        try:
            folders = sorted(e.path for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        except OSError:
            continue
        for folder in folders:
            if not holds_moved_images(saved_state(folder) or {}):
                continue
            try:
                found = moved_locations([folder], former)
            except SetupError:
                continue  # its table is unreadable
            if 2 * sum(any(os.path.lexists(f) for f in found.get(p, ())) for p in sample) > len(sample):
                return folder
    return None


def prepare_output(output: str, digest: str, dry_run: bool, mode: LinkMode,
                   run: dict[str, Any] | None = None, may_grow: bool = False) -> dict[str, Any] | None:
    """Check the output folder: empty/new, or the same plan interrupted or finished.

    Returns the saved state of an earlier run of this very plan being continued, None
    for a new one. Raises ``SetupError`` for a folder holding anything else. ``run``: the
    settings of the stage's run, kept in the state file for ``check_same_run``.
    ``may_grow``: the stage vouches that a run of the same command made the output (finished, or
    interrupted) and that this plan keeps its files where they are; another plan with the same
    ``run`` is then taken on from it, in state ``grown`` until it finishes (``place_all`` checks
    the files there that the earlier run's table does not name).
    """
    check_output_folder(output, dry_run)
    state = os.path.join(output, STATE_FILE)
    if not _has_entries(output):
        if not dry_run:
            os.makedirs(output, exist_ok=True)
            _write_state(output, digest, mode, 0, run)
        return None
    try:
        with open(state, encoding="utf-8") as handle:
            previous = json.load(handle)
    except (OSError, ValueError):
        raise SetupError(f"--output {output}: its {STATE_FILE} cannot be read; choose a new folder, or remove it "
                         "to start over") from None
    if not isinstance(previous, dict) or previous.get("plan") != digest:
        if (may_grow and isinstance(previous, dict) and run and previous.get("run") == run
                and not holds_moved_images(previous)):
            if not dry_run:  # "grown" stays until the run finishes: a re-run after an interruption goes on alike
                _write_state(output, digest, mode, 0, run, grown=True)
            return {**previous, "plan": digest, "durable": 0, "grown": True}
        if isinstance(previous, dict) and holds_moved_images(previous):
            raise SetupError(f"--output {output} holds images an earlier run moved there (--link-mode move), sorted "
                             f"differently; removing it would delete them. Choose a new folder, and add --moved-to "
                             f"{output} to cluster_faces or search_faces to read the images from there")
        raise SetupError(
            f"--output {output} holds the output of a different run (other embeddings, settings, query or files); "
            "choose a new folder, or remove it to start over"
        )
    if previous.get("undone") and not dry_run:  # the images an undo took back are placed again
        _write_state(output, digest, mode, int(previous.get("durable", 0)), run, grown=bool(previous.get("grown")))
    return previous


FILE_STATES = {"placed": "placed", "exists": "already in place", "missing": "missing",
               OCCUPIED: "not placed: another file is there"}  # status → summary words


def files_line(status: Mapping[str, int]) -> str:
    """The summary's count of files by what their placement did: ``files: 12 placed, 3 already in place``."""
    order = [*FILE_STATES, *sorted(set(status) - set(FILE_STATES))]
    return "files: " + (", ".join(f"{status[k]:,} {FILE_STATES.get(k, k)}" for k in order if status.get(k)) or "none")


def missing_note(missing: int, table: str, found_in: str | None = None) -> str:
    """The summary's line on images not placed because they were not where the embeddings file says;
    ``found_in``: the output of an earlier ``--link-mode move`` that holds them (``missing_found_in``)."""
    them = "it" if missing == 1 else "them"
    where = (f" (here: --moved-to {found_in} finds {them}; the same command with it places {them} too)"
             if found_in else "")
    return (f"{count(missing, 'image')} {'was' if missing == 1 else 'were'} no longer where the embeddings file "
            f"says (moved or deleted since embedded): {table} lists {them} with status 'missing'; images that an "
            f"earlier --link-mode move took are found with --moved-to and that run's output folder{where}")


def missing_found_in(paths: Sequence[str], placement: Placement, roots: Sequence[str],
                     rewrites: Sequence[tuple[str, str]]) -> str | None:
    """The output of an earlier ``--link-mode move``, in one of the folders ``roots``, that holds most of
    the images ``placement`` (of ``paths``) found missing: the ``--moved-to`` the run lacked. None where
    none is missing, or no such output is found."""
    missing = [p for p, d in zip(paths, placement.destinations) if placement.status.get(d) == "missing"]
    return moved_into(missing, roots, rewrites) if missing else None


def placement_notes(status: Mapping[str, int], table: str | None, found_in: str | None = None) -> list[str]:
    """The summary's lines on the images a placement could not put where it meant to; ``table``: the
    CSV file whose ``status`` column names them, if the stage writes one; ``found_in``: the earlier
    output that holds the missing ones (``missing_found_in``)."""
    notes = [missing_note(status["missing"], table, found_in)] if table and status.get("missing") else []
    if kept := status.get(OCCUPIED, 0):
        one = kept == 1
        listed = f"{table} lists {'its image' if one else 'their images'} with status '{OCCUPIED}'; " if table else ""
        notes.append(f"{count(kept, 'place')} in the output already held another file (changed or put there "
                     f"since): left as {'it is' if one else 'they are'}; {listed}move {'it' if one else 'them'} out "
                     "of the output and run the same command again to place the images there")
    return notes


def _mark_durable(output: str, digest: str, mode: LinkMode, done: int, run: dict[str, Any] | None,
                  grown: bool = False) -> None:
    """Flush the output's filesystem, then record that the first ``done`` operations are on disk."""
    sync_filesystem(output)
    _write_state(output, digest, mode, done, run, grown)


def _write_state(output: str, digest: str, mode: LinkMode, durable: int, run: dict[str, Any] | None,
                 grown: bool = False) -> None:
    """``grown``: a plan that adds to an earlier run's output, not finished yet (see ``prepare_output``)."""
    state = {"plan": digest, "durable": durable, "mode": mode, **({"run": run} if run else {}),
             **({"grown": True} if grown else {})}
    atomic_write_text(os.path.join(output, STATE_FILE), json.dumps(state))


def saved_state(output: str) -> dict[str, Any] | None:
    """The state file of an output (``STATE_FILE``), or None where there is none that can be read."""
    try:
        with open(os.path.join(output, STATE_FILE), encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def holds_moved_images(state: Mapping[str, Any]) -> bool:
    """An output's state (``saved_state``) says a move filled it and no undo emptied it since:
    removing the folder would delete the images."""
    return state.get("mode") == "move" and not state.get("undone")


def check_same_run(output: str, run: Mapping[str, Any], stage: str, *, subject: str, of: Callable[[Mapping[str, Any]], str],
                   advice: str, moved_to: bool = False) -> None:
    """Refuse, before a stage's long work (a clustering, hours of predictions), an output that
    another run of it wrote, rather than once the work is done, when ``place_all`` finds a plan
    that differs. ``run``: this run's settings as the stage records them; ``subject``: the one
    naming what it sorts (the images, the input folders), described by ``of(earlier run)`` and
    answered with ``advice``; ``moved_to``: the stage reads images an earlier move took with
    ``--moved-to``. Settings an older run did not record are not compared."""
    state = saved_state(output) or {}
    earlier = state.get("run")
    if not isinstance(earlier, dict):
        return
    changed = sorted(k for k in run if k in earlier and earlier[k] != run[k])
    if not changed:
        return
    moved = holds_moved_images(state)
    if subject in changed:
        what, advice = f"of {of(earlier)}", advice if moved else f"{advice}, or remove it to start over"
    else:
        def shown(value: Any) -> Any:
            return "not given" if value is None else ", ".join(map(str, value)) if isinstance(value, list) else value

        what = "made with other settings ({})".format("; ".join(
            f"{k} {shown(earlier[k])}, now {shown(run[k])}" for k in changed))
        advice = "choose a new --output" if moved else "choose a new --output, or remove it to start over"
    if moved:
        advice += "; it holds the images that run moved there (--link-mode move), which removing it would delete"
        if moved_to:
            advice += f" (--moved-to {output} reads them from there)"
    raise SetupError(f"--output {output} holds the output of another {stage} run, {what}: {advice}")


def mark_undone(output: str) -> None:
    """Record that every image a move put in ``output`` went back (``undo_move``): it holds none
    now, so removing it loses nothing. Placing the same plan again rewrites the state without it."""
    state = saved_state(output)
    if state is not None:
        atomic_write_text(os.path.join(output, STATE_FILE), json.dumps({**state, "undone": True}))


def images_run(paths: Sequence[str]) -> dict[str, Any]:
    """What a run of cluster_faces or search_faces records of the images it sorts, for
    ``check_same_images``: a digest of their paths (0.37 s for 500,000) and their number."""
    unique = sorted(set(paths))
    digest = hashlib.sha256()
    for path in unique:
        digest.update(f"{path}\0".encode("utf-8", "surrogateescape"))  # names need not be UTF-8
    return {"images": digest.hexdigest(), "image_count": len(unique)}


def check_same_images(output: str, run: Mapping[str, Any], stage: str) -> None:
    """``check_same_run`` for the stages that sort the images of embeddings files (``run`` holds
    ``images_run``'s keys): a loop over year folders into one output is told to give each its own."""
    def other(earlier: Mapping[str, Any]) -> str:
        before, now = earlier.get("image_count"), run["image_count"]
        return f"other images ({count(before, 'image')}, now {count(now, 'image')})" \
            if isinstance(before, int) and before != now else "other images"

    people = (f"; new images into its people: --people-from {output} and a new --output"
              if stage == "cluster_faces" else "")
    advice = f"give each embeddings file its own --output (in a loop over year folders: one per year{people})"
    check_same_run(output, run, stage, subject="images", of=other, moved_to=True, advice=advice)


def _partial_name(dest: str) -> str:
    """The temporary name beside ``dest`` that a copy or link is made under (short whatever the
    length of ``dest``'s)."""
    key = hashlib.sha1(os.path.basename(dest).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(os.path.dirname(dest), f"{PARTIAL_PREFIX}{os.getpid()}-{key}")


def _copy_atomic(source: str, dest: str, durable: bool = True) -> None:
    """Copy through a temporary name, so ``dest`` is whole or absent; ``durable``: on disk
    before the rename (else the caller flushes many copies at once). The temporary name is
    short whatever the length of ``dest``'s; a re-run removes one a crash left
    (``remove_partial_copies``)."""
    tmp = _partial_name(dest)
    try:
        shutil.copyfile(source, tmp)
        # The source's times and mode, where the filesystem takes them: FAT and exFAT drives refuse a mode
        # their mount options do not give (EPERM), which made every copy onto such a drive fail.
        with contextlib.suppress(OSError):
            shutil.copystat(source, tmp)
        if durable:
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _link_atomic(source: str, dest: str) -> None:
    """Hard-link ``source`` in place of ``dest`` through a temporary name: ``dest`` is never absent."""
    tmp = _partial_name(dest)
    os.link(source, tmp)
    try:
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise


def place(source: str, dest: str, mode: LinkMode, *, durable: bool = True, verify: bool = False,
          replace: bool = False, folders: set[str] | None = None) -> str:
    """Put ``source`` at ``dest``: 'placed', 'exists' (done by an earlier run), 'missing', or
    ``OCCUPIED`` where ``dest`` holds another file (one the user changed or put there since): it is
    left as it is, and ``source`` too.

    A move renames within a filesystem (atomic); across filesystems it copies,
    makes the copy durable, and only then removes the source, so an interruption
    leaves the file at the source, at the destination, or (between the last two
    steps) at both, which the next run resolves by finishing the move. A copy with
    ``durable=False`` is left to the caller to flush; ``verify`` (for copies an earlier
    run made after its last flush, which a power cut may have emptied) compares an
    existing destination's bytes with the source and copies again when they differ.
    ``replace``: ``dest`` is this stage's own copy or link of an image rewritten since, made
    anew (a copy only where the bytes differ).
    ``folders``: destination folders known to exist, shared by the calls of one placement (each
    folder is then made once, not checked once per file); the folders this call makes are added.
    """
    if os.path.lexists(dest):
        if replace and mode == "copy":
            verify = True
        elif replace and mode == "hardlink" and os.path.exists(source) and not os.path.samefile(source, dest):
            _link_atomic(source, dest)
            return "placed"
        if mode == "hardlink" and os.path.exists(source) and os.path.samefile(source, dest):
            return "exists"
        if mode == "symlink" and os.path.islink(dest) and _points_to(dest) == os.path.abspath(source):
            return "exists"
        if mode == "move":
            if source == dest or not os.path.exists(source):  # never delete what is to be placed
                return "exists"
            if same_bytes(source, dest):
                os.unlink(source)  # the copy completed before an interruption
                return "exists"
        if mode == "copy" and not os.path.exists(source):
            return "exists"
        if mode == "copy" and verify and not os.path.islink(dest):
            if same_bytes(source, dest):
                return "exists"
            _copy_atomic(source, dest, durable)  # our own copy, cut short by a power cut
            return "placed"
        if mode == "copy" and same_size(source, dest):
            return "exists"
        log.debug("%s holds another file than %s: left as it is", dest, source)
        return OCCUPIED  # changed or put there since: never overwritten
    if not os.path.exists(source):
        return "missing"
    folder = os.path.dirname(dest)
    if folders is None or folder not in folders:
        os.makedirs(folder, exist_ok=True)
        if folders is not None:
            folders.add(folder)
    if mode == "copy":
        _copy_atomic(source, dest, durable)
    elif mode == "symlink":
        os.symlink(link_text(source, dest), dest)
    elif mode == "hardlink":
        try:
            os.link(source, dest)
        except OSError as err:
            if err.errno == errno.EXDEV:
                raise FaceOrganizerError(f"cannot hard-link {source} into {dest}: different filesystems; use --link-mode copy or symlink") from None
            raise
    elif mode == "move":
        # Renamed, a link would point elsewhere from its new folder (a relative one) or at a file
        # this run moves on: the folder gets the image it shows, then the link goes.
        if os.path.islink(source) or not _renamed(source, dest):
            _copy_atomic(source, dest)
            os.unlink(source)
    else:
        raise ValueError(f"unknown link mode {mode!r}")
    return "placed"


def link_text(source: str, dest: str) -> str:
    """What the symbolic link ``dest`` to ``source`` holds: the way from its folder to ``source``
    where both lie on one mount, else ``source``'s absolute path. A container's ``/workspace`` is
    the host's ``./workspace``: an absolute ``/workspace/input/…`` was a broken link on the host,
    where the person folders are looked at, while ``../../../input/…`` holds on both sides."""
    source = os.path.abspath(source)
    folder, name = os.path.split(source)
    way = _way(folder, os.path.dirname(dest))
    return source if way is None else name if way == os.curdir else os.path.join(way, name)


@functools.lru_cache(maxsize=65536)
def _way(folder: str, link_folder: str) -> str | None:
    """From ``link_folder`` to ``folder`` where both lie on one mount, else None (once per pair of
    folders: 12 µs a link before, at 500,000 links six seconds)."""
    if _mount_point(folder) == _mount_point(link_folder) is not None:
        return os.path.relpath(folder, link_folder)
    return None


@functools.lru_cache(maxsize=65536)
def _mount_point(folder: str) -> str | None:
    """The mount point holding ``folder`` (once per folder, not once per file)."""
    mount = mount_of(folder)
    return mount[0] if mount else None


def _points_to(link: str) -> str:
    """The path the symbolic link ``link`` names, absolute (a relative one read from its folder)."""
    return os.path.normpath(os.path.join(os.path.dirname(link), os.readlink(link)))


def _renamed(source: str, dest: str) -> bool:
    """``os.rename``; False, with nothing done, when the two are on different filesystems."""
    try:
        os.rename(source, dest)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        return False
    return True


def remove_partial_copies(destinations: Sequence[str]) -> int:
    """Delete the temporary copies an interrupted run left in the folders of ``destinations``
    (the caller holds the output's lock, so no copy is still being written); their count."""
    removed = 0
    for folder in sorted({os.path.dirname(d) for d in destinations}):
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith(PARTIAL_PREFIX) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    return removed


@dataclass
class Placement:
    """Where each row's file went: ``destinations`` (absolute, one per row) and the outcome
    per destination ('placed', 'exists', 'missing'; empty for a dry run)."""

    destinations: list[str]
    status: dict[str, str]
    resumed: bool


def place_all(output: str, paths: Sequence[str], groups: Sequence[str], roots: Sequence[str], mode: LinkMode, *,
              sources: Sequence[str] | None = None, dry_run: bool = False, progress: bool = True,
              run: dict[str, Any] | None = None, grows_from: Mapping[str, str] | None = None,
              renew: Set[str] = frozenset()) -> Placement:
    """Put each path under ``output/<group>/…`` (``"."``: directly under ``output``).

    ``sources``: where each image is now, where that is not its path (an earlier move took it
    elsewhere: ``relocate``); destinations are named from ``paths`` either way, and so is the
    plan, so that a re-run finds it the same once some images have moved on. ``run``: the stage's
    settings, recorded for ``check_same_run``.
    The plan is checked against the output folder first (new, empty, or the same plan
    interrupted or finished); a dry run stops there and writes nothing.
    ``grows_from``: where a finished run of the same command put each of its images (empty when
    none finished: an interrupted one's plan); this plan may then add to the output (new images, of
    a folder that grew) as long as it keeps those where they are. In an output that grows, a file
    already at a destination that ``grows_from`` does not name is checked against its source and
    made anew where it differs: an interrupted run's copy not yet flushed, or a copy of an earlier
    file of that name. ``renew``: paths whose file was rewritten since that run, whose copies are
    made anew.
    """
    destinations = [inside(output, d) for d in plan_destinations(paths, groups, roots, portable=portable_names(output))]
    if grows_from is not None:
        _refuse_moved_destinations(output, paths, destinations, grows_from)
    named = sorted(set(zip(paths, destinations)))
    operations = named if sources is None else sorted(set(zip(sources, destinations)))
    # Only what is not placed yet can fail; on a new output that is everything (no lookups).
    started = _has_entries(output)
    todo = [op for op in operations if not os.path.lexists(op[1])] if started else operations
    # Symbolic links are placed as the images they show (see ``_ordered``): found once, from folder listings.
    links = symbolic_links({source for source, _ in operations}) if mode in ("hardlink", "move") else frozenset()
    check_sources(todo, output, mode, links)
    if todo and not dry_run:
        check_links(output, mode)
    check_space(todo, output, mode, dry_run, links)
    digest = plan_digest(named, mode)
    previous = prepare_output(output, digest, dry_run, mode, run, may_grow=grows_from is not None)
    if previous is not None:
        _refuse_renamed_folders(output, paths, destinations)
        log.info("%s %s", "adding to the earlier run's output" if previous.get("grown") else "continuing an earlier run into",
                 output)
        if not dry_run and (removed := remove_partial_copies(destinations)):
            log.info("removed %d unfinished cop%s an interrupted run left", removed, "y" if removed == 1 else "ies")
    status: dict[str, str] = {}
    if dry_run:
        return Placement(destinations, status, previous is not None)
    # Growing, the files at destinations that the earlier table does not name are checked, not trusted.
    grown = previous is not None and bool(previous.get("grown"))
    unnamed = {dest for path, dest in named if path not in (grows_from or {})} if grown else set()
    folders: set[str] = set()
    inputs = Vanishing(os.path.abspath(r) for r in roots)  # a drive unplugged mid-run: stop, not 'missing' for all
    if mode != "copy":  # links take no data; moves make each copy durable before deleting its source
        for source, dest, how in progress_bar(_ordered(operations, mode, links), total=len(operations), unit="file",
                                              enabled=progress and bool(operations), desc=mode):
            status[dest] = place(source, dest, how, replace=source in renew or dest in unnamed, folders=folders)
            _watch(inputs, status[dest])
        if grown:
            _write_state(output, digest, mode, len(operations), run)  # finished: no longer growing
        return Placement(destinations, status, previous is not None)
    # Copies are flushed SYNC_EVERY at a time, not one fsync each (1.2-1.7x faster for 20 KB crops
    # on an SSD: benchmarks/bench_placement.py); the state file records how many are on disk, and a
    # re-run checks the bytes of the copies after that point, which a power cut may have left empty.
    # Growing, the copies the earlier table names were flushed when their run finished (the others: unnamed).
    earlier = previous if previous is not None and not grown else {}
    durable = int(earlier.get("durable", len(operations)))
    unflushed = 0
    bar = progress_bar(operations, unit="file", enabled=progress and bool(operations), desc=mode)
    for i, (source, dest) in enumerate(bar):
        status[dest] = place(source, dest, mode, durable=False, verify=i >= durable,
                             replace=source in renew or dest in unnamed, folders=folders)
        _watch(inputs, status[dest])
        unflushed += status[dest] == "placed"
        if unflushed >= SYNC_EVERY:
            _mark_durable(output, digest, mode, i + 1, run, grown)
            unflushed = 0
    _mark_durable(output, digest, mode, len(operations), run)
    return Placement(destinations, status, previous is not None)


def _watch(inputs: Vanishing, status: str) -> None:
    if status == "missing":
        inputs.not_reached(1, GONE)
    else:
        inputs.reached()


def _refuse_moved_destinations(output: str, paths: Sequence[str], destinations: Sequence[str],
                               earlier: Mapping[str, str]) -> None:
    """Refuse a plan that grows an earlier run's output but would put one of that run's images
    under another name (two names that differ only in case, the second new): it would be there twice."""
    moved = [(earlier[p], d) for p, d in zip(paths, destinations) if p in earlier and earlier[p] != d]
    if moved:
        raise SetupError(f"--output {output}: the images added since would give {count(len(moved), 'image')} the earlier "
                         f"run placed another name (such as {moved[0][0]} → {moved[0][1]}); choose a new --output")


def _refuse_renamed_folders(output: str, paths: Sequence[str], destinations: Sequence[str]) -> None:
    """The same run again into its output, whose folders the user renamed since (``person_A`` to
    ``alice``): it would place their images a second time under the old names. Refused, naming them."""
    real = os.path.realpath(output)
    root = os.path.join(real, "")
    rows = []
    for path, dest in zip(paths, destinations):
        folder, sep, rest = dest[len(root):].partition(os.sep)
        if dest.startswith(root) and sep:
            rows.append(Placed(path, folder, rest, None))
    refuse_renamed(output, renamed_folders(real, samples_of(rows)))


def refuse_renamed(output: str, renamed: Mapping[str, str]) -> None:
    """Refuse a run into ``output`` whose folders ``renamed`` (old name -> new) were renamed since."""
    if renamed:
        raise SetupError(f"--output {output}: {', '.join(f'{old}/ is {new}/ now' for old, new in sorted(renamed.items()))}"
                         "; this run would place those images again under the old names. Rename them back to run it "
                         "again, or choose a new --output (cluster_faces --people-from follows the new names)")


BLOCK = 4096  # files take whole filesystem blocks


# What an operating system or a NAS leaves in a folder that was only opened or made there (Finder's .DS_Store, the
# AppleDouble ._ files it writes on other disks, Explorer's Thumbs.db and desktop.ini, the lost+found of a disk
# mounted there): a folder holding only these is as new to a stage sorting into it.
OS_CLUTTER = SYSTEM_FOLDERS | frozenset(name.casefold() for name in (
    ".DS_Store", ".localized", ".Trashes", ".Spotlight-V100", ".fseventsd", ".TemporaryItems", ".AppleDouble",
    "Thumbs.db", "desktop.ini"))


def is_os_clutter(name: str) -> bool:
    """Whether ``name`` is one of ``OS_CLUTTER`` or an AppleDouble ``._`` file."""
    return name.casefold() in OS_CLUTTER or name.startswith("._")


def _has_entries(folder: str) -> bool:
    return _first_entry(folder) is not None


def _first_entry(folder: str) -> str | None:
    """The name of something in ``folder`` other than this run's own files (``RUN_FILES``: its --log, and folders
    made for it) and ``OS_CLUTTER``; None where it holds nothing else, as a new output."""
    if not os.path.isdir(folder):
        return None
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            path = os.path.abspath(entry.path)
            if path in RUN_FILES or is_os_clutter(entry.name):
                continue
            if (entry.is_dir(follow_symlinks=False) and any(f.startswith(path + os.sep) for f in RUN_FILES)
                    and not _has_entries(path)):
                continue
            return entry.name
    return None


def _device(path: str) -> int:
    return os.stat(path).st_dev


def _filesystem(path: str) -> tuple[int, str | None]:
    """What a hard link or a rename needs its two ends to share: the device, and the mount. One
    filesystem mounted at two places refuses them too (EXDEV): a container's bind mounts of one
    host disk, such as compose's ``./media`` and ``./workspace``."""
    return _device(path), _mount_point(path)


def _existing_ancestor(path: str) -> str:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def bytes_needed(todo: Sequence[tuple[str, str]], output: str, mode: LinkMode, links: Set[str] | None = None) -> int:
    """Bytes the operations ``todo`` (not done yet) will add to the output's filesystem:
    copies, and moves from another filesystem (a rename takes no space); links take none.
    ``links``: the symbolic links among the sources, found here when not given."""
    if mode in ("hardlink", "symlink"):
        return 0
    device, mount = _filesystem(_existing_ancestor(output))
    total = 0
    if links is None:
        links = symbolic_links({source for source, _ in todo})
    for source, _, how in _ordered(todo, mode, links):
        try:
            stat = os.stat(source)
        except OSError:
            continue  # reported as missing when placed
        renamed = stat.st_dev == device and _mount_point(os.path.dirname(source)) == mount and source not in links
        if how == "copy" or not renamed:  # a moved link is copied (``place``), and so is an image another mount holds
            total += -(-stat.st_size // BLOCK) * BLOCK
    return total


def check_sources(todo: Sequence[tuple[str, str]], output: str, mode: LinkMode, links: Set[str]) -> None:
    """Refuse, before the first file, what would fail half-way in ``todo`` (not done yet): hard
    links from another filesystem (a folder there, or a symbolic link to an image there), and moves
    out of folders that cannot be written (a read-only mount). ``links``: the symbolic links among the sources."""
    if mode not in ("hardlink", "move"):
        return
    home = _filesystem(_existing_ancestor(output))
    for folder in sorted({os.path.dirname(source) for source, _ in todo}):
        try:
            there = _filesystem(folder)
        except OSError:
            continue  # its files are reported as missing when placed
        if mode == "hardlink" and there != home:
            raise SetupError(f"--link-mode hardlink: {folder} is {_apart(there, home, output)}; "
                             "use --link-mode copy or symlink")
        if mode == "move" and not os.access(folder, os.W_OK):
            raise SetupError(f"--link-mode move: files cannot be removed from {folder} (read-only or not yours); "
                             "use --link-mode copy, hardlink or symlink")
    if mode == "hardlink":  # a hard link to a symbolic link is made to the image it shows
        for link in sorted(links & {source for source, _ in todo}):
            try:
                there = _filesystem(link)  # the image it shows: stat and the mount table follow links
            except OSError:
                continue  # a broken link: reported as missing when placed
            if there != home:
                raise SetupError(f"--link-mode hardlink: {link} is a symbolic link to an image that is "
                                 f"{_apart(there, home, output)}; use --link-mode copy or symlink")


def _apart(there: tuple[int, str | None], home: tuple[int, str | None], output: str) -> str:
    """Why no hard link joins ``there`` (``_filesystem``) to the output's ``home``, for an error line."""
    if there[0] == home[0]:  # one filesystem, mounted at two places
        return (f"under another mount point ({there[1]}) than {output} ({home[1]}), and hard links cannot cross "
                "mount points, even of one filesystem")
    return f"on another filesystem than {output}, and hard links cannot cross filesystems"


def check_links(output: str, mode: LinkMode) -> None:
    """Refuse ``--link-mode hardlink`` or ``symlink`` where the output's filesystem cannot make such
    links (FAT and exFAT drives, some shares), before the first file: one is made beside a temporary
    file in the output's nearest existing folder, and both removed. Otherwise the first image failed
    with "Operation not permitted", and the output then belonged to that link mode."""
    if mode not in ("hardlink", "symlink"):
        return
    folder = _existing_ancestor(os.path.abspath(output))
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{PARTIAL_PREFIX}probe-", dir=folder)
    except OSError:
        return  # nothing can be written there: the run's own checks say so
    os.close(fd)
    made = f"{probe}.link"
    try:
        (os.link if mode == "hardlink" else os.symlink)(probe, made)
    except OSError as err:
        kind = "hard" if mode == "hardlink" else "symbolic"
        raise SetupError(f"--link-mode {mode}: {output} is on a filesystem that cannot make {kind} links "
                         f"({filesystem_type(folder) or 'type unknown'}: {err.strerror or err}); use --link-mode copy "
                         "(or move)") from None
    finally:
        for name in (made, probe):
            with contextlib.suppress(OSError):
                os.unlink(name)


def symbolic_links(paths: Set[str]) -> frozenset[str]:
    """Those of ``paths`` that are symbolic links, read from one listing per folder (no call per file)."""
    names: dict[str, set[str]] = {}
    for path in paths:
        folder, name = os.path.split(path)
        names.setdefault(folder, set()).add(name)
    links = []
    for folder in sorted(names):
        try:
            with os.scandir(folder) as entries:
                links += [os.path.join(folder, e.name) for e in entries if e.name in names[folder] and e.is_symlink()]
        except OSError:
            continue  # its files are reported as missing when placed
    return frozenset(links)


def check_space(todo: Sequence[tuple[str, str]], output: str, mode: LinkMode, dry_run: bool, links: Set[str]) -> None:
    """Refuse to start copies that cannot fit: a full disk would stop the run half-way."""
    needed = bytes_needed(todo, output, mode, links)
    free = shutil.disk_usage(_existing_ancestor(output)).free
    if needed <= free:
        return
    message = (f"--link-mode {mode} needs {size(needed)} in {output} but its filesystem has "
               f"{size(free)} free; free some space, or use --link-mode hardlink or symlink")
    if dry_run:
        log.warning("%s", message)
        return
    raise SetupError(message)


def _ordered(operations: Sequence[tuple[str, str]], mode: LinkMode, links: Set[str]) -> list[tuple[str, str, LinkMode]]:
    """``(source, dest, mode)`` per operation. A photo whose faces went to several folders is
    moved only once: it is copied to every destination but its last, then moved to that one,
    so it ends up in every folder it belongs to and a resumed run finds the copies done.
    Symbolic links are moved first, as copies of the images they show (see ``place``), while
    those images are still where the links point. A hard link is made to the image a symbolic
    link shows: Linux's link() makes one to the link itself, and a relative link would then
    point elsewhere from its new folder."""
    if mode not in ("move", "hardlink"):
        return [(s, d, mode) for s, d in operations]
    if mode == "hardlink":
        return [(os.path.realpath(s) if s in links else s, d, mode) for s, d in operations]
    last = {source: dest for source, dest in operations}  # sorted: the last destination per source
    ordered = sorted(operations, key=lambda op: op[0] not in links)  # stable: each source's order is kept
    return [(s, d, "move" if last[s] == d else "copy") for s, d in ordered]
