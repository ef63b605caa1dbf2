#!/usr/bin/env python3
"""Does cluster_faces' one-person check tell the k-means folders right? (real faces, testpack)

k-means fills as many folders as it is asked for. The check names folders whose faces are on
average no more alike than different people's, and groups of folders alike enough across to be
one person split up (every pair of folders in a group is judged one person). Here every folder
of a range of --clusters values is checked against the truth, on:
  two:      the two-person draws of eval_clustering.py (Tony Blair, Donald Rumsfeld, strangers, junk);
  one:      Tony Blair alone with strangers and junk;
  only:     Tony Blair's crops alone (the same draws, nothing else);
  utkface:  UTKFace's 500 crops, nearly every one a different person;
  library:  DeepFace's 61 labelled test photos of 13 people (2-8 each) in photos mode, in 2 to 5 folders: a
            library of a few photos per person (each photo's largest face is its person, any other face
            a person of its own);
  often:    LFW dev's photos of the 78 people with 10 or more, in 2, 3, 5 and 10 folders: the people
            with the most photos fill folders of their own, and each other folder holds a few people,
            each seen many times;
  many:     LFW dev's 2,805 photos of 610 people in 300 and 1,000 folders, most people in several:
            the folders that look like one person are joined, and the people they make are
            scored against the truth (pairwise precision and recall over the faces in folders).
A folder is truly one person when one person (a stranger drawn twice counts as a person) has
90% or more of its faces; two folders are truly one person split when both are one and the same.
Prints, for each collection and --clusters, how many faces reached a folder, each folder's mean
pair similarity, verdict and truth, then the confusion counts over everything, and for the
draws, summed over them, how many of the people's faces, and of the strangers' and junk, are
in folders that pass as one person.

  python benchmarks/eval_folder_check.py [--seeds 0 1 2 3 4 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_setup import (add_shared_argument, embedded_collection, embedded_photos, lfw_testpack,  # noqa: E402
                         read_labels)
from face_organizer import embfile  # noqa: E402
from face_organizer.cluster_stage import ClusterConfig, run_clustering  # noqa: E402
from face_organizer.clustering import cluster_name  # noqa: E402
from face_organizer.embed_run import run_embeddings  # noqa: E402
from face_organizer.evaluation import largest_face_rows, pairwise  # noqa: E402
from face_organizer.faces import EmbedOptions  # noqa: E402
from face_organizer.images import discover_images  # noqa: E402

ONE_PERSON_SHARE = 0.9
OFTEN = 10  # LFW dev's people with this many photos or more: 78 people, for 2-10 folders
FEW_CLUSTERS = (2, 3, 5, 10)


def judge(title: str, ef: embfile.EmbeddingsFile, truth: list[str], clusters: Sequence[int], tally: Counter,
          people: tuple[str, ...] = (), kept: dict[str, np.ndarray] | None = None) -> None:
    truth_array = np.array(truth)
    for k in clusters:
        c = run_clustering(ef, ClusterConfig(clusters=k))
        check = c.cohesion
        assert check is not None
        if kept is not None:  # the people's faces, and everyone else's, in folders that pass as one person
            passed = np.isin(c.labels, [j for j in range(c.n_clusters) if j not in check.not_one_person])
            theirs = np.isin(truth_array, people)
            counts = kept.setdefault(f"{title.split(',')[0]}, --clusters {k}", np.zeros(3, np.int64))
            counts += [(passed & theirs).sum(), theirs.sum(), (passed & ~theirs).sum()]
        top: list[str | None] = []
        parts = []
        for j in range(c.n_clusters):
            labels, counts = np.unique(truth_array[c.labels == j], return_counts=True)
            share = counts.max() / counts.sum()
            top.append(str(labels[counts.argmax()]) if share >= ONE_PERSON_SHARE else None)
            verdict = "not one person" if j in check.not_one_person else "one person"
            tally[f"folders: judged {verdict}, truly {'one person' if top[j] else 'several'}"] += 1
            parts.append(f"{cluster_name(j)} {counts.sum()} faces, mean pair {check.mean_pair[j]:.3f}: {verdict} "
                         f"(truly {top[j] or f'several, largest {share:.0%}'})")
        flagged = set(check.same_person)
        for i in range(c.n_clusters):
            for j in range(i + 1, c.n_clusters):
                split = top[i] is not None and top[i] == top[j]
                tally[f"pairs of folders: judged {'one person' if (i, j) in flagged else 'two'}, "
                      f"truly {'one person' if split else 'two'}"] += 1
        print(f"[{title}, --clusters {k}] {int((c.labels >= 0).sum())} of {len(truth)} faces in folders, cut-off "
              f"{c.threshold:.3f} ({c.threshold_source}); one person's faces reach {check.cutoff:.3f} ({check.source}); "
              f"folders that look like one person: {[[cluster_name(i) for i in g] for g in check.groups]}")
        print("\n".join("  " + p for p in parts))


def many_folders(ef: embfile.EmbeddingsFile, truth: list[str], clusters: tuple[int, ...], seeds: list[int]) -> None:
    """Many folders of many people: are the folders judged one person joined into people, or
    chained across them?"""
    truth_array = np.array(truth)
    for k in clusters:
        for seed in seeds:
            c = run_clustering(ef, ClusterConfig(clusters=k, seed=seed, extra_groups=False))
            check = c.cohesion
            assert check is not None
            person = check.person
            placed = c.labels >= 0
            folders = pairwise(truth_array[placed], c.labels[placed])
            people = pairwise(truth_array[placed], person[c.labels[placed]])
            print(f"[LFW dev photos, --clusters {k}, seed {seed}] {int(placed.sum())} of {len(truth)} faces in "
                  f"{c.n_clusters} folders, {len(check.not_one_person)} not one person; {len(check.groups)} groups of "
                  f"folders look like one person, {check.people} people (truly {len(set(truth))}); pairwise "
                  f"precision / recall: folders {folders.precision:.3f} / {folders.recall:.3f}, people "
                  f"{people.precision:.3f} / {people.recall:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4, 5])
    add_shared_argument(parser)
    args = parser.parse_args()
    shared, lfw, models, streams = lfw_testpack(args.shared)
    tally: Counter[str] = Counter()
    kept: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, people in (("two", ("Tony_Blair", "Donald_Rumsfeld")), ("one", ("Tony_Blair",))):
                root = Path(tmp) / f"{name}{seed}"
                _, ef, label = embedded_collection(lfw, root, models, streams, people, seed=seed)
                truth = [label[p] for p in ef.rows.paths]
                judge(f"{name}, seed {seed}", ef, truth, range(1, 5) if name == "two" else range(1, 4), tally, people, kept)
                if name == "one":
                    keep = np.array([i for i, t in enumerate(truth) if t == "Tony_Blair"])
                    only = embfile.EmbeddingsFile(ef.rows.select(keep), [], [], ef.meta)
                    judge(f"only Tony Blair, seed {seed}", only, [truth[i] for i in keep], range(1, 4), tally)
        utk = shared / "datasets" / "utkface_gender_dev"
        paths = discover_images([utk])
        run_embeddings(paths, Path(tmp) / "utk.pkl", models, inputs=[str(utk)], streams=streams, progress=False)
        ef = embfile.load(Path(tmp) / "utk.pkl")
        judge("UTKFace, every crop its own person", ef, list(ef.rows.paths), range(1, 4), tally)
        library = shared / "datasets" / "deepface_tests"
        identity_of = {str((library / r["path"]).absolute()): r["identity"] for r in read_labels(library)}
        run_embeddings(sorted(identity_of), Path(tmp) / "library.pkl", models, EmbedOptions(mode="photos"),
                       inputs=[str(library)], streams=streams, progress=False)
        ef = embfile.load(Path(tmp) / "library.pkl")
        largest = set(largest_face_rows(ef.rows.paths, ef.rows.bbox).tolist())  # a photo's largest: its person
        judge("DeepFace's test photos, 2-8 of each person", ef,
              [identity_of[p] if i in largest else f"another face {i}" for i, p in enumerate(ef.rows.paths)],
              range(2, 6), tally)
        photos, identity = embedded_photos(lfw, Path(tmp) / "lfw.pkl", models, streams)
        often = Counter(identity)
        keep = np.array([i for i, t in enumerate(identity) if often[t] >= OFTEN])
        few = embfile.EmbeddingsFile(photos.rows.select(keep), [], [], photos.meta)
        judge(f"LFW dev people with {OFTEN}+ photos", few, [identity[i] for i in keep], FEW_CLUSTERS, tally)
        many_folders(photos, identity, (300, 1000), args.seeds[:3])
    print("\n".join(f"{key}: {value}" for key, value in sorted(tally.items())))
    for key, (theirs, of, others) in sorted(kept.items()):
        print(f"{key}: the people's faces in folders that pass as one person {theirs:,} of {of:,}, other faces there {others:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
