"""Whether a k-means folder holds one person: folders of strangers and one person split in two
are named in the summary, on real faces; real two-person folders are not."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from face_organizer import embfile
from face_organizer.cluster_stage import ClusterConfig, cluster_faces, run_clustering
from face_organizer.clustering import cluster_name
from face_organizer.cohesion import folder_cohesion
from face_organizer.embed_run import run_embeddings
from face_organizer.images import discover_images


def only(ef: embfile.EmbeddingsFile, labels: dict[str, str], keep) -> np.ndarray:
    """Restrict ``ef`` to the rows whose label passes ``keep``; returns their labels."""
    rows = np.array([i for i, p in enumerate(ef.rows.paths) if keep(labels[p])])
    ef.rows = ef.rows.select(rows)
    return np.array([labels[p] for p in ef.rows.paths])


def notes_about(report, words: str) -> list[str]:
    return [n for n in report.notes() if words in n]


def test_mean_pair_similarities_match_the_pairs() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(-1, 3, 60)
    labels[:2] = 3  # a cluster of two
    c = folder_cohesion(x, labels, 5)
    sims = x @ x.T
    for j in range(4):
        m = np.nonzero(labels == j)[0]
        within = sims[np.ix_(m, m)][np.triu_indices(m.size, 1)]
        assert c.mean_pair[j] == pytest.approx(within.mean(), abs=1e-5)
        for i in range(4):
            o = np.nonzero(labels == i)[0]
            assert c.cross_mean[j, i] == pytest.approx(sims[np.ix_(m, o)].mean(), abs=1e-5)
    assert np.isnan(c.mean_pair[4])  # no members


def test_folders_holding_several_groups_of_alike_faces_each_a_tenth_of_them_are_named() -> None:
    from face_organizer.cohesion import mixed_folders

    #          folder 0: groups 0 (20) and 1 (10); folder 1: group 2 (40), group 3 (4: under 5 faces), none (6);
    #          folder 2: group 4 (50) and 5 (5: under a tenth of its 60); folder 3: group 6 (8) and 7 (6) of 14
    folder = np.repeat([0, 0, 1, 1, 1, 2, 2, 2, 3, 3, -1], [20, 10, 40, 4, 6, 50, 5, 5, 8, 6, 30])
    group = np.repeat([0, 1, 2, 3, -1, 4, 5, -1, 6, 7, 1], [20, 10, 40, 4, 6, 50, 5, 5, 8, 6, 30])  # outliers: none
    assert mixed_folders(folder, group, 4, 5) == ((0, (20, 10)), (3, (8, 6)))
    assert mixed_folders(folder, group, 5, 5) == ((0, (20, 10)), (3, (8, 6)))  # an empty folder: none
    assert mixed_folders(folder, np.full_like(group, -1), 4, 5) == ()


def test_folders_join_into_one_person_only_when_alike_on_average() -> None:
    from face_organizer.cohesion import Cohesion, one_person_groups
    from face_organizer.thresholds import ImpostorModel

    rng = np.random.default_rng(1)
    axes = np.eye(16)

    def near(direction: np.ndarray, count: int) -> np.ndarray:
        x = direction / np.linalg.norm(direction) + rng.normal(0, 0.02, (count, 16))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    folders = [near(axes[0], 10),                        # 0
               near(0.75 * axes[0] + 0.66 * axes[1], 10),  # 1: alike to 0 (0.75) and to 2 (0.66)
               near(axes[1], 10),                        # 2: not alike to 0 at all
               np.vstack([near(axes[2], 5)] + [near(axes[i], 1) for i in range(3, 8)]),  # 3: half one face, half others
               near(axes[2], 10),                        # 4: alike to half of 3
               np.zeros((0, 16)),                        # 5: empty
               near(axes[1], 1)]                         # 6: one face like 2's
    sums = np.array([f.sum(0) for f in folders])
    sizes = np.array([len(f) for f in folders])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(sizes >= 2, (np.einsum("ij,ij->i", sums, sums) - sizes) / (sizes * (sizes - 1.0)), np.nan)
        cross = sums @ sums.T / np.outer(sizes, sizes)
    not_alike = mean < 0.4
    assert not_alike.tolist() == [False, False, False, True, False, False, False]
    scale = ImpostorModel(0.0, 0.16)  # cut-off 0.4 for means, 0.8 for one pair
    groups = one_person_groups(sums, sizes, not_alike, cross, scale)
    # 0 and 1 join first; 2 is alike to 1 but on average to half of 0 and 1 only, and stays
    # apart, joined by the one face of 6 (a face joins by its pair alone). 3 is not one person
    # and joins nobody, however alike to 4.
    assert groups == ((0, 1), (2, 6))
    c = Cohesion(mean.astype(np.float32), cross.astype(np.float32), sizes, groups, 0.4, "test")
    assert c.not_alike == (3,) and c.people == 3 and c.same_person == ((0, 1), (2, 6))
    assert c.across((0, 1)) == pytest.approx(0.75, abs=0.01)
    # Pair by pair, 1 and 2 would chain all three into one person.
    assert cross[1, 2] >= 0.4 and cross[0, 2] < 0.4
    assert one_person_groups(sums, sizes, np.ones(7, bool), cross, scale) == ()
    # Two folders of one face each: their mean is one pair, and needs what one pair needs.
    pair = np.vstack([near(axes[9], 1), near(axes[9] + 1.2 * axes[10], 1), near(axes[9] + 0.2 * axes[10], 1)])
    sims = pair @ pair.T
    assert 0.4 < sims[0, 1] < 0.8 < sims[0, 2]
    assert one_person_groups(pair[:2], np.ones(2, np.int64), np.zeros(2, bool), sims[:2, :2], scale) == ()
    assert one_person_groups(pair[[0, 2]], np.ones(2, np.int64), np.zeros(2, bool), sims[np.ix_([0, 2], [0, 2])],
                             scale) == ((0, 1),)


def test_many_small_folders_join_into_people_without_chaining(lfw_subset, tmp_path) -> None:
    # About 900 LFW photos of 200 people in 300 folders: most people take several. Joined pair
    # by pair, a few alike pairs of folders across people chained them into folders of many
    # (pairwise precision 0.07-0.15 over seeds 0-2); joined only while alike on average, the
    # folders that come together are mostly one person's, as the folders themselves are.
    ef = embfile.load(lfw_subset[0])
    truth = np.array([lfw_subset[1][p] for p in ef.rows.paths])
    report = cluster_faces(ef, str(tmp_path / "out"), ClusterConfig(clusters=300, link_mode="symlink", previews=False,
                                                                    extra_groups=False), progress=False)
    c = report.clustering
    check = c.cohesion
    person = np.arange(c.n_clusters)
    for group in check.groups:
        person[list(group)] = group[0]

    def precision(labels: np.ndarray) -> float:
        same = total = 0
        for g in np.unique(labels[labels >= 0]):
            counts = np.unique(truth[labels == g], return_counts=True)[1]
            same += int((counts * (counts - 1)).sum())
            total += int(counts.sum() * (counts.sum() - 1))
        return same / total

    placed = c.labels >= 0
    joined = np.where(placed, person[np.maximum(c.labels, 0)], -1)
    assert precision(joined) >= 0.8 and precision(joined) >= precision(c.labels) - 0.05
    # Rumsfeld's 61 photos fill several folders; they come together.
    rumsfeld = np.unique(joined[(truth == "Donald_Rumsfeld") & placed], return_counts=True)[1]
    assert len(np.unique(c.labels[(truth == "Donald_Rumsfeld") & placed])) >= 3 and rumsfeld.max() >= 0.8 * rumsfeld.sum()
    assert len(check.groups) >= 20 and 40 <= check.people <= 200
    note = notes_about(report, "mean similarity of their faces across the folders")
    assert len(note) == 1 and note[0].startswith("each of these groups of folders looks like one person: ")
    assert f"--clusters {check.people} or --clusters auto" in note[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["one_person_check"]
    assert len(summary["look_like_one_person"]) == len(check.groups) and summary["people"] == check.people


def test_two_peoples_folders_pass_and_a_folder_of_strangers_is_named(two_person, tmp_path) -> None:
    ef = embfile.load(two_person[0])
    report = cluster_faces(ef, str(tmp_path / "two"), ClusterConfig(link_mode="symlink", previews=False), progress=False)
    c = report.clustering.cohesion
    assert c is not None and c.not_alike == () and c.same_person == () and c.people == 2
    assert (c.mean_pair > c.cutoff + 0.1).all()
    assert not notes_about(report, "mean similarity of their faces across the folders")
    # One person with the strangers and junk of the same collection, asked for two folders:
    # the second holds the strangers, and is named as no person.
    ef = embfile.load(two_person[0])
    truth = only(ef, two_person[1], lambda label: label != "Donald_Rumsfeld")
    report = cluster_faces(ef, str(tmp_path / "one"), ClusterConfig(link_mode="symlink", previews=False), progress=False)
    labels = report.clustering.labels
    assert report.clustering.n_clusters == 2
    assert (truth[labels == 0] == "Tony_Blair").mean() >= 0.9 and (truth[labels == 1] != "Tony_Blair").mean() >= 0.5
    assert report.clustering.cohesion.not_alike == (1,)
    note = notes_about(report, "does not look like one person")
    assert len(note) == 1 and note[0].startswith("person_B (") and "--clusters auto" in note[0]
    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["one_person_check"]["not_one_person"] == ["person_B"]
    assert summary["one_person_check"]["mean_pair_similarity"]["person_A"] > summary["one_person_check"]["one_person_cutoff"]


def test_one_persons_frames_in_two_folders_are_placed_and_named_one_person(two_person, tmp_path) -> None:
    # Only one person's faces, and the default two folders: the faces are as alike to the other
    # folder's centre as to their own, so that is no impostor scale to cut by (it put every face
    # in outliers/); the folders are reported as one person.
    ef = embfile.load(two_person[0])
    assert set(only(ef, two_person[1], lambda label: label == "Tony_Blair")) == {"Tony_Blair"}
    report = cluster_faces(ef, str(tmp_path / "out"), ClusterConfig(clusters=2, link_mode="symlink", previews=False),
                           progress=False)
    c = report.clustering
    assert c.n_clusters == 2 and (c.labels >= 0).mean() >= 0.9, c.threshold_source
    assert "(the folders look like one person)" in c.threshold_source and c.threshold < 0.3
    assert c.cohesion.same_person == ((0, 1),) and c.cohesion.people == 1 and c.cohesion.not_alike == ()
    note = notes_about(report, "mean similarity of their faces across the folders")
    assert len(note) == 1 and note[0].startswith("person_A and person_B look like one person (") and "--clusters 1 " in note[0]
    assert report.folder_warnings() == {"person_A": "looks like the same person as person_B",  # in index.html
                                        "person_B": "looks like the same person as person_A"}


def test_folders_of_a_few_people_each_seen_often_are_named_by_their_groups_of_alike_faces(lfw_subset, tmp_path) -> None:
    # LFW dev's people with five photos or more (and 120 with one) in ten folders: beyond the four people with the
    # most photos, k-means puts two or three people of 5-10 photos in each folder. The mean similarity of their
    # pairs passed several such folders as one person (k-means gathers faces alike to one centre); the graph of
    # the sample the extra groups come from sees each person as a group of alike faces.
    emb, identity = lfw_subset
    ef = embfile.load(emb)
    truth = np.array([identity[p] for p in ef.rows.paths])
    report = cluster_faces(ef, str(tmp_path / "out"), ClusterConfig(clusters=10, link_mode="symlink"), progress=False)
    c = report.clustering
    check = c.cohesion
    assert c.n_clusters == 10 and check is not None
    held = [Counter(truth[c.labels == j].tolist()).most_common() for j in range(10)]
    share = [people[0][1] / sum(n for _, n in people) for people in held]
    mixed = dict(check.mixed)
    passed_on_average = [j for j in mixed if j not in check.not_alike]
    assert len(passed_on_average) >= 3
    for j in passed_on_average:  # a few people, the largest group the person with the most faces there
        assert share[j] < 0.5 and len(mixed[j]) >= 2 and mixed[j][0] == held[j][0][1]
    assert all(j in check.not_one_person for j in range(10) if share[j] < 0.5)
    assert all(j not in check.not_one_person for j in range(10) if share[j] >= 0.95)
    (note,) = notes_about(report, "several groups of faces alike to each other")
    j = passed_on_average[0]
    assert note.startswith("these folders hold several groups of faces alike to each other and not to the other "
                           f"groups, likely one person each: {cluster_name(j)} ({(c.labels == j).sum()} faces: "
                           f"{len(mixed[j])} groups of {', '.join(map(str, mixed[j]))}); ")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["one_person_check"]
    assert summary["not_one_person"] == [cluster_name(j) for j in check.not_one_person]
    assert summary["groups_of_alike_faces"] == {cluster_name(j): list(groups) for j, groups in check.mixed}
    extra = c.extra_groups  # the groups beyond the ten: the first ten sizes shown, then how many more
    assert len(extra) > 10
    (beyond,) = notes_about(report, "beyond --clusters 10")
    assert beyond == (f"outliers/ also holds {len(extra)} more groups of alike faces beyond --clusters 10 "
                      f"({', '.join(map(str, extra[:10]))} faces, and {len(extra) - 10} more groups): other people, "
                      "or a repeated non-face; --clusters auto gives each person a folder")
    index = (tmp_path / "out" / "index.html").read_text()  # each such folder says so beside its count and sheet
    for j, groups in check.mixed:
        warning = f"{len(groups)} groups of faces alike to each other ({', '.join(map(str, groups))}): likely several"
        assert re.search(f"<h2>{cluster_name(j)}</h2><p class='n'>[^<]*<a [^>]*>[^<]*</a> <strong class='w'>"
                         f"{re.escape(warning)}", index)
    assert index.count("<strong class='w'>") == len(check.not_one_person)


def test_a_collection_of_different_people_in_two_folders_says_so(utkface, models, tmp_path) -> None:
    # UTKFace: a different person in nearly every image. k-means still fills the two folders it
    # was asked for; the summary says neither is one person and points to --clusters auto.
    images = discover_images([str(utkface)])[:160]
    run_embeddings(images, tmp_path / "utk.pkl", models, inputs=[str(utkface)], progress=False)
    ef = embfile.load(tmp_path / "utk.pkl")
    report = cluster_faces(ef, str(tmp_path / "out"), ClusterConfig(link_mode="symlink"), progress=False)
    c = report.clustering.cohesion
    assert report.clustering.n_clusters == 2 and c.not_alike == (0, 1) and c.same_person == ()
    note = notes_about(report, "do not look like one person each")
    assert len(note) == 1 and "many different people: --clusters auto" in note[0]
    assert report.many_people()
    # Groups of alike faces found beyond the two folders would be no more one person each than the
    # folders are (in 11,196 crops of LFW's 611 people: 8 groups of 345-742 faces), so the summary
    # does not offer a number of folders for them.
    report.clustering = dataclasses.replace(report.clustering, extra_groups=(742, 740))
    (extra,) = notes_about(report, "beyond --clusters 2")
    assert extra.endswith("(742, 740 faces): other people, or a repeated non-face; --clusters auto gives each person "
                          "a folder")
    index = Path(tmp_path / "out" / "index.html").read_text()
    assert "do not look like one person each" in index
    # In as many folders as faces, each folder is one face; a pair of faces alike by the cut-off for
    # means (2.5 spreads) joined two folders, and such pairs chained different people into "people"
    # of 6-26 folders (54 people found among 159 folders).
    many = run_clustering(ef, ClusterConfig(clusters=len(images), extra_groups=False))
    c = many.cohesion
    assert many.n_clusters >= 150 and max(map(len, c.groups), default=0) <= 2 and c.people >= 0.95 * many.n_clusters


def test_one_person_in_more_folders_than_asked_keeps_their_faces(two_person, tmp_path) -> None:
    # One person with strangers and junk, asked for three folders: the person fills two. Pairs
    # of their faces across those two are no impostor pairs; read as such, they raised the
    # one-person cut-off to 0.54 and the person's larger folder (21 faces) was named as not one
    # person, and the k-means cut-off to 0.30.
    ef = embfile.load(two_person[0])
    truth = only(ef, two_person[1], lambda label: label != "Donald_Rumsfeld")
    report = cluster_faces(ef, str(tmp_path / "out"), ClusterConfig(clusters=3, link_mode="symlink", previews=False),
                           progress=False)
    c = report.clustering
    check = c.cohesion
    blair = [f for f in range(c.n_clusters) if (truth[c.labels == f] == "Tony_Blair").mean() >= 0.7]
    assert len(blair) == 2 and check.groups == (tuple(blair),) and not set(blair) & set(check.not_alike)
    assert "those that look like one person taken as one" in check.source and check.cutoff < 0.3
    assert np.isin(c.labels[truth == "Tony_Blair"], blair).all() and c.threshold < 0.25
    assert (np.isin(c.labels, blair) & (truth != "Tony_Blair")).sum() <= 2
    note = notes_about(report, "mean similarity of their faces across the folders")
    assert len(note) == 1 and "--clusters 1 or --clusters auto" in note[0]
