"""Stages 2-3: embeddings files in, person folders, clusters.csv, summary.json and
previews out."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__, copies, embfile, people, quality, rebase, relocate
from .clustering import (GROUP_SAMPLE, MIN_GROUP, OUTLIER, Clustering, assign_to_people, cluster_name, gpu_count,
                         graph_clusters, graph_z, kmeans, with_set_aside)
from .embfile import EmbeddingsFile
from .fsutil import atomic_write_text, lock_holder
from .images import file_signature
from .organize import (OCCUPIED, LinkMode, check_images_reachable, check_output_folder, check_same_images, files_line,
                       holds_moved_images, images_run, missing_found_in, place_all, placement_notes, portable_folders,
                       refuse_renamed, saved_state)
from .preview import IndexEntry, SheetFace, contact_sheet, placed_or_source, write_index, write_sheet
from .progress import count, listed
from .thresholds import calibrated_centre_impostors, calibrated_impostors, calibrated_pair_cut, load_calibration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    clusters: int | None = 2  # None: find the number of people
    min_similarity: float | None = None
    link_mode: LinkMode = "copy"
    dry_run: bool = False
    neighbours: int = 10
    min_cluster_size: int = 2
    seed: int = 1234
    previews: bool = True
    use_gpu: bool | None = None  # None: FAISS GPU when one is usable
    extra_groups: bool = True  # fixed k: groups of alike faces beyond k get centres, their faces go to outliers
    set_aside_unrecognisable: bool = True  # faces blurred past recognition go to outliers before clustering
    people_from: str | None = None  # an earlier output: assign faces to its people instead of clustering
    new_people: bool = False  # with people_from: groups of alike faces among the rest become people of their own
    attach_outliers: bool = True  # auto: a second pass gives outliers near a cluster's centre to that cluster
    join_rule: bool = True  # auto: groups join only when their faces are alike on average (off only for comparison)
    moved_to: tuple[str, ...] = ()  # earlier outputs that --link-mode move put the images in


SHOWN_FOLDERS = 50  # printed one per line; with thousands (--clusters auto), the rest are counted
SHOWN_MIXED = 10  # folders named in the note on folders that do not look like one person
MANY_FOLDERS = 50  # k-means beyond this many folders is slow at scale: the log line says so, and points to auto
ACROSS = "the mean similarity of their faces across the folders"


@dataclass
class ClusterReport:
    output: str
    clustering: Clustering
    names: list[str]
    images_per_cluster: dict[str, int]
    destinations: list[str]
    status: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0
    dry_run: bool = False
    link_mode: LinkMode = "copy"
    reused_frames: bool = False  # the embeddings files hold frames given another's embedding (--reuse-similar-frames)
    missing: Counter[str] = field(default_factory=Counter)  # per folder, its images not where the file says
    missing_found_in: str | None = None  # the earlier move's output that holds them: the --moved-to to give

    def folder_line(self, name: str, images: int) -> str:
        """``person_A: 143 images → /out/person_A/``, with how many of them could not be placed."""
        line = f"{name}: {count(images, 'image')} → {os.path.join(self.output, name)}{os.sep}"
        if missing := self.missing.get(name):
            line += f" ({'all' if missing == images else f'{missing:,}'} missing, not placed)"
        return line

    def lines(self) -> list[str]:
        if not self.destinations:
            return ["no faces in the embeddings files: nothing to sort"
                    + ("" if self.dry_run else " (clusters.csv and summary.json list none)")]
        people = [(n, c) for n, c in self.images_per_cluster.items() if n != "outliers"]
        shown = people if len(people) <= SHOWN_FOLDERS + 1 else people[:SHOWN_FOLDERS]
        out = [self.folder_line(name, n) for name, n in shown]
        if len(shown) < len(people):
            rest = [c for _, c in people[len(shown):]]
            sizes = f"{min(rest):,}–{max(rest):,} images each" if min(rest) != max(rest) else f"{count(rest[0], 'image')} each"
            out.append(f"… and {len(rest):,} more person folders ({sizes}, {sum(rest):,} in all): summary.json "
                       "lists every folder")
        if "outliers" in self.images_per_cluster:
            out.append(self.folder_line("outliers", self.images_per_cluster["outliers"]))
        out.append(f"similarity cut-off {self.clustering.threshold:.3f} ({self.clustering.threshold_source}); "
                   f"method: {self.clustering.method}")
        out += self.notes()
        if self.dry_run:
            out.append("dry run: nothing was written")
        else:
            out.append(f"{files_line(self.status)}; {self.elapsed:.1f} s")
            if self.link_mode == "move" and self.status.get("placed"):
                out.append(f"moved: undo_move.py {self.output} puts them back where they were embedded")
            out += placement_notes(self.status, "clusters.csv", self.missing_found_in)
        return out

    def notes(self) -> list[str]:
        """Folders that are not one person; what outliers/ holds beyond scattered faces: groups
        beyond --clusters, faces set aside."""
        notes = self.not_one_person()
        extra, k = self.clustering.extra_groups, self.clustering.n_clusters
        if extra and self.clustering.known_people:
            groups = "1 group" if len(extra) == 1 else f"{len(extra)} groups"
            notes.append(f"outliers/ also holds {groups} of alike faces that are none of the earlier run's people "
                         f"(about {_sizes(extra)}): people new since, or a repeated "
                         "non-face; --new-people gives them folders of their own after the earlier run's people")
        elif extra:
            groups = "1 more group" if len(extra) == 1 else f"{len(extra)} more groups"
            # In a collection of many people (no folder is one person), k + groups folders would not be either.
            advice = ("--clusters auto gives each person a folder" if self.many_people() or len(extra) > SHOWN_MIXED
                      else f"--clusters {k + len(extra)} gives them folders of their own")
            notes.append(f"outliers/ also holds {groups} of alike faces beyond --clusters {k} "
                         f"({_sizes(extra)}): other people, or a repeated non-face; {advice}")
        c = self.clustering
        if missed := c.groups_left_out:
            groups, its = ("1 group", "its") if len(missed) == 1 else (f"{len(missed)} groups", "their")
            notes.append(f"outliers/ also holds {groups} of alike faces that are none of the earlier run's people "
                         f"(about {_sizes(missed)}), and no folder of {its} own: fewer "
                         f"than {MIN_GROUP} of {its} faces reach the cut-off {c.threshold:.3f} to {its} centre; a "
                         "lower --min-similarity takes in more of them, and more strangers into every folder")
        if added := c.added_people:
            notes.append(f"{listed(added, 'folder')} {'is a person' if len(added) == 1 else 'are people'} new "
                         "since the earlier run (alike faces that matched none of its people); a later --people-from "
                         "this output sorts into them too")
        if c.attach_cutoff is not None:
            notes.append(f"second pass: {count(c.attached, 'face')} the graph left out joined their nearest cluster "
                         f"(similarity to its centre >= {c.attach_cutoff:.3f}: {c.attach_source}); "
                         "--no-second-pass leaves them in outliers/")
        aside = self.clustering.set_aside
        if c.lone_cluster:
            left = int((c.labels < 0).sum()) - (0 if aside is None else int(aside.sum()))  # set-aside faces are outliers too
            notes.append(f"one person found (person_A): outliers/ keeps the {count(left, 'face')} the graph left out, as the "
                         "second pass reads its cut-off from faces' similarities to other people's centres (or from a "
                         "calibration: search_faces.py --calibrate DIR); if the collection is mostly this person, "
                         "--clusters 1 judges every face by its similarity to their centre (more of their harder "
                         "faces, and more look-alikes)")
        if c.pairs:
            folders = "1 folder" if c.pairs == 1 else f"{c.pairs:,} folders"
            notes.append(f"{folders} of two faces, each the other's most similar (a person seen twice); "
                         "--min-cluster-size 3 leaves such faces in outliers/")
        if aside is not None and aside.any():
            notes.append(f"outliers/ also holds {count(int(aside.sum()), 'face')} too blurred or degraded to recognise "
                         f"({self.clustering.set_aside_reason}); --keep-unrecognisable clusters them too")
        if c.copies:
            frames = (", or frames given an earlier frame's embedding by --reuse-similar-frames" if self.reused_frames
                      else "")
            notes.append(f"{_repeat(c.copies)} another face (copies of an image under other names, as album "
                         f"folders hold them{frames}): counted once by the clustering, each placed in the folder of "
                         "the face it repeats")
        return notes

    def many_people(self) -> bool:
        """No k-means folder looks like one person: the collection is likely many people."""
        cohesion = self.clustering.cohesion
        return cohesion is not None and len(cohesion.not_one_person) == self.clustering.n_clusters > 0

    def folder_warnings(self) -> dict[str, str]:
        """Per k-means folder (by name), why it may not be one person, for ``index.html`` beside its sheet."""
        cohesion = self.clustering.cohesion
        if cohesion is None:
            return {}
        said: dict[int, list[str]] = {}
        for c, groups in cohesion.mixed:
            said.setdefault(c, []).append(f"{len(groups)} groups of faces alike to each other "
                                          f"({', '.join(f'{g:,}' for g in groups)}): likely several people")
        for c in cohesion.not_alike:
            said.setdefault(c, []).append("its faces are on average no more alike than different people's")
        for group in cohesion.groups:
            for c in group:
                others = listed([cluster_name(o) for o in group if o != c], "folder")
                said.setdefault(c, []).append(f"looks like the same person as {others}")
        return {cluster_name(c): "; ".join(lines) for c, lines in said.items()}

    def not_one_person(self) -> list[str]:
        """k-means folders whose faces are on average no more alike than different people's, or that hold
        several groups of alike faces, and folders that look like one person."""
        cohesion = self.clustering.cohesion
        if cohesion is None:
            return []
        notes = []
        if cohesion.groups:
            scale = f"one person's reach {cohesion.cutoff:.3f}, {cohesion.source}"
            advice = f"--clusters {cohesion.people} or --clusters auto would keep each person together"
            if len(cohesion.groups) == 1:
                group = cohesion.groups[0]
                notes.append(f"{listed([cluster_name(c) for c in group], 'folder')} look like one person "
                             f"({cohesion.across(group):.3f}: {ACROSS}; {scale}); {advice}")
            else:
                named = "; ".join(f"{listed([cluster_name(c) for c in group], 'folder')} ({cohesion.across(group):.3f})"
                                  for group in cohesion.groups[:SHOWN_MIXED])
                extra = len(cohesion.groups) - SHOWN_MIXED
                named += f"; and {count(extra, 'more group')}" if extra > 0 else ""
                notes.append(f"each of these groups of folders looks like one person: {named} (in brackets: "
                             f"{ACROSS}; {scale}); {advice}")
        unlike = cohesion.not_alike
        several = [(c, groups) for c, groups in cohesion.mixed if c not in unlike]
        if not unlike and not several:
            return notes
        sizes = np.bincount(self.clustering.labels[self.clustering.labels >= 0], minlength=self.clustering.n_clusters)
        if self.many_people():
            advice = "the collection may be many different people: --clusters auto gives each person a folder"
        else:
            advice = ("other people or non-faces that the fixed number of folders had to take in; fewer --clusters, "
                      "or --clusters auto, may suit the collection better")
        if several:
            named = "; ".join(f"{cluster_name(c)} ({count(int(sizes[c]), 'face')}: {len(groups)} groups of "
                              f"{', '.join(f'{g:,}' for g in groups)})" for c, groups in several[:SHOWN_MIXED])
            named += f"; and {len(several) - SHOWN_MIXED:,} more" if len(several) > SHOWN_MIXED else ""
            one = len(several) == 1
            notes.append(f"{'this folder holds' if one else 'these folders hold'} several groups of faces alike to "
                         f"each other and not to the other groups, likely one person each: {named}; "
                         + ("--clusters auto gives each person a folder" if self.many_people() else
                            "more --clusters, or --clusters auto, would give each a folder of their own"))
        if not unlike:
            return notes
        named = ", ".join(f"{cluster_name(c)} ({count(int(sizes[c]), 'face')}, mean pair similarity "
                          f"{cohesion.mean_pair[c]:.3f})" for c in unlike[:SHOWN_MIXED])
        named += f" and {len(unlike) - SHOWN_MIXED:,} more" if len(unlike) > SHOWN_MIXED else ""
        one = len(unlike) == 1
        return notes + [f"{named} {'does' if one else 'do'} not look like one person{'' if one else ' each'}: "
                        f"{'its' if one else 'their'} faces are on average no more alike than different people's (one "
                        f"person's reach {cohesion.cutoff:.3f}, {cohesion.source}): {advice}"]


def _sizes(groups: Sequence[int]) -> str:
    """The sizes of groups of faces, of the first ``SHOWN_MIXED``: ``60, 12, 7 faces, and 3 more groups``."""
    shown = ", ".join(f"{v:,}" for v in groups[:SHOWN_MIXED]) + " faces"
    return shown + (f", and {len(groups) - SHOWN_MIXED:,} more groups" if len(groups) > SHOWN_MIXED else "")


def load_embeddings(paths: Sequence[str]) -> EmbeddingsFile:
    """Read and merge embeddings files (one per GPU); different models are refused. A file that
    a later run is adding to (running now, or interrupted: checkpoint parts beside it) is read as
    it is, with a warning; so is a file whose run was interrupted and its checkpoints taken into it
    (``rebase_embeddings`` after the images moved), which lacks the images that run had left."""
    adding = set()
    paths = embfile.expand_unfinished(paths)  # a pattern that matched only runs' checkpoints: they are named
    for path in paths:
        if not os.path.isfile(path):
            continue  # ``embfile.load`` says why
        if (writer := lock_holder(path)) is not None:
            log.warning("%s: a generate_embeddings run (pid %d) is adding to it now, so the images it embeds are not "
                        "in it yet: cluster or search once it has finished (embeddings_info.py tells how far it got)",
                        path, writer)
        elif waiting := len(embfile.checkpoint_parts(path)):
            log.warning("%s: a later generate_embeddings run into it was interrupted (%s in %s), so the images that "
                        "run embedded are not in it yet: run the same generate_embeddings command again to finish it",
                        path, count(waiting, "checkpoint part"), embfile.parts_dir(path))
        else:
            continue
        adding.add(path)
    files = [embfile.load(p) for p in paths]
    for path, ef in zip(paths, files):
        if path not in adding and ef.meta.get("complete") is False:
            log.warning("%s: its generate_embeddings run was interrupted before it had embedded every image (it was "
                        "rebased since), so those it had left are not in it: run generate_embeddings over its input "
                        "folders again to finish it", path)
    return embfile.merge(files, [str(p) for p in paths])


def _with_gpu_fallback(fn: Any, use_gpu: bool | None, **kwargs: Any) -> Clustering:
    want = gpu_count() > 0 if use_gpu is None else use_gpu
    if want:
        try:
            return fn(use_gpu=True, **kwargs)
        except RuntimeError as err:  # e.g. a faiss-gpu build without kernels for this GPU
            log.warning("FAISS on the GPU failed (%s); clustering on the CPU", str(err).splitlines()[0][:200])
    return fn(use_gpu=False, **kwargs)


def run_clustering(ef: EmbeddingsFile, config: ClusterConfig) -> Clustering:
    """Faces too degraded to recognise are set aside first (when the file says where the model
    puts them), then the rest are clustered with k-means or, for ``clusters=None``, the graph,
    or, with ``people_from``, assigned to the people of that earlier output."""
    x = ef.rows.embeddings
    known = None
    if config.people_from:
        known = people.load(config.people_from)
        people.check_model(known, ef.meta.get("model_files", {}).get("recognition"), ef.dim)
    found = quality.find_unrecognisable(x, ef.meta.get(quality.META_KEY)) if config.set_aside_unrecognisable else None
    if found is None or not found.count:
        if found is None and config.set_aside_unrecognisable and len(x):
            log.warning("the embeddings file does not say where its model puts unrecognisable faces, so blurred "
                        "faces are clustered like the others; re-running the generate_embeddings command that made "
                        "it records that without embedding anything again")
        return _cluster_once(x, ef, config, known, np.arange(len(x)))
    keep = np.nonzero(~found.mask)[0]
    log.info("%s too degraded to recognise set aside (similarity to the unrecognisable-face centre >= %.3f)",
             count(found.count, "face"), found.cutoff)
    reason = f"similarity to the model's blurred-face centre >= {found.cutoff:.3f}: {found.source}"
    return with_set_aside(_cluster_once(x[keep], ef, config, known, keep), keep, x, reason)


def _cluster_once(x: np.ndarray, ef: EmbeddingsFile, config: ClusterConfig, known: people.People | None,
                  rows: np.ndarray) -> Clustering:
    """``_cluster`` over the distinct faces of ``x`` (``ef``'s ``rows``), each copy then placed with the face it
    repeats."""
    paths = ef.rows.paths
    distinct, of = copies.first_faces(x, [paths[i] for i in rows] if len(rows) < len(paths) else paths,
                                      ef.rows.face_index[rows], ef.digests)
    if distinct.size == len(x):
        return _cluster(x, ef, config, known)
    repeats = len(x) - distinct.size
    log.info("%s another face (a copy of an image under another name%s): clustered once, placed with it",
             _repeat(repeats), ", or a frame given another's embedding" if ef.reused else "")
    return copies.spread(_cluster(x[distinct], ef, config, known), distinct, of)


def _repeat(n: int) -> str:
    return f"{n:,} {'face repeats' if n == 1 else 'faces repeat'}"


def _cluster(x: np.ndarray, ef: EmbeddingsFile, config: ClusterConfig, known: people.People | None = None) -> Clustering:
    if known is not None:
        cut, source = ((config.min_similarity, "--min-similarity") if config.min_similarity is not None
                       else (known.cutoff, f"the cut-off of {known.folder}: {known.cutoff_source}"))
        method = f"assigned to the {len(known.centres)} people of {known.folder} ({known.method})"
        return _with_gpu_fallback(assign_to_people, config.use_gpu, x=x, centres=known.centres, threshold=cut,
                                  source=source, method=method, names=known.names, seed=config.seed,
                                  new_people=config.new_people)
    calibration = load_calibration(ef.meta.get("model_files", {}).get("recognition", ""))
    if config.clusters is None:
        return _with_gpu_fallback(graph_clusters, config.use_gpu, x=x, min_similarity=config.min_similarity,
                                  neighbours=config.neighbours, min_cluster_size=config.min_cluster_size,
                                  seed=config.seed, calibrated=_graph_cut(calibration, len(x)),
                                  impostors=calibrated_impostors(calibration), attach=config.attach_outliers,
                                  join_rule=config.join_rule, centre_impostors=calibrated_centre_impostors(calibration))
    log.info("clustering %s into %s with k-means (FAISS)%s", count(len(x), "face"), count(config.clusters, "folder"),
             "; its time grows with faces times folders, and --clusters auto finds the people itself"
             if config.clusters > MANY_FOLDERS else "")
    calibrated = (float(calibration["centre_threshold"]), "calibration") if calibration and "centre_threshold" in calibration else None
    pair = _graph_cut(calibration, min(len(x), GROUP_SAMPLE)) if config.extra_groups else None
    return _with_gpu_fallback(kmeans, config.use_gpu, x=x, k=config.clusters,
                              min_similarity=config.min_similarity, seed=config.seed, calibrated=calibrated,
                              extra_groups=config.extra_groups, pair_calibrated=pair[0] if pair else None)


def run_settings(ef: EmbeddingsFile, config: ClusterConfig) -> dict[str, Any]:
    """What the output's state file keeps of a run, for ``check_same_images`` to refuse another
    run's output before clustering: the images (``images_run``) and the settings that decide the
    folders. Other settings are left to the plan's own check, after the clustering."""
    people_from = os.path.abspath(config.people_from) if config.people_from else None
    return {**images_run(ef.rows.paths), "model_pack": ef.meta.get("model_pack"),
            "clusters": None if people_from else (config.clusters or "auto"), "people_from": people_from,
            **({"new_people": config.new_people} if people_from else {}),
            "min_similarity": config.min_similarity, "link_mode": config.link_mode}


def _graph_cut(calibration: dict[str, Any] | None, n: int) -> tuple[float, str] | None:
    """The calibrated edge cut-off of a graph over ``n`` faces, as ``graph_z`` asks of the data's."""
    cut = calibrated_pair_cut(calibration, graph_z(n))
    if calibration and cut is None:
        log.warning("the stored calibration for this model was made before it recorded the impostor pairs' scale, "
                    "so the face-to-face cut-off of the clustering graph is read from the data; run "
                    "search_faces.py --calibrate again to use the calibration there too")
    return cut


def _write_csv(csv_path: str, ef: EmbeddingsFile, names: list[str], sims: np.ndarray, dests: list[str],
               status: dict[str, str], set_aside: np.ndarray | None) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "face_index", "cluster", "similarity", "destination", "detected", "status", "unrecognisable",
                     "bytes"])
    r = ef.rows
    aside = np.zeros(len(r.paths), bool) if set_aside is None else set_aside
    # Later runs know each image by its name and size; a destination not placed (missing) has none.
    # Nor does one left to another file (changed or put there since).
    size = {dest: sig[0] if status.get(dest) != OCCUPIED and (sig := file_signature(dest)) else ""
            for dest in set(dests)}
    for i, source in enumerate(r.paths):
        writer.writerow([source, int(r.face_index[i]), names[i], f"{float(sims[i]):.4f}", dests[i],
                         int(bool(r.detected[i])), status.get(dests[i], ""), int(aside[i]), size[dests[i]]])
    atomic_write_text(csv_path, buffer.getvalue())


MAX_SHEETS = 100  # contact sheets for the largest clusters; with thousands, the rest are listed by count


def _previews(report: ClusterReport, ef: EmbeddingsFile, where: Sequence[str]) -> None:
    output, clustering, names = report.output, report.clustering, report.names
    counts, destinations = report.images_per_cluster, report.destinations
    folder = os.path.join(output, "previews")
    photos = ef.meta.get("mode") == "photos"
    members: dict[str, list[int]] = {}
    for i, name in enumerate(names):  # one pass, not one scan of all faces per cluster
        members.setdefault(name, []).append(i)
    sims = clustering.similarity
    entries = []
    sheeted = [n for n in counts if n != "outliers"][:MAX_SHEETS] + (["outliers"] if "outliers" in counts else [])
    warnings = report.folder_warnings()
    for name in counts:
        sheet = None
        if name in sheeted:
            rows = np.asarray(members[name])
            if clustering.repeats is not None:  # each face once: a copy would show it twice
                rows = rows[~clustering.repeats[rows]]
            order = rows[np.argsort(-sims[rows], kind="stable")]
            central, borderline = order[:24], order[24:][::-1][:8]  # the least alike of those not central
            central_faces, borderline_faces = (
                [SheetFace(placed_or_source(destinations[i], where[i]), ef.rows.bbox[i] if photos else None, name)
                 for i in group]
                for group in (central, borderline))
            sheet = os.path.join(folder, f"{name}.jpg")
            write_sheet(sheet, contact_sheet(central_faces, borderline_faces))
        caption = OUTLIERS_CAPTION if name == "outliers" else IndexEntry.caption
        entries.append(IndexEntry(name, counts[name], os.path.join(output, name), sheet, caption,
                                  missing=report.missing[name], warning=warnings.get(name, "")))
    notes = [f"{len(ef.rows):,} faces; similarity cut-off {clustering.threshold:.3f} ({clustering.threshold_source})",
             *report.notes(), *placement_notes(report.status, "clusters.csv", report.missing_found_in)]
    if len(counts) > len(sheeted):
        notes.append(f"contact sheets for the {MAX_SHEETS} largest clusters and outliers; the rest are listed by size")
    write_index(os.path.join(output, "index.html"), "face-organizer clusters", entries, notes)


# How to read outliers/' sheet: its faces in order of similarity to the nearest person's centre.
OUTLIERS_CAPTION = ("top rows: the faces most like one of the people, where a face their folder missed would be; "
                    "red: the least like any")


def cluster_faces(ef: EmbeddingsFile, output: str, config: ClusterConfig, *, progress: bool = True,
                  sources: Sequence[str] = ()) -> ClusterReport:
    started = time.monotonic()
    output = os.path.abspath(output)
    check_output_folder(output, config.dry_run)  # before the clustering, which takes minutes on a large collection
    run = run_settings(ef, config)
    check_same_images(output, run, "cluster_faces")
    refuse_renamed(output, relocate.renamed_in(output))  # the same run again, into folders renamed since
    where = relocate.current_locations(ef.rows.paths, config.moved_to, output, rebase.steps(ef.meta))
    check_images_reachable(where, output, rebase.steps(ef.meta))
    clustering = run_clustering(ef, config)
    if clustering.names:  # --people-from: folders the user named, on another system perhaps
        clustering.names = portable_folders(clustering.names, output)
    names = [clustering.name(int(label)) for label in clustering.labels]
    paths = ef.rows.paths
    counts: Counter[str] = Counter()
    for name, path in set(zip(names, paths)):
        counts[name] += 1
    label = dict(zip(names, clustering.labels.tolist()))  # person_B before person_AA when as large
    order = sorted(counts, key=lambda n: (n == "outliers", -counts[n], label[n]))
    images_per_cluster = {n: counts[n] for n in order}
    placement = place_all(output, paths, names, ef.meta.get("inputs", []), config.link_mode,
                          sources=where if config.moved_to else None, dry_run=config.dry_run, progress=progress,
                          run=run)
    report = ClusterReport(output, clustering, names, images_per_cluster, placement.destinations, dry_run=config.dry_run,
                           link_mode=config.link_mode, reused_frames=bool(ef.reused))
    if config.dry_run:
        report.elapsed = time.monotonic() - started
        return report
    report.status = Counter(placement.status.values())
    report.missing = Counter(name for name, dest in set(zip(names, placement.destinations))
                             if placement.status.get(dest) == "missing")
    if report.missing:  # the --moved-to the run lacked, where an earlier move beside it (or --people-from) holds them
        roots = [*rebase.near(output), *([os.path.dirname(os.path.abspath(config.people_from))] if config.people_from
                                         else [])]
        report.missing_found_in = missing_found_in(paths, placement, roots, rebase.steps(ef.meta))
    # Only from outputs a move filled: an output of copies named in --moved-to keeps them.
    if config.link_mode == "move" and (moved_from := [d for d in config.moved_to
                                                      if holds_moved_images(saved_state(d) or {})]):
        relocate.remove_moved_copies(dict(zip(paths, placement.destinations)), moved_from, output,
                                     rebase.steps(ef.meta))
    _write_csv(os.path.join(output, "clusters.csv"), ef, names, clustering.similarity, placement.destinations, placement.status,
               clustering.set_aside)
    if config.previews:
        _previews(report, ef, where)
    people_file = people.save(output, clustering.centres)  # for a later --people-from
    report.elapsed = time.monotonic() - started
    summary = {
        "output": output,
        "embeddings_files": list(sources),
        "faces": len(paths),
        "clusters": images_per_cluster,
        "method": clustering.method,
        "similarity_cutoff": clustering.threshold,
        "cutoff_source": clustering.threshold_source,
        "extra_groups_in_outliers": list(clustering.extra_groups),
        "one_person_check": _cohesion_summary(clustering),
        "second_pass": ({"joined": clustering.attached, "cutoff": clustering.attach_cutoff,
                         "cutoff_source": clustering.attach_source} if clustering.attach_cutoff is not None else None),
        "unrecognisable_in_outliers": int(clustering.set_aside.sum()) if clustering.set_aside is not None else 0,
        "copies_clustered_once": clustering.copies,
        "link_mode": config.link_mode,
        "moved_to": list(config.moved_to),
        "files": dict(report.status),
        "model_pack": ef.meta.get("model_pack"),
        "model_files": ef.meta.get("model_files"),
        "embedding_size": ef.dim,
        "people_file": people_file,
        "people_names": [clustering.name(i) for i in range(clustering.n_clusters)],
        "new_people": clustering.added_people,
        "new_people_groups_left_in_outliers": list(clustering.groups_left_out),  # --new-people: under MIN_GROUP
        "elapsed_seconds": round(report.elapsed, 2),
        "tool_version": __version__,
    }
    atomic_write_text(os.path.join(output, "summary.json"), json.dumps(summary, indent=2))
    return report


def _cohesion_summary(clustering: Clustering) -> dict[str, Any] | None:
    """Each k-means folder's mean pair similarity, the level one person's faces reach, the
    folders below it, the groups of folders that look like one person and how many people the
    folders hold (None for the graph, whose folders are held to it as they grow)."""
    c = clustering.cohesion
    if c is None:
        return None
    return {"mean_pair_similarity": {cluster_name(i): (None if np.isnan(v) else round(float(v), 4))
                                     for i, v in enumerate(c.mean_pair)},
            "one_person_cutoff": c.cutoff, "cutoff_source": c.source,
            "not_one_person": [cluster_name(i) for i in c.not_one_person],
            "groups_of_alike_faces": {cluster_name(i): list(groups) for i, groups in c.mixed},
            "look_like_one_person": [[cluster_name(i) for i in group] for group in c.groups],
            "people": c.people}


def dry_run_lines(report: ClusterReport, limit: int = 20) -> list[str]:
    if not report.destinations:
        return []
    ops = sorted(set(zip(report.clustering.labels.tolist(), report.destinations)))
    files = len(set(report.destinations))
    lines = [f"would write {count(files, 'file')}" + (f"; first {limit}:" if files > limit else ":")]
    lines += [f"  {d}" for _, d in ops[:limit]]
    return lines


__all__ = ["ClusterConfig", "ClusterReport", "OUTLIER", "cluster_faces", "load_embeddings", "dry_run_lines"]
