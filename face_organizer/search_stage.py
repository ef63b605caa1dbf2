"""Face search as a stage: embeddings files + reference photos -> matches.csv and the
matched images in a folder; and calibration of a model's cut-offs."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import copies, rebase, relocate
from .embfile import EmbeddingsFile, model_signature
from .errors import SetupError, device_failed, one_line
from .faces import EmbedOptions, FaceModels, embed_batch
from .fsutil import atomic_write_text
from .images import discover_images, load
from .organize import (LinkMode, check_images_reachable, check_output_folder, check_same_images, files_line,
                       images_run, missing_found_in, place_all, placement_notes)
from .preview import IndexEntry, SheetFace, contact_sheet, placed_or_source, write_index, write_sheet
from .progress import bar as progress_bar
from .progress import count
from .search import (REFERENCE_Z, FaceIndex, Reference, SearchResult, alike_sets, choose_faces, embed_reference,
                     search, someone_else, strangers, undecided)
from .thresholds import calibrate_from_embeddings, load_calibration

log = logging.getLogger(__name__)

FOLDER_REFERENCES = 100  # at most this many references from one query folder
SHOWN_REFERENCES = 8  # reference tiles on the contact sheet, before the matches
DRY_RUN_SHOWN = 10  # the weakest matches a dry run names


def check_same_model(ef: EmbeddingsFile, models: FaceModels) -> None:
    """Refuses a query model other than the one the file names; a file of the user's own that names
    none is searched with the model given, if its size matches, with a warning."""
    theirs = model_signature(ef.meta)[0]
    if theirs is None and ef.dim == models.dim:
        log.warning("the embeddings file does not name the model that made it: the queries are embedded with %s "
                    "(%d-d), and the matches mean something only where that model made the file's embeddings too",
                    models.pack.recognizer.name, models.dim)
        return
    if theirs != models.pack.recognizer.name or ef.dim != models.dim:
        raise SetupError(
            f"the embeddings were made with {theirs or 'a model the file does not name'} ({ef.dim}-d) but the "
            f"query would be embedded with {models.pack.recognizer.name} ({models.dim}-d): pass the pack that made "
            "them with --model/--model-root"
        )


@dataclass
class SearchReport:
    result: SearchResult
    references: list[Reference]
    destinations: list[str]
    rows: int
    output: str
    left_out: list[str] = field(default_factory=list)  # why each query that could not be used was left out
    status: Counter[str] = field(default_factory=Counter)  # files by what their placement did
    dry_run: bool = False  # nothing was written; ``weakest`` names the lowest matches
    weakest: list[tuple[float, str]] = field(default_factory=list)  # (similarity, path), the lowest first
    missing_found_in: str | None = None  # the earlier move's output that holds the missing images: the --moved-to

    def lines(self) -> list[str]:
        if not self.rows:
            return ["no faces in the embeddings files: nothing to search (matches.csv lists none)"]
        unique = len(set(self.destinations))
        via = int(self.result.via_expansion.sum())
        where = f"; dry run: nothing written to {self.output}" if self.dry_run else f" → {self.output}{os.sep}"
        lines = [
            f"{count(len(self.result.index), 'matching face')} in {count(unique, 'image')} "
            f"({via:,} found by query expansion) out of {count(self.rows, 'face')}{where}",
            f"similarity threshold {self.result.threshold:.3f} ({self.result.threshold_source})",
        ]
        if self.left_out:
            lines.append(f"searched with {len(self.references)} of {len(self.references) + len(self.left_out)} "
                         f"queries; left out: {'; '.join(self.left_out)}")
        elif len(self.references) > 1:
            lines.append(f"searched with {len(self.references)} queries")
        if self.status:
            lines.append(files_line(self.status))
        lines += placement_notes(self.status, "matches.csv", self.missing_found_in)
        if self.weakest:
            lines.append("the weakest matches, where a wrong one would show first (a --threshold above its "
                         "similarity leaves it out):")
            lines += [f"  {similarity:.3f}  {path}" for similarity, path in self.weakest]
        return lines


def reference_paths(queries: Sequence[str]) -> list[str]:
    """The reference photos the queries name: a folder stands for its images, at most
    ``FOLDER_REFERENCES`` of them spread evenly over it: each reference is embedded on its own,
    so a person folder of 300,000 crops would take over an hour."""
    paths: list[str] = []
    for query in queries:
        if os.path.isdir(query):
            found = discover_images([query])
            if not found:
                raise SetupError(f"query folder {query} holds no images")
            if len(found) > FOLDER_REFERENCES:
                log.warning("query folder %s holds %s; searching with %d of them, spread evenly over it (name "
                            "photos as queries to choose them)", query, count(len(found), "image"), FOLDER_REFERENCES)
                found = [found[i * len(found) // FOLDER_REFERENCES] for i in range(FOLDER_REFERENCES)]
            paths += found
        else:
            paths.append(query)
    return paths


def usable_references(queries: Sequence[str], models: FaceModels,
                      det_size: int = EmbedOptions.photo_det_size) -> tuple[list[Reference], list[str]]:
    """The queries' reference faces (a folder: each of its images), detected in photos at ``det_size``, and why
    any could not be used. One unusable query among several is left out with a warning (a reference set often
    holds a photo where the face is turned away); the search stops only when none can be used."""
    queries = reference_paths(queries)
    refs: list[Reference] = []
    left_out: list[str] = []
    for query in queries:
        try:
            refs.append(embed_reference(query, models, det_size))
        except SetupError as err:
            if len(queries) == 1:
                raise
            log.warning("%s; this query is left out", err)
            left_out.append(str(err))
        except Exception as err:  # noqa: BLE001 - ONNX Runtime's own: the device or the model failed
            raise device_failed(f"embedding the query {query} failed", one_line(err), models.device,
                                "Nothing was placed yet: run the same command again") from err
    if not refs:
        raise SetupError(f"none of the {len(queries)} queries can be used: {'; '.join(left_out)}")
    return choose_faces(refs), left_out


def _which_of(some: int, photos: int) -> str:
    """``both group photos``, ``the 3 group photos``, ``2 of the 5 group photos``."""
    if some < photos:
        return f"{some} of the {photos} group photos"
    return "both group photos" if photos == 2 else f"the {photos} group photos"


def _span(values: Sequence[float | None]) -> str:
    """``0.54–0.60``, or ``0.57`` for values that round alike (those not measured left out)."""
    known = [v for v in values if v is not None]
    low, high = f"{min(known):.2f}", f"{max(known):.2f}"
    return low if low == high else f"{low}–{high}"


def search_settings(ef: EmbeddingsFile, queries: Sequence[str], *, threshold: float | None = None,
                    top_k: int | None = None, expand: bool = True, link_mode: LinkMode = "copy") -> dict[str, Any]:
    """What a search's output records of it, so that only the same search goes on into it."""
    return {**images_run(ef.rows.paths), "queries": sorted(os.path.abspath(q) for q in queries), "threshold": threshold,
            "top_k": top_k, "expand": expand, "link_mode": link_mode}


def check_search_output(output: str, settings: Mapping[str, Any], dry_run: bool = False) -> None:
    """Refuse an ``output`` that this search (``search_settings``) could not write into: one that is
    not a face-organizer output, cannot be written, or holds another search's matches. Cheap: the
    command asks it before the models load (minutes, where TensorRT builds its engines)."""
    check_output_folder(output, dry_run)
    check_same_images(output, settings, "search_faces")


def find_person(ef: EmbeddingsFile, models: FaceModels, queries: Sequence[str], output: str, *,
                threshold: float | None = None, top_k: int | None = None, expand: bool = True,
                link_mode: LinkMode = "copy", use_gpu: bool = False, progress: bool = True,
                previews: bool = True, moved_to: Sequence[str] = (), dry_run: bool = False,
                settings: Mapping[str, Any] | None = None) -> SearchReport:
    """``moved_to``: earlier cluster_faces outputs that ``--link-mode move`` put the images in. ``dry_run``:
    search, and write nothing; the report names the weakest matches instead. ``settings``: this search's
    ``search_settings``, where the caller has them already (it checked the output with them)."""
    check_same_model(ef, models)
    output = os.path.abspath(output)
    if settings is None:
        settings = search_settings(ef, queries, threshold=threshold, top_k=top_k, expand=expand, link_mode=link_mode)
    check_search_output(output, settings, dry_run)  # before the references are embedded and searched for
    where = relocate.current_locations(ef.rows.paths, moved_to, output, rebase.steps(ef.meta))
    check_images_reachable(where, output, rebase.steps(ef.meta))
    # References are detected as the collection's photos were: at a larger --det-size, small faces are found.
    det_size = int(ef.meta.get("photo_det_size", EmbedOptions.photo_det_size))
    refs, left_out = usable_references(queries, models, det_size)
    calibration = load_calibration(models.pack.recognizer.name)
    calibrated = (float(calibration["pair_threshold"]), "calibration") if calibration and "pair_threshold" in calibration else None
    index = FaceIndex(ef.rows.embeddings, use_gpu)

    def run(refs: Sequence[Reference]) -> SearchResult:
        return search(index, [r.embedding for r in refs], threshold=threshold, calibrated=calibrated, expand=expand,
                      top_k=top_k)

    result = run(refs)
    if (doubtful := strangers(refs, result.threshold)) and len(doubtful) < len(refs):
        # A group photo in which no face is the person the other references show: searching for
        # its closest stranger would fill the folder with that stranger.
        for ref in doubtful:
            left_out.append(f"none of the {ref.faces_in_photo} faces in {ref.path} is like the other references "
                            f"(best {ref.agreement:.2f}, below the threshold {result.threshold:.2f})")
            log.warning("%s; this query is left out", left_out[-1])
        refs = [r for r in refs if r not in doubtful]
        result = run(refs)
    if len(refs) > 1:  # are the references alike? Against the collection's random pairs, not the match threshold
        cut = index.impostor.cut(REFERENCE_Z)
        if len(sets := alike_sets(refs, cut)) > 1:
            kept = _unlike_references(refs, sets, cut, index.impostor.describe("impostor peak of random pairs",
                                                                               REFERENCE_Z), left_out)
            if len(kept) < len(refs):
                refs, result = kept, run(kept)
    if unsure := undecided(refs, result.threshold):
        named = ", ".join(r.path for r in unsure[:3]) + (", …" if len(unsure) > 3 else "")
        log.warning("%s show the same people together (%s): in each, a second face is like the other references too "
                    "(%s, against %s for the faces searched for), so nothing says which person is meant. To search for "
                    "another of them, add a photo of that person alone or a crop of the face",
                    _which_of(len(unsure), len(refs)), named, _span([r.runner_up_agreement for r in unsure]),
                    _span([r.agreement for r in unsure]))
    paths = [ef.rows.paths[i] for i in result.index]
    if dry_run:
        lowest = np.argsort(result.similarity, kind="stable")[:DRY_RUN_SHOWN]
        return SearchReport(result, refs, paths, len(ef.rows), output, left_out, dry_run=True,
                            weakest=[(float(result.similarity[k]), paths[k]) for k in lowest])
    placement = place_all(output, paths, ["."] * len(paths), ef.meta.get("inputs", []), link_mode,
                          sources=[where[i] for i in result.index] if moved_to else None, progress=progress,
                          run=dict(settings))
    dests, status = placement.destinations, placement.status
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "face_index", "similarity", "found_by", "destination", "status"])
    for row, sim, via, dest in zip(result.index, result.similarity, result.via_expansion, dests):
        writer.writerow([ef.rows.paths[row], int(ef.rows.face_index[row]), f"{float(sim):.4f}",
                         "expansion" if via else "reference", dest, status[dest]])
    atomic_write_text(os.path.join(output, "matches.csv"), buffer.getvalue())
    found_in = missing_found_in(paths, placement, rebase.near(output), rebase.steps(ef.meta))
    report = SearchReport(result, refs, dests, len(ef.rows), output, left_out, Counter(status.values()),
                          missing_found_in=found_in)
    if previews:
        _preview(output, ef, report, where)
    return report


def _unlike_references(refs: list[Reference], sets: list[list[int]], cut: float, source: str,
                       left_out: list[str]) -> list[Reference]:
    """References whose faces are not all alike (``search.alike_sets`` at ``cut``: several sets). Where most
    of them are alike, the others likely show someone else (a photo filed with the wrong person) and are
    left out, said so in ``left_out``; else each is searched for, with a warning."""
    faces = np.stack([r.embedding for r in refs])
    if (others := someone_else(sets, len(refs))) is None:
        log.warning("the %d references are not all alike: they fall into %d sets whose faces are below %.2f to each "
                    "other's (%s; largest set %d), so they may show different people; the matches of each are "
                    "included (give photos of one person only, or more of them)", len(refs), len(sets), cut, source,
                    len(sets[0]))
        return refs
    for i in others:
        best = float(np.max(faces[sets[0]] @ faces[i]))
        where = "the face" if refs[i].faces_in_photo == 1 else "the face chosen"
        left_out.append(f"{where} in {refs[i].path} is like none of the {len(sets[0])} alike references (best "
                        f"{best:.2f}, below {cut:.2f}: {source}): likely someone else")
        log.warning("%s; this query is left out (search with it alone to find that person)", left_out[-1])
    return [refs[i] for i in sets[0]]


def _preview(output: str, ef: EmbeddingsFile, report: SearchReport, where: Sequence[str]) -> None:
    """``index.html`` with a contact sheet: the references, then the best matches, then (framed
    in red) the weakest, where a wrong match would show first."""
    photos = ef.meta.get("mode") == "photos"
    rows = report.result.index

    def face(k: int) -> SheetFace:
        i = int(rows[k])
        return SheetFace(placed_or_source(report.destinations[k], where[i]), ef.rows.bbox[i] if photos else None, "")

    refs = report.references[:SHOWN_REFERENCES]
    queries = [SheetFace(r.path, r.box, "") for r in refs]  # cropped to the face used
    shown = copies.first_faces(ef.rows.embeddings[rows], [ef.rows.paths[int(i)] for i in rows],
                               ef.rows.face_index[rows], ef.digests)[0]  # matches in order, each face once
    n_best = min(len(shown), max(8, 24 - len(queries)))
    best = [face(int(k)) for k in shown[:n_best]]
    weakest = [face(int(k)) for k in shown[n_best:][::-1][:8]]
    sheet = os.path.join(output, "previews", "matches.jpg")
    write_sheet(sheet, contact_sheet(queries + best, weakest))
    named = (f"{len(refs)} of the {len(report.references)} references" if len(refs) < len(report.references)
             else "references")
    first = ("the first tile is the reference" if len(queries) == 1
             else f"the first {len(queries)} tiles are the {named}")
    notes = [f"{first} ({', '.join(os.path.basename(r.path) for r in refs)}), then the best matches", *report.lines()]
    write_index(os.path.join(output, "index.html"), "face-organizer search",
                [IndexEntry("matches", len(set(report.destinations)), output, sheet,
                            f"first {'the reference' if len(queries) == 1 else f'{len(queries)} references'}, then "
                            "the best matches; red: the weakest, where a wrong match would show first",
                            missing=report.status["missing"])], notes)


def calibrate_folder(folder: str, models: FaceModels, target_fmr: float, batch_size: int = 64,
                     progress: bool = True) -> dict[str, object]:
    """Embed a labelled folder (one sub-folder per identity) and compute cut-offs."""
    root = os.path.abspath(folder)
    try:
        paths = discover_images([root])
    except FileNotFoundError as err:
        raise SetupError(f"cannot calibrate: {err}") from None
    if not paths:
        raise SetupError(f"no images under {root}")
    embeddings, identities = [], []
    for start in progress_bar(range(0, len(paths), batch_size), unit="batch", enabled=progress):
        loaded = map(load, paths[start : start + batch_size])
        batch = [(item.path, item.image) for item in loaded if item.image is not None]
        result = embed_batch(batch, models, EmbedOptions())
        embeddings.append(result.rows.embeddings)
        identities += [os.path.relpath(p, root).split(os.sep)[0] for p in result.rows.paths]
    try:
        entry = calibrate_from_embeddings(np.concatenate(embeddings), identities, target_fmr)
    except ValueError as err:
        raise SetupError(f"cannot calibrate on {root}: {err}") from None
    entry.update(folder=root, model_pack=models.pack.name, recognizer=models.pack.recognizer.name)
    return entry
