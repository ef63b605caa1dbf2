"""A resumable embedding run over many images: decode in workers, embed in batches,
checkpoint atomically, and finish with one sorted embeddings file.

Checkpoints are parts beside the output (``OUTPUT.parts/part-NNNNNN.pkl``), each
holding only the rows since the previous one, so a checkpoint costs the same at
image 10 as at image 500,000. Re-running the same command reads the output and
the parts and embeds only what is not in them yet.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence, Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray

from . import embfile, images, quality
from .cpus import usable_cpus
from .decoding import Loader, iter_loaded
from .embfile import UNTRIED_KEY, EmbeddingsFile, parts_dir
from .errors import EmbeddingsFileError, RunStopped, SetupError, device_failed, one_line
from .faces import AT_THE_LIMIT, BatchResult, EmbedOptions, FaceModels, FaceRows, ShrunkPhotos, embed_batch
from .fsutil import atomic_write_text
from .moves import reached_elsewhere
from .progress import bar as progress_bar
from .progress import count
from .vanished import Vanishing

log = logging.getLogger(__name__)


COUNTED = ("total_images", "already_done", "changed", "turned_again", "embedded", "faces", "fallback", "no_face",
           "reused", "copies", "failures_gone", "moved", "several_faces", "at_the_limit", "faceless_left")


def gone_lines(not_found: int, failures_gone: int) -> list[str]:
    """A run's lines for the images its file holds that it did not find under the inputs, and for the failures
    of files deleted since (each line only where there are such images)."""
    return [
        *([f"held in the file but not found under the inputs now: {count(not_found, 'image')} (moved or deleted "
           "since, or from other inputs); kept"] if not_found else []),
        *([f"failed before and deleted since: {count(failures_gone, 'image')}; no longer listed as failed"]
          if failures_gone else []),
    ]


@dataclass
class RunSummary:
    output: str
    device: str
    streams: int = 1
    mode: str = "crops"  # crops: a face not found is embedded centred (fallback); photos: the photo has none
    total_images: int = 0
    already_done: int = 0
    changed: int = 0  # embedded before, but the file has changed since: embedded again
    turned_again: int = 0  # photos without a face before, not tried turned then: embedded again (--turn-faceless)
    turn_faceless: bool = False  # photos mode: photos without a face were tried turned (--turn-faceless)
    faceless_left: int = 0  # --turn-faceless: photos held without a face from a run without it, not under the inputs
    embedded: int = 0
    faces: int = 0
    fallback: int = 0
    no_face: int = 0
    reused: int = 0
    copies: int = 0  # images whose bytes an image embedded before has (in this run, or the file's): its rows
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_examples: list[tuple[str, str]] = field(default_factory=list)  # the first few, to show
    rows_in_file: int = 0
    # Images the file holds that were not found this time: moved or deleted since, or embedded from other
    # inputs. Kept (a move into person folders must not lose them); one run's count, not added up.
    not_found: int = 0
    failures_gone: int = 0  # images that had failed and have since been deleted: no longer listed as failed
    moved: int = 0  # held paths gone since whose bytes are at another path found: dropped (moved, copies deleted)
    several_faces: int = 0  # crops mode: images that show another face of like size (photos with several people)
    at_the_limit: int = 0  # photos mode: photos with a face at the detector's smallest (``faces.AT_THE_LIMIT``)
    det_size: int = 0  # photos mode: the size photos were detected at (0: not known, as in a launcher's total)
    file_unchanged: bool = False  # nothing new was found: the file was left as it was
    elapsed: float = 0.0

    @property
    def processed(self) -> int:
        return self.embedded + self.no_face + sum(self.skipped.values())

    @property
    def rate(self) -> float:
        return self.processed / self.elapsed if self.elapsed > 0 else 0.0

    def counts(self) -> dict[str, Any]:
        """What a launcher adds up over its workers (plain JSON types), with ``add``."""
        return {**{key: getattr(self, key) for key in COUNTED}, "skipped": dict(self.skipped),
                "turn_faceless": self.turn_faceless}

    def add(self, counts: dict[str, Any]) -> None:
        """Add another run's ``counts()``."""
        for key in COUNTED:
            setattr(self, key, getattr(self, key) + int(counts.get(key, 0)))
        self.turn_faceless = self.turn_faceless or bool(counts.get("turn_faceless"))
        self.skipped.update({str(reason): int(n) for reason, n in counts.get("skipped", {}).items()})

    def count_batch(self, n_images: int, result: BatchResult) -> None:
        """Count what ``embed_batch`` made of ``n_images`` images."""
        self.reused += len(result.reused)
        self.several_faces += len(result.several)
        self.at_the_limit += len(result.at_the_limit)
        self.embedded += n_images - len(result.no_face)
        self.faces += len(result.rows)
        self.no_face += len(result.no_face)
        self.fallback += int((~result.rows.detected).sum())

    def count_copy(self, rows: FaceRows | None) -> None:
        """Count an image that took the rows of an image with its bytes (None: that image has no face)."""
        self.copies += 1
        if rows is None:
            self.no_face += 1
            return
        self.embedded += 1
        self.faces += len(rows)
        self.fallback += int((~rows.detected).sum())

    def count_lines(self) -> list[str]:
        """The images found, embedded, reused and skipped."""
        out = [
            f"images found: {self.total_images:,}; already embedded: {self.already_done:,}"
            + (f"; changed since embedded, so embedded again: {self.changed:,}" if self.changed else "")
            + (f"; without a face before, so tried turned now: {self.turned_again:,}" if self.turned_again else ""),
            *gone_lines(self.not_found, self.failures_gone),
            *([f"moved since embedded, named through a linked folder now, or a copy deleted (the same bytes found "
               f"at another path under the inputs, and the old path gone or the same file): "
               f"{count(self.moved, 'image')}; the file names them only where they are now"] if self.moved else []),
            f"embedded now: {count(self.embedded, 'image')}, {count(self.faces, 'face')}; "
            + (f"photos without a face: {self.no_face:,}" if self.mode == "photos"
               else f"fallback (no face found, centre crop used): {self.fallback:,}"),
        ]
        if self.mode == "photos" and self.no_face and not self.turn_faceless:
            out.append("  a print scanned sideways may show no face upright: --turn-faceless tries such photos turned "
                       "by 90, 180 and 270 degrees (a re-run with it tries only these)")
        if self.faceless_left:
            out.append(f"photos without a face from a run without --turn-faceless, not under the inputs now: "
                       f"{self.faceless_left:,}; not tried turned (a run with it over their folders tries them)")
        if self.reused:
            out.append(f"near-identical frames that took the embedding of the frame they repeat: {self.reused:,}")
        if self.copies:
            out.append(f"copies of an image embedded before (the same bytes), which took its rows instead "
                       f"of being embedded again: {self.copies:,}")
        if self.several_faces:
            out.append(f"images showing another face about as large as the one embedded: {self.several_faces:,} (crops "
                       "mode embeds one face per image, the most central; --mode photos embeds every face)")
        if self.at_the_limit:
            larger = ("--det-size 1280 finds, at about half the speed" if 0 < self.det_size < 1280
                      else "a larger --det-size finds, at a fraction of the speed")
            out.append(f"photos with a face at the smallest size the detector finds (under {AT_THE_LIMIT} pixels as it "
                       f"saw the photo): {self.at_the_limit:,}; they may hold smaller faces it missed, which {larger}")
        skipped = sum(self.skipped.values())
        out.append(f"skipped: {skipped:,}" + (" (" + "; ".join(f"{r}: {n:,}" for r, n in self.skipped.most_common()) + ")" if skipped else ""))
        return out

    def lines(self) -> list[str]:
        out = [f"embeddings file: {self.output} ({count(self.rows_in_file, 'face')})"
               + ("; nothing new, so it was left as it was" if self.file_unchanged else "")]
        out += self.count_lines()
        skipped = sum(self.skipped.values())
        out += [f"  {path}: {reason}" for path, reason in self.skipped_examples]
        if skipped > len(self.skipped_examples):
            out.append(f"  … all {skipped:,} are listed under 'failed' in the embeddings file")
        out.append(f"elapsed: {self.elapsed:.1f} s, " + (f"{self.rate:.1f} images/s, " if self.processed else "")
                   + f"device: {self.device}"
                   + (f" ({self.streams} streams)" if self.streams > 1 else ""))
        return out


@dataclass
class _State:
    """What is already embedded: the finished output plus checkpoint parts."""

    rows: list[FaceRows] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    no_face: set[str] = field(default_factory=set)
    reused: dict[str, str] = field(default_factory=dict)
    signatures: dict[str, images.Signature] = field(default_factory=dict)
    digests: dict[str, bytes] = field(default_factory=dict)  # of the files' bytes, where a run recorded them
    meta: dict[str, Any] | None = None
    parts: int = 0  # the highest part number
    parts_read: int = 0
    unreadable_parts: list[str] = field(default_factory=list)
    held: set[str] = field(default_factory=set)  # every path with rows or in no_face
    metas: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (file or part, its meta), as read
    failures_gone: set[str] = field(default_factory=set)  # dropped from ``failed``: their files are gone

    def done(self) -> set[str]:
        return set(self.held)

    def add(self, ef: EmbeddingsFile) -> None:
        """Add a file or part; a path it holds replaces that path's older rows (a re-embedded change)."""
        newer = set(ef.rows.paths) | set(ef.no_face)
        self.forget(newer & self.held)
        self.rows.append(ef.rows)
        self.failed.update(dict(ef.failed))
        self.no_face.update(ef.no_face)
        self.reused.update(dict(ef.reused))
        self.signatures.update(ef.signatures)
        self.digests.update(ef.digests)
        self.held |= newer
        self.meta = self.meta or ef.meta

    def changed(self, current: dict[str, images.Signature | None]) -> set[str]:
        """Held paths whose file differs from when it was read (files without signatures are trusted)."""
        return {p for p, sig in current.items()
                if sig is not None and p in self.held and self.signatures.get(p, sig) != sig}

    def drop_gone_failures(self, found: set[str]) -> int:
        """Drop the failures of files deleted since (not among ``found``, the images found now, and
        gone from the disk), whichever input folder they were in: a failure is a report, and a
        deleted file needs none. Returns how many were dropped so far; a file that still lists them
        is not up to date (``_says_all``)."""
        gone = {p for p in self.failed if p not in found and not os.path.lexists(p)}
        for p in gone:
            del self.failed[p]
        self.failures_gone |= gone
        return len(self.failures_gone)

    def forget(self, paths: set[str]) -> None:
        if not paths:
            return
        self.rows = [r.select(np.asarray([i for i, p in enumerate(r.paths) if p not in paths], dtype=np.intp))
                     if any(p in paths for p in r.paths) else r for r in self.rows]
        self.no_face -= paths
        self.held -= paths
        for p in paths:
            self.reused.pop(p, None)
            self.signatures.pop(p, None)
            self.digests.pop(p, None)


def check_compatible(meta: dict[str, Any], recogniser: str, mode: str, where: str, dim: int | None = None) -> None:
    """Refuse (``SetupError``) to go on in a file or part made with another recogniser, mode or embedding size
    (``dim``; None: not known, as before the models are loaded)."""
    theirs = (meta.get("model_files", {}).get("recognition"), meta.get("embedding_size"), meta.get("mode", "crops"))
    if theirs[0] != recogniser or theirs[2] != mode or dim not in (None, theirs[1]):
        size = "" if dim is None else f"{dim}-d, "
        raise SetupError(
            f"{where} was made with {theirs[0]} ({theirs[1]}-d, {theirs[2]} mode), this run uses {recogniser} "
            f"({size}{mode} mode): choose another --output, or pass --no-resume to replace it"
        )


PHOTO_WAY = ("photo_det_size", "photo_min_side")  # a photos-mode run's ways that reach only the images it embeds


def photo_ways_before(meta: Mapping[str, Any]) -> list[dict[str, int]]:
    """``meta["photo_ways_before"]`` (see ``ways_before``): the ways whose values are whole numbers, as a user's own
    file may hold anything there."""
    ways = meta.get("photo_ways_before")
    return [{key: way[key] for key in PHOTO_WAY} for way in ways
            if isinstance(way, dict) and all(isinstance(way.get(key), int) for key in PHOTO_WAY)
            ] if isinstance(ways, list) else []


def ways_before(metas: Sequence[tuple[str, Mapping[str, Any]]], meta: Mapping[str, Any]) -> list[dict[str, int]]:
    """The ways (``PHOTO_WAY``) other than ``meta``'s of the photos-mode runs that embedded the images of a file and
    its checkpoint parts (``metas``, as ``read_state`` gives them): for ``meta["photo_ways_before"]``, so that a
    file extended at another ``--det-size`` or with ``--full-resolution`` switched says so, not only its last way."""
    if meta.get("mode") != "photos":
        return []
    mine = {key: meta[key] for key in PHOTO_WAY}
    ways: list[dict[str, int]] = []
    for _, old in metas:
        if old.get("mode") != "photos":
            continue
        way = {"photo_det_size": old.get("photo_det_size", EmbedOptions.photo_det_size),  # as before the key: 640
               "photo_min_side": old.get("photo_min_side", mine["photo_min_side"])}
        for seen in [*photo_ways_before(old), way]:
            if seen != mine and seen not in ways:
                ways.append(seen)
    return ways


def photo_way(size: int, min_side: int) -> str:
    """How photos mode embedded images: ``detected at 1,280 pixels, large JPEGs decoded shrunk``."""
    return f"detected at {size:,} pixels, " + ("large JPEGs decoded shrunk" if min_side else "JPEGs decoded whole")


def warn_of_other_photo_settings(metas: Sequence[tuple[str, dict[str, Any]]], options: EmbedOptions) -> None:
    """Warn where a photos-mode run goes on in a file whose images were detected at another size, or decoded
    another way (``--det-size``, ``--full-resolution``): its settings reach only the images new or changed since,
    where a user who re-runs with a larger size to find smaller faces expects them to reach every image."""
    if options.mode != "photos":
        return
    for where, meta in metas:
        size = meta.get("photo_det_size", EmbedOptions.photo_det_size)  # files before the key: always 640
        min_side = meta.get("photo_min_side", options.photo_decode_side)
        if size != options.photo_det_size or bool(min_side) != bool(options.photo_decode_side):
            log.warning("%s: its images were %s; this run's settings (%s) reach only images new or changed since: "
                        "--no-resume (or a new --output) embeds every image so", where, photo_way(size, min_side),
                        photo_way(options.photo_det_size, options.photo_decode_side))
            return


def go_on_from(state: _State, paths: Sequence[str], options: EmbedOptions,
               ) -> tuple[dict[str, images.Signature | None], set[str], set[str]]:
    """What a run going on from ``state`` does first over the images ``paths``: warn of other photo settings,
    stat the images embedded before, to find those rewritten since (new files are signed as they are read),
    forget the rows of those, and of the photos without a face to try turned (``to_turn_again``), and drop
    the failures of files deleted since. Returns the stats, the paths rewritten since, and the photos to try
    turned."""
    warn_of_other_photo_settings(state.metas, options)
    held_now = {p: images.file_signature(p) for p in paths if p in state.held}
    changed = state.changed(held_now)
    state.forget(changed)
    again = to_turn_again(state, paths, options)
    state.forget(again)
    state.drop_gone_failures(set(paths))
    return held_now, changed, again


def faceless_untried(state: _State, options: EmbedOptions) -> set[str]:
    """With ``--turn-faceless``, the photos ``state`` holds without a face that were not tried turned
    (``not_turned``); none without it."""
    if options.mode != "photos" or not options.photo_turn_faceless:
        return set()
    return not_turned(state)


def not_turned(state: _State) -> set[str]:
    """The photos ``state`` holds without a face that were not tried turned: all of them where its file's run (or
    an interrupted run's part) ran without ``--turn-faceless``, as which of them it embedded is not told; else
    those that runs with it left untried (``UNTRIED_KEY``)."""
    untried: set[str] = set()
    for _, meta in state.metas if state.no_face else ():
        if meta.get("photo_turn_faceless") is not True:
            return set(state.no_face)
        listed = meta.get(UNTRIED_KEY)
        if isinstance(listed, list):
            untried.update(p for p in listed if isinstance(p, str))
    return untried & state.no_face


def to_turn_again(state: _State, paths: Sequence[str], options: EmbedOptions) -> set[str]:
    """With ``--turn-faceless``, the photos among ``paths`` that ``state`` holds without a face where they were
    not tried turned (``faceless_untried``). A run with the option records those of its file it did not try (not
    under its inputs), so a second one over the same inputs has none."""
    return faceless_untried(state, options).intersection(paths)


def read_state(output: Path, check: Callable[[dict[str, Any], str], None] | None = None) -> _State:
    """What a re-run of the command writing ``output`` would find done: the finished file
    plus its checkpoint parts. ``check(meta, where)`` may refuse a file or part."""
    state = _State()
    if output.exists():
        ef = embfile.load(output)
        if check:
            check(ef.meta, str(output))
        state.add(ef)
        state.metas.append((str(output), ef.meta))
    for part in embfile.checkpoint_parts(output):
        try:
            ef = embfile.load(part)
        except EmbeddingsFileError as err:
            log.warning("ignoring unreadable checkpoint %s: %s", part, err)
            state.unreadable_parts.append(str(part))
            continue
        if check:
            check(ef.meta, str(part))
        state.add(ef)
        state.metas.append((str(part), ef.meta))
        state.parts = max(state.parts, int(part.stem.split("-")[1]))
        state.parts_read += 1
    return state


def close_run(output: Path, forget: AbstractSet[str] = frozenset()) -> None:
    """Finish the file of a run that will not be continued (its GPU is no longer given to the
    launcher) with what it holds: an interrupted run's checkpoint parts merged in and removed, the
    rows of ``forget`` (images changed since) dropped, nothing embedded."""
    state = read_state(output)
    state.forget(set(forget))
    if state.meta is not None and (state.parts_read or state.unreadable_parts or forget):
        _Recorder(output, state, dict(state.meta), int(state.meta["embedding_size"]), float("inf"), {}).write(set())


def gathered(output: Path) -> EmbeddingsFile | None:
    """What the run writing ``output`` holds so far, its finished file and its checkpoint parts, as
    one file marked unfinished (a re-run goes on from it), written nowhere; None when neither holds
    anything readable."""
    state = read_state(output)
    if state.meta is None:
        return None
    recorder = _Recorder(output, state, dict(state.meta), int(state.meta["embedding_size"]), float("inf"), {})
    return recorder.file(set(), complete=False)


NO_DEVICE = "none (nothing to embed)"


def _says_all(state: _State, output: Path, inputs: Sequence[str], unrecognisable: bool) -> bool:
    """Whether the finished file ``output`` (read into ``state``) holds all that writing it again
    would add: no checkpoint parts to merge, the current format, the input folders ``inputs``,
    the unrecognisable-face centre (when ``unrecognisable``) and every image's size and
    modification time."""
    old = state.meta or {}
    return (state.parts_read == 0 and not state.unreadable_parts and not parts_dir(output).exists() and output.is_file()
            and not state.failures_gone
            and old.get("complete") is True and old.get("format_version") == embfile.FORMAT_VERSION
            and set(inputs) <= set(old.get("inputs", []))
            and (not unrecognisable or quality.META_KEY in old)
            and all(p in state.signatures for p in state.held))


def rerun_without_models(paths: Sequence[str], output: str | os.PathLike[str], recogniser: str,
                         options: EmbedOptions = EmbedOptions(), *, inputs: Sequence[str] = (),
                         status_file: str | None = None, loader: Loader = images.load_many,
                         ) -> tuple[_State | None, RunSummary | None]:
    """Tell a re-run that finds nothing to embed before the models are loaded (on a GPU, seconds
    per process in every pass of a shell loop over year folders): no new image, none changed,
    those that failed before failing again for the same reason, and the file saying all that a
    rewrite would add (``_says_all``, as ``_Recorder.up_to_date`` asks). Returns the state it read, for
    ``run_embeddings`` to go on from without reading the file again, and for such a re-run its
    summary (the file left as it was, or, where images that had failed were deleted since, written
    again without their failures); otherwise no summary. A file of another model or mode
    is left for ``run_embeddings`` to refuse, which needs the models to say why.
    """
    started = time.monotonic()
    out = Path(output).absolute()
    if not out.is_file() or parts_dir(out).exists():
        return None, None  # nothing to go on from, or an interrupted run's parts to merge
    state = read_state(out)
    old = state.meta or {}
    # The models would add the unrecognisable-face centre to a file without one: only a file with it is taken.
    if (old.get("model_files", {}).get("recognition") != recogniser or old.get("mode", "crops") != options.mode
            or not _says_all(state, out, [os.path.abspath(i) for i in inputs], unrecognisable=True)):
        return state, None
    todo = [p for p in paths if p not in state.held]
    if any(p not in state.failed for p in todo):
        return state, None
    if state.changed({p: images.file_signature(p) for p in paths if p in state.held}):
        return state, None
    if to_turn_again(state, paths, options):
        return state, None
    summary = RunSummary(output=str(out), device=NO_DEVICE, mode=options.mode, total_images=len(paths),
                         already_done=len(paths) - len(todo), not_found=len(state.held.difference(paths)),
                         rows_in_file=sum(len(r) for r in state.rows))
    for item in (loader(todo) if todo else []):
        reason = item.reason or "unreadable"
        if item.image is not None or reason != state.failed[item.path]:
            return state, None  # mended since, or failing another way: the models are needed
        summary.skipped[reason] += 1
        if len(summary.skipped_examples) < SKIPPED_SHOWN:
            summary.skipped_examples.append((item.path, reason))
    summary.failures_gone = state.drop_gone_failures(set(paths))
    if summary.failures_gone:  # only the list of failures changes: written without the models too
        _Recorder(out, state, dict(old), int(old["embedding_size"]), float("inf"), {}).write(set())
    summary.file_unchanged = not summary.failures_gone
    summary.faceless_left = len(faceless_untried(state, options))
    warn_of_other_photo_settings(state.metas, options)
    summary.elapsed = time.monotonic() - started
    status = _StatusWriter(status_file, NO_DEVICE)
    status.finish(summary)
    return state, summary


def _sorted_rows(rows: FaceRows) -> FaceRows:
    order = np.asarray(sorted(range(len(rows)), key=lambda i: (rows.paths[i], int(rows.face_index[i]))), dtype=np.intp)
    # Images are embedded in sorted order, so the rows usually are already: then no copy of them all.
    return rows if np.array_equal(order, np.arange(len(rows))) else rows.select(order)


class _Recorder:
    """Collects results, writes checkpoint parts and the final file."""

    def __init__(self, output: Path, state: _State, meta: dict[str, Any], dim: int, checkpoint_seconds: float,
                 held_now: dict[str, images.Signature | None]):
        self.output, self.state, self.meta, self.dim = output, state, meta, dim
        self.held_now = held_now  # signatures of the files already embedded, as they are now
        self.new_signatures: dict[str, images.Signature] = {}
        self.pending_signatures: dict[str, images.Signature] = {}
        self.new_digests: dict[str, bytes] = {}
        self.pending_digests: dict[str, bytes] = {}
        self.checkpoint_seconds = checkpoint_seconds
        self.new_rows: list[FaceRows] = []
        self.new_failed: dict[str, str] = {}
        self.new_no_face: list[str] = []
        self.new_reused: dict[str, str] = {}
        self.pending: list[FaceRows] = []
        self.pending_failed: list[tuple[str, str]] = []
        self.pending_no_face: list[str] = []
        self.pending_reused: list[tuple[str, str]] = []
        self.last_checkpoint = time.monotonic()
        self.moved: set[str] = set()  # held paths gone since, whose image this run found at a new path (``file``)

    def rows(self, rows: FaceRows, no_face: list[str], reused: list[tuple[str, str]],
             signatures: Mapping[str, images.Signature], digests: Mapping[str, bytes]) -> None:
        """Record a batch's results; ``signatures`` are its files' as they were read, ``digests`` of their bytes."""
        self.new_rows.append(rows)
        self.pending.append(rows)
        self.new_no_face.extend(no_face)
        self.pending_no_face.extend(no_face)
        self.new_reused.update(reused)
        self.pending_reused.extend(reused)
        for path in {*rows.paths, *no_face}:
            if path in signatures:
                self.new_signatures[path] = self.pending_signatures[path] = signatures[path]
            if path in digests:
                self.new_digests[path] = self.pending_digests[path] = digests[path]

    def fail(self, path: str, reason: str) -> None:
        self.new_failed[path] = reason
        self.pending_failed.append((path, reason))

    def maybe_checkpoint(self) -> None:
        if time.monotonic() - self.last_checkpoint >= self.checkpoint_seconds:
            self.checkpoint()

    def checkpoint(self) -> None:
        if not (self.pending or self.pending_failed or self.pending_no_face):
            return
        self.state.parts += 1
        part = embfile.part_path(self.output, self.state.parts)
        meta = dict(self.meta, complete=False)
        ef = EmbeddingsFile(FaceRows.concat(self.pending, self.dim), self.pending_failed, self.pending_no_face, meta,
                            self.pending_reused, self.pending_signatures, self.pending_digests)
        embfile.save(part, ef)
        self.pending, self.pending_failed, self.pending_no_face, self.pending_reused = [], [], [], []
        self.pending_signatures, self.pending_digests = {}, {}
        self.last_checkpoint = time.monotonic()

    def up_to_date(self, attempted: set[str]) -> bool:
        """Whether the finished output already says all that this run found.

        So a re-run that found nothing new (no new image, none changed, only the files that failed
        before failing again for the same reason) leaves the file as it is: a 500,000-face file is
        not rewritten on every pass of a shell loop. It is rewritten when it lacks what a rewrite
        adds: signatures of its files, the unrecognisable-face centre, a newly named input folder.
        """
        return (set(self.new_failed) == attempted  # every image tried failed, so none gave a row
                and all(self.state.failed.get(p) == reason for p, reason in self.new_failed.items())
                and _says_all(self.state, self.output, self.meta["inputs"], quality.META_KEY in self.meta))

    def finish(self, attempted: set[str]) -> tuple[int, bool]:
        """Write the final file and remove the parts; (rows in the file, whether it was left as it was)."""
        if self.up_to_date(attempted):
            return sum(len(r) for r in self.state.rows), True
        return self.write(attempted), False

    def write(self, attempted: set[str]) -> int:
        """Write the final file (what was there, what this run found) and remove the parts; its rows."""
        ef = self.file(attempted)
        try:
            embfile.save(self.output, ef)
        except BaseException:
            # The final file is the run's largest write: where the disk is full, or the run is stopped during it,
            # what came since the last checkpoint goes into a part, which is small and may still fit, so the
            # re-run does not embed it again.
            try:
                self.checkpoint()
            except OSError:
                with contextlib.suppress(OSError):
                    parts_dir(self.output).rmdir()  # where it is empty: no part was written
            raise
        shutil.rmtree(parts_dir(self.output), ignore_errors=True)
        return len(ef.rows)

    def moved_since(self, attempted: set[str]) -> set[str]:
        """The paths the file holds that this run did not find, that are gone from the disk or name the file of a
        path found through other folders (``reached_elsewhere``), and whose image (by the digest of its bytes) this
        run found at another path: a folder renamed or moved since, or named through a symbolic link, and the same
        command run over it at its new place. Their rows are the image's at its new path already (it took them as
        a copy), so the file drops them instead of keeping each image twice, once where it is not found now. So is
        a copy deleted since (a collection rid of its duplicates), where the run has anything new to record."""
        found = attempted.union(self.held_now)
        old, new = self.state.digests, self.new_digests
        here = {digest for p in found if (digest := new.get(p) or old.get(p)) is not None}
        if not here:
            return set()
        candidates = [p for p in self.state.held if p not in found and old.get(p) in here]
        there = [p for p in candidates if os.path.lexists(p)]
        if not there:
            return set(candidates)
        alike = {old[p] for p in there}  # the paths found with their bytes: the only ones that may be the same file
        return set(candidates).difference(there) | reached_elsewhere(
            there, [p for p in found if (new.get(p) or old.get(p)) in alike])

    def file(self, attempted: set[str], complete: bool = True) -> EmbeddingsFile:
        """The final file: what was there, and what this run found (less the paths ``moved_since``)."""
        self.moved = self.moved_since(attempted)
        self.state.forget(self.moved)
        rows = _sorted_rows(FaceRows.concat(self.state.rows + self.new_rows, self.dim))
        embedded = set(rows.paths)
        failed = {p: r for p, r in self.state.failed.items() if p not in attempted}
        failed.update(self.new_failed)
        failed = {p: r for p, r in failed.items() if p not in embedded}
        no_face = sorted(self.state.no_face | set(self.new_no_face))
        reused = {p: source for p, source in self.state.reused.items() if p not in attempted}
        reused.update(self.new_reused)
        reused = {p: source for p, source in reused.items() if p in embedded}
        # Rows from a file older than signatures were trusted; from now on they are watched too.
        known = {**self.held_now, **self.state.signatures, **self.new_signatures}
        kept = sorted(embedded.union(no_face))
        signatures = {p: sig for p in kept if (sig := known.get(p)) is not None}
        old, new = self.state.digests, self.new_digests
        digests = {p: digest for p in kept if (digest := new.get(p) or old.get(p)) is not None}
        old_inputs = (self.state.meta or {}).get("inputs", [])
        meta = dict(self.meta, complete=complete, inputs=sorted(set(old_inputs) | set(self.meta["inputs"])))
        if before := ways_before(self.state.metas, self.meta):
            meta["photo_ways_before"] = before
        if meta.get("photo_turn_faceless") is True and (untried := not_turned(self.state)):
            meta[UNTRIED_KEY] = sorted(untried)  # not under this run's inputs: a run over theirs tries them
        return EmbeddingsFile(rows, sorted(failed.items()), no_face, meta, sorted(reused.items()), signatures, digests)


MAX_DEFAULT_STREAMS = 16
SKIPPED_SHOWN = 5  # skipped files named in the summary; the file lists them all
PHOTOS_PER_JOB = 8  # a decoded 12-megapixel photo is 36 MB: keep what each stream holds small


def plan_streams(on_cpu: bool, streams: int = 0, threads: int = 0, cpus: int | None = None) -> tuple[int, int]:
    """(embedding streams, ONNX Runtime threads per session); 0 means choose.

    On the CPU the small face models scale poorly inside one inference (the detector
    gains 1.4x from a second thread) but perfectly across independent ones, so the
    default is one single-threaded stream per core (benchmarks/bench_embeddings.py on 2
    cores: 2 streams x 1 thread 169 images/s, 1 stream x 2 threads 139), at most ``MAX_DEFAULT_STREAMS``, as
    each stream holds a decoded batch. On a GPU two streams let one stream's CPU work
    (detection decoding, alignment) overlap the other's inference.
    """
    cpus = cpus or usable_cpus()
    if not on_cpu:
        return streams or 2, threads
    streams = streams or min(cpus, MAX_DEFAULT_STREAMS)
    fits = max(1, cpus // streams)
    if threads > 1 and streams * threads > cpus:
        log.warning("%d streams x %d threads (--streams, --threads) are more ONNX Runtime threads than the %s this "
                    "process may use: they stall each other (on 2 CPUs, 2 x 4 embedded at half the speed of 2 x 1, "
                    "2 x 8 at a fifth); --threads %d fits", streams, threads, count(cpus, "CPU"), fits)
    return streams, threads or fits


EMBEDDING_FAILED = "embedding failed"
# Decoded images that failed to embed one by one, in batches of which none embedded: then the fault
# is the device or the model (a GPU out of memory or gone), not the images, and the run stops with
# its progress saved instead of listing every image left as failed.
FAILING_IN_A_ROW = 32


@dataclass
class _JobResult:
    """What one stream made of one batch: rows, no-face photos and skipped files."""

    results: list[tuple[int, BatchResult]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    signatures: dict[str, images.Signature] = field(default_factory=dict)  # the files as they were read
    errors: dict[str, str] = field(default_factory=dict)  # what embedding raised, for each image it failed for
    digests: dict[str, bytes] = field(default_factory=dict)  # of the images sent to embedding
    copies: list[tuple[str, bytes]] = field(default_factory=list)  # images whose bytes an earlier batch embedded


def _embed_halves(batch: list[tuple[str, NDArray[np.uint8]]], models: FaceModels, options: EmbedOptions,
                  out: _JobResult, shrunk: ShrunkPhotos | None = None) -> None:
    """Embed ``batch``; where it fails, each half on its own, down to single images. A bad image
    costs about two calls per halving instead of one per image of its batch, and a batch too large
    for the GPU's memory is embedded in halves that fit."""
    try:
        out.results.append((len(batch), embed_batch(batch, models, options, shrunk)))
    except Exception as err:  # noqa: BLE001 - isolate the image that broke the batch
        if len(batch) == 1:
            out.skipped.append((batch[0][0], f"{EMBEDDING_FAILED}: {type(err).__name__}"))
            out.errors[batch[0][0]] = one_line(err)
            return
        middle = len(batch) // 2
        _embed_halves(batch[:middle], models, options, out, shrunk)
        _embed_halves(batch[middle:], models, options, out, shrunk)


def _boxes_in_file_pixels(results: list[tuple[int, BatchResult]], reductions: Mapping[str, int]) -> None:
    """The boxes of images decoded shrunk (``images.Loaded.reduction``) scaled back to their files' pixels."""
    if not reductions:
        return
    for _, result in results:
        rows = result.rows
        factor = np.array([reductions.get(p, 1) for p in rows.paths], np.float32)
        rows.bbox = rows.bbox * factor[:, None]


def _shrunk_photos(loaded: Sequence[images.Loaded], digests: Mapping[str, bytes]) -> ShrunkPhotos | None:
    """The images of a batch that were decoded shrunk, each decoded again from its file only where its bytes
    are still those it was embedded from (``images.read_again``)."""
    reductions = {item.path: item.reduction for item in loaded if item.reduction > 1}
    if not reductions:
        return None
    return ShrunkPhotos(reductions, lambda path, factor: images.read_again(path, factor, digests[path])
                        if path in digests else None)


def _run_job(job: list[str] | list[images.Loaded], loader: Loader, models: FaceModels, options: EmbedOptions,
             embedded: _EmbeddedImages | None = None) -> _JobResult:
    """Decode (when given paths) and embed one batch; one bad image costs only itself. A copy of an image
    that ``embedded`` holds (by its bytes' digest), or of one earlier in this batch, is not embedded again: it
    takes that image's rows (where that image failed to embed, the copy fails with it)."""
    # Paths, or images decoded by a worker process already (never a mixture)
    loaded = loader(cast("list[str]", job)) if job and isinstance(job[0], str) else cast("list[images.Loaded]", job)
    out = _JobResult(signatures={item.path: item.signature for item in loaded if item.signature is not None})
    batch = []
    in_batch: dict[bytes, str] = {}  # each digest's first image in this batch
    for item in loaded:
        if item.image is None:
            out.skipped.append((item.path, item.reason or "unreadable"))
        elif embedded is not None and item.digest is not None and (item.digest in embedded or item.digest in in_batch):
            out.copies.append((item.path, item.digest))
        else:
            batch.append((item.path, item.image))
            if item.digest is not None:
                out.digests[item.path] = item.digest
                in_batch.setdefault(item.digest, item.path)
    if batch:
        shrunk = _shrunk_photos(loaded, out.digests)
        _embed_halves(batch, models, options, out, shrunk)
        _boxes_in_file_pixels(out.results, shrunk.reductions if shrunk is not None else {})
    failed = dict(out.skipped)  # this batch's images that failed, by path
    orphans = [(path, failed[source]) for path, digest in out.copies if (source := in_batch.get(digest)) in failed]
    if orphans:
        out.skipped += orphans
        gone = {path for path, _ in orphans}
        out.copies = [(path, digest) for path, digest in out.copies if path not in gone]
    return out


@dataclass(frozen=True)
class _Embedded:
    """An embedded image, for its copies: its path, and rows that hold its faces (None: a photo without a
    face), at ``index`` where known, else found by its path."""

    path: str
    rows: FaceRows | None
    index: NDArray[np.intp] | None = None

    def copy_for(self, path: str) -> FaceRows | None:
        """Its rows under ``path`` (None for a photo without a face)."""
        if self.rows is None:
            return None
        index = self.index
        if index is None:
            index = np.asarray([i for i, p in enumerate(self.rows.paths) if p == self.path], np.intp)
        own = self.rows.select(index)
        return FaceRows([path] * len(own), own.embeddings, own.detected, own.det_score, own.bbox, own.face_index)


class _EmbeddedImages:
    """The images a copy can take its rows from, by the digest of their bytes: those this run recorded
    (``add``), and those its file and checkpoints held when it started, where they keep digests. The streams
    ask whether a digest is known; the main thread adds and looks up. The rows of an image of the file are
    found on the first look-up, so that a run without copies spends nothing on them."""

    def __init__(self, state: _State | None = None, untried: AbstractSet[str] = frozenset()):
        self.now: dict[bytes, _Embedded] = {}
        self.state = state or _State()
        held = self.state.held  # not an image whose rows a file left out on reading (NaN), for one
        # ``untried``: photos the file holds without a face, not tried turned, are no images to copy (--turn-faceless)
        self.before = {digest: path for path, digest in self.state.digests.items()
                       if path in held and path not in untried}
        self._where: dict[str, tuple[FaceRows, list[int]]] | None = None

    def __contains__(self, digest: object) -> bool:
        return digest in self.now or digest in self.before

    def add(self, digest: bytes, image: _Embedded) -> None:
        self.now.setdefault(digest, image)

    def __getitem__(self, digest: bytes) -> _Embedded:
        if digest in self.now:
            return self.now[digest]
        path = self.before[digest]
        if path in self.state.no_face:
            return _Embedded(path, None)
        if self._where is None:
            wanted = set(self.before.values())
            self._where = {}
            for rows in self.state.rows:
                for i, p in enumerate(rows.paths):
                    if p in wanted:
                        self._where.setdefault(p, (rows, []))[1].append(i)
        rows, index = self._where[path]
        return _Embedded(path, rows, np.asarray(index, np.intp))


def _late_copies(result: BatchResult, digests: Mapping[str, bytes],
                 embedded: _EmbeddedImages) -> tuple[BatchResult, list[tuple[str, bytes]]]:
    """``result`` without its images whose bytes an image recorded before has, and those images with their
    digests. Its batch started while that image's batch was still in flight, so they were embedded; they
    take that image's rows all the same, as the copies found before embedding do: which copies a run
    finds before embedding depends on how its streams ran, the rows it writes do not."""
    late = {path: digest for path in {*result.rows.paths, *result.no_face}
            if (digest := digests.get(path)) is not None and digest in embedded}
    if not late:
        return result, []
    keep = np.asarray([i for i, path in enumerate(result.rows.paths) if path not in late], np.intp)
    return replace(result, rows=result.rows.select(keep), no_face=[p for p in result.no_face if p not in late],
                   reused=[(frame, source) for frame, source in result.reused if frame not in late],
                   several=[p for p in result.several if p not in late],
                   at_the_limit=[p for p in result.at_the_limit if p not in late]), sorted(late.items())


class _Stops:
    """Tells when a run should stop rather than go on, with its progress saved (``errors.RunStopped``):

    - images the model cannot embed, from a device or model that has stopped working: the first
      failure is logged with what ONNX Runtime said, and ``FAILING_IN_A_ROW`` failures in batches
      of which no image embedded stop the run;
    - files that cannot be reached, from an input folder that went away (``vanished``)."""

    def __init__(self, device: str, inputs: Sequence[str]):
        self.device, self.logged, self.stopped, self.failing = device, False, False, 0
        self.inputs = Vanishing(inputs)

    def see(self, job: _JobResult) -> None:
        if self.stopped:  # the batches done when the run stopped are recorded without a second stop
            return
        if job.errors and not self.logged:
            log.warning("could not embed %s: %s", *next(iter(job.errors.items())))
            self.logged = True
        self.failing = 0 if job.results else self.failing + len(job.errors)
        if self.failing >= FAILING_IN_A_ROW:
            self.stopped = True
            raise device_failed(f"embedding failed for {self.failing} images in a row",
                                next(reversed(job.errors.values())), self.device)
        if job.results or job.errors:  # images were read
            self.inputs.reached()
        unreached = [reason for _, reason in job.skipped if images.not_reached(reason)]
        if unreached:
            try:
                self.inputs.not_reached(len(unreached), unreached[-1])
            except RunStopped:
                self.stopped = True
                raise


def _jobs(todo: list[str], workers: int, batch_size: int, loader: Loader, photos: bool = False) -> Iterator[list[str] | list[images.Loaded]]:
    """Batches of work: paths for the streams to decode themselves, or images decoded by worker processes."""
    if photos:
        batch_size = min(batch_size, PHOTOS_PER_JOB)
    if workers <= 0:
        for start in range(0, len(todo), batch_size):
            yield todo[start : start + batch_size]
        return
    batch: list[images.Loaded] = []
    for loaded in iter_loaded(todo, workers, chunk=2 if photos else 16, loader=loader):
        batch.append(loaded)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _photo_settings(options: EmbedOptions) -> dict[str, float | bool]:
    """How photos mode detected and read photos, refined small faces and tried photos turned, for the file's
    ``meta``."""
    return {"photo_det_size": options.photo_det_size, "photo_min_side": options.photo_decode_side,
            "photo_refine_below": options.photo_refine_below, "photo_face_pixels": options.photo_face_pixels,
            "photo_upright_score": options.photo_upright_score, "photo_turn_faceless": options.photo_turn_faceless}


def unrecognisable_meta(models: FaceModels) -> dict[str, list[float]]:
    """What an embeddings file's ``meta`` records of the pack's unrecognisable faces (see ``quality``)."""
    centre = models.unrecognisable_centre
    return {} if centre is None else {quality.META_KEY: [float(v) for v in centre]}


def run_embeddings(
    paths: Sequence[str],
    output: str | os.PathLike[str],
    models: FaceModels,
    options: EmbedOptions = EmbedOptions(),
    *,
    inputs: Sequence[str] = (),
    batch_size: int = 64,
    workers: int = 0,
    streams: int = 1,
    resume: bool = True,
    checkpoint_seconds: float = 60.0,
    progress: bool = True,
    status_file: str | None = None,
    loader: Loader = images.load_many,
    state: _State | None = None,
) -> RunSummary:
    """Embed ``paths`` into ``output``, continuing from an earlier run when ``resume``.

    ``workers`` processes decode ahead (0: each stream decodes its own batch);
    ``streams`` threads run ``embed_batch`` concurrently on the shared sessions.
    ``state``: what ``rerun_without_models`` read of ``output``, so it is not read twice.
    """
    started = time.monotonic()
    if loader is images.load_many and options.mode == "photos" and options.photo_decode_side:
        loader = functools.partial(images.load_many, min_side=options.photo_decode_side)
    out = Path(output).absolute()
    held_now: dict[str, images.Signature | None] = {}
    changed: set[str] = set()
    again: set[str] = set()
    if resume:
        state = state if state is not None else read_state(out)
        for where, meta in state.metas:
            check_compatible(meta, models.pack.recognizer.name, options.mode, where, models.dim)
        held_now, changed, again = go_on_from(state, paths, options)
    else:
        embfile.check_replaceable(out)
        shutil.rmtree(parts_dir(out), ignore_errors=True)
        state = _State()
    done = state.done()
    todo = [p for p in paths if p not in done]
    summary = RunSummary(output=str(out), device=models.device, streams=max(1, streams), mode=options.mode,
                         det_size=options.photo_det_size if options.mode == "photos" else 0,
                         total_images=len(paths), already_done=len(paths) - len(todo), changed=len(changed),
                         turned_again=len(again),
                         turn_faceless=options.mode == "photos" and options.photo_turn_faceless,
                         not_found=len(state.held.difference(paths)), failures_gone=len(state.failures_gone))
    if summary.already_done or changed or again:
        log.info("resuming: %d of %d images already embedded%s%s", summary.already_done, len(paths),
                 f"; {len(changed)} changed since they were read, embedding them again" if changed else "",
                 f"; {count(len(again), 'photo')} without a face before, trying them turned" if again else "")
    meta = embfile.make_meta(pack_name=models.pack.name, model_files=models.pack.file_names(), dim=models.dim,
                             device=models.device, inputs=[os.path.abspath(i) for i in inputs], mode=options.mode,
                             complete=False, sessions=[r.describe() for r in models.reports],
                             reuse_similar_frames=options.reuse_similar_frames,
                             **(_photo_settings(options) if options.mode == "photos" else {}),
                             **unrecognisable_meta(models))
    recorder = _Recorder(out, state, meta, models.dim, checkpoint_seconds, held_now)
    status = _StatusWriter(status_file, models.device)
    status.start(summary.already_done, len(paths))
    bar = progress_bar(total=len(todo), unit="img", enabled=progress and bool(todo), smoothing=0.1)
    stops = _Stops(models.device, [os.path.abspath(i) for i in inputs])
    # Images recorded so far (and those of the file, where it keeps their digests), by their bytes' digest: a
    # copy under another name (an album folder beside a year folder) takes their rows. Written here, read by the
    # streams: a batch in flight is not in it yet, so its copies in other batches are embedded, and take its rows
    # when recorded (``_late_copies``).
    embedded = _EmbeddedImages(state, untried=faceless_untried(state, options))

    def record(job: _JobResult) -> None:
        for path, reason in job.skipped:
            recorder.fail(path, reason)
            summary.skipped[reason] += 1
            if len(summary.skipped_examples) < SKIPPED_SHOWN:
                summary.skipped_examples.append((path, reason))
            log.debug("skipped %s: %s", path, reason)
        copies = list(job.copies)
        # The job's rows, its copies' included, recorded in the order of its paths: the file's rows are sorted,
        # and rows recorded in order spare a 500,000-row file a sorted copy of them all (``_sorted_rows``).
        parts: list[FaceRows] = []
        no_face: list[str] = []
        reused: list[tuple[str, str]] = []
        for n_images, result in job.results:
            result, late = _late_copies(result, job.digests, embedded)
            copies += late
            n_images -= len(late)
            parts.append(result.rows)
            no_face += result.no_face
            reused += result.reused
            summary.count_batch(n_images, result)
            with_rows = set(result.rows.paths)
            for path in [*with_rows, *result.no_face]:
                if (digest := job.digests.get(path)) is not None:
                    embedded.add(digest, _Embedded(path, result.rows if path in with_rows else None))
        for path, digest in copies:  # their images were recorded with an earlier job, or earlier in this one
            rows = embedded[digest].copy_for(path)
            summary.count_copy(rows)
            if rows is None:
                no_face.append(path)
            else:
                parts.append(rows)
        if parts or no_face:
            rows = FaceRows.concat(parts, models.dim)
            recorder.rows(_sorted_rows(rows) if copies else rows, sorted(no_face), reused, job.signatures,
                          {**job.digests, **dict(copies)})
        bar.update(len(job.skipped) + sum(n for n, _ in job.results) + len(job.copies))
        bar.set_postfix(fallback=summary.fallback, skipped=sum(summary.skipped.values()), refresh=False)
        recorder.maybe_checkpoint()
        status.write(summary.already_done + summary.processed, len(paths))  # bar.n stays 0 when it is off
        stops.see(job)

    pool = ThreadPoolExecutor(max(1, streams), thread_name_prefix="embed")
    pending: deque[Future[_JobResult]] = deque()
    try:
        for job in _jobs(todo, workers, batch_size, loader, photos=options.mode == "photos"):
            pending.append(pool.submit(_run_job, job, loader, models, options, embedded))
            while len(pending) > 2 * streams:  # bounded read-ahead; results recorded in order
                record(pending.popleft().result())
        while pending:
            record(pending.popleft().result())
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        for future in pending:  # batches already embedded when the run stopped are kept
            if future.done() and not future.cancelled() and future.exception() is None:
                record(future.result())
        recorder.checkpoint()
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    summary.rows_in_file, summary.file_unchanged = recorder.finish(set(todo))
    summary.moved, summary.not_found = len(recorder.moved), summary.not_found - len(recorder.moved)
    summary.faceless_left = len(faceless_untried(state, options))
    summary.elapsed = time.monotonic() - started
    status.finish(summary)
    return summary


class _StatusWriter:
    """Progress for a launcher watching several workers, ``{"done": n, "total": n, "device": "cuda"}``,
    at most once a second."""

    def __init__(self, path: str | None, device: str):
        self.path, self.device, self.last = path, device, 0.0

    def start(self, done: int, total: int) -> None:
        """The device at once, before the first batch (whose count is then written at once too)."""
        self._put(done, total)

    def write(self, done: int, total: int, force: bool = False) -> None:
        if force or time.monotonic() - self.last > 1.0:
            self.last = time.monotonic()
            self._put(done, total)

    def finish(self, summary: RunSummary) -> None:
        """The run's counts, for the launcher's summary over every worker."""
        self._put(summary.total_images, summary.total_images, summary=summary.counts())

    def _put(self, done: int, total: int, **more: Any) -> None:
        if self.path:
            atomic_write_text(self.path, json.dumps({"done": done, "total": total, "device": self.device, **more}))
