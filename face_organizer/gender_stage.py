"""gender_filter as a stage: folders of faces in, the matching gender copied out, with
predictions.csv and a summary."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import IO, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from .decoding import iter_loaded
from .errors import FaceOrganizerError, device_failed, one_line
from .fsutil import atomic_write_text, lock_holder
from .gender import GenderPrediction
from .images import Signature, file_signature, not_reached
from .organize import (LinkMode, check_output_folder, check_same_run, files_line, place_all,
                       placement_notes)
from .progress import bar as progress_bar
from .progress import count
from .vanished import Vanishing

log = logging.getLogger(__name__)

PROGRESS_SUFFIX = ".gender-progress.jsonl"
CONFIDENCE_DIGITS = 4  # in predictions.csv; a re-run reads the confidence back from there


class Predictor(Protocol):
    @property
    def device(self) -> str: ...

    @property
    def name(self) -> str: ...  # the backend and model: predictions by another are not reused

    def predict(self, items: Sequence[tuple[str, NDArray[np.uint8]]]) -> list[GenderPrediction]: ...


class Deferred:
    """A predictor made only when there are images to predict: a re-run that finds every image
    predicted before does not load its models (DeepFace imports TensorFlow: seconds in every pass
    of a loop over year folders)."""

    def __init__(self, name: str, make: Callable[[], Predictor]):
        self.name, self._make = name, make
        self._made: Predictor | None = None

    @property
    def device(self) -> str:
        return self._made.device if self._made is not None else "none"

    def load(self) -> Predictor:
        if self._made is None:
            self._made = self._make()
        return self._made

    def predict(self, items: Sequence[tuple[str, NDArray[np.uint8]]]) -> list[GenderPrediction]:
        return self.load().predict(items)


@dataclass
class GenderSummary:
    output: str
    gender: str
    matches: int = 0
    non_matches: int = 0
    low_confidence: int = 0
    no_face: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    resumed: int = 0  # predicted by an interrupted run, not again
    kept: int = 0  # predicted by the finished run into the same output, unchanged since: not again
    placed_before: int = 0  # placed by that run, no longer a match: the copy stays
    status: Counter[str] = field(default_factory=Counter)  # files by what their placement did
    predicted: int = 0  # images predicted by this run
    elapsed: float = 0.0
    device: str = "none"  # where the model ran; "none": it was not loaded, nothing being new

    def count(self, predictions: Sequence[GenderPrediction], min_confidence: float) -> list[str]:
        """Count ``predictions`` by outcome; the paths of those that match (``gender``, confident enough)."""
        matched = []
        for p in predictions:
            if p.gender is None:
                if p.reason == "no face":
                    self.no_face += 1
                else:
                    self.errors[p.reason or "unknown"] += 1
            elif p.gender != self.gender:
                self.non_matches += 1
            elif round(p.confidence, CONFIDENCE_DIGITS) < min_confidence:  # as predictions.csv keeps it, for re-runs
                self.low_confidence += 1
            else:
                matched.append(p.path)
        self.matches = len(matched)
        return matched

    def lines(self) -> list[str]:
        errors = sum(self.errors.values())
        return [
            f"{self.gender}: {count(self.matches, 'image')} → {self.output}{os.sep}",
            f"other gender: {self.non_matches:,}; below --min-confidence: {self.low_confidence:,}; "
            f"no face: {self.no_face:,}; errors: {errors:,}"
            + (" (" + "; ".join(f"{r}: {n:,}" for r, n in self.errors.most_common()) + ")" if errors else ""),
            *([files_line(self.status)] if self.status else []),
            *placement_notes(self.status, None),
        ] + ([f"continued an interrupted run: {count(self.resumed, 'image')} already predicted"] if self.resumed else []) \
          + ([f"{count(self.kept, 'image')} predicted by the earlier run into this output and unchanged since: "
              "not predicted again"] if self.kept else []) \
          + ([f"{count(self.placed_before, 'image')} placed here by an earlier run no longer "
              f"match{'es' if self.placed_before == 1 else ''} (rewritten since): "
              f"{'its copy is' if self.placed_before == 1 else 'their copies are'} left in place, with "
              f"{'its' if self.placed_before == 1 else 'their'} destination in predictions.csv (matched 0)"]
             if self.placed_before else []) \
          + [self.timing()]

    def timing(self) -> str:
        """``elapsed: 3.1 s, 161.3 images/s predicted, device: cpu``."""
        rate = (f"{self.predicted / self.elapsed:.1f} images/s predicted, " if self.predicted and self.elapsed > 0
                else "")
        return (f"elapsed: {self.elapsed:.1f} s, {rate}device: {self.device}"
                + (" (nothing new to predict)" if self.device == "none" else ""))


def progress_path(output: str) -> str:
    """Where predictions are kept until the run finishes: beside the output folder, as its lock."""
    parent, name = os.path.split(os.path.abspath(output))
    return os.path.join(parent, f".{name}{PROGRESS_SUFFIX}")


Signed = tuple[GenderPrediction, "Signature | None"]  # a prediction, and its image's file as it was read


def _unchanged(done: dict[str, Signed], paths: Sequence[str]) -> dict[str, GenderPrediction]:
    """The predictions of ``done`` whose image is the file it was (size and modification time;
    predictions recorded without them are trusted)."""
    return {p: prediction for p in paths if p in done
            for prediction, signature in [done[p]] if signature is None or file_signature(p) == signature}


def read_progress(path: str, predictor: str) -> dict[str, Signed] | None:
    """The predictions an interrupted run of ``predictor`` kept in ``path`` (``_Progress``); None where there
    is no such file, or it is another predictor's (a run starts it anew)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:  # none yet, or unreadable
        return None
    if not lines:
        return None
    try:
        header = json.loads(lines[0])
    except ValueError:
        header = {}
    if not isinstance(header, dict) or header.get("predictor") != predictor:
        log.warning("%s: predictions of another backend or model (%s); predicting again", path,
                    header.get("predictor") if isinstance(header, dict) else "unreadable")
        return None
    names = {f.name for f in fields(GenderPrediction)}
    done: dict[str, Signed] = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
            prediction = GenderPrediction(**{k: v for k, v in row.items() if k in names})
            signature = tuple(row["signature"]) if row.get("signature") else None
        except (ValueError, TypeError, AttributeError):
            continue  # a line cut short by a kill
        if "signature" in row and signature is None:
            continue  # an image that could not be read (gone, its drive away): tried again, as a finished run's
        done[prediction.path] = (prediction, signature)
    return done


class _Progress:
    """Predictions so far, appended as JSON lines with their image's size and modification time,
    so that an interrupted run continues where it stopped. The first line names the predictor;
    another predictor's lines are not reused."""

    def __init__(self, path: str, predictor: str, sync_seconds: float = 60.0):
        self.path, self.sync_seconds = path, sync_seconds
        done = read_progress(path, predictor)
        kept = done is not None
        self.done: dict[str, Signed] = done or {}
        try:
            self.handle: IO[str] | None = open(path, "a" if kept else "w", encoding="utf-8")
        except OSError as err:  # a read-only parent folder: the run goes on without
            log.warning("cannot keep predictions in %s (%s): an interrupted run will predict everything again",
                        path, err.strerror or err)
            self.handle = None
            return
        if not kept:
            self._write(json.dumps({"predictor": predictor}) + "\n")
        elif self.handle.tell() and not self._ends_with_newline():
            self._write("\n")  # after a line cut short by a kill
        self.last_sync = time.monotonic()

    def _write(self, text: str) -> None:
        """Append ``text`` and flush it: a killed process loses nothing flushed. A write that fails (a full disk)
        names no file: its error names this one."""
        assert self.handle is not None
        try:
            self.handle.write(text)
            self.handle.flush()
        except OSError as err:
            err.filename = err.filename or self.path
            raise

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def add(self, predictions: Sequence[GenderPrediction], signatures: dict[str, Signature | None]) -> None:
        if self.handle is None:
            return
        self._write("".join(json.dumps({**asdict(p), "signature": signatures.get(p.path)}) + "\n" for p in predictions))
        if time.monotonic() - self.last_sync >= self.sync_seconds:
            os.fsync(self.handle.fileno())
            self.last_sync = time.monotonic()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()

    def remove(self) -> None:
        if self.handle is not None:
            os.unlink(self.path)


def _finished_predictions(output: str) -> tuple[dict[str, Signed], dict[str, str]]:
    """The predictions in ``output``'s ``predictions.csv`` (a finished run of the same command:
    ``check_same_run`` has passed) that record their image's size and modification time, and where
    that run placed its images (none where no run finished there)."""
    done: dict[str, Signed] = {}
    placed: dict[str, str] = {}
    try:
        with open(os.path.join(output, "predictions.csv"), encoding="utf-8-sig", errors="surrogateescape",
                  newline="") as handle:
            for row in csv.DictReader(handle):
                if row["destination"]:
                    placed[row["path"]] = row["destination"]
                if not (row.get("bytes") or "").isdigit() or not (row.get("mtime_ns") or "").isdigit():
                    continue  # written before they were kept, or an image that could not be read
                done[row["path"]] = (GenderPrediction(row["path"], row["gender"] or None, float(row["confidence"]),
                                                      float(row["age"]) if row["age"] else None, row["reason"] or None),
                                     (int(row["bytes"]), int(row["mtime_ns"])))
    except FileNotFoundError:
        return {}, {}
    except (OSError, KeyError, ValueError, csv.Error) as err:
        log.warning("%s: predictions.csv cannot be read (%s); predicting every image again", output, err)
        return {}, {}
    return done, placed


def _checked_run(output: str, roots: Sequence[str], gender: str, predictor: str, min_confidence: float,
                 link_mode: LinkMode, dry_run: bool = False) -> dict[str, Any]:
    """The run's settings as its output records them, once the output is one it can go on in: new, or this
    command's own (``SetupError`` otherwise)."""
    check_output_folder(output, dry_run)
    run = {"inputs": sorted(os.path.abspath(r) for r in roots), "gender": gender, "backend": predictor,
           "min_confidence": min_confidence, "link_mode": link_mode}
    check_same_run(output, run, "gender_filter", subject="inputs",
                   of=lambda earlier: ", ".join(earlier.get("inputs") or ["other folders"]),
                   advice="give each input folder its own --output (in a loop over year folders: one per year)")
    return run


@dataclass
class _Earlier:
    """What earlier runs of the same command into an output leave to the next: the predictions of images
    unchanged since, which stand (``kept`` of them the finished run's, ``resumed`` an interrupted one's), the
    images predicted before and rewritten since, and where the finished run placed its images."""

    made: dict[str, GenderPrediction]
    kept: int
    resumed: int
    rewritten: set[str]
    placed_before: dict[str, str]

    @classmethod
    def of(cls, output: str, paths: Sequence[str], saved: dict[str, Signed]) -> _Earlier:
        """What the runs before left in ``output`` for ``paths``; ``saved``: what an interrupted one kept
        (``read_progress``). An image predicted before and rewritten since (its size or modification time) is
        predicted again, and its copy made anew: the one placed before is of the old file."""
        finished, placed_before = _finished_predictions(output)
        made = _unchanged(finished, paths)
        kept = len(made)
        rewritten = {p for p in paths if p in finished and p not in made}
        resumed = _unchanged({p: d for p, d in saved.items() if p not in made}, paths)
        made.update(resumed)
        rewritten |= {p for p in paths if p in saved and p not in made}
        return cls(made, kept, len(resumed), rewritten, placed_before)


DRY_RUN_HEADER = "dry run: nothing was predicted or written"


@dataclass
class GenderPlan:
    """What a gender_filter run would do (``plan_gender_run``)."""

    output: str
    gender: str
    min_confidence: float
    found: int
    earlier: _Earlier
    writer: int | None = None  # pid of a run writing the output now

    def lines(self) -> list[str]:
        """What the run would do, after ``DRY_RUN_HEADER``."""
        earlier, before = self.earlier, len(self.earlier.made)
        new = self.found - before - len(earlier.rewritten)
        matches = sum(1 for p in earlier.made.values() if p.gender == self.gender
                      and round(p.confidence, CONFIDENCE_DIGITS) >= self.min_confidence)
        lines = [f"output: {self.output}: " + ("new" if not (earlier.placed_before or before or earlier.rewritten)
                                               else f"{count(len(earlier.placed_before), 'image')} placed by earlier "
                                                    "runs")
                 + (f"; another run is writing it now (pid {self.writer}), so this command would stop at once"
                    if self.writer else ""),
                 f"images found: {self.found:,}; predicted before and unchanged since: {before:,}"
                 + (f" ({earlier.resumed:,} by an interrupted run)" if earlier.resumed else ""),
                 f"to predict: {count(self.found - before, 'image')} (new: {new:,}; rewritten since predicted: "
                 f"{len(earlier.rewritten):,})"]
        if before:
            lines.append(f"{self.gender} (at --min-confidence {self.min_confidence:g}) among those predicted before: "
                         f"{matches:,}")
        return lines


def plan_gender_run(paths: Sequence[str], roots: Sequence[str], output: str, gender: str, predictor: str, *,
                    min_confidence: float = 0.5, link_mode: LinkMode = "copy") -> GenderPlan:
    """What ``filter_by_gender`` would predict, with the predictor named ``predictor`` (not loaded); reads the
    output's predictions and an interrupted run's, writes nothing. Refuses (``SetupError``) an output the run
    would refuse."""
    output = os.path.abspath(output)
    _checked_run(output, roots, gender, predictor, min_confidence, link_mode, dry_run=True)
    earlier = _Earlier.of(output, paths, read_progress(progress_path(output), predictor) or {})
    return GenderPlan(output, gender, min_confidence, len(paths), earlier, lock_holder(output))


def filter_by_gender(paths: Sequence[str], roots: Sequence[str], output: str, gender: str, predictor: Predictor, *,
                     min_confidence: float = 0.5, link_mode: LinkMode = "copy", workers: int = 0, batch_size: int = 64,
                     progress: bool = True) -> GenderSummary:
    """Predict every image's gender, place those of ``gender``, write predictions.csv.

    Predictions are kept in ``progress_path(output)`` as they are made: an interrupted run
    re-run predicts only the images it had not reached. The file goes when the run finishes.
    """
    started = time.monotonic()
    output = os.path.abspath(output)
    run = _checked_run(output, roots, gender, predictor.name, min_confidence, link_mode)  # before hours of predictions
    summary = GenderSummary(output, gender)
    saved = _Progress(progress_path(output), predictor.name)
    earlier = _Earlier.of(output, paths, saved.done)
    made, rewritten, placed_before = earlier.made, earlier.rewritten, earlier.placed_before
    summary.kept, summary.resumed = earlier.kept, earlier.resumed
    if made:
        log.info("continuing: %d of %d images already predicted", len(made), len(paths))
    todo = [p for p in paths if p not in made]
    batch: list[tuple[str, NDArray[np.uint8]]] = []
    signatures: dict[str, Signature | None] = {}
    if todo and isinstance(predictor, Deferred):
        predictor.load()  # before the bar: its log lines, or why it cannot be loaded
    bar = progress_bar(total=len(todo), unit="img", enabled=progress and bool(todo))

    def record(predictions: list[GenderPrediction]) -> None:
        saved.add(predictions, signatures)
        made.update((p.path, p) for p in predictions)
        bar.update(len(predictions))

    def flush() -> None:
        try:
            predictions = predictor.predict(batch)
        except FaceOrganizerError:
            raise
        except Exception as err:  # noqa: BLE001 - ONNX Runtime's or TensorFlow's own: the device or the model failed
            raise device_failed(f"predicting gender failed for a batch of {count(len(batch), 'image')}", one_line(err),
                                predictor.device) from err
        record(predictions)
        batch.clear()

    inputs = Vanishing(os.path.abspath(r) for r in roots)
    try:
        for loaded in iter_loaded(todo, workers):
            signatures[loaded.path] = loaded.signature
            if loaded.image is None:
                record([GenderPrediction(loaded.path, None, 0.0, None, loaded.reason)])
                if loaded.reason and not_reached(loaded.reason):
                    inputs.not_reached(1, loaded.reason)
                continue
            inputs.reached()
            batch.append((loaded.path, loaded.image))
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    finally:
        saved.close()
        bar.close()
    predictions = [made[p] for p in paths]
    matched = summary.count(predictions, min_confidence)
    placement = place_all(output, matched, ["."] * len(matched), roots, link_mode, progress=progress, run=run,
                          grows_from=placed_before, renew=rewritten)
    destination = dict(zip(matched, placement.destinations))
    summary.status = Counter(placement.status.values())
    # An earlier match that no longer matches keeps its copy, and its row says where that copy is.
    left = {p: d for p, d in placed_before.items() if p not in destination and os.path.lexists(d)}
    summary.placed_before = sum(1 for p in paths if p in left)
    _write_predictions(output, predictions, destination, left, signatures)
    saved.remove()
    summary.predicted, summary.device = len(todo), predictor.device if todo else "none"
    summary.elapsed = time.monotonic() - started
    return summary


def _write_predictions(output: str, predictions: Sequence[GenderPrediction], destination: dict[str, str],
                       left: dict[str, str], signatures: dict[str, Signature | None]) -> None:
    """``output``'s predictions.csv: each image's prediction, where it was placed (``destination``; an
    earlier match's copy left in place: ``left``), and the size and modification time it was predicted at
    (``signatures``; read now for images predicted by an earlier run)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "gender", "confidence", "age", "matched", "reason", "destination", "bytes", "mtime_ns"])
    for p in predictions:
        signature = signatures[p.path] if p.path in signatures else file_signature(p.path)
        writer.writerow([p.path, p.gender or "", f"{p.confidence:.{CONFIDENCE_DIGITS}f}",
                         "" if p.age is None else f"{p.age:.1f}",
                         int(p.path in destination), p.reason or "", destination.get(p.path) or left.get(p.path, ""),
                         *(signature or ("", ""))])
    atomic_write_text(os.path.join(output, "predictions.csv"), buffer.getvalue())
