#!/usr/bin/env python3
"""Clustering accuracy on real faces (LFW dev in ../shared), with the testpack model.

1. Two people + strangers + junk, --clusters 2: video-style occluded crops of Tony Blair
   and Donald Rumsfeld, ~10% crops of other people and ~3% non-face crops, in year
   folders with colliding names. Reports purity/recall of the two person folders and
   how much of the strangers and junk ended in outliers/, for each of --seeds (each seed
   draws other strangers and junk and other zooms and occlusions).
   With --recurring, the same draws again with every LFW dev photo of one or two more
   people who recur (an interviewer: Junichiro Koizumi, 60 photos; then also Jean
   Chretien, 55): reports the same, how many of their faces reached outliers/, and the
   extra groups found, against --no-extra-groups. With --blurred N, N more crops of the two
   people and N of other people for each blur (Gaussian sigma 3, 5 and 8 pixels on the
   256-pixel crop): where the blurred faces of each kind went, against --keep-unrecognisable.
   With --auto, each draw also with --clusters auto, with and without its second pass
   (--no-second-pass): the same report, plus how many more folders auto made.
   With --one-person, draws of Tony Blair alone with strangers and junk, --clusters 1
   (and --clusters auto too, with --auto, also with a calibration made on the crops of the
   LFW dev people with five photos or more who are not in the draw).
   With --years, each draw split into two "years" (alternate faces): the first sorted with
   --clusters 2, the second with --people-from the first; reports both, so the second
   year's folders can be compared with the first's. With --years --recurring also the draws
   with every crop of a person new in the second year (Koizumi), sorted --people-from the
   first --new-people: that person's folder is scored as a third.
2. Many people, --clusters auto: all 2,805 LFW dev photos (610 identities, 400 of them
   with one photo); outliers count as singletons. Reports BCubed and pairwise P/R/F, with
   and without the second pass for outliers (--no-second-pass). With --crops, the same
   photos again as occluded video-style crops (as the two-person draws make them). With
   --frames N, each photo as a shot of N such crops whose zoom, occluder, exposure and
   mirroring vary from frame to frame (a collection full of near-copies, as video gives),
   also without the rule that joins two groups only when their faces are alike on average.
   With --library, a photo library: DeepFace's and face_recognition's labelled photos (20
   people, 1-11 photos each) in photos mode, also with --min-cluster-size 3 (no folders of two).
   With --few, photo libraries that a few people fill, in photos mode, --clusters auto and
   --clusters 5: every LFW dev photo of the five people with the most (144, 121, 60, 55 and
   20 photos), and of the two with the most beside three with 7-19. With --copies, the LFW dev
   photos again beside an album folder holding a copy of each one-photo person's photo (as a Google
   Takeout export holds them): copies are clustered once, so no folder is one photo twice.
3. A few people among many strangers, --k-people N: N seeded draws of 2-9 of the LFW dev people
   with 15 photos or more, 15-30 photos each, among 5-200 of the people with one photo (the photos
   embedded for 2.), --clusters K with K the people drawn. A draw passes when each folder holds
   one of them and 90% of their photos; also how many strangers entered a folder and how many of
   the people's photos went to outliers/. Then N draws of one person so, --clusters 1. With --crops
   too, the same draws of the occluded crops.

  python benchmarks/eval_clustering.py [--recurring] [--blurred 20] [--auto] [--one-person] [--years] [--crops] [--frames 5] [--library] [--few] [--copies] [--k-people 200]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import add_shared_argument, embedded_collection, embedded_photos, lfw_testpack, read_labels  # noqa: E402
from face_organizer.cluster_stage import ClusterConfig, cluster_faces, run_clustering  # noqa: E402
from face_organizer.clustering import Clustering, cluster_name  # noqa: E402
from face_organizer.embed_run import run_embeddings  # noqa: E402
from face_organizer import embfile  # noqa: E402
from face_organizer.evaluation import bcubed, folder_report, largest_face_rows, pairwise  # noqa: E402
from face_organizer.faces import EmbedOptions, FaceModels  # noqa: E402
from face_organizer.images import read_image  # noqa: E402
from face_organizer.samples import central_landmarks, two_person_collection, varied_frames  # noqa: E402
from face_organizer.thresholds import CALIBRATION_ENV, calibrate_from_embeddings, save_calibration  # noqa: E402


def blur_lines(items: list, paths: list[str], folders: list[str], folder_of: dict[str, str]) -> list[str]:
    """Per blur: the two people's blurred faces in their own folder / outliers / the other folder,
    and other people's blurred faces that entered a person folder."""
    item = {str(i.path): i for i in items}
    lines = []
    for sigma in sorted({i.blur for i in items if i.blur}):
        own = [(item[p].label, f) for p, f in zip(paths, folders) if item[p].blur == sigma and item[p].label in folder_of]
        right = sum(f == folder_of[label] for label, f in own)
        out = sum(f == "outliers" for _, f in own)
        others = [f for p, f in zip(paths, folders) if item[p].blur == sigma and item[p].label not in folder_of]
        lines.append(f"blur sigma {sigma:g}: the two people's {len(own)} faces: {right} in their folder, {out} in outliers/, "
                     f"{len(own) - right - out} in the other folder; other people's {len(others)}: "
                     f"{sum(f != 'outliers' for f in others)} in a person folder")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4, 5],
                        help="two-person collections to draw (default: 0 1 2 3 4 5; none with a bare --seeds)")
    parser.add_argument("--recurring", action="store_true", help="also the draws with one and two recurring third people")
    parser.add_argument("--blurred", type=int, default=0, metavar="N", help="also the draws with N blurred crops per kind and blur")
    parser.add_argument("--auto", action="store_true", help="also each two-person draw with --clusters auto")
    parser.add_argument("--one-person", action="store_true", help="also one person with strangers and junk, --clusters 1 (and auto, with --auto)")
    parser.add_argument("--years", action="store_true", help="also each draw as two years, the second sorted --people-from the first")
    parser.add_argument("--crops", action="store_true", help="also every LFW dev photo as an occluded crop, --clusters auto")
    parser.add_argument("--library", action="store_true",
                        help="also DeepFace's and face_recognition's labelled photos in photos mode, --clusters auto")
    parser.add_argument("--few", action="store_true",
                        help="also every LFW dev photo of five people in photos mode, --clusters auto and 5")
    parser.add_argument("--copies", action="store_true",
                        help="also the LFW dev photos beside an album folder of copies of the one-photo people's")
    parser.add_argument("--frames", type=int, default=0, metavar="N",
                        help="also every LFW dev photo as a shot of N varied occluded crops, --clusters auto")
    parser.add_argument("--k-people", type=int, default=0, metavar="N",
                        help="also N draws of 2-9 people among 5-200 one-photo strangers, --clusters K")
    add_shared_argument(parser)
    args = parser.parse_args()
    shared, lfw, models, streams = lfw_testpack(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        people = ("Tony_Blair", "Donald_Rumsfeld")
        scenarios: list[tuple[tuple[str, ...], int]] = [((), 0)]
        if args.recurring:
            scenarios += [(("Junichiro_Koizumi",), 0), (("Junichiro_Koizumi", "Jean_Chretien"), 0)]
        if args.blurred:
            scenarios += [((), args.blurred)]
        for recurring, blurred in scenarios:
            for seed in args.seeds:
                root = Path(tmp) / f"two{seed}_{len(recurring)}_{blurred}"
                items, ef, label = embedded_collection(lfw, root, models, streams, people, seed=seed, recurring=recurring,
                                                       blurred=blurred)
                truth = [label[p] for p in ef.rows.paths]
                counts = {k: sum(1 for i in items if (i.label == k if k in people else i.label.startswith(k)))
                          for k in (*people, "stranger", "junk")}
                variants = [(True, True)] + ([(False, True)] if recurring else []) + ([(True, False)] if blurred else [])
                for extra, set_aside in variants:
                    clustering = run_clustering(ef, ClusterConfig(clusters=2, extra_groups=extra, set_aside_unrecognisable=set_aside))
                    folders = [cluster_name(int(c)) for c in clustering.labels]
                    report = folder_report(truth, folders, people)
                    title = f"two people{' + ' + ' + '.join(recurring) + ' recurring' if recurring else ''}"
                    title += f" + {blurred} blurred crops per kind and blur" if blurred else ""
                    title += ", --clusters 2"
                    title += "" if extra else " --no-extra-groups"
                    title += "" if set_aside else " --keep-unrecognisable"
                    print(f"[{title}, seed {seed}] images: {counts}; cut-off {clustering.threshold:.3f} "
                          f"({clustering.threshold_source}); extra groups in outliers: {list(clustering.extra_groups)}; "
                          f"set aside as unrecognisable: {0 if clustering.set_aside is None else int(clustering.set_aside.sum())}")
                    print("\n".join("  " + line for line in report.lines()))
                    for name in recurring:
                        theirs = [f for t, f in zip(truth, folders) if t == "stranger:" + name]
                        print(f"  {name}: {sum(f == 'outliers' for f in theirs)} of {len(theirs)} in outliers/")
                    if blurred:
                        print("\n".join("  " + line for line in blur_lines(items, ef.rows.paths, folders, report.folder_of)))
                for second_pass in (True, False) if args.auto and not recurring and not blurred else ():
                    clustering = run_clustering(ef, ClusterConfig(clusters=None, attach_outliers=second_pass))
                    folders = [cluster_name(int(c)) for c in clustering.labels]
                    report = folder_report(truth, folders, people)
                    kept = set(report.folder_of.values()) | {"outliers"}
                    others = {f for f in folders if f not in kept}
                    joined = (f"; second pass: {clustering.attached} joined at >= {clustering.attach_cutoff:.3f}"
                              if clustering.attach_cutoff is not None else "")
                    print(f"[two people, --clusters auto{'' if second_pass else ' --no-second-pass'}, seed {seed}] "
                          f"edge cut-off {clustering.threshold:.3f}{joined}; {len(others)} more folders "
                          f"({sum(f in others for f in folders)} faces)")
                    print("\n".join("  " + line for line in report.lines()))

        calibration = calibration_crops(lfw, models, Path(tmp), streams) if args.one_person and args.auto else None
        for seed in args.seeds if args.one_person else []:
            root = Path(tmp) / f"one{seed}"
            items, ef, label = embedded_collection(lfw, root, models, streams, ("Tony_Blair",), seed=seed)
            counts = {k: sum(1 for i in items if i.label == k or i.label.startswith(k + ":")) for k in ("Tony_Blair", "stranger", "junk")}
            for clusters in (1, None) if args.auto else (1,):
                clustering = run_clustering(ef, ClusterConfig(clusters=clusters))
                report = folder_report([label[p] for p in ef.rows.paths], [cluster_name(int(c)) for c in clustering.labels],
                                       ("Tony_Blair",))
                print(f"[one person, --clusters {clusters or 'auto'}, seed {seed}] images: {counts}; "
                      f"cut-off {clustering.threshold:.3f} ({clustering.threshold_source}); {clustering.n_clusters} folders"
                      + ("; no second pass: one cluster" if clustering.lone_cluster else ""))
                print("\n".join("  " + line for line in report.lines()))
            if calibration is not None:
                present = {label[p].split(":", 1)[-1] for p in ef.rows.paths}
                store = root / "calibration.json"
                recogniser = ef.meta["model_files"]["recognition"]
                crops, others_calibrated = calibrate_without(calibration, present, recogniser, store)
                none, os.environ[CALIBRATION_ENV] = os.environ[CALIBRATION_ENV], str(store)
                try:
                    clustering = run_clustering(ef, ClusterConfig(clusters=None))
                finally:
                    os.environ[CALIBRATION_ENV] = none
                report = folder_report([label[p] for p in ef.rows.paths], [cluster_name(int(c)) for c in clustering.labels],
                                       ("Tony_Blair",))
                joined = (f"second pass: {clustering.attached} joined at >= {clustering.attach_cutoff:.3f}"
                          if clustering.attach_cutoff is not None else "no second pass")
                print(f"[one person, --clusters auto, calibrated on {crops} crops of {others_calibrated} other people, "
                      f"seed {seed}] "
                      f"edge cut-off {clustering.threshold:.3f}; {joined}; {clustering.n_clusters} folders")
                print("\n".join("  " + line for line in report.lines()))

        for seed in args.seeds if args.years else []:
            root = Path(tmp) / f"years{seed}"
            _, ef, label = embedded_collection(lfw, root, models, streams, people, seed=seed)
            for year, first in (("first", 0), ("second", 1)):
                part = embfile.EmbeddingsFile(ef.rows.select(np.arange(first, len(ef.rows), 2)), [], [], ef.meta)
                config = ClusterConfig(clusters=2, link_mode="symlink", previews=False,
                                       people_from=str(root / "first") if year == "second" else None)
                sorted_ = cluster_faces(part, str(root / year), config, progress=False)
                by_year = folder_report([label[p] for p in part.rows.paths], sorted_.names, people)
                print(f"[two people split into two years, seed {seed}: {year} year, "
                      f"{'--people-from the first' if year == 'second' else '--clusters 2'}] {len(part.rows)} faces; "
                      f"cut-off {sorted_.clustering.threshold:.3f}; folders {by_year.folder_of}")
                print("\n".join("  " + line for line in by_year.lines()))

        for seed in args.seeds if args.years and args.recurring else []:
            new_person_in_second_year(lfw, Path(tmp) / f"new{seed}", models, streams, people, seed)

        photos = embedded_photos(lfw, Path(tmp) / "lfw.pkl", models, streams)
        many_people("LFW dev photos", *photos)
        if args.k_people:
            k_people_among_strangers(*photos, args.k_people)
            k_people_among_strangers(*photos, args.k_people, fewest=1, most=1)
        if args.copies:
            ef, truth, originals = with_album_copies(lfw, Path(tmp), models, streams)
            many_people("LFW dev photos and an album folder of copies (the originals scored)", ef, truth, scored=originals)
        if args.crops:
            everyone = tuple(sorted({r["identity"] for r in read_labels(lfw)}))
            _, ef, label = embedded_collection(lfw, Path(tmp) / "crops", models, streams, everyone, strangers=0.0, junk=0.0)
            many_people("LFW dev as occluded video crops", ef, [label[p] for p in ef.rows.paths])
            for fewest, most in ((2, 9), (1, 1)) if args.k_people else ():
                k_people_among_strangers(ef, [label[p] for p in ef.rows.paths], args.k_people, "occluded video crops",
                                         fewest, most)
        if args.library:
            library(shared / "datasets", models, Path(tmp), streams)
        if args.few:
            few_people(lfw, models, Path(tmp), streams)
        if args.frames:
            rows = read_labels(lfw)
            rng = np.random.default_rng(0)
            shots = Path(tmp) / "shots"
            label = {}
            for i, row in enumerate(rows):
                photo = read_image(lfw / row["path"])
                kps = central_landmarks(photo, models.detector)
                for f, frame in enumerate(varied_frames(photo, kps, args.frames, rng) if kps is not None else []):
                    path = shots / f"shot_{i:04d}" / f"frame_{f:02d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(path), frame)
                    label[str(path)] = row["identity"]
            run_embeddings(list(label), Path(tmp) / "shots.pkl", models, inputs=[str(shots)], streams=streams, progress=False)
            ef = embfile.load(Path(tmp) / "shots.pkl")
            many_people(f"LFW dev as shots of {args.frames} occluded frames", ef, [label[p] for p in ef.rows.paths],
                        without_join_rule=True)
    return 0


def new_person_in_second_year(lfw: Path, root: Path, models: FaceModels, streams: int, people: tuple[str, ...],
                              seed: int) -> None:
    """A draw split into two years as with --years, with every crop of a third person (Koizumi) in the
    second year only: a person new since. The second year is sorted --people-from the first
    --new-people, and scored with the new person's folder as a third."""
    newcomer = "Junichiro_Koizumi"
    _, ef, label = embedded_collection(lfw, root, models, streams, people, seed=seed, recurring=(newcomer,))
    truth = [newcomer if label[p] == f"stranger:{newcomer}" else label[p] for p in ef.rows.paths]
    rows = np.arange(len(ef.rows))
    new = np.array([t == newcomer for t in truth])
    first = embfile.EmbeddingsFile(ef.rows.select(rows[(rows % 2 == 0) & ~new]), [], [], ef.meta)
    second_rows = rows[(rows % 2 == 1) | new]
    second = embfile.EmbeddingsFile(ef.rows.select(second_rows), [], [], ef.meta)
    cluster_faces(first, str(root / "first"), ClusterConfig(clusters=2, link_mode="symlink", previews=False),
                  progress=False)
    config = ClusterConfig(link_mode="symlink", previews=False, people_from=str(root / "first"), new_people=True)
    sorted_ = cluster_faces(second, str(root / "second"), config, progress=False)
    report = folder_report([truth[i] for i in second_rows], sorted_.names, (*people, newcomer))
    print(f"[two people split into two years, {newcomer} new in the second, seed {seed}: --people-from the first "
          f"--new-people] {len(second_rows)} faces, {int(new.sum())} of them {newcomer}'s; cut-off "
          f"{sorted_.clustering.threshold:.3f}; new folders "
          f"{sorted_.clustering.added_people}; folders {report.folder_of}")
    print("\n".join("  " + line for line in report.lines()))


def calibration_crops(lfw: Path, models: FaceModels, tmp: Path, streams: int) -> tuple[np.ndarray, list[str]]:
    """Embeddings and identities of occluded crops of every LFW dev person with five photos or
    more except Tony Blair: a labelled folder of the kind a user would calibrate on."""
    rows = read_labels(lfw)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["identity"]] = counts.get(row["identity"], 0) + 1
    ids = tuple(sorted(i for i, c in counts.items() if c >= 5 and i != "Tony_Blair"))
    items = two_person_collection(lfw, tmp / "calibration" / "input", models.detector, ids, strangers=0.0, junk=0.0)
    run_embeddings([str(i.path) for i in items], tmp / "calibration.pkl", models,
                   inputs=[str(tmp / "calibration" / "input")], streams=streams, progress=False)
    ef = embfile.load(tmp / "calibration.pkl")
    label = {str(i.path): i.label for i in items}
    return ef.rows.embeddings, [label[p] for p in ef.rows.paths]


def calibrate_without(crops: tuple[np.ndarray, list[str]], present: set[str], recognizer: str, store: Path) -> tuple[int, int]:
    """Calibrate on the crops of the people not in ``present`` into ``store``; (images, people) used."""
    x, ids = crops
    keep = [i for i, identity in enumerate(ids) if identity not in present]
    chosen = [ids[i] for i in keep]
    save_calibration(recognizer, calibrate_from_embeddings(x[keep], chosen), store)
    return len(keep), len(set(chosen))


def with_album_copies(lfw: Path, root: Path, models: FaceModels,
                      streams: int) -> tuple[embfile.EmbeddingsFile, list[str], np.ndarray]:
    """Every LFW dev photo, and in an album folder a copy of the photo of each person seen once: the
    embeddings file, the identity of each of its rows of the photos themselves, and those rows (a copy
    is where the photo it repeats is, so scoring it too would count an outlier photo twice)."""
    rows = read_labels(lfw)
    seen = Counter(r["identity"] for r in rows)
    identity = {str(lfw / r["path"]): r["identity"] for r in rows}
    album = root / "album"
    album.mkdir()
    for r in rows:
        if seen[r["identity"]] == 1:
            copy = album / f"copy of {Path(r['path']).name}"
            copy.write_bytes((lfw / r["path"]).read_bytes())
            identity[str(copy)] = r["identity"]
    out = root / "copies.pkl"
    run_embeddings(sorted(identity), out, models, inputs=[str(lfw), str(album)], streams=streams, progress=False)
    ef = embfile.load(out)
    originals = np.array([i for i, p in enumerate(ef.rows.paths) if not p.startswith(str(album) + os.sep)])
    return ef, [identity[ef.rows.paths[i]] for i in originals], originals


def many_people(title: str, ef: embfile.EmbeddingsFile, truth: list[str], without_join_rule: bool = False,
                scored: np.ndarray | None = None, groups_of_three: bool = False) -> Clustering:
    """BCubed and pairwise scores of --clusters auto, with and without the second pass (and,
    with ``without_join_rule``, without the rule that joins groups only when alike on average;
    with ``groups_of_three``, with --min-cluster-size 3, so no folders of two). ``truth``
    labels the faces of ``scored`` (all by default); the others are clustered but not scored.
    Returns the clustering of plain --clusters auto."""
    variants = [(True, True, 2), (False, True, 2)] + ([(True, False, 2)] if without_join_rule else [])
    variants += [(True, True, 3)] if groups_of_three else []
    rows = np.arange(len(ef.rows)) if scored is None else scored
    plain: Clustering | None = None
    for second_pass, join_rule, min_size in variants:
        clustering = run_clustering(ef, ClusterConfig(clusters=None, attach_outliers=second_pass, join_rule=join_rule,
                                                      min_cluster_size=min_size))
        plain = plain or clustering
        labels = clustering.labels[rows]
        pred = [f"c{c}" if c >= 0 else f"outlier{i}" for i, c in enumerate(labels)]
        b, pw = bcubed(truth, pred), pairwise(truth, pred)
        joined = (f"; second pass: {clustering.attached} joined at >= {clustering.attach_cutoff:.3f}"
                  if clustering.attach_cutoff is not None else "")
        options = (("" if second_pass else " --no-second-pass") + ("" if min_size == 2 else f" --min-cluster-size {min_size}")
                   + ("" if join_rule else ", without the join rule"))
        print(f"[{title}, --clusters auto{options}] {len(truth)} faces scored, "
              f"{len(set(truth))} identities -> {clustering.n_clusters} clusters ({clustering.pairs} of two faces), "
              f"{int((labels < 0).sum())} outliers (set aside as unrecognisable: "
              f"{0 if clustering.set_aside is None else int(clustering.set_aside[rows].sum())}); cut-off "
              f"{clustering.threshold:.3f}{joined}; joins refused: {clustering.refused_joins}")
        print(f"  BCubed precision {b.precision:.4f} recall {b.recall:.4f} F {b.f:.4f}")
        print(f"  pairwise precision {pw.precision:.4f} recall {pw.recall:.4f} F {pw.f:.4f}")
        sizes = np.bincount(labels[labels >= 0])
        for c in np.argsort(-sizes)[:3]:  # what the largest clusters hold
            members = [t for t, label in zip(truth, labels) if label == c]
            top = sorted(set(members), key=lambda m: -members.count(m))[:3]
            print(f"  cluster of {sizes[c]}: " + ", ".join(f"{m} {members.count(m)}" for m in top))
    assert plain is not None
    return plain


def library(datasets: Path, models: FaceModels, tmp: Path, streams: int) -> None:
    """A photo library: DeepFace's and face_recognition's labelled photos (20 people, one to
    eleven photos each) in photos mode; each photo's largest face is the person it is
    labelled with, its other faces are clustered but not scored."""
    identity = {}
    for name in ("deepface_tests", "face_recognition_examples"):
        for listing in ("labels.csv", "extra.csv"):
            if (datasets / name / listing).exists():
                with open(datasets / name / listing, newline="") as handle:
                    identity.update({str((datasets / name / r["path"]).absolute()): f"{name}:{r['identity']}"
                                     for r in csv.DictReader(handle)})
    run_embeddings(sorted(identity), tmp / "library.pkl", models, EmbedOptions(mode="photos"), inputs=[str(datasets)],
                   streams=streams, progress=False)
    ef = embfile.load(tmp / "library.pkl")
    rows = ef.rows
    scored = largest_face_rows(rows.paths, rows.bbox)
    many_people(f"photo library ({len(rows)} faces in {len(scored)} photos)", ef,
                [identity[rows.paths[i]] for i in scored], scored=scored, groups_of_three=True)


FEW = (("Tony_Blair", "Donald_Rumsfeld", "Junichiro_Koizumi", "Jean_Chretien", "John_Ashcroft"),
       ("Tony_Blair", "Donald_Rumsfeld", "Abdullah_Gul", "Adrien_Brody", "Al_Sharpton"))


def k_people_among_strangers(ef: embfile.EmbeddingsFile, labels: list[str], draws: int, what: str = "",
                              fewest: int = 2, most: int = 9) -> None:
    """K people (``fewest`` to ``most``) with 15-30 photos each among 5-200 one-photo strangers, --clusters K
    (see the module's 3.); ``what`` the photos were made into, for the report."""
    truth = np.asarray(labels)
    seen = Counter(labels)
    people = sorted(p for p, n in seen.items() if n >= 15)
    strangers = np.nonzero([seen[t] == 1 for t in labels])[0]
    rng = np.random.default_rng(0)
    failed, entered, offered, lost, faces = 0, 0, 0, 0, 0
    for _ in range(draws):
        k, per, count = int(rng.integers(fewest, most + 1)), int(rng.integers(15, 31)), int(rng.integers(5, 201))
        chosen = {people[i] for i in rng.choice(len(people), k, replace=False)}
        rows = np.concatenate([np.nonzero(truth == p)[0][:per] for p in sorted(chosen)]
                              + [rng.choice(strangers, count, replace=False)])
        part = embfile.EmbeddingsFile(ef.rows.select(rows), [], [], ef.meta)
        folder = run_clustering(part, ClusterConfig(clusters=k)).labels
        who = truth[rows]
        person = np.isin(who, list(chosen))
        for j in range(k):
            held = who[(folder == j) & person]
            if len(set(held)) != 1 or len(held) < 0.9 * int((who == held[0]).sum()):
                failed += 1
                break
        entered += int(((folder >= 0) & ~person).sum())
        offered += count
        lost += int(((folder < 0) & person).sum())
        faces += int(person.sum())
    counted = "1 person" if most == 1 else f"{fewest}-{most} people"
    title = f"{what + ': ' if what else ''}{counted} with 15-30 photos among 5-200 one-photo strangers"
    print(f"[{title}, --clusters {'1' if most == 1 else 'K'}, {draws} draws] "
          f"{failed} draws with a folder that is not one person with 90% of their photos; strangers in a folder: "
          f"{entered:,} of {offered:,}; the people's photos in outliers/: {lost:,} of {faces:,}")


def few_people(lfw: Path, models: FaceModels, tmp: Path, streams: int) -> None:
    """Photo libraries that a few people fill: every LFW dev photo of each of ``FEW`` in photos
    mode, scored on each photo's largest face (the person it is labelled with; the other faces
    are clustered but not scored), with --clusters auto and with the number of people given."""
    for n, people in enumerate(FEW):
        identity = {str((lfw / r["path"]).absolute()): r["identity"] for r in read_labels(lfw) if r["identity"] in people}
        run_embeddings(sorted(identity), tmp / f"few{n}.pkl", models, EmbedOptions(mode="photos"), inputs=[str(lfw)],
                       streams=streams, progress=False)
        ef = embfile.load(tmp / f"few{n}.pkl")
        scored = largest_face_rows(ef.rows.paths, ef.rows.bbox)
        truth = [identity[ef.rows.paths[i]] for i in scored]
        title = f"{', '.join(people)}: photos ({len(ef.rows)} faces in {len(scored)} photos)"
        auto = many_people(title, ef, truth, scored=scored)
        fixed = run_clustering(ef, ClusterConfig(clusters=len(people)))
        labels = fixed.labels[scored]
        pred = [f"c{c}" if c >= 0 else f"outlier{i}" for i, c in enumerate(labels)]
        b = bcubed(truth, pred)
        print(f"[{title}, --clusters {len(people)}] cut-off {fixed.threshold:.3f} ({fixed.threshold_source}); "
              f"{int((labels < 0).sum())} outliers")
        print(f"  BCubed precision {b.precision:.4f} recall {b.recall:.4f} F {b.f:.4f}")
        for clustering, how in ((auto, "auto"), (fixed, str(len(people)))):
            labels = clustering.labels[scored]
            kept = [f"{person} {sum(1 for t, c in zip(truth, labels) if t == person and c >= 0)}/{truth.count(person)}"
                    for person in people]
            print(f"  --clusters {how}: each person's photos in a folder: " + ", ".join(kept))


if __name__ == "__main__":
    sys.exit(main())
