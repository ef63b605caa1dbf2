"""Whether a k-means folder holds one person: folders of strangers and one person split in two
are named in the summary, on real faces; real two-person folders are not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from face_organizer import embfile
from face_organizer.cluster_stage import ClusterConfig, cluster_faces
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


def test_folders_alike_across_count_as_one_person() -> None:
    from face_organizer.cohesion import Cohesion

    cross = np.array([[0.5, 0.4, 0.0, 0.0], [0.4, 0.5, 0.35, 0.0], [0.0, 0.35, 0.5, 0.0], [0.0, 0.0, 0.0, 0.1]], np.float32)
    c = Cohesion(np.diag(cross).copy(), cross, 0.3, "test")
    assert c.same_person == ((0, 1), (1, 2)) and c.people == 2 and c.not_alike == (3,)
    assert Cohesion(np.zeros(0, np.float32), np.zeros((0, 0), np.float32), 0.3, "test").people == 0


def test_two_peoples_folders_pass_and_a_folder_of_strangers_is_named(two_person, tmp_path) -> None:
    ef = embfile.load(two_person[0])
    report = cluster_faces(ef, str(tmp_path / "two"), ClusterConfig(link_mode="symlink", previews=False), progress=False)
    c = report.clustering.cohesion
    assert c is not None and c.not_alike == () and c.same_person == () and c.people == 2
    assert (c.mean_pair > c.cutoff + 0.1).all()
    assert not notes_about(report, "look like one person")
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
    assert "as alike to the other clusters' centres" in c.threshold_source and c.threshold < 0.3
    assert c.cohesion.same_person == ((0, 1),) and c.cohesion.people == 1 and c.cohesion.not_alike == ()
    note = notes_about(report, "look like one person")
    assert len(note) == 1 and note[0].startswith("person_A and person_B (") and "--clusters 1 " in note[0]


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
    index = Path(tmp_path / "out" / "index.html").read_text()
    assert "do not look like one person each" in index
