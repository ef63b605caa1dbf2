"""Stages 2-3 on real faces: folders that come out right, and files never lost."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import pickle
import re
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from face_organizer import __version__, embfile, fsutil, organize
from face_organizer.cli import common
from face_organizer.cli.cluster import main as cluster_main
from face_organizer.cluster_stage import (OUTLIERS_CAPTION, SHOWN_FOLDERS, ClusterConfig, cluster_faces,
                                          load_embeddings, run_clustering)
from face_organizer.clustering import MERGE_Z, OUTLIER, assign_to_people, cluster_name, graph_clusters, kmeans
from face_organizer.errors import EmbeddingsFileError, FaceOrganizerError, RunStopped, SetupError
from face_organizer.evaluation import bcubed, folder_report, largest_face_rows
from face_organizer.fsutil import _umask
from clusterrun import GROUP_PHOTO, cluster_with, obama_biden_library, private_copy
from conftest import ROOT, read_labels
from face_organizer.embed_run import run_embeddings
from face_organizer.faces import EmbedOptions
from face_organizer.images import discover_images, read_image
from face_organizer.preview import TILE
from face_organizer.progress import count
from face_organizer.thresholds import (impostor_from_cross_cluster_pairs, impostor_from_impostors,
                                         impostor_from_similarities)


def run_cli(args: list[str]) -> int:
    return common.run(cluster_main, args)


def folder_files(out: Path) -> dict[str, list[Path]]:
    return {d.name: sorted(p for p in d.rglob("*") if p.is_file() or p.is_symlink())
            for d in out.iterdir() if d.is_dir() and (d.name.startswith("person_") or d.name == "outliers")}


def test_two_people_land_in_pure_folders(two_person, tmp_path, capsys) -> None:
    emb, labels, input_root = two_person
    out = tmp_path / "clustered"
    before = {p: Path(p).read_bytes() for p in labels}
    assert run_cli(["--embeddings", str(emb), "--output", str(out), "--clusters", "2", "-q"]) == 0
    # The sources are read, never written: every input file is byte-for-byte unchanged.
    assert all(Path(p).read_bytes() == data for p, data in before.items())
    assert oct((out / "clusters.csv").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    rows = list(csv.DictReader(open(out / "clusters.csv", newline="", encoding="utf-8")))
    assert len(rows) == len(labels)
    assert {"path", "cluster", "similarity", "destination"} <= set(rows[0])
    report = folder_report([labels[r["path"]] for r in rows], [r["cluster"] for r in rows], ("Tony_Blair", "Donald_Rumsfeld"))
    assert set(report.folder_of.values()) == {"person_A", "person_B"}
    assert all(p == 1.0 for p in report.purity.values()), report.lines()
    assert all(r >= 0.9 for r in report.recall.values()), report.lines()
    assert report.strangers_out >= 0.8 and report.junk_out >= 0.8, report.lines()
    # Folders hold the files, named by year folder: no collisions although names repeat.
    files = folder_files(out)
    assert sum(len(v) for v in files.values()) == len(labels)
    for row in rows:
        dest = Path(row["destination"])
        assert dest.is_file() and dest.read_bytes() == Path(row["path"]).read_bytes()
        assert dest.relative_to(out).parts[0] == row["cluster"]
        # <cluster>/<input folder name>/<path below it>: same names in year folders never collide
        assert dest.relative_to(out).parts[1:] == (input_root.name, *Path(row["path"]).relative_to(input_root).parts)
    assert len(files["person_A"]) >= len(files["person_B"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clusters"]["person_A"] == len(files["person_A"]) and summary["tool_version"] == __version__
    assert (out / "index.html").is_file() and (out / "previews" / "person_A.jpg").is_file()
    printed = capsys.readouterr().out
    assert f"person_A: {len(files['person_A']):,} images → {out / 'person_A'}{os.sep}" in printed


def test_recurring_third_person_does_not_fill_a_person_folder(two_person, interviewer, tmp_path, capsys) -> None:
    # With --clusters 2, k-means alone must put a recurring third person (an interviewer) in
    # one of the two folders; the groups found beyond k give them a centre of their own.
    emb, labels, _ = two_person
    third, third_paths = interviewer
    assert len(third_paths) >= 12
    out = tmp_path / "clustered"
    rows, report = cluster_with(two_person, interviewer, "stranger:Junichiro_Koizumi", out, "--clusters", "2")
    labels = {**labels, **{p: "stranger:Junichiro_Koizumi" for p in third_paths}}
    assert set(report.folder_of.values()) == {"person_A", "person_B"}
    assert all(p == 1.0 for p in report.purity.values()), report.lines()
    assert all(r >= 0.9 for r in report.recall.values()), report.lines()
    assert sum(rows[p]["cluster"] == "outliers" for p in third_paths) >= 0.9 * len(third_paths)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["extra_groups_in_outliers"]) == 1
    assert summary["extra_groups_in_outliers"][0] >= 0.8 * len(third_paths)
    printed = capsys.readouterr().out
    assert "outliers/ also holds 1 more group of alike faces beyond --clusters 2" in printed
    assert "--clusters 3 gives them folders of their own" in printed

    ef = load_embeddings([str(emb), str(third)])
    index = {p: i for i, p in enumerate(ef.rows.paths)}
    third_rows = [index[p] for p in third_paths]
    # Asked for three people, the interviewer gets a folder of their own, whole and pure.
    three = run_clustering(ef, ClusterConfig(clusters=3))
    assert three.extra_groups == ()
    folder = np.bincount(three.labels[third_rows] + 1).argmax() - 1
    assert folder >= 0 and np.mean(three.labels[third_rows] == folder) >= 0.9
    assert set(labels[ef.rows.paths[i]] for i in np.nonzero(three.labels == folder)[0]) == {"stranger:Junichiro_Koizumi"}
    # Without the search (--no-extra-groups), the interviewer is shared out among the two folders.
    plain = run_clustering(ef, ClusterConfig(clusters=2, extra_groups=False))
    assert plain.extra_groups == ()
    assert np.mean(plain.labels[third_rows] >= 0) >= 0.5


def test_people_seen_five_to_twenty_times_do_not_fill_the_two_folders_of_the_two_seen_most(lfw_subset) -> None:
    # LFW dev's people with ten photos or more, every other photo (Tony Blair 72, Donald Rumsfeld 61, two with 28
    # and 30, 74 with 5-10), and 120 people with one, in two folders. With centres only for groups of ten faces or more,
    # and at most eight of them, Michael Bloomberg's 9 photos filled Blair's folder (72 of 81), and the second
    # folder took four people of 8-14 photos; each group of five alike faces has a centre of its own now.
    emb, identity = lfw_subset
    ef = embfile.load(emb)
    truth = np.array([identity[p] for p in ef.rows.paths])
    c = run_clustering(ef, ClusterConfig(clusters=2))
    assert c.n_clusters == 2
    for folder, person in enumerate(("Tony_Blair", "Donald_Rumsfeld")):
        assert set(truth[c.labels == folder]) == {person}
        assert (c.labels[truth == person] == folder).mean() >= 0.99
    assert len(c.extra_groups) > 8 and min(c.extra_groups) >= 5
    assert c.cohesion is not None and c.cohesion.not_one_person == ()


THREE_PEOPLE = ("Tony_Blair", "Donald_Rumsfeld", "Junichiro_Koizumi")


def _people_among_strangers(lfw_subset, photos: int, strangers: int,
                            people: tuple[str, ...] = THREE_PEOPLE) -> tuple[np.ndarray, np.ndarray]:
    """The first ``photos`` photos of each of ``people`` and ``strangers`` people with one photo (of the
    LFW dev subset): their embeddings and each one's identity."""
    emb, identity = lfw_subset
    ef = embfile.load(emb)
    truth = np.array([identity[p] for p in ef.rows.paths])
    seen = Counter(truth)
    alone = np.nonzero([seen[t] == 1 for t in truth])[0]
    assert len(alone) == 120 and strangers <= 120
    rows = np.concatenate([np.nonzero(truth == p)[0][:photos] for p in people] + [alone[:strangers]])
    return ef.rows.embeddings[rows], truth[rows]


def test_k_people_among_many_strangers_each_get_a_folder(lfw_subset) -> None:
    # Three people with 20 photos each among 120 people with one: k-means put Blair and Rumsfeld in one
    # folder and gave strangers the third, though the sample's groups of alike faces were the three people.
    x, who = _people_among_strangers(lfw_subset, 20, 120)
    result = kmeans(x, 3)
    assert "seeded with 3 groups" in result.method
    for person in THREE_PEOPLE:
        folders = np.unique(result.labels[who == person])
        assert len(folders) == 1 and folders[0] >= 0, (person, folders)
        assert set(who[result.labels == folders[0]]) & set(THREE_PEOPLE) == {person}


def test_strangers_stay_out_of_small_folders(lfw_subset) -> None:
    # Three people with 15 photos each among 60 people with one, --clusters 3: 19 strangers entered the
    # three folders, as each one's own row lifted its similarity to its folder's centre (by about 0.1 in a
    # folder of 20 faces) while the cut-off is read from the similarities to other folders' centres.
    x, who = _people_among_strangers(lfw_subset, 15, 60)
    result = kmeans(x, 3)
    for person in THREE_PEOPLE:
        (folder,) = np.unique(result.labels[who == person])
        assert folder >= 0
    assert int(((result.labels >= 0) & ~np.isin(who, THREE_PEOPLE)).sum()) <= 6


def test_strangers_who_fill_a_small_folder_do_not_pull_its_centre_to_them(lfw_subset) -> None:
    # Three people with 10 or 15 photos each among 60 or 120 people with one, --clusters 3: k-means gives each
    # folder more strangers than photos of its person, and they pull its centre towards them: 32 strangers
    # stayed in the folders of three such draws while each folder's centre was read from all its faces, 16 since
    # it is read again from its group of alike faces where the cut took more than a fifth of them.
    entered = 0
    for photos, strangers in ((10, 60), (10, 120), (15, 120)):
        x, who = _people_among_strangers(lfw_subset, photos, strangers)
        result = kmeans(x, 3)
        for person in THREE_PEOPLE:
            (folder,) = np.unique(result.labels[who == person])
            assert folder >= 0
        entered += int(((result.labels >= 0) & ~np.isin(who, THREE_PEOPLE)).sum())
    assert entered <= 22


def test_one_person_among_many_strangers_keeps_a_folder_of_their_own(lfw_subset) -> None:
    # --clusters 1 over 15 photos of one person among 120 people with one: the folder's centre, pulled towards
    # the strangers, let 19-26 of them in for each of the three people; against the centre of the person's group
    # of alike faces, 0-5.
    for person in THREE_PEOPLE:
        x, who = _people_among_strangers(lfw_subset, 15, 120, (person,))
        result = kmeans(x, 1)
        assert (result.labels[who == person] == 0).all(), person
        assert int(((result.labels == 0) & (who != person)).sum()) <= 8, person


def test_a_folder_the_cut_took_much_of_is_cut_again_against_its_group_of_alike_faces() -> None:
    from face_organizer import clustering

    rng = np.random.default_rng(1)
    person, other = _unit(rng.standard_normal((2, 16)))
    # Folder 0: ten faces of one person and ten strangers; folder 1: another person's faces alone.
    x = np.vstack([_unit(person + 0.15 * rng.standard_normal((10, 16))), _unit(rng.standard_normal((10, 16))),
                   _unit(other + 0.15 * rng.standard_normal((10, 16)))]).astype(np.float32)
    labels = np.repeat([0, 0, 1], 10)
    centres = np.vstack([_unit(x[:20].sum(axis=0)), _unit(x[20:].sum(axis=0))]).astype(np.float32)
    own = np.einsum("ij,ij->i", x, centres[labels]).astype(np.float32)
    threshold = float(np.sort(own[:20])[9]) + 1e-6  # the cut takes half of folder 0 and none of folder 1
    assert (own[20:] >= threshold).all() and clustering.RECENTRE_SHARE < 0.5
    # The sample's groups: seven of the person's faces, and the other person's ten.
    group = np.full(30, -1)
    group[:7], group[20:] = 0, 1
    groups = clustering.SampleGroups(np.arange(30), group, np.vstack([_unit(x[:7].sum(axis=0)), centres[1]]),
                                     np.array([7, 10]), 0.5)
    both = np.array([True, True])

    def against(members: np.ndarray, i: int) -> float:
        centre = x[members].sum(axis=0) - (x[i] if i in members else 0)
        return float(x[i] @ centre / np.linalg.norm(centre))

    for given, members in ((groups, np.arange(7)), (None, np.nonzero(own[:20] >= threshold)[0])):
        out = clustering._recentred(x, labels, 2, own, threshold, both, given)
        assert np.array_equal(out[20:], own[20:])
        for i in range(20):  # a face of the group (or kept) against the others'; any other, against all of them
            assert out[i] == pytest.approx(against(members, i), abs=1e-5), (given is None, i)
    # A folder that holds more than one person is left as it is.
    assert np.array_equal(clustering._recentred(x, labels, 2, own, threshold, np.array([False, True]), groups), own)


def test_a_face_is_compared_with_its_folder_without_itself_where_the_folder_holds_one_person() -> None:
    from face_organizer.clustering import _without_own_row

    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((7, 16))).astype(np.float32)
    labels = np.array([0, 0, 0, 1, 1, 2, -1])
    own = np.full(7, 0.5, np.float32)
    out = _without_own_row(x, labels, 3, own, np.array([True, False, True]))
    for i in (0, 1, 2):
        rest = x[[j for j in (0, 1, 2) if j != i]].sum(axis=0)
        assert out[i] == pytest.approx(float(x[i] @ rest / np.linalg.norm(rest)), abs=1e-5)
    # Another folder keeps the similarity given; a face alone in its folder, and an outlier, too.
    assert out[3] == out[4] == out[5] == out[6] == 0.5


def test_next_years_faces_go_to_the_same_person_folders(two_person, interviewer, tmp_path, capsys) -> None:
    emb, labels, _ = two_person
    ef = embfile.load(emb)
    people = ("Tony_Blair", "Donald_Rumsfeld")
    years = {}
    for year, rows in (("2017", np.arange(0, len(ef.rows), 2)), ("2018", np.arange(1, len(ef.rows), 2))):
        years[year] = tmp_path / f"emb_{year}.pkl"
        embfile.save(years[year], embfile.EmbeddingsFile(ef.rows.select(rows), [], [], ef.meta))
    first, second = tmp_path / "sorted_2017", tmp_path / "sorted_2018"
    assert run_cli(["--embeddings", str(years["2017"]), "--output", str(first), "--clusters", "2", "-q"]) == 0
    capsys.readouterr()
    assert run_cli(["--embeddings", str(years["2018"]), "--output", str(second), "--people-from", str(first), "-q"]) == 0
    assert "none of the earlier run's people" not in capsys.readouterr().out  # strangers are one-offs

    def report(out):
        rows = list(csv.DictReader(open(out / "clusters.csv", newline="", encoding="utf-8")))
        return folder_report([labels[r["path"]] for r in rows], [r["cluster"] for r in rows], people)

    before, after = report(first), report(second)
    assert after.folder_of == before.folder_of and set(after.folder_of.values()) == {"person_A", "person_B"}
    assert all(p == 1.0 for p in after.purity.values()), after.lines()
    assert all(r >= 0.9 for r in after.recall.values()), after.lines()
    assert after.strangers_out >= 0.8 and after.junk_out >= 0.8, after.lines()
    summary = json.loads((second / "summary.json").read_text())
    assert summary["similarity_cutoff"] == json.loads((first / "summary.json").read_text())["similarity_cutoff"]
    assert summary["method"].startswith(f"assigned to the 2 people of {first}")
    np.testing.assert_array_equal(np.load(second / "people.npy"), np.load(first / "people.npy"))  # chains on

    # A person new since (an interviewer in 2018's footage): told, and kept out of the folders.
    third = tmp_path / "sorted_2018_interviews"
    assert run_cli(["--embeddings", str(years["2018"]), str(interviewer[0]), "--output", str(third),
                    "--people-from", str(first), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "outliers/ also holds 1 group of alike faces that are none of the earlier run's people" in printed
    with open(third / "clusters.csv", newline="", encoding="utf-8") as handle:
        placed = {r["path"]: r["cluster"] for r in csv.DictReader(handle)}
    assert np.mean([placed[p] == "outliers" for p in interviewer[1]]) >= 0.9

    with pytest.raises(SystemExit) as usage:
        run_cli(["--embeddings", str(years["2018"]), "--output", str(tmp_path / "x"), "--people-from", str(first),
                 "--clusters", "3"])
    assert usage.value.code == 2 and "leave out --clusters" in capsys.readouterr().err
    other = embfile.EmbeddingsFile(ef.rows.select(np.arange(3)), [], [], dict(ef.meta, model_files={"recognition": "w600k_r50.onnx"}))
    embfile.save(tmp_path / "other.pkl", other)
    assert run_cli(["--embeddings", str(tmp_path / "other.pkl"), "--output", str(tmp_path / "y"), "--people-from", str(first)]) == 2
    assert "re-embed with the same model pack" in capsys.readouterr().err
    assert run_cli(["--embeddings", str(years["2018"]), "--output", str(tmp_path / "z"), "--people-from", str(tmp_path)]) == 2
    assert "no summary.json from a finished cluster_faces run" in capsys.readouterr().err
    older = tmp_path / "older"  # an output written before runs kept their people
    older.mkdir()
    (older / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "people_file"}))
    assert run_cli(["--embeddings", str(years["2018"]), "--output", str(tmp_path / "w"), "--people-from", str(older)]) == 2
    assert "did not keep its people" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in ("w", "x", "y", "z"))


def test_people_new_since_get_folders_of_their_own_that_later_years_follow(two_person, interviewer, tmp_path,
                                                                           capsys) -> None:
    emb, labels, _ = two_person
    ef = embfile.load(emb)
    years = {}
    for year, rows in (("2017", np.arange(0, len(ef.rows), 2)), ("2018", np.arange(1, len(ef.rows), 2))):
        years[year] = tmp_path / f"emb_{year}.pkl"
        embfile.save(years[year], embfile.EmbeddingsFile(ef.rows.select(rows), [], [], ef.meta))
    first = tmp_path / "sorted_2017"
    assert run_cli(["--embeddings", str(years["2017"]), "--output", str(first), "--clusters", "2", "-q"]) == 0
    (first / "person_A").rename(first / "Tony")  # named by the user; the next new person is still person_C
    capsys.readouterr()
    # Strangers seen once are no new people: the folders are those of 2017.
    alone = tmp_path / "sorted_2018_alone"
    assert run_cli(["--embeddings", str(years["2018"]), "--output", str(alone), "--people-from", str(first),
                    "--new-people", "-q", "--no-previews"]) == 0
    assert "new since" not in capsys.readouterr().out
    assert json.loads((alone / "summary.json").read_text())["people_names"] == ["Tony", "person_B"]
    np.testing.assert_array_equal(np.load(alone / "people.npy"), np.load(first / "people.npy"))

    # An interviewer new in 2018's footage gets a folder of their own, pure, after the known people's.
    second = tmp_path / "sorted_2018"
    command = ["--embeddings", str(years["2018"]), str(interviewer[0]), "--output", str(second), "--people-from",
               str(first), "--new-people", "-q", "--no-previews"]
    assert run_cli(command) == 0
    printed = capsys.readouterr().out
    assert "person_C is a person new since the earlier run" in printed
    assert "none of the earlier run's people" not in printed
    with open(second / "clusters.csv", newline="", encoding="utf-8") as handle:
        placed = {r["path"]: r["cluster"] for r in csv.DictReader(handle)}
    assert np.mean([placed[p] == "person_C" for p in interviewer[1]]) >= 0.9
    assert {p for p, c in placed.items() if c == "person_C"} <= set(interviewer[1])
    assert sum(placed[p] == "person_C" for p in interviewer[1]) == len(list((second / "person_C").rglob("*.png")))
    for name, person in (("Tony", "Tony_Blair"), ("person_B", "Donald_Rumsfeld")):
        theirs = [labels[p] for p, c in placed.items() if c == name]
        own = sum(labels.get(p) == person for p in placed)
        assert len(theirs) >= max(10, 0.9 * own) and set(theirs) == {person}, (name, Counter(theirs))
    summary = json.loads((second / "summary.json").read_text())
    assert summary["people_names"] == ["Tony", "person_B", "person_C"] and summary["new_people"] == ["person_C"]
    assert np.load(second / "people.npy").shape == (3, ef.dim)
    assert run_cli(command) == 0  # the same command again: nothing placed twice
    assert re.search(r"^files: [\d,]+ already in place;", capsys.readouterr().out, re.M)
    assert run_cli([c for c in command if c != "--new-people"]) == 2  # without it, the people would be others
    assert "made with other settings (new_people True, now False)" in capsys.readouterr().err

    # The next year's --people-from follows the new person, with no --new-people.
    third = tmp_path / "sorted_2019"
    assert run_cli(["--embeddings", str(interviewer[0]), "--output", str(third), "--people-from", str(second), "-q",
                    "--no-previews"]) == 0
    with open(third / "clusters.csv", newline="", encoding="utf-8") as handle:
        later = [r["cluster"] for r in csv.DictReader(handle)]
    assert later.count("person_C") >= 0.9 * len(interviewer[1]) and set(later) <= {"person_C", "outliers"}

    with pytest.raises(SystemExit) as usage:
        run_cli(["--embeddings", str(years["2018"]), "--output", str(tmp_path / "x"), "--new-people"])
    assert usage.value.code == 2 and "--new-people is for --people-from" in capsys.readouterr().err


def test_a_new_group_whose_faces_miss_the_cut_off_is_said_to_stay_in_outliers(caplog) -> None:
    # --new-people: a group of alike faces among those that matched none of the known people, whose faces lie
    # too far from its centre for the cut-off, stays in outliers/. The summary said nothing of it, where
    # without the option it named the group.
    from face_organizer.cluster_stage import ClusterReport

    rng = np.random.default_rng(0)
    a, b, c = _unit(rng.standard_normal((3, 128)))
    x = np.concatenate([_faces_around(a, 30, rng, 0.85), _faces_around(b, 30, rng, 0.85),
                        _faces_around(c, 14, rng, 0.75), _unit(rng.standard_normal((12, 128))).astype(np.float32)])
    known = np.stack([a, b]).astype(np.float32)
    for cut, folders in ((0.7, 3), (0.8, 2)):  # C's faces lie at about 0.77 to the centre of their group
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="face_organizer.clustering"):
            result = assign_to_people(x, known, cut, "test", "test", new_people=True)
        assert result.n_clusters == folders and (result.labels[:60] == np.repeat([0, 1], 30)).all()
        assert (result.labels[60:74] == (2 if folders == 3 else OUTLIER)).all()
        assert (result.labels[74:] == OUTLIER).all()
        said = [r.getMessage() for r in caplog.records if "left in outliers/" in r.getMessage()]
        notes = [n for n in ClusterReport("/out", result, [], {}, []).notes() if "no folder of its own" in n]
        if folders == 3:
            assert result.groups_left_out == () and not said and not notes
            continue
        assert result.groups_left_out == (14,) and assign_to_people(x, known, cut, "test", "test").extra_groups == (14,)
        assert said == ["1 group of alike faces among those that matched none of the 2 known people kept fewer than "
                        "10 faces at their cut-off 0.800: left in outliers/"]
        assert notes == ["outliers/ also holds 1 group of alike faces that are none of the earlier run's people (about "
                         "14 faces), and no folder of its own: fewer than 10 of its faces reach the cut-off 0.800 to "
                         "its centre; a lower --min-similarity takes in more of them, and more strangers into every "
                         "folder"]


def test_new_people_are_named_after_the_known_ones_skipping_names_in_use() -> None:
    from face_organizer.clustering import new_person_names
    assert new_person_names(["person_A", "person_B"], 2) == ("person_C", "person_D")
    assert new_person_names(["person_C", "Tony"], 2) == ("person_D", "person_E")  # person_A renamed person_C
    assert new_person_names([], 1) == ("person_A",)


def test_folders_renamed_or_joined_since_are_followed_by_people_from(two_person, tmp_path, monkeypatch) -> None:
    # The user names person_A "blair" after the first year: the next years' faces of that person
    # go to blair/, and on down the chain of runs. Two folders made one (one person's): their faces
    # go to that one. A folder deleted: its faces keep its name.
    import shutil

    emb, labels, _ = two_person
    ef = embfile.load(emb)
    first = tmp_path / "2017"
    earlier = embfile.EmbeddingsFile(ef.rows.select(np.arange(0, len(ef.rows), 2)), [], [], ef.meta)
    cluster_faces(earlier, str(first), ClusterConfig(clusters=2, previews=False), progress=False)
    later = embfile.EmbeddingsFile(ef.rows.select(np.arange(1, len(ef.rows), 2)), [], [], ef.meta)

    def sorted_into(people_from: Path, out: Path) -> dict[str, set[str]]:
        cluster_faces(later, str(out), ClusterConfig(people_from=str(people_from), previews=False), progress=False)
        folders: dict[str, set[str]] = {}
        for row in csv.DictReader(open(out / "clusters.csv", newline="", encoding="utf-8")):
            folders.setdefault(row["cluster"], set()).add(labels[row["path"]])
        return folders

    plain = sorted_into(first, tmp_path / "plain")
    assert plain["person_A"] == {"Tony_Blair"} and plain["person_B"] == {"Donald_Rumsfeld"}, plain
    (first / "person_A").rename(first / "blair")
    with pytest.raises(SetupError, match=r"person_A/ is blair/ now; this run would place those images again"):
        cluster_faces(earlier, str(first), ClusterConfig(clusters=2, previews=False), progress=False)  # the same run
    assert not (first / "person_A").exists()
    with monkeypatch.context() as m:  # refused before the clustering, which takes minutes at scale
        m.setattr("face_organizer.cluster_stage.run_clustering", lambda *a, **k: pytest.fail("clustered"))
        with pytest.raises(SetupError, match=r"person_A/ is blair/ now"):
            cluster_faces(earlier, str(first), ClusterConfig(clusters=2, previews=False), progress=False)
    named = sorted_into(first, tmp_path / "2018")
    assert set(named) == {"blair", "person_B", "outliers"} and named["blair"] == {"Tony_Blair"}, named
    assert (tmp_path / "2018" / "blair").is_dir() and not (tmp_path / "2018" / "person_A").exists()
    assert json.loads((tmp_path / "2018" / "summary.json").read_text())["people_names"] == ["blair", "person_B"]
    assert set(sorted_into(tmp_path / "2018", tmp_path / "2019")) == {"blair", "person_B", "outliers"}  # chained
    for image in list((first / "person_B").rglob("*.png")):  # joined into one; person_B/ is left empty
        image.rename(first / "blair" / image.relative_to(first / "person_B"))
    assert (first / "person_B").is_dir()
    joined = sorted_into(first, tmp_path / "joined")
    assert set(joined) == {"blair", "outliers"} and joined["blair"] == {"Tony_Blair", "Donald_Rumsfeld"}, joined
    shutil.rmtree(first / "blair")  # deleted: nothing says where its faces should go, so as the run named them
    assert set(sorted_into(first, tmp_path / "deleted")) == {"person_A", "person_B", "outliers"}


def test_people_folders_named_on_linux_are_made_as_an_exfat_output_can_hold_them(two_person, tmp_path, monkeypatch,
                                                                                   caplog) -> None:
    # Folders renamed on the Linux host ("Blair: 2017", "Rumsfeld?"), followed by --people-from into an output on
    # an exFAT drive: the names the run made there had characters the drive cannot hold.
    emb, labels, _ = two_person
    ef = embfile.load(emb)
    first = tmp_path / "2017"
    earlier = embfile.EmbeddingsFile(ef.rows.select(np.arange(0, len(ef.rows), 2)), [], [], ef.meta)
    cluster_faces(earlier, str(first), ClusterConfig(clusters=2, previews=False), progress=False)
    (first / "person_A").rename(first / "Blair: 2017")
    (first / "person_B").rename(first / "Blair? 2017.")  # the same name there, once cleaned
    later = embfile.EmbeddingsFile(ef.rows.select(np.arange(1, len(ef.rows), 2)), [], [], ef.meta)
    monkeypatch.setattr(organize, "filesystem_type", lambda path: "exfat")
    usb = tmp_path / "usb"
    with caplog.at_level("WARNING", logger="face_organizer.organize"):
        report = cluster_faces(later, str(usb), ClusterConfig(people_from=str(first)), progress=False)
    made = ["Blair_ 2017", "Blair_ 2017_2"]
    assert sorted(p.name for p in usb.iterdir() if p.is_dir()) == sorted([*made, "outliers", "previews"])
    assert ("the people's folders are made as Blair: 2017/ → Blair_ 2017/ and Blair? 2017./ → Blair_ 2017_2/"
            in caplog.text)
    folders: dict[str, set[str]] = {}
    for row in csv.DictReader(open(usb / "clusters.csv", newline="", encoding="utf-8")):
        folders.setdefault(row["cluster"], set()).add(labels[row["path"]])
        assert Path(row["destination"]).is_file() and Path(row["destination"]).parts[len(usb.parts)] == row["cluster"]
    assert folders["Blair_ 2017"] == {"Tony_Blair"} and folders["Blair_ 2017_2"] == {"Donald_Rumsfeld"}, folders
    assert json.loads((usb / "summary.json").read_text())["people_names"] == made
    assert set(report.images_per_cluster) == {*made, "outliers"}
    assert "href='Blair_%202017/'" in (usb / "index.html").read_text()
    again = cluster_faces(later, str(usb), ClusterConfig(people_from=str(first)), progress=False)  # the same run
    assert again.status["exists"] == len(later.rows.paths) and not again.status["placed"]
    # A drive that takes any name keeps them as the user wrote them.
    monkeypatch.setattr(organize, "filesystem_type", lambda path: "ext4")
    cluster_faces(later, str(tmp_path / "disk"), ClusterConfig(people_from=str(first), previews=False), progress=False)
    assert {"Blair: 2017", "Blair? 2017."} < {p.name for p in (tmp_path / "disk").iterdir()}


def test_many_people_folders_renamed_for_an_exfat_output_are_counted(monkeypatch, caplog) -> None:
    names = [f"Guest {i}?" for i in range(8)] + ["host"]
    monkeypatch.setattr(organize, "filesystem_type", lambda path: "exfat")
    with caplog.at_level("WARNING", logger="face_organizer.organize"):
        made = organize.portable_folders(names, "/media/usb/sorted")
    assert made == tuple(f"Guest {i}_" for i in range(8)) + ("host",)
    assert caplog.messages[0].endswith("the people's folders are made as Guest 0?/ → Guest 0_/, Guest 1?/ → "
                                       "Guest 1_/, Guest 2?/ → Guest 2_/, Guest 3?/ → Guest 3_/, Guest 4?/ → "
                                       "Guest 4_/, Guest 5?/ → Guest 5_/ and 2 more folders")
    monkeypatch.setattr(organize, "filesystem_type", lambda path: "ext4")
    assert organize.portable_folders(names, "/workspace/sorted") == tuple(names)


def test_kmeans_says_what_it_starts_and_points_many_folders_to_auto(two_person, caplog) -> None:
    # --clusters 1000 over half a million faces runs for many minutes; nothing was said until it ended.
    ef = embfile.load(two_person[0])
    with caplog.at_level("INFO", logger="face_organizer.cluster_stage"):
        run_clustering(ef, ClusterConfig(clusters=2, set_aside_unrecognisable=False))
        run_clustering(ef, ClusterConfig(clusters=60, set_aside_unrecognisable=False))
    started = [m for m in caplog.messages if m.startswith("clustering ")]
    assert started == [f"clustering {len(ef.rows):,} faces into 2 folders with k-means (FAISS)",
                       f"clustering {len(ef.rows):,} faces into 60 folders with k-means (FAISS); its time grows with "
                       "faces times folders, and --clusters auto finds the people itself"]


def test_evaluation_metrics_on_a_worked_example() -> None:
    # Truth a a a b b, folders 1 1 2 2 2. Pairs: true {a0a1, a0a2, a1a2, b3b4}, predicted {a0a1, a2b3, a2b4,
    # b3b4}, shared {a0a1, b3b4}. BCubed precision per item 1, 1, 1/3, 2/3, 2/3; recall 2/3, 2/3, 1/3, 1, 1.
    from face_organizer.evaluation import pairwise

    truth, pred = ["a", "a", "a", "b", "b"], [1, 1, 2, 2, 2]
    assert (pairwise(truth, pred).precision, pairwise(truth, pred).recall) == (0.5, 0.5)
    score = bcubed(truth, pred)
    assert score.precision == pytest.approx(11 / 15) and score.recall == pytest.approx(11 / 15)
    assert pairwise(truth, truth).f == bcubed(truth, truth).f == 1.0
    alone = pairwise(truth, list(range(5)))  # every face a folder of its own: no pair joined, none wrongly
    assert (alone.precision, alone.recall, alone.f) == (1.0, 0.0, 0.0)
    one = bcubed(truth, [0] * 5)  # one folder for all: each item's folder is 3/5 or 2/5 its own person
    assert one.precision == pytest.approx((3 * 3 / 5 + 2 * 2 / 5) / 5) and one.recall == 1.0


def test_index_links_reach_folders_the_user_named(two_person, tmp_path) -> None:
    # --people-from follows a folder the user renamed "Mom & Dad #1 (50%)?": in index.html its link and
    # contact sheet were written as the name, so "#" began a fragment and the browser found neither.
    from html.parser import HTMLParser
    from urllib.parse import unquote_to_bytes, urlsplit

    ef = embfile.load(two_person[0])
    first = tmp_path / "2017"
    cluster_faces(ef, str(first), ClusterConfig(clusters=2, link_mode="symlink"), progress=False)
    names = {"person_A": "Mom & Dad #1 (50%)?", "person_B": os.fsdecode(b"caf\xe9 'x'")}  # and one not UTF-8
    for old, new in names.items():
        (first / old).rename(first / new)
    out = tmp_path / "2018"
    cluster_faces(ef, str(out), ClusterConfig(people_from=str(first), link_mode="symlink"), progress=False)

    class Links(HTMLParser):
        found: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.found += [value for name, value in attrs if name in ("href", "src") and value]

    page = Links()
    page.feed((out / "index.html").read_bytes().decode("utf-8", "surrogateescape"))
    targets = [os.fsdecode(unquote_to_bytes(urlsplit(link).path)).rstrip("/") for link in page.found]  # as browsers
    assert {t for t in targets if not t.startswith("previews/")} == {*names.values(), "outliers"}
    assert {t for t in targets if t.startswith("previews/")} == {f"previews/{n}.jpg" for n in (*names.values(),
                                                                                                "outliers")}
    assert all((out / t).exists() for t in targets)


def test_same_input_gives_same_folders(two_person) -> None:
    ef = load_embeddings([str(two_person[0])])
    a = run_clustering(ef, ClusterConfig(clusters=2))
    b = run_clustering(ef, ClusterConfig(clusters=2))
    np.testing.assert_array_equal(a.labels, b.labels)


def test_kmeans_with_many_folders_keeps_the_similarities_of_a_sample_of_faces(monkeypatch) -> None:
    """Every face's similarity to every centre grew with faces times folders (--clusters 1000 over
    500,000 faces: 6 GB). Past KMEANS_TABLE_LIMIT, a seeded sample's are kept: the folders are the
    same, and the cut-off read from them nearly so."""
    import face_organizer.clustering as clustering

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((12, 64)).astype(np.float32)
    truth = np.repeat(np.arange(12), 400)
    x = centres[truth] / np.linalg.norm(centres, axis=1, keepdims=True)[truth]
    x = np.vstack([x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(1.0 / np.sqrt(64)),
                   rng.standard_normal((240, 64)).astype(np.float32)])  # 5% strangers
    tables = []
    real = clustering._spherical_kmeans

    def spy(*args, **kwargs):
        found = real(*args, **kwargs)
        tables.append(found.sims.shape)
        return found

    monkeypatch.setattr(clustering, "_spherical_kmeans", spy)
    full = kmeans(x, 12, extra_groups=False)
    monkeypatch.setattr(clustering, "KMEANS_TABLE_LIMIT", 12 * 1_000)
    sampled = kmeans(x, 12, extra_groups=False)
    assert tables == [(len(x), 12), (1_000, 12)]  # no table of all faces
    assert abs(sampled.threshold - full.threshold) < 0.005
    # The same folders (numbered by size, so equal sizes may swap numbers), but for faces right at the cut-off.
    same = {int(f): int(np.bincount(sampled.labels[full.labels == f] + 1).argmax()) - 1 for f in np.unique(full.labels)}
    differ = np.nonzero(np.array([same[int(f)] for f in full.labels]) != sampled.labels)[0]
    assert len(set(same.values())) == len(same) == 13  # 12 folders and the outliers
    assert len(differ) <= 5 and np.all(np.abs(full.similarity[differ] - full.threshold) < 0.01), differ


def test_kmeans_trained_on_a_sample_gives_the_folders_of_training_on_every_face(monkeypatch) -> None:
    """Above KMEANS_FACES_PER_CENTRE faces per centre, k-means trains on a sample; the folders
    must be those of training on all the faces, but for a face or two right at the cut-off (the
    trained centres differ in the fourth decimal)."""
    import face_organizer.clustering as clustering

    rng = np.random.default_rng(3)
    sizes = (15_000, 10_000)
    centres = rng.standard_normal((2, 128)).astype(np.float32)
    truth = np.repeat([0, 1], sizes)
    x = centres[truth] / np.linalg.norm(centres, axis=1, keepdims=True)[truth]
    x = np.vstack([x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(1.2 / np.sqrt(128)),
                   rng.standard_normal((1_250, 128)).astype(np.float32)])  # 5% strangers
    truth = np.concatenate([truth, np.full(1_250, -1)])
    trained_on = []
    real_kmeans = clustering.faiss.Kmeans

    def spy(*args, **kwargs):
        trained_on.append(kwargs["max_points_per_centroid"])
        return real_kmeans(*args, **kwargs)

    monkeypatch.setattr(clustering.faiss, "Kmeans", spy)
    monkeypatch.setattr(clustering, "KMEANS_FACES_PER_CENTRE", 2_000)
    sampled = kmeans(x, 2, extra_groups=False)
    assert trained_on == [2_000]  # 4,000 of the 26,250 faces
    monkeypatch.setattr(clustering, "KMEANS_FACES_PER_CENTRE", 10**9)
    full = kmeans(x, 2, extra_groups=False)
    assert abs(sampled.threshold - full.threshold) < 1e-3
    differ = np.nonzero(sampled.labels != full.labels)[0]
    assert len(differ) <= 3 and np.all(np.abs(full.similarity[differ] - full.threshold) < 0.01), differ
    assert not np.any((sampled.labels[differ] >= 0) & (full.labels[differ] >= 0))  # no face changes folder
    person = {int(np.bincount(sampled.labels[truth == t]).argmax()): t for t in (0, 1)}
    assert sorted(person) == [0, 1]
    assert all((sampled.labels[truth == t] == c).mean() > 0.999 for c, t in person.items())
    # Random strangers pass 2.4 spreads of the other centre's scale by chance, at about 0.8% per centre.
    assert (sampled.labels[truth == -1] == -1).mean() >= 0.975


def test_auto_finds_many_people(lfw_subset) -> None:
    emb, identity = lfw_subset
    ef = embfile.load(emb)
    result = graph_clusters(ef.rows.embeddings)
    truth = [identity[p] for p in ef.rows.paths]
    pred = [f"c{c}" if c >= 0 else f"o{i}" for i, c in enumerate(result.labels)]
    score = bcubed(truth, pred)
    assert score.f >= 0.95, score
    assert result.n_clusters >= 70


def test_groups_join_only_when_their_faces_are_alike_on_average() -> None:
    """Two tight groups bridged by one strong edge stay apart; a pair joins a group by its edge
    alone, however unlike the rest of the group it is on average."""
    from face_organizer.cohesion import MERGE_MIN_GROUP, join_groups

    assert MERGE_MIN_GROUP == 3
    rng = np.random.default_rng(0)
    axes = np.linalg.qr(rng.normal(size=(32, 3)))[0].T  # three orthogonal directions

    def near(axis: np.ndarray, count: int, spread: float) -> np.ndarray:
        x = axis + rng.normal(0, spread, (count, 32))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    # rows 0-5: one person; 6-11: another; 12-13: a pair mostly along a third direction (about 0.24 to the first)
    x = np.vstack([near(axes[0], 6, 0.05), near(axes[1], 6, 0.05), near(axes[0] + 4.0 * axes[2], 2, 0.02)]).astype(np.float32)
    within = [(i, j) for g in (range(6), range(6, 12)) for i in g for j in g if i < j] + [(12, 13)]
    src = np.array([i for i, _ in within] + [0, 12])
    dst = np.array([j for _, j in within] + [6, 1])  # a bridge between the people; the pair's edge to the first
    weight = np.array([float(x[i] @ x[j]) for i, j in zip(src, dst)], np.float32)
    weight[-2] = 0.6  # a look-alike pair: strong, but weaker than the people's own edges
    groups, refused = join_groups(x, src, dst, weight, min_mean=0.3)
    assert len(set(groups[:6])) == len(set(groups[6:12])) == 1 and groups[0] != groups[6]
    assert refused == 1
    assert float(x[12:14].mean(0) @ x[:6].mean(0)) < 0.3 and groups[12] == groups[13] == groups[0]
    # Without the rule (every edge joins) the bridge makes one group.
    assert len(set(join_groups(x, src, dst, weight, min_mean=-np.inf)[0])) == 1


def test_a_cross_fade_between_two_people_does_not_join_them(lfw_subset, models, tmp_path) -> None:
    """A video cross-fade blends one person's shot into another's. Each blended frame is close
    to the next, so the fade is a chain of core faces from one person to the other, and plain
    connected components make one cluster of both. Groups join only when their faces are alike
    on average, so the two people stay apart."""
    import cv2

    from conftest import write_image

    emb, label = lfw_subset
    blair = sorted(p for p, who in label.items() if who == "Tony_Blair")
    rumsfeld = sorted(p for p, who in label.items() if who == "Donald_Rumsfeld")
    fades, sources = [], set()
    for t in range(3):
        sources |= {blair[t * 7], rumsfeld[t * 5]}
        a, b = read_image(blair[t * 7]), read_image(rumsfeld[t * 5])
        fades += [str(write_image(tmp_path / "fades" / f"fade{t}" / f"frame_{step:03d}.png",
                                  cv2.addWeighted(a, 1 - step / 12, b, step / 12, 0))) for step in range(1, 12)]
    run_embeddings(fades, tmp_path / "fades.pkl", models, inputs=[str(tmp_path / "fades")], progress=False)
    ef = load_embeddings([str(emb), str(tmp_path / "fades.pkl")])
    truth = [label.get(p, "fade") for p in ef.rows.paths]
    assert truth.count("fade") == 33

    def person_clusters(result) -> tuple[dict[str, tuple[int, float]], set[str]]:
        """Each person's most common cluster with the share of their faces in it, and the
        faces of either person in the other's cluster."""
        top, share = {}, {}
        for who in ("Tony_Blair", "Donald_Rumsfeld"):
            theirs = [int(c) for c, t in zip(result.labels, truth) if t == who]
            top[who] = max(set(theirs), key=theirs.count)
            share[who] = theirs.count(top[who]) / len(theirs)
        strays = {p for p, c, t in zip(ef.rows.paths, result.labels, truth)
                  if t in top and c == top["Tony_Blair" if t == "Donald_Rumsfeld" else "Donald_Rumsfeld"]}
        return {who: (top[who], share[who]) for who in top}, strays

    chained, _ = person_clusters(graph_clusters(ef.rows.embeddings, attach=False, join_rule=False))
    assert chained["Tony_Blair"][0] == chained["Donald_Rumsfeld"][0] >= 0, chained
    result = graph_clusters(ef.rows.embeddings, attach=False)
    kept, strays = person_clusters(result)
    assert kept["Tony_Blair"][0] != kept["Donald_Rumsfeld"][0], kept
    assert all(cluster >= 0 and share >= 0.95 for cluster, share in kept.values()), kept
    # Only a photo a fade starts from may follow its fade to the other person's cluster.
    assert strays <= sources, strays - sources
    assert result.refused_joins > 0 and "groups join at mean similarity >=" in result.method


def test_second_pass_gives_occluded_faces_their_person_and_leaves_strangers_out(lfw_crops) -> None:
    """Occluded crops often miss the graph's face-to-face cut-off for every neighbour; the second
    pass gives them to their own person's cluster, and people seen once stay in outliers."""
    emb, identity = lfw_crops
    ef = embfile.load(emb)
    truth = [identity[p] for p in ef.rows.paths]
    once = {p for p in set(truth) if truth.count(p) == 1}
    # Clusters of three faces or more (pairs are made after the second pass, see the test of pairs).
    first = graph_clusters(ef.rows.embeddings, attach=False, min_cluster_size=3)
    both = graph_clusters(ef.rows.embeddings, min_cluster_size=3)
    assert first.pairs == both.pairs == 0
    assert first.attached == 0 and first.attach_cutoff is None
    joined = np.nonzero((first.labels < 0) & (both.labels >= 0))[0]
    assert both.attached == joined.size >= 10
    assert np.all(both.labels[first.labels >= 0] >= 0)  # the second pass only adds faces
    # Every face that joined a cluster joined the one holding its own person.
    for i in joined:
        members = [truth[j] for j in np.nonzero(both.labels == both.labels[i])[0] if j != i]
        assert max(set(members), key=members.count) == truth[i], (truth[i], members)
    assert all(both.labels[i] < 0 for i, t in enumerate(truth) if t in once)
    # The clusters of the first pass keep their faces, only renumbered by size.
    clustered = first.labels >= 0
    assert len(set(zip(first.labels[clustered], both.labels[clustered]))) == first.n_clusters == both.n_clusters
    pred = [[f"c{c}" if c >= 0 else f"o{i}" for i, c in enumerate(r.labels)] for r in (first, both)]
    before, after = bcubed(truth, pred[0]), bcubed(truth, pred[1])
    assert after.recall >= before.recall + 0.03 and after.precision >= 0.99, (before, after)
    assert both.attach_cutoff is not None and both.attach_cutoff < both.threshold
    assert "other clusters' centres" in both.attach_source
    # A cut-off given by the user is the only rule.
    assert graph_clusters(ef.rows.embeddings, min_similarity=first.threshold).attach_cutoff is None


def test_a_library_of_a_few_people_keeps_each_persons_photos(lfw, lfw_labels, models, tmp_path) -> None:
    """Two people with 144 and 121 photos beside three with 7-19: the model places one of the
    three (Adrien Brody) at about -0.2 to everyone else, which widened the lower side of every
    impostor scale. The scale is now read from the narrower side of its centre; before, auto
    left 60 of the 303 scored faces in outliers/ (BCubed recall 0.62, the second pass's cut-off 0.81)
    and --clusters 5 reached a BCubed recall of 0.905 (its cut-off 0.655, from a spread of 0.236).
    Auto's graph alone (without its second pass) also keeps them: random pairs, a few lumps of
    each pair of people plus the people's own pairs, gave an edge cut-off of 0.768 and a recall
    of 0.62; pairs of faces in different groups of a first pass give the scale instead."""
    people = ("Tony_Blair", "Donald_Rumsfeld", "Abdullah_Gul", "Adrien_Brody", "Al_Sharpton")
    identity = {str((lfw / r["path"]).absolute()): r["identity"] for r in lfw_labels if r["identity"] in people}
    emb = tmp_path / "few.pkl"
    run_embeddings(sorted(identity), emb, models, EmbedOptions(mode="photos"), inputs=[str(lfw)], progress=False)
    ef = embfile.load(emb)
    faces = largest_face_rows(ef.rows.paths, ef.rows.bbox)  # each photo's largest face is its labelled person
    truth = [identity[ef.rows.paths[i]] for i in faces]
    for clusters, second_pass in ((None, True), (None, False), (len(people), True)):
        result = run_clustering(ef, ClusterConfig(clusters=clusters, attach_outliers=second_pass))
        labels = result.labels[faces]
        score = bcubed(truth, [f"c{c}" if c >= 0 else f"o{i}" for i, c in enumerate(labels)])
        assert score.precision >= 0.99 and score.recall >= 0.95, (clusters, second_pass, score)
        if clusters is None:
            assert result.threshold < 0.65 and "different groups of a first cut" in result.threshold_source
        for person in people:  # each person's photos nearly all in one folder
            theirs = labels[[t == person for t in truth]]
            assert np.bincount(theirs[theirs >= 0]).max() >= 0.9 * theirs.size, (clusters, person)
    # --clusters 5 had two outcomes of about equal cost: Al Sharpton (7 photos) in a folder of his own, or
    # with Adrien Brody and a folder of background faces (precision 0.966). Embeddings that differ as a GPU's
    # differ from the CPU's (cosine 0.99994) chose between them, as did numpy 1.26 with OpenCV 4.11.
    expected = run_clustering(ef, ClusterConfig(clusters=len(people))).labels
    for seed in range(4):
        noise = np.random.default_rng(seed).standard_normal(ef.rows.embeddings.shape).astype(np.float32) * 8e-4
        moved = replace(ef, rows=replace(ef.rows, embeddings=ef.rows.embeddings + noise))
        assert np.array_equal(run_clustering(moved, ClusterConfig(clusters=len(people))).labels, expected), seed


def test_the_graph_is_cut_again_only_on_a_clearly_narrower_impostor_scale() -> None:
    from face_organizer.clustering import _recut_scale
    from face_organizer.thresholds import ImpostorModel

    random_pairs = ImpostorModel(0.075, 0.139)  # the few-people library above: a disturbed peak
    across = ImpostorModel(0.103, 0.088)
    assert _recut_scale(random_pairs, across) is across
    # Spreads 1-7% apart (two-person draws), or equal but for rounding (at the floor): cut once.
    assert _recut_scale(ImpostorModel(0.02, 0.105), ImpostorModel(0.03, 0.098)) is None
    assert _recut_scale(ImpostorModel(0.0, 0.0442), ImpostorModel(0.0, 0.04419)) is None
    # Groups of one person split by the first cut centre where impostors never do; no groups, no scale.
    assert _recut_scale(random_pairs, ImpostorModel(0.31, 0.05)) is None
    assert _recut_scale(random_pairs, None) is None


def test_impostor_spread_is_read_from_the_narrower_side() -> None:
    from face_organizer.thresholds import _centred

    rng = np.random.default_rng(0)
    # A few people, one of them systematically unlike the rest: a lump far below the centre.
    lumpy = np.concatenate([rng.normal(0.1, 0.06, 6_000), rng.normal(-0.22, 0.05, 4_000)])
    centre = float(np.median(lumpy))
    lower = centre - float(np.percentile(lumpy[lumpy <= centre], 31.73))
    assert lower > 0.25 and impostor_from_impostors(lumpy, 512).spread < 0.11
    # Genuine pairs above the peak (two people fill the collection): the lower side is the scale.
    pairs = np.concatenate([rng.normal(0.02, 0.1, 140_000), rng.normal(0.6, 0.1, 60_000)])
    assert abs(_centred(pairs, 0.02, 512).spread - 0.1) < 0.005
    assert abs(impostor_from_similarities(pairs, 512).spread - 0.1) < 0.01
    # Impostors alone: both sides alike, as before.
    plain = rng.normal(0.05, 0.09, 20_000)
    assert abs(impostor_from_impostors(plain, 128).spread - 0.09) < 0.005


def test_a_person_with_two_photos_in_a_library_gets_a_folder(shared, models, tmp_path) -> None:
    """A core face needs two alike neighbours, so a person seen in only two photos made no group;
    two faces that are each other's most similar now make a folder of two."""
    library = shared / "datasets" / "deepface_tests"
    identity = {str((library / r["path"]).absolute()): r["identity"] for r in read_labels(library)}
    emb = tmp_path / "library.pkl"
    run_embeddings(sorted(identity), emb, models, EmbedOptions(mode="photos"), inputs=[str(library)], progress=False)
    ef = embfile.load(emb)
    faces = largest_face_rows(ef.rows.paths, ef.rows.bbox)  # each photo's largest face is its labelled person
    truth = [identity[ef.rows.paths[i]] for i in faces]
    twice = {p for p in truth if truth.count(p) == 2}
    assert len(twice) >= 3

    report = cluster_faces(ef, str(tmp_path / "out"), ClusterConfig(clusters=None, link_mode="symlink", previews=False),
                           progress=False)
    result = report.clustering
    labels = result.labels[faces]
    for person in twice:
        theirs = labels[[t == person for t in truth]]
        assert theirs[0] >= 0 and theirs[0] == theirs[1], person
        assert int((result.labels == theirs[0]).sum()) == 2, person  # a folder of their two faces alone
    for c in set(labels[labels >= 0]):  # every folder holds one person
        assert len({t for t, lab in zip(truth, labels) if lab == c}) == 1
    assert result.pairs >= len(twice) and "pairs of mutually most similar faces" in result.method
    assert any(n.startswith(f"{result.pairs} folders of two faces") for n in report.notes())
    # Groups of three or more only: their faces stay in outliers/.
    three = run_clustering(ef, ClusterConfig(clusters=None, min_cluster_size=3))
    assert three.pairs == 0 and all(three.labels[faces][[t in twice for t in truth]] < 0)
    assert result.n_clusters == three.n_clusters + result.pairs
    # Asked for two folders, k-means fills each with a few of these people: the mean similarity of their faces'
    # pairs passed both as one person's; the groups of three alike faces or more in each name them.
    two = run_clustering(ef, ClusterConfig(clusters=2))
    assert two.cohesion is not None and two.cohesion.not_alike == ()
    for folder, groups in ((0, two.cohesion.mixed[0]), (1, two.cohesion.mixed[1])):
        people = Counter(t for t, lab in zip(truth, two.labels[faces]) if lab == folder).most_common()
        assert groups[0] == folder and len(groups[1]) == len(people) >= 2
        assert list(groups[1]) == [n for _, n in people]  # each group one person, all their photos there


def test_people_from_an_auto_run_use_its_face_to_centre_cut_off(lfw_crops, tmp_path) -> None:
    """Next year's faces are compared with last year's centres, as the second pass compares
    outliers: its cut-off is the one kept, not the stricter face-to-face edge cut-off."""
    emb, identity = lfw_crops
    ef = embfile.load(emb)
    years = [embfile.EmbeddingsFile(ef.rows.select(np.arange(s, len(ef.rows), 2)), [], [], ef.meta) for s in (0, 1)]
    config = ClusterConfig(clusters=None, link_mode="symlink", previews=False)
    first = cluster_faces(years[0], str(tmp_path / "first"), config, progress=False).clustering
    assert first.attach_cutoff is not None and first.attach_cutoff < first.threshold
    follow = ClusterConfig(link_mode="symlink", previews=False, people_from=str(tmp_path / "first"))
    second = cluster_faces(years[1], str(tmp_path / "second"), follow, progress=False).clustering
    assert second.threshold == pytest.approx(first.attach_cutoff)
    assert second.threshold_source.startswith(f"the cut-off of {tmp_path / 'first'}: second pass, data: median")
    strict = run_clustering(years[1], ClusterConfig(people_from=str(tmp_path / "first"), min_similarity=first.threshold))
    # Each folder's person: the identity of most of its first-year faces.
    truth = [[identity[p] for p in y.rows.paths] for y in years]
    person = {c: max(set(m), key=m.count) for c in range(first.n_clusters)
              for m in [[t for t, lab in zip(truth[0], first.labels) if lab == c]]}
    right = [t == person[c] for t, c in zip(truth[1], second.labels) if c >= 0]
    # Faces of people with a folder of three or more (a folder of two is a weaker centre).
    sizes = np.bincount(first.labels[first.labels >= 0])
    theirs = sum(t in {person[int(c)] for c in np.nonzero(sizes >= 3)[0]} for t in truth[1])
    assert sum(right) >= 0.98 * len(right) and sum(right) >= 0.93 * theirs
    assert len(right) > sum(strict.labels >= 0)
    seen_once = {t for t in truth[1] if t not in truth[0]}
    assert all(c < 0 for t, c in zip(truth[1], second.labels) if t in seen_once)


def test_second_pass_cut_off_rises_with_the_number_of_clusters() -> None:
    from scipy.stats import norm

    from face_organizer.clustering import ATTACH_Z, ATTACH_Z_CLUSTERS, attach_z

    assert attach_z(2) == attach_z(ATTACH_Z_CLUSTERS) == ATTACH_Z
    zs = [attach_z(k) for k in (2_000, 20_000, 200_000)]
    assert all(a < b for a, b in zip(zs, zs[1:])) and 4.9 < attach_z(20_000) < 5.1
    for k, z in zip((2_000, 20_000, 200_000), zs):
        assert k * norm.sf(z) == pytest.approx(ATTACH_Z_CLUSTERS * norm.sf(ATTACH_Z), rel=1e-6)


def test_other_centre_pairs_give_the_scale_of_the_full_matrix() -> None:
    """Sampled (member, other centre) pairs estimate what every member against every other
    centre would give, without that matrix."""
    from face_organizer.thresholds import impostor_from_other_centre_pairs

    rng = np.random.default_rng(3)
    centres = _unit(rng.standard_normal((300, 128)).astype(np.float32))
    x = np.concatenate([_faces_around(c, 20, rng, 0.6) for c in centres])
    labels = np.repeat(np.arange(300), 20)
    full = x @ centres.T
    other = full[labels[:, None] != np.arange(300)[None, :]]
    exact = impostor_from_impostors(other, 128)
    sampled = impostor_from_other_centre_pairs(x, labels, centres, seed=0)
    assert sampled is not None
    assert sampled.centre == pytest.approx(exact.centre, abs=0.005)
    assert sampled.spread == pytest.approx(exact.spread, rel=0.03)
    assert impostor_from_other_centre_pairs(x, np.zeros(len(x), np.int64), centres[:1]) is None


def test_a_calibration_sets_the_graph_cut_off_from_its_impostor_scale(lfw_subset, tmp_path, monkeypatch, caplog) -> None:
    """A calibration's pair threshold is a quantile at a false-match rate for search (0.001 by
    default); graph edges need far rarer chance matches, or people chain together. The graph
    takes the calibration's impostor scale with its own number of spreads instead."""
    from face_organizer.thresholds import calibrate_from_embeddings, save_calibration

    emb, identity = lfw_subset
    ef = embfile.load(emb)
    truth = np.array([identity[p] for p in ef.rows.paths])
    people = np.unique(truth)
    labelled = np.isin(truth, people[::2])  # calibrate on half of the people, cluster the others
    entry = calibrate_from_embeddings(ef.rows.embeddings[labelled], list(truth[labelled]))
    store = tmp_path / "calibration.json"
    monkeypatch.setenv("FACE_ORGANIZER_CALIBRATION", str(store))
    save_calibration(ef.meta["model_files"]["recognition"], entry)
    rest = embfile.EmbeddingsFile(ef.rows.select(np.nonzero(~labelled)[0]), [], [], ef.meta)
    result = run_clustering(rest, ClusterConfig(clusters=None))
    assert result.threshold_source.startswith("calibration: impostor pairs at")
    assert result.threshold > entry["pair_threshold"] + 0.1
    join = entry["pair_impostor_centre"] + MERGE_Z * entry["pair_impostor_spread"]
    assert f"groups join at mean similarity >= {join:.3f}" in result.method  # on the calibration's scale too
    pred = [f"c{c}" if c >= 0 else f"o{i}" for i, c in enumerate(result.labels)]
    assert bcubed(list(truth[~labelled]), pred).f >= 0.95
    # At the pair threshold itself, the edges chain people together; the join rule holds most apart.
    for join_rule, precision in ((False, lambda p: p < 0.9), (True, lambda p: p >= 0.95)):
        chained = graph_clusters(rest.rows.embeddings, min_similarity=entry["pair_threshold"], join_rule=join_rule)
        pred = [f"c{c}" if c >= 0 else f"o{i}" for i, c in enumerate(chained.labels)]
        assert precision(bcubed(list(truth[~labelled]), pred).precision), join_rule
    # A calibration made before the scale was recorded: the data's cut-off, and a warning saying so.
    save_calibration(ef.meta["model_files"]["recognition"], {"pair_threshold": entry["pair_threshold"],
                                                              "centre_threshold": entry["centre_threshold"]})
    old = run_clustering(rest, ClusterConfig(clusters=None))
    assert old.threshold_source.startswith("data:") and "run search_faces.py --calibrate again" in caplog.text


def test_folders_as_large_as_each_other_are_listed_in_their_own_order(lfw_subset, tmp_path, monkeypatch) -> None:
    # As many folders as faces: all of one image. Listed person_A, person_B, … person_Z, person_AA
    # (the names' order), not person_A, person_AA, person_AB (the alphabet's), and counted in words.
    monkeypatch.setattr("face_organizer.cluster_stage.SHOWN_FOLDERS", 30)
    ef = embfile.load(lfw_subset[0])
    ef.rows = ef.rows.select(np.arange(0, len(ef.rows), 8))
    report = cluster_faces(ef, str(tmp_path / "out"), ClusterConfig(clusters=len(ef.rows), link_mode="symlink",
                                                                       dry_run=True), progress=False)
    people = [n for n in report.images_per_cluster if n != "outliers"]
    assert len(people) > 40 and set(report.images_per_cluster[n] for n in people) == {1}
    assert people == [cluster_name(i) for i in range(len(people))]
    lines = report.lines()
    assert [line.split(":")[0] for line in lines[:30]] == people[:30]
    assert f"… and {len(people) - 30} more person folders (1 image each, {len(people) - 30} in all): summary.json " \
        "lists every folder" in lines


def test_thousands_of_folders_print_the_largest_and_count_the_rest(lfw_subset, tmp_path, capsys) -> None:
    emb, _ = lfw_subset
    out = tmp_path / "out"
    # Groups of three or more, so that --no-second-pass below changes nothing but the second pass.
    assert common.run(cluster_main, ["--embeddings", str(emb), "--output", str(out), "--clusters", "auto",
                                     "--min-cluster-size", "3", "--link-mode", "symlink", "--no-previews", "-q"]) == 0
    printed = capsys.readouterr().out.splitlines()
    folders = json.loads((out / "summary.json").read_text())["clusters"]
    people = [n for n in folders if n != "outliers"]
    assert len(people) > SHOWN_FOLDERS + 1
    listed = [line for line in printed if line.startswith("person_")]
    assert listed == [f"{n}: {folders[n]:,} images → {out / n}{os.sep}" for n in people[:SHOWN_FOLDERS]]
    rest = [folders[n] for n in people[SHOWN_FOLDERS:]]
    assert (f"… and {len(rest):,} more person folders ({min(rest):,}–{max(rest):,} images each, {sum(rest):,} in all): "
            "summary.json lists every folder") in printed
    assert f"outliers: {folders['outliers']:,} images → {out / 'outliers'}{os.sep}" in printed
    assert all((out / n).is_dir() for n in folders)
    second = json.loads((out / "summary.json").read_text())["second_pass"]
    assert second["joined"] > 0 and "other clusters' centres" in second["cutoff_source"]
    assert any(line.startswith(f"second pass: {count(second['joined'], 'face')} the graph left out joined their nearest "
                               f"cluster (similarity to its centre >= {second['cutoff']:.3f}") for line in printed)
    # --no-second-pass leaves them in outliers/.
    assert common.run(cluster_main, ["--embeddings", str(emb), "--output", str(tmp_path / "strict"), "--clusters", "auto",
                                     "--min-cluster-size", "3", "--no-second-pass", "--dry-run", "-q"]) == 0
    strict = capsys.readouterr().out
    assert "second pass" not in strict
    assert f"outliers: {folders['outliers'] + second['joined']:,} images" in strict


@pytest.mark.parametrize(("given", "message"), [
    (["--min-cluster-size", "3"], "--min-cluster-size is for --clusters auto (its graph of alike faces), and "
     "--clusters 2 makes that many folders with k-means: leave it out, or use --clusters auto"),
    (["--clusters", "3", "--neighbours", "20", "--no-second-pass"], "--neighbours and --no-second-pass are for "
     "--clusters auto (its graph of alike faces), and --clusters 3 makes that many folders with k-means: leave "
     "them out"),
    (["--people-from", "last_year", "--min-cluster-size", "3"], "--min-cluster-size is for --clusters auto (its graph "
     "of alike faces), and --people-from sorts into an earlier run's people"),
    (["--clusters", "auto", "--no-extra-groups"], "--no-extra-groups is for a number of people (--clusters K): "
     "--clusters auto gives every group of alike faces a folder of its own; leave it out"),
    (["--people-from", "last_year", "--no-extra-groups"], "--no-extra-groups is for a number of people (--clusters K): "
     "--people-from sorts into an earlier run's people; leave it out"),
])
def test_options_that_would_change_nothing_are_refused_before_any_work(given, message, tmp_path, capsys) -> None:
    # Taken and passed over without a word: --min-cluster-size 3 with the default --clusters 2 still made folders of
    # two nowhere and of hundreds everywhere, and the user believed it had acted.
    with pytest.raises(SystemExit) as usage:
        cluster_main(["--embeddings", str(tmp_path / "not_read.pkl"), "--output", str(tmp_path / "out"), *given])
    assert usage.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"cluster_faces.py: error: {message}")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("mode", ["copy", "hardlink", "symlink", "move"])
def test_link_modes(two_person, tmp_path, mode) -> None:
    emb, labels, input_root = two_person
    # Work on a private copy of the inputs: move takes the files away.
    private = tmp_path / "input"
    ef = embfile.load(emb)
    mapping = {}
    for p in ef.rows.paths:
        target = private / Path(p).relative_to(input_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(p).read_bytes())
        mapping[p] = str(target)
    ef.rows.paths = [mapping[p] for p in ef.rows.paths]
    ef.meta["inputs"] = [str(private)]
    out = tmp_path / "out"
    report = cluster_faces(ef, str(out), ClusterConfig(clusters=2, link_mode=mode, previews=False), progress=False)
    assert report.status["placed"] == len(labels)
    for source, dest in zip(ef.rows.paths, report.destinations):
        if mode == "copy":
            assert Path(dest).read_bytes() == Path(source).read_bytes() and Path(source).exists()
        elif mode == "hardlink":
            assert os.path.samefile(source, dest)
        elif mode == "symlink":  # one mount: the way from the link's folder (see the test below)
            assert os.readlink(dest) == os.path.relpath(source, os.path.dirname(dest))
            assert Path(dest).read_bytes() == Path(source).read_bytes()
        else:
            assert not Path(source).exists() and Path(dest).is_file()
    again = cluster_faces(ef, str(out), ClusterConfig(clusters=2, link_mode=mode, previews=False), progress=False)
    assert again.status == {"exists": len(labels)}


def test_symbolic_links_hold_where_the_workspace_is_seen_elsewhere(two_person, tmp_path, monkeypatch) -> None:
    # Sorted in the container under /workspace and looked at on the host under ./workspace: an absolute
    # link to /workspace/input/… was broken there. On one mount the links hold the way from their folder.
    workspace = tmp_path / "workspace"
    ef = private_copy(two_person, workspace)
    out = workspace / "sorted"
    config = ClusterConfig(clusters=2, link_mode="symlink", previews=False)
    report = cluster_faces(ef, str(out), config, progress=False)
    assert all(not os.path.isabs(os.readlink(d)) for d in report.destinations)
    contents = {d: Path(d).read_bytes() for d in report.destinations}
    host = tmp_path / "host" / "workspace"
    host.parent.mkdir()
    workspace.rename(host)
    for dest, data in contents.items():
        assert Path(str(dest).replace(str(workspace), str(host))).read_bytes() == data
    host.rename(workspace)
    # An output made with absolute links (before) is the same plan, already in place.
    earlier = tmp_path / "earlier"
    first = cluster_faces(ef, str(earlier), config, progress=False)
    for source, dest in zip(ef.rows.paths, first.destinations):
        os.unlink(dest)
        os.symlink(source, dest)
    assert cluster_faces(ef, str(earlier), config, progress=False).status == {"exists": len(set(ef.rows.paths))}
    # Images on another mount than the output (the compose file's /media) keep absolute links.
    monkeypatch.setattr(organize, "_mount_point", lambda folder: "/media" if "workspace" in folder else "/workspace")
    other = cluster_faces(ef, str(tmp_path / "other"), config, progress=False)
    assert {os.readlink(d) for d in other.destinations} == set(ef.rows.paths)


def test_move_places_the_images_that_symbolic_links_show(two_person, tmp_path) -> None:
    """Relative links that sort before and after their targets, and an absolute link to an
    image outside the input: each folder gets a real image, and no link is left dangling."""
    ef = private_copy(two_person, tmp_path)
    private = tmp_path / "input"
    outside = tmp_path / "elsewhere" / "face.png"
    outside.parent.mkdir()
    outside.write_bytes(Path(ef.rows.paths[2]).read_bytes())
    first_target, last_target = Path(ef.rows.paths[0]), Path(ef.rows.paths[1])
    links = {private / "0000_first.png": os.path.relpath(first_target, private),
             private / "zzzz" / "last.png": os.path.relpath(last_target, private / "zzzz"),
             private / "zzzz" / "outside.png": str(outside)}
    for link, target in links.items():
        link.parent.mkdir(exist_ok=True)
        os.symlink(target, link)
    shows = {str(link): Path(link).read_bytes() for link in links}
    # Rows 3-5 are now the links (their embeddings stay: this is about the files).
    ef.rows.paths[3:6] = list(shows)
    expected = {p: shows.get(p) or Path(p).read_bytes() for p in ef.rows.paths}
    out = tmp_path / "out"
    config = ClusterConfig(clusters=2, link_mode="move", previews=False)
    # A moved link takes the space of a copy; a moved image, on the same filesystem, none.
    pairs = [(p, str(out / "x" / f"{i}.png")) for i, p in enumerate(ef.rows.paths[:6])]
    assert organize.bytes_needed(pairs, str(out), "move") == sum(
        -(-len(data) // organize.BLOCK) * organize.BLOCK for data in shows.values())
    report = cluster_faces(ef, str(out), config, progress=False)
    assert report.status["placed"] == len(ef.rows.paths)
    for source, dest in zip(ef.rows.paths, report.destinations):
        assert not os.path.lexists(source), source
        assert not os.path.islink(dest) and Path(dest).read_bytes() == expected[source], dest
    assert outside.read_bytes() == shows[str(private / "zzzz" / "outside.png")]  # the image outside stays
    again = cluster_faces(ef, str(out), config, progress=False)
    assert again.status == {"exists": len(ef.rows.paths)}


def test_hardlink_links_the_image_a_symbolic_link_shows(two_person, tmp_path, monkeypatch) -> None:
    """Linux's link() links a symbolic link itself, which, relative, would point elsewhere from its
    new folder; and a link to an image on another filesystem is refused before the first file."""
    ef = private_copy(two_person, tmp_path)
    private = tmp_path / "input"
    target = Path(ef.rows.paths[0])
    link = private / "zzzz" / "relative.png"
    link.parent.mkdir()
    os.symlink(os.path.relpath(target, link.parent), link)
    ef.rows.paths[3] = str(link)  # the row's embedding stays: this is about the files
    config = ClusterConfig(clusters=2, link_mode="hardlink", previews=False)
    real_device = organize._device
    monkeypatch.setattr(organize, "_device", lambda p: real_device(p) + (1 if p == str(link) else 0))
    with pytest.raises(FaceOrganizerError,
                       match="relative.png is a symbolic link to an image that is on another filesystem"):
        cluster_faces(ef, str(tmp_path / "refused"), config, progress=False)
    assert not (tmp_path / "refused").exists()
    monkeypatch.setattr(organize, "_device", real_device)
    report = cluster_faces(ef, str(tmp_path / "out"), config, progress=False)
    assert report.status["placed"] == len(ef.rows.paths)
    for source, dest in zip(ef.rows.paths, report.destinations):
        assert not os.path.islink(dest) and os.path.samefile(source, dest), dest
    assert os.path.samefile(report.destinations[3], target) and link.is_symlink()  # the link stays where it was
    again = cluster_faces(ef, str(tmp_path / "out"), config, progress=False)
    assert again.status == {"exists": len(ef.rows.paths)}


def _exactly_one_place(ef, report) -> None:
    for source, dest in zip(ef.rows.paths, report.destinations):
        assert Path(source).exists() != Path(dest).exists(), (source, dest)


def _interrupted_after(placed: int, ef, output: str, config: ClusterConfig, monkeypatch) -> list[str]:
    """Run ``cluster_faces`` until a Ctrl-C after ``placed`` files; the sources it placed."""
    real_place, calls = organize.place, list[str]()

    def dying_place(source, dest, mode, **options):
        if len(calls) == placed:
            raise KeyboardInterrupt
        calls.append(source)
        return real_place(source, dest, mode, **options)

    monkeypatch.setattr("face_organizer.organize.place", dying_place)
    with pytest.raises(KeyboardInterrupt):
        cluster_faces(ef, output, config, progress=False)
    monkeypatch.setattr("face_organizer.organize.place", real_place)
    return calls


def test_interrupted_move_loses_nothing(two_person, tmp_path, monkeypatch) -> None:
    ef = private_copy(two_person, tmp_path)
    out = tmp_path / "out"
    config = ClusterConfig(clusters=2, link_mode="move", previews=False)
    plan = cluster_faces(ef, str(out), ClusterConfig(clusters=2, link_mode="move", dry_run=True), progress=False)
    _interrupted_after(10, ef, str(out), config, monkeypatch)
    _exactly_one_place(ef, plan)
    report = cluster_faces(ef, str(out), config, progress=False)
    assert report.status["exists"] == 10 and not any(Path(p).exists() for p in ef.rows.paths)
    _exactly_one_place(ef, report)


@pytest.mark.parametrize("mode", ["copy", "move"])
def test_an_input_that_goes_away_part_way_stops_the_placement(two_person, tmp_path, monkeypatch, mode) -> None:
    # A drive unplugged while the folders filled: every image left was 'missing', and the run ended as if done.
    ef = private_copy(two_person, tmp_path)
    out, private = tmp_path / "out", tmp_path / "input"
    config = ClusterConfig(clusters=2, link_mode=mode, previews=False)
    real_place, calls = organize.place, list[str]()

    def unplugged_after_ten(source, dest, how, **options):
        calls.append(source)
        if len(calls) == 11:
            private.rename(tmp_path / "unplugged")
        return real_place(source, dest, how, **options)

    monkeypatch.setattr("face_organizer.organize.place", unplugged_after_ten)
    with pytest.raises(RunStopped, match=f"^{re.escape(str(private))} went away during the run: 32 images in a row "
                                         r"could not be read \(file no longer exists\)"):
        cluster_faces(ef, str(out), config, progress=False)
    assert len(calls) == 10 + 32 and not (out / "clusters.csv").exists()
    monkeypatch.setattr("face_organizer.organize.place", real_place)
    (tmp_path / "unplugged").rename(private)
    report = cluster_faces(ef, str(out), config, progress=False)
    assert report.status == Counter({"exists": 10, "placed": len(ef.rows.paths) - 10})
    assert all(Path(d).is_file() for d in report.destinations)
    assert any(Path(p).exists() for p in ef.rows.paths) == (mode == "copy")


def test_move_puts_a_group_photo_in_every_folder_of_its_faces(shared, models, tmp_path, monkeypatch) -> None:
    # A photo library: Obama's and Biden's photos, and a photo of the two together.
    library = obama_biden_library(shared, tmp_path)
    emb = tmp_path / "photos.pkl"
    run_embeddings(discover_images([library]), emb, models, EmbedOptions(mode="photos"), inputs=[str(library)], progress=False)
    ef = embfile.load(emb)
    group = str(library / "_multi_face" / GROUP_PHOTO)
    assert ef.rows.paths.count(group) >= 2
    out = tmp_path / "out"
    config = ClusterConfig(clusters=2, link_mode="move")
    real_place, calls = organize.place, list[tuple[str, str]]()

    def dying_place(source, dest, mode, **options):  # power cut after the group photo's copy, before its move
        if calls and calls[-1] == (group, "copy"):
            raise KeyboardInterrupt
        calls.append((source, mode))
        return real_place(source, dest, mode, **options)

    monkeypatch.setattr("face_organizer.organize.place", dying_place)
    with pytest.raises(KeyboardInterrupt):
        cluster_faces(ef, str(out), config, progress=False)
    monkeypatch.setattr("face_organizer.organize.place", real_place)
    report = cluster_faces(ef, str(out), config, progress=False)
    assert "missing" not in report.status
    assert not any(Path(p).exists() for p in ef.rows.paths)  # every photo moved
    assert all(Path(d).is_file() for d in report.destinations)  # ... to every folder one of its faces went to
    group_folders = {Path(d).relative_to(out).parts[0] for p, d in zip(ef.rows.paths, report.destinations) if p == group}
    assert len(group_folders) >= 2, group_folders  # Obama and Biden are not sorted together
    # The same command naming its own output as where the images went: nothing is moved onto itself or deleted.
    again = cluster_faces(ef, str(out), ClusterConfig(clusters=2, link_mode="move", moved_to=(str(out),)), progress=False)
    assert again.status == {"exists": len(set(report.destinations))}
    assert all(Path(d).is_file() for d in report.destinations)
    # The contact sheets show the moved photos, not the grey tiles of files no longer at their source.
    sheet = read_image(out / "previews" / "person_A.jpg")
    assert sheet[:TILE, :TILE].std() > 20
    # Moved on (sorted again): the group photo's copy in the folder of its other face does not stay behind.
    content = {d: Path(d).read_bytes() for d in report.destinations}
    onward = tmp_path / "onward"
    sorted_again = cluster_faces(ef, str(onward), ClusterConfig(clusters=3, link_mode="move", previews=False,
                                                                moved_to=(str(out),)), progress=False)
    assert not [p for p in out.rglob("*.jpg") if "previews" not in p.parts]
    assert all(Path(d).is_file() for d in sorted_again.destinations)  # every photo, in every folder of its faces
    assert {Path(d).read_bytes() for d in sorted_again.destinations} == set(content.values())


def test_an_image_in_files_of_both_modes_takes_all_its_faces_from_the_first_file(shared, models, tmp_path,
                                                                                  caplog) -> None:
    # A photo library embedded in crops mode (the central face of each photo) and in photos mode (every face), both
    # files given: the group photo of Obama and Biden took face 0 from one file and face 1 from the other, which
    # may be the same face twice. Each image now takes every row from the first file holding it, with a warning.
    library = obama_biden_library(shared, tmp_path)
    paths = discover_images([library])
    files = {}
    for mode in ("crops", "photos"):
        run_embeddings(paths, tmp_path / f"{mode}.pkl", models, EmbedOptions(mode=mode), inputs=[str(library)],
                       progress=False)
        files[mode] = embfile.load(tmp_path / f"{mode}.pkl")
    group = str(library / "_multi_face" / GROUP_PHOTO)
    assert files["crops"].rows.paths.count(group) == 1 and files["photos"].rows.paths.count(group) >= 2
    for first, second in (("crops", "photos"), ("photos", "crops")):
        caplog.clear()
        merged = embfile.merge([files[first], files[second]], [f"{first}.pkl", f"{second}.pkl"])
        assert merged.rows.paths == files[first].rows.paths  # every image from the first file, none twice
        np.testing.assert_array_equal(merged.rows.embeddings, files[first].rows.embeddings)
        assert f"{len(paths)} images in files of both crops and photos mode" in caplog.text
        assert f"({first}.pkl, {first} mode)" in caplog.text
    caplog.clear()
    gpu1 = embfile.merge([files["photos"], files["photos"]], ["gpu0.pkl", "gpu1.pkl"])  # one mode: nothing to say
    assert gpu1.rows.paths == files["photos"].rows.paths and "both crops and photos" not in caplog.text


def test_a_move_keeps_the_files_of_a_copy_output_named_in_moved_to(two_person, tmp_path) -> None:
    # Only the outputs a move filled give their files up: copies sorted earlier stay where they are.
    ef = private_copy(two_person, tmp_path)
    copies = tmp_path / "copies"
    first = cluster_faces(ef, str(copies), ClusterConfig(clusters=2, previews=False), progress=False)
    kept = {d: Path(d).read_bytes() for d in first.destinations}
    moved = cluster_faces(ef, str(tmp_path / "moved"), ClusterConfig(clusters=3, link_mode="move", previews=False,
                                                                      moved_to=(str(copies),)), progress=False)
    assert moved.status == {"placed": len(set(ef.rows.paths))} and not any(Path(p).exists() for p in ef.rows.paths)
    assert all(Path(d).read_bytes() == data for d, data in kept.items())


def test_images_gone_since_embedding_are_reported_not_fatal(two_person, tmp_path) -> None:
    ef = private_copy(two_person, tmp_path)
    gone = ef.rows.paths[:3]
    for path in gone:
        os.unlink(path)
    out = tmp_path / "out"
    report = cluster_faces(ef, str(out), ClusterConfig(clusters=2, previews=False), progress=False)
    assert report.status == {"placed": len(ef.rows) - 3, "missing": 3}
    assert any(line.startswith("3 images were no longer where the embeddings file says") for line in report.lines())
    rows = {r["path"]: r for r in csv.DictReader((out / "clusters.csv").open())}
    assert all(rows[p]["status"] == "missing" and not Path(rows[p]["destination"]).exists() for p in gone)


def test_images_all_elsewhere_are_refused_before_clustering(two_person, tmp_path, monkeypatch, capsys) -> None:
    # Embedded inside the container under /workspace, clustered where the folders are mounted elsewhere.
    ef = private_copy(two_person, tmp_path)
    (tmp_path / "input").rename(tmp_path / "mounted_elsewhere")
    pkl = tmp_path / "moved.pkl"
    embfile.save(pkl, ef)
    monkeypatch.setattr("face_organizer.cluster_stage.run_clustering", lambda *a: pytest.fail("clustered anyway"))
    for extra in ([], ["--dry-run"]):
        assert run_cli(["--embeddings", str(pkl), "--output", str(tmp_path / "out"), "-q"] + extra) == 2
        assert f"none of the {len(set(ef.rows.paths))} images named in the embeddings is where it was embedded" \
            in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_images_an_earlier_move_took_are_sorted_again_and_searched_with_moved_to(two_person, testpack_dir, tmp_path,
                                                                                   monkeypatch, capsys) -> None:
    from face_organizer.cli.search import main as search_main

    ef = private_copy(two_person, tmp_path)
    pkl = tmp_path / "emb.pkl"
    embfile.save(pkl, ef)
    content = {p: Path(p).read_bytes() for p in ef.rows.paths}
    first = tmp_path / "sorted"
    assert run_cli(["--embeddings", str(pkl), "--output", str(first), "--link-mode", "move", "--no-previews", "-q"]) == 0
    assert not any(os.path.lexists(p) for p in ef.rows.paths)
    capsys.readouterr()
    # Sorted differently into the same folder: removing it would delete the images, so it is not suggested.
    assert run_cli(["--embeddings", str(pkl), "--output", str(first), "--clusters", "3", "-q"]) == 2
    err = capsys.readouterr().err
    assert "which removing it would delete" in err and f"--moved-to {first}" in err and "remove it to start" not in err
    assert run_cli(["--embeddings", str(pkl), "--output", str(tmp_path / "again"), "--clusters", "3", "-q"]) == 2
    assert f"or add --moved-to with the output folder of an earlier --link-mode move (here: --moved-to {first} finds " \
        "them)" in capsys.readouterr().err  # found beside the new output
    # The sorted folder itself moved since (to another disk, or mounted elsewhere): found where it is now.
    first = first.rename(tmp_path / "sorted_2017")
    # Moved on again, for three people, and interrupted: the re-run of the same command finishes it.
    again = tmp_path / "again"
    config = ClusterConfig(clusters=3, link_mode="move", previews=False, moved_to=(str(first),))
    calls = _interrupted_after(10, ef, str(again), config, monkeypatch)
    assert all(str(first) in source for source in calls)  # read from where the first move put them
    report = cluster_faces(ef, str(again), config, progress=False)
    assert report.status == {"exists": 10, "placed": len(ef.rows) - 10}
    assert {Path(d).relative_to(again).parts[0] for d in report.destinations} >= {"person_A", "person_B", "person_C"}
    for path, dest in zip(ef.rows.paths, report.destinations):
        assert Path(dest).read_bytes() == content[path]  # each image, named as it was embedded
    assert not [f for files in folder_files(first).values() for f in files]  # nothing left behind, nothing copied
    rows = list(csv.DictReader((again / "clusters.csv").open(encoding="utf-8")))
    assert sorted(r["path"] for r in rows) == sorted(ef.rows.paths)
    assert json.loads((again / "summary.json").read_text())["moved_to"] == [str(first)]
    # A search finds them through the latest output (its table maps the embedded paths onward).
    query = tmp_path / "query.png"
    query.write_bytes(content[ef.rows.paths[0]])
    os.unlink(report.destinations[0])  # the query's own image, deleted since: reported, not fatal
    found = tmp_path / "found"
    capsys.readouterr()
    assert common.run(search_main, ["--embeddings", str(pkl), "--query", str(query), "--output", str(found),
                                    "--model", str(testpack_dir), "--moved-to", str(again), "-q"]) == 0
    matches = list(csv.DictReader((found / "matches.csv").open(encoding="utf-8")))
    assert len(matches) > 20 and Counter(m["status"] for m in matches) == {"placed": len(matches) - 1, "missing": 1}
    assert all(Path(m["destination"]).read_bytes() == content[m["path"]] for m in matches if m["status"] == "placed")
    printed = capsys.readouterr().out
    assert f"files: {len(matches) - 1} placed, 1 missing" in printed
    assert "1 image was no longer where the embeddings file says" in printed and "matches.csv lists it" in printed


def test_images_a_move_took_since_are_counted_per_folder_and_the_moved_to_that_finds_them_named(
        two_person, testpack_dir, tmp_path, capsys) -> None:
    # Last year's images were sorted with --link-mode move; this year's file holds them too. Sorted into the same
    # people without --moved-to, they cannot be placed: each folder says how many of its images are missing, and
    # the note names the --moved-to that finds them.
    from face_organizer.cli.search import main as search_main

    ef = private_copy(two_person, tmp_path)
    content = {p: Path(p).read_bytes() for p in ef.rows.paths}
    last_year = replace(ef, rows=ef.rows.select(np.arange(0, len(ef.rows), 3)))
    moved = set(last_year.rows.paths)
    old, pkl = tmp_path / "2017.pkl", tmp_path / "emb.pkl"
    embfile.save(old, last_year)
    embfile.save(pkl, ef)
    sorted_ = tmp_path / "sorted"
    assert run_cli(["--embeddings", str(old), "--output", str(sorted_), "--link-mode", "move", "--no-previews",
                    "-q"]) == 0
    assert not any(os.path.lexists(p) for p in moved)
    out = tmp_path / "next"
    command = ["--embeddings", str(pkl), "--output", str(out), "--people-from", str(sorted_), "-q"]
    capsys.readouterr()
    assert run_cli(command) == 0
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((out / "clusters.csv").open(encoding="utf-8")))
    assert {r["path"] for r in rows if r["status"] == "missing"} == moved
    missing, images = (Counter(r["cluster"] for r in rows if r["status"] == "missing"),
                       Counter(r["cluster"] for r in rows))
    assert len(missing) >= 2
    page = (out / "index.html").read_text(encoding="utf-8")
    for name, n in images.items():
        line = next(line for line in printed.splitlines() if line.startswith(f"{name}: "))
        word = "all" if missing[name] == n else f"{missing[name]:,}"
        assert line.endswith(f" ({word} missing, not placed)" if missing[name] else f"{os.sep}{name}{os.sep}"), line
        caption = page.split(f"<h2>{name}</h2>")[1].split("</p>")[0]
        assert (f"{word} missing, not placed" in caption) == bool(missing[name])
    note = f"(here: --moved-to {sorted_} finds them; the same command with it places them too)"
    assert note in printed and note in page
    # As the note says: the same command with --moved-to places them.
    assert run_cli(command + ["--moved-to", str(sorted_)]) == 0
    printed = capsys.readouterr().out
    assert "missing" not in printed
    assert f"files: {len(moved)} placed, {len(ef.rows) - len(moved)} already in place" in printed
    rows = list(csv.DictReader((out / "clusters.csv").open(encoding="utf-8")))
    assert all(Path(r["destination"]).read_bytes() == content[r["path"]] for r in rows)
    # A search names it too.
    query = tmp_path / "query.png"
    query.write_bytes(content[sorted(moved)[0]])
    assert common.run(search_main, ["--embeddings", str(pkl), "--query", str(query), "--output",
                                    str(tmp_path / "found"), "--model", str(testpack_dir), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "missing" in printed and note in printed


def test_a_move_onto_itself_deletes_nothing(tmp_path) -> None:
    image = tmp_path / "person_A" / "frame.png"
    image.parent.mkdir()
    image.write_bytes(b"the only copy")
    assert organize.place(str(image), str(image), "move") == "exists" and image.read_bytes() == b"the only copy"


def test_a_move_deletes_its_source_only_where_the_destination_holds_the_same_bytes(tmp_path) -> None:
    # What an interrupted move across filesystems leaves (the copy made, the source not yet removed) is finished;
    # a destination that holds another file of the same size (an uncompressed BMP of the same frame size, put
    # there since) is left as it is, and so is the source.
    source, dest = tmp_path / "in" / "frame.bmp", tmp_path / "out" / "person_A" / "frame.bmp"
    source.parent.mkdir()
    dest.parent.mkdir(parents=True)
    source.write_bytes(b"BM" + bytes(range(200)))
    dest.write_bytes(b"BM" + bytes(range(199, -1, -1)))
    assert organize.place(str(source), str(dest), "move") == organize.OCCUPIED
    assert source.read_bytes() == b"BM" + bytes(range(200)) and dest.read_bytes() == b"BM" + bytes(range(199, -1, -1))
    dest.write_bytes(source.read_bytes())
    assert organize.place(str(source), str(dest), "move") == "exists"
    assert not source.exists() and dest.read_bytes() == b"BM" + bytes(range(200))


def test_moved_to_reads_only_files_inside_the_folder_named(tmp_path) -> None:
    from face_organizer.relocate import current_locations

    sorted_ = tmp_path / "sorted"
    with pytest.raises(SetupError, match="sorted: no such folder$"):
        current_locations(["/in/a.png"], [str(sorted_)], str(tmp_path / "out"))
    sorted_.mkdir()
    with pytest.raises(SetupError, match="cannot read .*clusters.csv"):
        current_locations(["/in/a.png"], [str(sorted_)], str(tmp_path / "out"))
    (sorted_ / "clusters.csv").write_text("path,similarity\n/in/a.png,0.5\n")  # another table
    with pytest.raises(SetupError, match="is not a cluster_faces table"):
        current_locations(["/in/a.png"], [str(sorted_)], str(tmp_path / "out"))
    # A table naming files outside its folder (edited, or crafted) is not followed: a move would take them.
    for name in ("keep.png", "person_A/a.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"image")
    (sorted_ / "person_A").mkdir()
    (sorted_ / "person_A" / "b.png").write_bytes(b"image")
    rows = [("/in/a.png", tmp_path / "person_A" / "a.png"), ("/in/k.png", sorted_ / ".." / "keep.png"),
            ("/in/b.png", sorted_ / "person_A" / "b.png")]
    (sorted_ / "clusters.csv").write_text("path,cluster,destination\n" + "".join(f"{p},person_A,{d}\n"
                                                                                for p, d in rows))
    paths = [p for p, _ in rows]
    found = current_locations(paths, [str(sorted_)], str(tmp_path / "out"))
    assert found == [*paths[:2], str(sorted_ / "person_A" / "b.png")]


def test_moved_images_are_found_by_name_and_size_in_folders_renamed_or_corrected_since(tmp_path) -> None:
    from face_organizer.relocate import moved_locations

    out = tmp_path / "sorted"
    images = {f"/in{i % 2}/2017/f{i}.png": ("person_A" if i < 10 else "person_B", b"x" * (100 + i)) for i in range(14)}
    rows = []
    for path, (folder, data) in images.items():
        dest = out / folder / "2017" / Path(path).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        rows.append(f"{path},{folder},{dest},{len(data)}\n")
    (out / "clusters.csv").write_text("path,cluster,destination,bytes\n" + "".join(rows))
    (out / "person_A").rename(out / "blair")  # renamed by the user
    (out / "blair" / "2017" / "f3.png").rename(out / "person_B" / "2017" / "f3.png")  # a wrong face corrected
    where = {p: places[0] for p, places in moved_locations([str(out)]).items()}
    assert all(Path(where[p]).read_bytes() == data for p, (_, data) in images.items()), where
    assert where["/in1/2017/f3.png"] == str(out / "person_B" / "2017" / "f3.png")
    # Another image of the same name (two input folders named 2017) is not taken for it: by size,
    # and where sizes are not known (an older table), not when two folders hold one of that name.
    (out / "person_C" / "2017").mkdir(parents=True)
    (out / "person_C" / "2017" / "f5.png").write_bytes(b"another image")
    (out / "blair" / "2017" / "f5.png").unlink()  # deleted
    assert moved_locations([str(out)])["/in1/2017/f5.png"] == [str(out / "blair" / "2017" / "f5.png")]  # not found
    older = "".join(line.rsplit(",", 1)[0] + "\n" for line in rows)
    (out / "clusters.csv").write_text("path,cluster,destination\n" + older)
    (out / "person_D" / "2017").mkdir(parents=True)
    (out / "person_D" / "2017" / "f5.png").write_bytes(b"a third image")
    assert moved_locations([str(out)])["/in1/2017/f5.png"] == [str(out / "blair" / "2017" / "f5.png")]
    assert moved_locations([str(out)])["/in1/2017/f3.png"] == [str(out / "person_B" / "2017" / "f3.png")]


def test_a_renamed_folder_is_found_though_group_photos_are_in_others_too(tmp_path) -> None:
    # person_A: two photos of one face and three group photos whose copies are also in person_B
    # (same bytes). Renamed, most of its files are in person_B too: only the photos it alone
    # holds can say where it went.
    from face_organizer.relocate import moved_locations

    out = tmp_path / "sorted"
    rows = []
    for i in range(5):
        for folder in ("person_A", "person_B") if i >= 2 else ("person_A",):
            dest = out / folder / "photos" / f"p{i}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(b"x" * (100 + i))
            rows.append(f"/lib/photos/p{i}.jpg,{folder},{dest},{100 + i}\n")
    (out / "clusters.csv").write_text("path,cluster,destination,bytes\n" + "".join(rows))
    (out / "person_A").rename(out / "alice")
    found = moved_locations([str(out)])
    assert found["/lib/photos/p0.jpg"] == [str(out / "alice" / "photos" / "p0.jpg")]
    assert found["/lib/photos/p3.jpg"] == [str(out / "alice" / "photos" / "p3.jpg"),
                                           str(out / "person_B" / "photos" / "p3.jpg")]


def test_cross_device_move_interrupted_between_copy_and_delete(two_person, tmp_path, monkeypatch) -> None:
    ef = private_copy(two_person, tmp_path)
    out = tmp_path / "out"
    config = ClusterConfig(clusters=2, link_mode="move", previews=False)

    def no_rename(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    real_unlink, unlinked = os.unlink, list[str]()

    def dying_unlink(path, *a, **k):
        if str(path) in ef.rows.paths and len(unlinked) == 3:
            raise KeyboardInterrupt  # power cut after the copy, before the source is removed
        if str(path) in ef.rows.paths:
            unlinked.append(path)
        return real_unlink(path, *a, **k)

    monkeypatch.setattr(organize.os, "rename", no_rename)
    monkeypatch.setattr(organize.os, "unlink", dying_unlink)
    with pytest.raises(KeyboardInterrupt):
        cluster_faces(ef, str(out), config, progress=False)
    monkeypatch.setattr(organize.os, "unlink", real_unlink)
    report = cluster_faces(ef, str(out), config, progress=False)
    _exactly_one_place(ef, report)
    assert all(Path(d).is_file() for d in report.destinations)


def test_dry_run_writes_nothing(two_person, tmp_path, capsys) -> None:
    out = tmp_path / "never"
    assert run_cli(["--embeddings", str(two_person[0]), "--output", str(out), "--dry-run", "-q"]) == 0
    assert not out.exists()
    printed = capsys.readouterr().out
    files = len(set(embfile.load(two_person[0]).rows.paths))
    assert "dry run: nothing was written" in printed and f"would write {files} files; first 20:" in printed
    assert len([line for line in printed.splitlines() if line.startswith(f"  {out}")]) == 20
    # A folder the run could not write (/sys: read-only, root too): the dry run goes on, and says the run would stop.
    assert run_cli(["--embeddings", str(two_person[0]), "--output", "/sys/face-organizer-output", "--dry-run",
                    "-q"]) == 0
    assert "WARNING: cannot write to /sys: " in (said := capsys.readouterr()).err
    assert ": the run would stop there" in said.err and "dry run: nothing was written" in said.out
    assert run_cli(["--embeddings", str(two_person[0]), "--output", "/sys/face-organizer-output", "-q"]) == 2


def test_copy_that_cannot_fit_is_refused_before_anything_is_written(two_person, tmp_path, monkeypatch, capsys) -> None:
    emb, labels, _ = two_person
    out = tmp_path / "out"
    sizes = sum(-(-Path(p).stat().st_size // organize.BLOCK) * organize.BLOCK for p in labels)
    ef = embfile.load(emb)
    pairs = [(p, str(out / "person_A" / Path(p).name)) for p in ef.rows.paths]
    assert organize.bytes_needed(pairs, str(out), "copy") == sizes
    assert organize.bytes_needed(pairs, str(out), "move") == 0  # a rename on the same filesystem
    assert organize.bytes_needed(pairs, str(out), "symlink") == 0
    real = organize.shutil.disk_usage
    monkeypatch.setattr(organize.shutil, "disk_usage", lambda p: real(p)._replace(free=sizes - 1))
    base = ["--embeddings", str(emb), "--output", str(out), "-q", "--no-previews"]
    assert run_cli(base) == 2
    assert "--link-mode copy needs" in capsys.readouterr().err and not out.exists()
    assert run_cli(base + ["--dry-run"]) == 0 and not out.exists()  # a dry run warns instead
    assert run_cli(base + ["--link-mode", "symlink"]) == 0


def test_links_and_moves_that_would_fail_half_way_are_refused_before_the_first_file(two_person, tmp_path, monkeypatch,
                                                                                      capsys) -> None:
    emb, _, input_root = two_person
    out = tmp_path / "out"
    base = ["--embeddings", str(emb), "--output", str(out), "-q", "--no-previews"]
    one_folder = str(next(Path(input_root).rglob("*.png")).parent)
    real_device = organize._device
    monkeypatch.setattr(organize, "_device", lambda p: real_device(p) + (1 if p == one_folder else 0))
    assert run_cli(base + ["--link-mode", "hardlink"]) == 2
    assert f"{one_folder} is on another filesystem" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(organize, "_device", real_device)
    real_access = os.access
    monkeypatch.setattr(organize.os, "access", lambda p, m: False if p == one_folder else real_access(p, m))
    sources = {p: Path(p).read_bytes() for p in map(str, Path(input_root).rglob("*.png"))}
    assert run_cli(base + ["--link-mode", "move"]) == 2
    assert f"files cannot be removed from {one_folder}" in capsys.readouterr().err and not out.exists()
    assert all(Path(p).read_bytes() == data for p, data in sources.items())  # nothing moved


def test_hard_links_across_two_mounts_of_one_filesystem_are_refused_before_the_first_file(two_person, tmp_path,
                                                                                         monkeypatch, capsys) -> None:
    # The compose file mounts ./media and ./workspace of one host disk: one device, two mounts, and link()
    # and rename() between them fail with EXDEV. The first image failed, and the output then belonged to
    # hard links ("made with other settings" to the same command with --link-mode copy).
    emb, _, input_root = two_person
    out = tmp_path / "out"
    base = ["--embeddings", str(emb), "--output", str(out), "-q", "--no-previews"]
    images = sorted(map(str, Path(input_root).rglob("*.png")))
    media = str(Path(images[0]).parent)
    real_mount = organize._mount_point
    monkeypatch.setattr(organize, "_mount_point", lambda p: "/media" if p.startswith(media) else real_mount(p))
    assert run_cli(base + ["--link-mode", "hardlink"]) == 2
    err = capsys.readouterr().err
    assert f"{media} is under another mount point (/media) than {out} (" in err and "copy or symlink" in err
    assert not out.exists()
    # A move between them is a copy then a removal: it needs the space, where a rename takes none.
    pairs = [(p, str(out / "person_A" / Path(p).name)) for p in images]
    blocks = sum(-(-Path(p).stat().st_size // organize.BLOCK) * organize.BLOCK for p in images if p.startswith(media))
    assert blocks > 0 and organize.bytes_needed(pairs, str(out), "move") == blocks
    assert run_cli(base + ["--link-mode", "copy"]) == 0


def test_disk_full_half_way_is_one_line_and_the_rerun_finishes(two_person, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    base = ["--embeddings", str(two_person[0]), "--output", str(out), "-q", "--no-previews"]
    real_copy, copies = organize._copy_atomic, list[str]()

    def filling_copy(source, dest, *args):
        if len(copies) == 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dest)
        copies.append(dest)
        real_copy(source, dest, *args)

    monkeypatch.setattr(organize, "_copy_atomic", filling_copy)
    assert run_cli(base) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: No space left on device: ") and "re-run the same command" in err
    assert len(err.splitlines()) == 1
    monkeypatch.setattr(organize, "_copy_atomic", real_copy)
    assert run_cli(base) == 0
    rows = list(csv.DictReader((out / "clusters.csv").open()))
    assert sorted(r["status"] for r in rows).count("exists") == 20
    assert f"files: {len(rows) - 20:,} placed, 20 already in place; " in capsys.readouterr().out
    assert all(Path(r["destination"]).read_bytes() == Path(r["path"]).read_bytes() for r in rows)


def test_copies_that_cannot_fit_are_refused_before_any_is_made(two_person, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    base = ["--embeddings", str(two_person[0]), "--output", str(out), "-q", "--no-previews"]
    need = sum(os.path.getsize(p) for p in set(embfile.load(two_person[0]).rows.paths))
    real = organize.shutil.disk_usage
    monkeypatch.setattr(organize.shutil, "disk_usage", lambda path: real(path)._replace(free=815_000))
    assert run_cli(base + ["--dry-run"]) == 0  # said, not refused: nothing would be written anyway
    assert "filesystem has 815 kB free" in capsys.readouterr().err
    assert run_cli(base) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"Error: --link-mode copy needs \d\.\d\d MB in {re.escape(str(out))} but its filesystem has "
                        r"815 kB free; free some space, or use --link-mode hardlink or symlink", err)  # not "0.00 GB"
    assert not out.exists() and 1e6 < need < 1e7
    assert run_cli(base + ["--link-mode", "symlink"]) == 0  # links take no room


def test_copies_a_power_cut_emptied_after_the_last_flush_are_copied_again(two_person, tmp_path, monkeypatch) -> None:
    ef = embfile.load(two_person[0])
    out = tmp_path / "out"
    config = ClusterConfig(clusters=2, previews=False)
    monkeypatch.setattr(organize, "SYNC_EVERY", 10)
    real_copy, copies = organize._copy_atomic, list[str]()

    def cut_copy(source, dest, *args):
        if len(copies) == 25:
            raise KeyboardInterrupt  # the power cut
        copies.append(dest)
        real_copy(source, dest, *args)

    monkeypatch.setattr(organize, "_copy_atomic", cut_copy)
    with pytest.raises(KeyboardInterrupt):
        cluster_faces(ef, str(out), config, progress=False)
    state = json.loads((out / organize.STATE_FILE).read_text())
    assert state["durable"] == 20  # flushed after the 10th and the 20th copy
    for dest in copies[21:]:  # written after the last flush: the power cut emptied them (copies[20] survived)
        Path(dest).write_bytes(b"")
    monkeypatch.setattr(organize, "_copy_atomic", real_copy)
    compared = []
    real_cmp = fsutil.filecmp.cmp
    monkeypatch.setattr(fsutil.filecmp, "cmp", lambda a, b, shallow=True: compared.append(b) or real_cmp(a, b, shallow))
    report = cluster_faces(ef, str(out), config, progress=False)
    assert all(Path(d).read_bytes() == Path(p).read_bytes() for p, d in zip(ef.rows.paths, report.destinations))
    assert report.status["exists"] == 21 and report.status["placed"] == len(ef.rows) - 21
    assert copies[20] in compared  # unflushed copies are read back ...
    assert not set(compared) & set(copies[:20])  # ... flushed ones are trusted
    assert json.loads((out / organize.STATE_FILE).read_text())["durable"] == len(ef.rows)


@pytest.mark.parametrize("mode", ["copy", "move"])
def test_a_file_changed_in_the_output_is_kept_and_the_same_run_again_finishes(two_person, tmp_path, capsys,
                                                                            mode) -> None:
    # The user edited one sorted image, then ran the same command again (a shell loop over every stage): the
    # run stopped there with an error. Now the edit is kept, the rest is placed, and the summary says so.
    emb = two_person[0]
    if mode == "move":  # on copies of the images
        emb = tmp_path / "emb.pkl"
        embfile.save(emb, private_copy(two_person, tmp_path))
    out = tmp_path / "out"
    base = ["--embeddings", str(emb), "--output", str(out), "-q", "--link-mode", mode]
    assert run_cli(base) == 0
    edited = folder_files(out)["person_A"][0]
    edited.write_bytes(b"not the image any more")
    removed = folder_files(out)["person_B"][0]
    removed.unlink()  # to be placed again
    rows = {r["destination"]: r for r in csv.DictReader((out / "clusters.csv").open())}
    image = rows[str(edited)]["path"]
    if mode == "move":  # the image went back to where it was embedded, and something else took its place
        Path(image).write_bytes(b"the image")
        Path(rows[str(removed)]["path"]).write_bytes(b"the other image")
    capsys.readouterr()
    assert run_cli(base) == 0
    printed = capsys.readouterr().out
    assert edited.read_bytes() == b"not the image any more" and removed.is_file()
    assert Path(image).is_file()  # not moved over the edited file either
    assert re.search(r"^files: 1 placed, [\d,]+ already in place, 1 not placed: another file is there;", printed, re.M)
    assert ("1 place in the output already held another file (changed or put there since): left as it is; clusters.csv "
            "lists its image with status 'kept'; move it out of the output and run the same command again to place "
            "the images there") in printed
    after = {r["destination"]: r for r in csv.DictReader((out / "clusters.csv").open())}
    assert after[str(edited)]["status"] == "kept" and after[str(edited)]["bytes"] == ""
    assert after[str(removed)]["status"] == "placed"
    if mode == "move":  # undone, every image goes back but the one that never left; the edited file stays
        from face_organizer.undo import undo_move

        undone = undo_move(str(out), progress=False)
        assert undone.conflicts == [] and undone.restored == len(after) - 1 and undone.already_back == 0
        assert Path(image).read_bytes() == b"the image" and edited.read_bytes() == b"not the image any more"


def test_second_run_into_the_same_output_while_one_runs_is_refused(two_person, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    base = ["--embeddings", str(two_person[0]), "--output", str(out), "-q", "--no-previews"]
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        assert run_cli(base) == 2
        err = capsys.readouterr().err
        assert f"another process, pid {child.pid} (" in err and f"is writing {out}; " in err
        assert not out.exists()
        assert run_cli(base + ["--dry-run"]) == 0  # a dry run writes nothing, so it needs no lock
    finally:
        child.kill()
        child.wait()
    assert run_cli(base) == 0 and (out / "clusters.csv").is_file()


@pytest.mark.parametrize("given", [".", "./", "../out/."])
def test_the_current_folder_as_output_is_sorted_into(given, two_person, tmp_path, monkeypatch, capsys) -> None:
    # `cd /workspace/sorted && cluster_faces.py --output .`: the lock went into the empty folder itself (".lock" is
    # all that "." names), which then was "not empty and not written by face-organizer". It sits beside it now.
    # What Finder, Explorer or a new disk leave in a folder only opened (.DS_Store, Thumbs.db, lost+found) is no
    # one's files either: the folder is still new.
    out = tmp_path / "out"
    (out / "lost+found").mkdir(parents=True)
    for clutter in (".DS_Store", "._.DS_Store", "Thumbs.db"):
        (out / clutter).write_bytes(b"\0\0")
    monkeypatch.chdir(out)
    base = ["--embeddings", str(two_person[0]), "--output", given, "-q", "--no-previews"]
    assert run_cli(base) == 0, capsys.readouterr().err
    assert (out / "clusters.csv").is_file() and not list(out.glob("*.lock")) and not list(tmp_path.glob(".*.lock"))
    assert run_cli(base) == 0 and "already in place" in capsys.readouterr().out  # its own output: it goes on


@pytest.mark.parametrize("log", ["run.log", "logs/cluster.log"])
def test_a_log_inside_the_new_output_leaves_it_new(log, two_person, tmp_path) -> None:
    # `docker exec -d … cluster_faces.py --output /workspace/sorted --log /workspace/sorted/run.log`: the log was
    # made first, and the output refused as "not empty and not written by face-organizer". Other files still are.
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "scripts" / "cluster_faces.py"), "--embeddings", str(two_person[0]),
               "--no-previews", "--output"]
    for _ in range(2):  # the second run: its own output, so it goes on
        done = subprocess.run([*command, str(out), "--log", str(out / log)], capture_output=True, text=True)
        assert done.returncode == 0, (out / log).read_text()
    assert (out / "clusters.csv").is_file()
    assert "files: " in (out / log).read_text() and "already in place" in (out / log).read_text()
    other = tmp_path / "other"
    (other / "logs").mkdir(parents=True)
    (other / "logs" / "mine.txt").write_text("a user's own file")
    refused = subprocess.run([*command, str(other), "--log", str(other / "logs" / "run.log")], capture_output=True)
    assert refused.returncode == 2
    assert "is not empty (it holds logs) and was not written" in (other / "logs" / "run.log").read_text()


HOLD_LOCK = """
import sys, time
from face_organizer.fsutil import exclusive
with exclusive(sys.argv[1], "wait"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_rerun_into_other_clustering_is_refused_before_clustering(two_person, interviewer, tmp_path, monkeypatch,
                                                                  capsys) -> None:
    out = tmp_path / "out"
    base = ["--embeddings", str(two_person[0]), "--output", str(out), "-q", "--no-previews"]
    assert run_cli(base + ["--clusters", "2"]) == 0
    assert run_cli(base + ["--clusters", "2"]) == 0
    assert run_cli(base + ["--clusters", "2", "--dry-run"]) == 0
    clustered = []
    monkeypatch.setattr("face_organizer.cluster_stage.run_clustering", lambda *a: clustered.append(a) or pytest.fail())
    images = len(set(embfile.load(two_person[0]).rows.paths))
    # Minutes of clustering at 500,000 faces are not spent on an output that would be refused after them:
    # another number of people, another link mode, a year loop into one output.
    for extra, message in ((["--clusters", "3"], "made with other settings (clusters 2, now 3): choose a new --output"),
                           (["--link-mode", "hardlink", "--min-similarity", "0.3"],
                            "made with other settings (link_mode copy, now hardlink; min_similarity not given, "
                            "now 0.3)")):
        for dry in ([], ["--dry-run"]):
            assert run_cli(base + extra + dry) == 2
            assert f"--output {out} holds the output of another cluster_faces run, {message}" in capsys.readouterr().err
    assert run_cli(["--embeddings", str(interviewer[0]), "--output", str(out), "-q"]) == 2
    assert (f"another cluster_faces run, of other images ({images} images, now {len(interviewer[1])} images): give "
            "each embeddings file its own --output (in a loop over year folders: one per year; new images into its "
            f"people: --people-from {out} and a new --output), or remove it to start over") in capsys.readouterr().err
    assert clustered == []
    # An output from before runs were recorded is still refused, once the plan shows it differs.
    state = out / organize.STATE_FILE
    state.write_text(json.dumps({k: v for k, v in json.loads(state.read_text()).items() if k != "run"}))
    monkeypatch.undo()
    assert run_cli(base + ["--clusters", "3"]) == 2
    assert "holds the output of a different run" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("user file")
    assert run_cli(["--embeddings", str(two_person[0]), "--output", str(tmp_path / "other"), "-q"]) == 2
    assert (tmp_path / "other" / "mine.txt").read_text() == "user file"
    assert "is not empty (it holds mine.txt) and was not written by face-organizer" in capsys.readouterr().err


def test_an_output_whose_state_lacks_its_image_count_is_still_refused_in_one_line(tmp_path) -> None:
    """A state file that records the images an output holds but not their number (edited by hand, or
    written by another tool): the refusal says "other images" without the count, where it ended in a TypeError."""
    out = tmp_path / "out"
    out.mkdir()
    (out / organize.STATE_FILE).write_text(json.dumps({"plan": "x", "mode": "copy", "run": {"images": "0" * 64}}))
    run = organize.images_run(["/photos/a.png", "/photos/b.png"])
    with pytest.raises(SetupError, match=r"holds the output of another cluster_faces run, of other images: give each"):
        organize.check_same_images(str(out), run, "cluster_faces")


def test_other_run_into_an_output_that_holds_moved_images_says_removing_it_deletes_them(two_person, tmp_path,
                                                                                        capsys) -> None:
    ef = private_copy(two_person, tmp_path)
    pkl = tmp_path / "emb.pkl"
    embfile.save(pkl, ef)
    out = tmp_path / "out"
    base = ["--embeddings", str(pkl), "--output", str(out), "-q", "--no-previews", "--link-mode", "move"]
    assert run_cli(base) == 0
    assert run_cli(base) == 0  # the same run again: nothing left to move, nothing refused
    moved = sorted(p for p in out.rglob("*.png"))
    assert len(moved) == len(set(ef.rows.paths))
    assert run_cli(base + ["--clusters", "3"]) == 2
    moved_there = ("; it holds the images that run moved there (--link-mode move), which removing it would delete "
                   f"(--moved-to {out} reads them from there)\n")
    assert capsys.readouterr().err.endswith(f"--output {out} holds the output of another cluster_faces run, made with "
                                            f"other settings (clusters 2, now 3): choose a new --output{moved_there}")
    # Another year's embeddings into the same output: no "remove it to start over" either.
    ef.rows = ef.rows.select(np.arange(10))
    embfile.save(tmp_path / "2019.pkl", ef)
    assert run_cli(["--embeddings", str(tmp_path / "2019.pkl"), "--output", str(out), "--link-mode", "move", "-q"]) == 2
    assert capsys.readouterr().err.endswith(
        f"of other images ({len(moved)} images, now 10 images): give each embeddings file its own --output (in a "
        f"loop over year folders: one per year; new images into its people: --people-from {out} and a new --output)"
        f"{moved_there}")
    assert sorted(p for p in out.rglob("*.png")) == moved


def test_output_no_run_could_write_is_refused_before_clustering(two_person, tmp_path, monkeypatch, capsys) -> None:
    # On 500,000 faces clustering takes minutes: a folder that can never be the output is refused first.
    def not_reached(*args: object) -> None:
        raise AssertionError("clustered although the output was unusable")

    monkeypatch.setattr("face_organizer.cluster_stage.run_clustering", not_reached)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("user file")
    (tmp_path / "a_file").write_text("user file")
    for output, message in ((tmp_path / "other", "is not empty (it holds mine.txt) and was not written by"),
                            (tmp_path / "a_file", "is a file, not a folder")):
        for extra in ([], ["--dry-run"]):
            assert run_cli(["--embeddings", str(two_person[0]), "--output", str(output), "-q"] + extra) == 2
            assert message in capsys.readouterr().err
    assert (tmp_path / "other" / "mine.txt").read_text() == "user file"
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["mine.txt"]
    assert (tmp_path / "a_file").read_text() == "user file"
    # A folder that cannot be written (a read-only mount; /sys is one for every user, root too).
    assert run_cli(["--embeddings", str(two_person[0]), "--output", "/sys/face-organizer-output", "-q"]) == 2
    assert capsys.readouterr().err.startswith("Error: cannot write to /sys: ")
    assert run_cli(["--embeddings", str(two_person[0]), "--output", str(tmp_path / "a_file" / "o"), "-q"]) == 2
    assert capsys.readouterr().err.strip() == f"Error: cannot write to {tmp_path / 'a_file' / 'o'}: {tmp_path / 'a_file'} is a file"


def test_files_from_different_models_refused(two_person, tmp_path, capsys) -> None:
    ef = embfile.load(two_person[0])
    other = embfile.EmbeddingsFile(
        embfile.FaceRows(ef.rows.paths[:3], np.eye(3, 512, dtype=np.float32), ef.rows.detected[:3],
                         ef.rows.det_score[:3], ef.rows.bbox[:3], ef.rows.face_index[:3]),
        [], [], dict(ef.meta, model_files={"recognition": "w600k_r50.onnx"}, embedding_size=512))
    embfile.save(tmp_path / "gpu1.pkl", other)
    with pytest.raises(EmbeddingsFileError, match="cannot be mixed"):
        load_embeddings([str(two_person[0]), str(tmp_path / "gpu1.pkl")])
    assert run_cli(["--embeddings", str(two_person[0]), str(tmp_path / "gpu1.pkl"), "--output", str(tmp_path / "o")]) == 2
    assert "cannot be mixed" in capsys.readouterr().err
    embfile.save(tmp_path / "own.pkl", embfile.EmbeddingsFile(ef.rows, [], [], {}))  # a file of one's own: no model
    with pytest.raises(EmbeddingsFileError, match=r"own.pkl was made with a model it does not name \(128-d\) but "
                                                  r".*with MobileFaceNet.onnx \(128-d\)"):
        load_embeddings([str(two_person[0]), str(tmp_path / "own.pkl")])


def test_hostile_embeddings_refused(tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"paths": [Exploit()]}))
    assert run_cli(["--embeddings", str(tmp_path / "evil.pkl"), "--output", str(tmp_path / "o")]) == 2
    assert "refusing to load" in capsys.readouterr().err and not marker.exists()


def test_a_folder_given_as_embeddings_is_one_clear_line(tmp_path, capsys) -> None:
    assert run_cli(["--embeddings", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"Error: {tmp_path} is a folder, not an embeddings file; name the files in it (e.g. {tmp_path}/embeddings_gpu*.pkl)"
    parts = tmp_path / "embeddings_gpu1.pkl.parts"  # an unfinished run's checkpoints, picked by tab completion
    parts.mkdir()
    assert run_cli(["--embeddings", f"{parts}/", "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == (f"Error: {parts}/ holds the checkpoints of the unfinished run that writes "
                                       f"{tmp_path}/embeddings_gpu1.pkl: run the same generate_embeddings command "
                                       "again to finish it, then name embeddings_gpu1.pkl\n")


def test_file_without_faces_sorts_nothing_and_says_so(two_person, tmp_path, capsys) -> None:
    ef = embfile.load(two_person[0])
    embfile.save(tmp_path / "none.pkl", embfile.EmbeddingsFile(ef.rows.select(np.arange(0)), [], [], ef.meta))
    for extra in (["--dry-run"], []):
        assert run_cli(["--embeddings", str(tmp_path / "none.pkl"), "--output", str(tmp_path / "o"), *extra]) == 0
        assert capsys.readouterr().out.startswith("no faces in the embeddings files: nothing to sort")
    with open(tmp_path / "o" / "clusters.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == []
    assert not any(d.name.startswith("person_") for d in (tmp_path / "o").iterdir())


def test_same_image_in_two_files_counted_once(two_person, tmp_path) -> None:
    ef = embfile.load(two_person[0])
    half = len(ef.rows) // 2
    for name, sl in (("a.pkl", slice(0, half + 5)), ("b.pkl", slice(half - 5, None))):
        rows = ef.rows.select(np.arange(len(ef.rows))[sl])
        embfile.save(tmp_path / name, embfile.EmbeddingsFile(rows, [], [], ef.meta))
    merged = load_embeddings([str(tmp_path / "a.pkl"), str(tmp_path / "b.pkl")])
    assert sorted(merged.rows.paths) == sorted(ef.rows.paths)


def test_paths_never_escape_the_output(tmp_path) -> None:
    name = organize.relative_name("/data/2017/../../etc/passwd", ["/data/2017"])
    assert ".." not in name.split("/")
    target = organize.inside(str(tmp_path), "person_A/" + name)
    assert target.startswith(str(tmp_path.resolve()) + os.sep)
    with pytest.raises(FaceOrganizerError):
        organize.inside(str(tmp_path), "../outside.png")
    dests = organize.plan_destinations(["/a/2017/f.png", "/b/2017/f.png", "/a/2017/f.png"], ["person_A"] * 3, ["/a/2017", "/b/2017"])
    assert dests == ["person_A/2017/f.png", "person_A/2017/f_2.png", "person_A/2017/f.png"]
    for escaping in ("person_A/..", ".", "../" + tmp_path.name + "2/f.png"):  # the folder itself, a sibling named like it
        with pytest.raises(FaceOrganizerError):
            organize.inside(str(tmp_path), escaping)


def test_destination_names_keep_the_folders_below_the_deepest_input() -> None:
    roots = ["/in", "/in/2017", "/other/"]
    name = lambda path: organize.relative_name(path, roots)  # noqa: E731
    assert name("/in/2017/shot 1/f.png") == "2017/shot 1/f.png"  # the deepest input folder holding it
    assert name("/in/2018/f.png") == "in/2018/f.png"
    assert name("/in/f.png") == "in/f.png" and name("/other/f.png") == "other/f.png"
    assert name("/elsewhere/deep/f.png") == "deep/f.png"  # no input holds it: its own folder's name
    assert name("/f.png") == "input/f.png"
    assert name("/in/a\\b\tc.png") == "in/abc.png"  # a backslash and control characters are dropped
    assert name("/in/\udcff\u00e9t\u00e9.png") == "in/\udcff\u00e9t\u00e9.png"  # bytes that are not UTF-8 are kept
    assert name("/in/\t/f.png") == "in/_/f.png"  # a folder name with nothing left


def test_kmeans_outlier_cut_and_naming() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2, 64)).astype(np.float32)
    unit = centres / np.linalg.norm(centres, axis=1, keepdims=True)
    junk = rng.standard_normal((400, 64)).astype(np.float32)
    junk /= np.linalg.norm(junk, axis=1, keepdims=True)
    junk = junk[np.abs(junk @ unit.T).max(axis=1) < 0.1][:5]  # clearly no one's face
    x = np.concatenate([centres[0] + 0.3 * rng.standard_normal((60, 64)), centres[1] + 0.3 * rng.standard_normal((30, 64)),
                        junk]).astype(np.float32)
    result = kmeans(x, 2)
    assert (result.labels[:60] == 0).all() and (result.labels[60:90] == 1).all()
    assert (result.labels[90:] == -1).all()
    assert [cluster_name(i) for i in (-1, 0, 1, 25, 26, 27)] == ["outliers", "person_A", "person_B", "person_Z", "person_AA", "person_AB"]
    forced = kmeans(x, 2, min_similarity=-1.0)
    assert (forced.labels >= 0).all() and forced.threshold_source == "--min-similarity"
    assert result.threshold_source.startswith("data: median similarity to the other clusters' centres")


def test_a_handful_of_faces_says_what_it_could_not_measure(two_person, tmp_path, capsys) -> None:
    # Three faces give too few similarities to read a scale from, and fewer people than asked for:
    # the summary says so instead of presenting the defaults as measured.
    ef = embfile.load(two_person[0])
    few = embfile.EmbeddingsFile(ef.rows.select(np.arange(3)), [], [], ef.meta)
    report = cluster_faces(few, str(tmp_path / "out"), ClusterConfig(clusters=5, previews=False), progress=False)
    lines = report.lines()
    assert "kmeans k=3 (only 3 faces for the 5 people asked for)" in report.clustering.method
    assert report.clustering.threshold_source.startswith("assumed, too little data to measure")
    assert sum(line.startswith("person_") and ": 1 image →" in line for line in lines) == 3
    graph = graph_clusters(ef.rows.embeddings[:3])
    assert graph.threshold_source.startswith("assumed, too little data to measure the impostor peak of random pairs")


def _faces_around(centre: np.ndarray, count: int, rng: np.random.Generator, similarity: float = 0.75) -> np.ndarray:
    """``count`` unit vectors at about ``similarity`` to the unit ``centre`` (ArcFace-like spread)."""
    noise = rng.standard_normal((count, centre.size))
    noise -= (noise @ centre)[:, None] * centre
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (similarity * centre + np.sqrt(1 - similarity**2) * noise).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_extra_groups_keep_one_person_whole_and_set_a_third_aside() -> None:
    # Person A is seen in two looks (say, with and without glasses): the density graph splits
    # them, but their centres are as alike as a genuine pair, so they stay one group. Person C
    # recurs beside A and B and gets a centre of their own, so --clusters 2 sends C to outliers.
    rng = np.random.default_rng(3)
    a, b, c, u1, u2 = _unit(rng.standard_normal((5, 128)))
    looks = _unit(np.stack([a + 0.6 * u1, a + 0.6 * u2]))
    assert 0.6 < looks[0] @ looks[1] < 0.8
    x = np.concatenate([_faces_around(looks[0], 150, rng), _faces_around(looks[1], 150, rng),
                        _faces_around(b, 200, rng), _faces_around(c, 60, rng)])
    truth = np.repeat([0, 0, 1, 2], [150, 150, 200, 60])
    result = kmeans(x, 2)
    assert (result.labels[truth == 0] == 0).all() and (result.labels[truth == 1] == 1).all()
    assert (result.labels[truth == 2] == -1).all()
    assert result.extra_groups == (60,) and "seeded with 3 groups" in result.method
    # Outliers report their similarity to the nearest folder's centre, not to their own group's.
    assert result.similarity[truth == 2].max() < result.threshold
    # The pair cut-off comes from pairs across k-means clusters: the impostor peak, not A's genuine one.
    model = impostor_from_cross_cluster_pairs(x, truth, seed=0)
    assert model is not None and abs(model.centre) < 0.03 and 0.06 < model.spread < 0.12
    assert impostor_from_cross_cluster_pairs(x, np.zeros(len(x), np.int64)) is None
    plain = kmeans(x, 2, extra_groups=False)
    assert plain.extra_groups == () and (plain.labels[truth == 2] >= 0).mean() > 0.1  # C pollutes a folder


def test_a_person_split_by_k_means_is_mended_by_the_groups() -> None:
    # A is seen in two looks and is by far the largest: k-means spends two clusters on A's looks
    # and puts B and C together, or shares them out among A's. The groups of alike faces are A,
    # B and C: k-means runs again from their centres, and pairs of A's faces across A's two
    # clusters do not count as different people's when the groups' cut-off is read.
    rng = np.random.default_rng(4)
    a, b, c, u1, u2 = _unit(rng.standard_normal((5, 128)))
    looks = _unit(np.stack([a + 0.6 * u1, a + 0.6 * u2]))
    x = np.concatenate([_faces_around(looks[0], 200, rng), _faces_around(looks[1], 200, rng),
                        _faces_around(b, 30, rng), _faces_around(c, 25, rng)])
    truth = np.repeat([0, 0, 1, 2], [200, 200, 30, 25])
    plain = kmeans(x, 3, extra_groups=False)
    assert {tuple(np.unique(truth[plain.labels == j])) for j in range(3)} == {(0,), (1, 2)}  # A split, B with C
    three = kmeans(x, 3)
    assert "seeded with 3 groups" in three.method and three.extra_groups == ()
    assert [np.unique(truth[three.labels == j]).tolist() for j in range(3)] == [[0], [1], [2]]
    assert (three.labels[truth == 0] == 0).all() and (three.labels[truth == 1] == 1).all()
    assert three.cohesion is not None and three.cohesion.not_alike == () and three.cohesion.people == 3
    two = kmeans(x, 2)  # A's two looks held B, and C's faces were spread over them
    assert (two.labels[truth == 0] == 0).all() and (two.labels[truth == 1] == 1).all()
    assert (two.labels[truth == 2] == -1).all() and two.extra_groups == (25,)


def test_one_person_asked_for_keeps_the_largest_whole() -> None:
    # --clusters 1 on two people: the smaller one is a group beyond k, not mixed into person_A.
    rng = np.random.default_rng(5)
    a, b = _unit(rng.standard_normal((2, 128)))
    x = np.concatenate([_faces_around(a, 120, rng), _faces_around(b, 80, rng)])
    result = kmeans(x, 1)
    assert (result.labels[:120] == 0).all() and (result.labels[120:] == -1).all()
    assert result.extra_groups == (80,)


def test_a_calibration_lets_the_second_pass_run_when_the_graph_finds_one_person() -> None:
    # One person's frames: 100 alike ones, 12 harder ones (each near the person's centre but too
    # unlike any other frame for an edge) and 30 strangers. With one cluster there is no other
    # centre to read the second pass's scale from; a calibration's scale stands in.
    from face_organizer.thresholds import ImpostorModel

    rng = np.random.default_rng(11)
    a = _unit(rng.standard_normal(128))
    x = np.concatenate([_faces_around(a, 100, rng), _faces_around(a, 12, rng, similarity=0.35),
                        _unit(rng.standard_normal((30, 128))).astype(np.float32)])
    hard, strangers = np.arange(100, 112), np.arange(112, 142)
    alone = graph_clusters(x)
    assert alone.n_clusters == 1 and alone.lone_cluster and alone.attach_cutoff is None
    assert (alone.labels[:100] == 0).all() and (alone.labels[hard] < 0).all() and (alone.labels[strangers] < 0).all()
    scale = ImpostorModel(0.0, 0.07)  # cut-off 4 spreads up: 0.28
    calibrated = graph_clusters(x, centre_impostors=scale)
    assert not calibrated.lone_cluster and calibrated.attach_cutoff == pytest.approx(4 * scale.spread)
    assert calibrated.attach_source.startswith("calibration: similarity to other people's centres")
    assert (calibrated.labels[:112] == 0).all() and (calibrated.labels[strangers] < 0).all()
    assert calibrated.attached == 12
    # With two clusters their own scale is used, calibration or not.
    b = _unit(rng.standard_normal(128))
    two = np.concatenate([x, _faces_around(b, 60, rng)])
    assert graph_clusters(two, centre_impostors=scale).attach_source == graph_clusters(two).attach_source
    assert graph_clusters(two).attach_source.startswith("data:")


def test_one_person_dominating_a_collection_still_fills_their_folder(two_person, lfw_crops, tmp_path, monkeypatch) -> None:
    # Frames of one person with a few others: most random pairs are of that person, so their
    # genuine peak is the tallest; the impostor peak must still be found near 0, or every face
    # would be judged too far from the centre.
    ef = embfile.load(two_person[0])
    labels = two_person[1]
    keep = np.array([i for i, p in enumerate(ef.rows.paths) if labels[p] != "Donald_Rumsfeld"])
    ef.rows = ef.rows.select(keep)
    result = run_clustering(ef, ClusterConfig(clusters=1))
    truth = np.array([labels[p] for p in ef.rows.paths])
    blair = truth == "Tony_Blair"
    assert (result.labels[blair] == 0).mean() >= 0.9
    assert (truth[result.labels == 0] == "Tony_Blair").mean() >= 0.9
    # With --clusters auto the graph finds this one person, and its second pass has no other
    # person's centre to read a cut-off from: the summary says so and points to --clusters 1.
    auto = cluster_faces(ef, str(tmp_path / "auto"), ClusterConfig(clusters=None, link_mode="symlink", previews=False),
                         progress=False)
    assert auto.clustering.n_clusters == 1 and auto.clustering.lone_cluster
    assert (truth[auto.clustering.labels == 0] == "Tony_Blair").all()
    aside = auto.clustering.set_aside if auto.clustering.set_aside is not None else np.zeros(len(truth), bool)
    left = int(((auto.clustering.labels < 0) & ~aside).sum())
    assert left >= 3  # strangers at least
    note = [n for n in auto.notes() if n.startswith("one person found")]
    assert len(note) == 1 and f"keeps the {count(left, 'face')} the graph left out" in note[0] and "--clusters 1" in note[0]
    quiet = run_clustering(ef, ClusterConfig(clusters=None, attach_outliers=False))
    assert not quiet.lone_cluster and np.array_equal(quiet.labels, auto.clustering.labels)
    two = run_clustering(embfile.load(two_person[0]), ClusterConfig(clusters=None))
    assert two.n_clusters >= 2 and not two.lone_cluster and two.attach_cutoff is not None
    # A calibration for the model, made on other people's crops, gives the second pass its scale.
    from face_organizer.thresholds import calibrate_from_embeddings, save_calibration

    crops = embfile.load(lfw_crops[0])
    others = np.array([lfw_crops[1][p] for p in crops.rows.paths])
    present = {t.split(":", 1)[-1] for t in truth}
    disjoint = ~np.isin(others, sorted(present))
    entry = calibrate_from_embeddings(crops.rows.embeddings[disjoint], list(others[disjoint]))
    assert entry["centre_impostor_centre"] < 0.1 and 0.06 < entry["centre_impostor_spread"] < 0.15
    monkeypatch.setenv("FACE_ORGANIZER_CALIBRATION", str(tmp_path / "calibration.json"))
    save_calibration(ef.meta["model_files"]["recognition"], entry)
    calibrated = cluster_faces(ef, str(tmp_path / "calibrated"),
                               ClusterConfig(clusters=None, link_mode="symlink", previews=False), progress=False)
    c = calibrated.clustering
    assert c.n_clusters == 1 and not c.lone_cluster
    cut = entry["centre_impostor_centre"] + 4 * entry["centre_impostor_spread"]
    assert c.attach_cutoff == pytest.approx(cut) and c.attach_source.startswith("calibration:")
    assert (truth[c.labels == 0] == "Tony_Blair").all()
    assert (c.similarity[c.labels < 0] < cut).all()  # every face left out is below the calibrated cut-off
    notes = calibrated.notes()
    assert not [n for n in notes if n.startswith("one person found")]
    assert [n for n in notes if n.startswith("second pass:") and "calibration:" in n]
    # The same in the similarity statistics: 80% genuine pairs around 0.55, 20% impostor ones around 0.
    rng = np.random.default_rng(0)
    sims = np.concatenate([rng.normal(0.55, 0.12, 160_000), rng.normal(0.0, 0.09, 40_000)])
    model = impostor_from_similarities(sims, 128)
    assert abs(model.centre) < 0.03 and 0.07 < model.spread < 0.11


def test_faces_set_aside_are_outliers_with_their_nearest_centre() -> None:
    from face_organizer.clustering import with_set_aside

    rng = np.random.default_rng(6)
    a, b = _unit(rng.standard_normal((2, 64)))
    x = np.concatenate([_faces_around(a, 40, rng), _faces_around(b, 30, rng), _faces_around(a, 3, rng, 0.3)])
    keep = np.arange(70)
    result = with_set_aside(kmeans(x[keep], 2), keep, x, "test")
    assert result.set_aside is not None
    assert (result.labels[70:] == -1).all() and result.set_aside[70:].all() and not result.set_aside[:70].any()
    np.testing.assert_allclose(result.similarity[70:], (x[70:] @ result.centres.T).max(axis=1), atol=1e-5)
    nothing = with_set_aside(kmeans(x[:0], 2), np.arange(0), x, "test")
    assert (nothing.labels == -1).all() and nothing.set_aside.all() and nothing.n_clusters == 0


def test_previews_cap_contact_sheets_for_many_clusters(lfw_subset, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("face_organizer.cluster_stage.MAX_SHEETS", 3)
    ef = embfile.load(lfw_subset[0])
    report = cluster_faces(ef, str(tmp_path / "out"), ClusterConfig(clusters=None, link_mode="symlink"), progress=False)
    sheets = sorted(p.name for p in (tmp_path / "out" / "previews").iterdir())
    assert sheets == ["outliers.jpg", "person_A.jpg", "person_B.jpg", "person_C.jpg"]
    page = (tmp_path / "out" / "index.html").read_text()
    listed = [n for n in report.images_per_cluster if n not in ("outliers", "person_A", "person_B", "person_C")]
    assert listed and all(f"<p>{n}: " in page for n in listed)
    assert page.count("(top rows: nearest the cluster centre; red: borderline)</p><img src=") == 3
    # outliers/ has no centre: its sheet begins with the faces most like a person's, where a missed face would be
    assert page.count(f"({OUTLIERS_CAPTION})</p><img src='previews/outliers.jpg'") == 1
    assert page.count("loading='lazy'") == 4  # a page of 100 sheets opens before they are all read


def test_other_centre_impostor_estimate_is_steady() -> None:
    # About 300 faces' similarities to the other person's centre, as a small two-person collection gives.
    rng = np.random.default_rng(0)
    samples = [rng.normal(0.05, 0.09, 300) for _ in range(40)]
    steady = [impostor_from_impostors(s, 128) for s in samples]
    peaks = [impostor_from_similarities(s, 128) for s in samples]
    assert abs(np.mean([m.centre for m in steady]) - 0.05) < 0.01
    assert abs(np.mean([m.spread for m in steady]) - 0.09) < 0.015
    # The median moves far less between draws than a histogram mode does.
    assert np.std([m.centre for m in steady]) < 0.5 * np.std([m.centre for m in peaks])
    assert np.std([m.cut(2.5) for m in steady]) < 0.02


def _histogram_mode_model(sims: np.ndarray):
    """The impostor model read at the tallest (smoothed) histogram bin alone, without the fit."""
    from face_organizer.thresholds import _centred

    hist, edges = np.histogram(sims, bins=200, range=(-1.0, 1.0))
    peak = int(np.argmax(np.convolve(hist, np.ones(5) / 5, mode="same")))
    return _centred(sims, float(edges[peak] + edges[peak + 1]) / 2, 128)


def test_impostor_peak_fit_is_steadier_than_the_histogram_mode() -> None:
    # Random pairs of a many-people collection: impostors around 0.012 (spread 0.1) and 1% genuine
    # pairs. The tallest histogram bin jumps with the sample; the fitted peak hardly moves.
    rng = np.random.default_rng(3)
    samples = [np.concatenate([rng.normal(0.012, 0.1, 198_000), rng.normal(0.6, 0.1, 2_000)]) for _ in range(12)]
    fitted = np.array([impostor_from_similarities(s, 128).cut(5.0) for s in samples])
    modes = np.array([_histogram_mode_model(s).cut(5.0) for s in samples])
    assert abs(fitted.mean() - 0.512) < 0.01
    assert fitted.std() < 0.5 * modes.std()
    # A few hundred values cannot shape a peak: the histogram mode is kept.
    small = rng.normal(0.012, 0.1, 300)
    assert impostor_from_similarities(small, 128) == _histogram_mode_model(small)


def test_graph_cut_off_rises_with_the_number_of_faces() -> None:
    from scipy.stats import norm

    from face_organizer.clustering import GRAPH_Z, GRAPH_Z_FACES, graph_z

    assert graph_z(2_805) == graph_z(GRAPH_Z_FACES) == GRAPH_Z
    zs = [graph_z(n) for n in (20_000, 100_000, 500_000, 5_000_000)]
    assert all(a < b for a, b in zip(zs, zs[1:])) and 5.6 < graph_z(500_000) < 5.8
    # The expected impostors above the cut-off per face stay as at GRAPH_Z_FACES faces.
    for n, z in zip((20_000, 100_000, 500_000, 5_000_000), zs):
        assert n * norm.sf(z) == pytest.approx(GRAPH_Z_FACES * norm.sf(GRAPH_Z), rel=1e-6)


def test_centres_and_own_similarities_match_the_direct_formulas() -> None:
    """Computed without copies of the embeddings (sparse sums, blocks of SEARCH_BLOCK rows),
    they equal the direct per-cluster means and row-wise dot products, across block edges."""
    from face_organizer import clustering as cl

    rng = np.random.default_rng(0)
    n = cl.SEARCH_BLOCK * 2 + 123
    x = rng.standard_normal((n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = rng.integers(-1, 5, n)
    centres = cl._centres(x, labels, 5)
    direct = np.stack([x[labels == c].sum(axis=0) for c in range(5)])
    np.testing.assert_allclose(centres, direct / np.linalg.norm(direct, axis=1, keepdims=True), atol=1e-5)
    default = np.full(n, -2.0, np.float32)
    sims = cl._own_centre_similarity(x, labels, centres, default)
    member = labels >= 0
    np.testing.assert_allclose(sims[member], np.sum(x[member] * centres[labels[member]], axis=1), atol=1e-5)
    assert np.all(sims[~member] == -2.0) and np.all(default == -2.0)
    assert cl._centres(x, np.full(n, -1), 0).shape == (0, 16)


def test_file_names_that_are_not_utf8_are_kept_byte_for_byte(video_crops, testpack_dir, tmp_path, capsys) -> None:
    # Old archives extracted on Linux keep Latin-1 names, which are not valid UTF-8: Python reads
    # such bytes as lone surrogates, which a strict UTF-8 write (CSV, plan digest, file list) refuses.
    from face_organizer.cli.embed import main as embed_main
    from face_organizer.cli.search import main as search_main

    folder = tmp_path / "input" / "2017"
    folder.mkdir(parents=True)
    names = []
    for person, prefix in (("Junichiro_Koizumi", b"caf\xe9"), ("Jean_Chretien", b"na\xefve")):
        for i, crop in enumerate(video_crops[person][:5]):
            name = os.fsdecode(prefix + b"_%d.png" % i)
            (folder / name).write_bytes(crop.read_bytes())
            names.append(name)
    file_list = tmp_path / "files.txt"
    file_list.write_bytes(b"".join(os.fsencode(folder / n) + b"\n" for n in names))  # as the GPU launcher writes it
    emb = tmp_path / "emb.pkl"
    assert common.run(embed_main, ["--input", str(tmp_path / "input"), "--file-list", str(file_list), "--output", str(emb),
                                   "--model", str(testpack_dir), "-q"]) == 0
    ef = embfile.load(emb)
    assert sorted(ef.rows.paths) == sorted(str(folder / n) for n in names) and not ef.failed
    out = tmp_path / "sorted"
    args = ["--embeddings", str(emb), "--output", str(out), "--clusters", "2", "-q"]
    assert run_cli(args) == 0
    placed = {os.fsencode(p.name): p for files in folder_files(out).values() for p in files}
    assert sorted(placed) == sorted(os.fsencode(n) for n in names)  # the same bytes, nothing renamed
    for name in names:
        assert placed[os.fsencode(name)].read_bytes() == (folder / name).read_bytes()
    raw = (out / "clusters.csv").read_bytes()
    assert b"/2017/caf\xe9_0.png" in raw and b"/2017/na\xefve_4.png" in raw
    koizumi = {p.parent.parent.parent.name for b, p in placed.items() if b.startswith(b"caf\xe9")}
    assert len(koizumi) == 1  # one person, one folder
    assert run_cli(args) == 0  # the re-run recognises its own plan
    capsys.readouterr()
    found = tmp_path / "found"
    assert common.run(search_main, ["--embeddings", str(emb), "--query", str(folder / names[0]), "--output", str(found),
                                    "--model", str(testpack_dir), "-q"]) == 0
    assert b"caf\xe9_0.png" in (found / "matches.csv").read_bytes()
    # An output whose own name is not UTF-8, under a UTF-8 locale whose stdout is strict (en_US.UTF-8): the
    # summary ended the finished run in a traceback.
    out = os.fsdecode(os.fsencode(tmp_path) + b"/sortiert \xfc")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "cluster_faces.py"), *args[:2], "--output", out,
                           "--clusters", "2", "-q"], capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"/sortiert \xfc/person_A/\n" in done.stdout


def test_names_at_the_filesystem_limit_collide_and_copy(video_crops, models, tmp_path, capsys) -> None:
    # Two input folders both named 2017 hold the same 254-byte name: the second copy needs "_2",
    # and neither it nor the copy's temporary name may pass the 255 bytes a file name can have.
    name = "é" * 60 + "x" * (254 - 120 - 4) + ".png"
    assert len(name.encode()) == 254
    sources = []
    for disk, crop in (("a", video_crops["Tony_Blair"][0]), ("b", video_crops["Tony_Blair"][3])):
        target = tmp_path / disk / "2017" / name
        target.parent.mkdir(parents=True)
        target.write_bytes(crop.read_bytes())
        sources.append(target)
    emb = tmp_path / "emb.pkl"
    run_embeddings([str(p) for p in sources], emb, models, inputs=[str(p.parent) for p in sources], progress=False)
    out = tmp_path / "out"
    args = ["--embeddings", str(emb), "--output", str(out), "--clusters", "1", "-q", "--no-previews"]
    assert run_cli(args) == 0
    rows = {r["path"]: r for r in csv.DictReader((out / "clusters.csv").open(encoding="utf-8"))}
    first, second = (Path(rows[str(p)]["destination"]) for p in sources)
    assert first == out / "person_A" / "2017" / name
    assert second.parent == first.parent and second.name.endswith("_2.png") and len(second.name.encode()) == 255
    assert second.name.startswith("é" * 60) and first.read_bytes() != second.read_bytes()
    for source in sources:
        assert Path(rows[str(source)]["destination"]).read_bytes() == source.read_bytes()
    # What a kill -9 between a copy and its rename leaves; the re-run clears it and changes nothing else.
    left = first.parent / f"{organize.PARTIAL_PREFIX}999999-0123456789abcdef"
    left.write_bytes(b"half a copy")
    capsys.readouterr()
    assert run_cli(args[:-2] + ["--no-previews"]) == 0  # not quiet: the removal is logged
    assert not left.exists() and "removed 1 unfinished copy" in capsys.readouterr().err
    assert sorted(p.name for p in first.parent.iterdir()) == sorted([first.name, second.name])


def test_copies_on_an_exfat_or_windows_drive_get_names_it_can_hold(video_crops, models, tmp_path, monkeypatch,
                                                                   capsys) -> None:
    # Names from Linux such as "clip 00:00:01.png" cannot be made on FAT, exFAT, NTFS or a Windows share (exFAT
    # through FUSE answered "No such file or directory" and the run stopped): there they get "_" instead.
    names = ["clip 00:00:01.png", "clip 00:00:02.png", 'who? "me".png', "CON.png", "plain.png", "trailing. "]
    folder = tmp_path / "input" / "2017"
    folder.mkdir(parents=True)
    for name, crop in zip(names, video_crops["Tony_Blair"]):
        (folder / name).write_bytes(crop.read_bytes())
    emb = tmp_path / "emb.pkl"
    run_embeddings([str(folder / n) for n in names], emb, models, inputs=[str(folder)], progress=False)
    seen = []
    monkeypatch.setattr(organize, "filesystem_type", lambda path: seen.append(path) or "exfat")
    out = tmp_path / "usb"
    args = ["--embeddings", str(emb), "--output", str(out), "--clusters", "1", "--no-previews"]
    assert run_cli(args) == 0
    assert seen and f"{out} is on a filesystem of type exfat, whose file names cannot hold" in capsys.readouterr().err
    with (out / "clusters.csv").open(encoding="utf-8") as table:
        rows = {r["path"]: Path(r["destination"]).name for r in csv.DictReader(table)}
    assert rows == {str(folder / n): p for n, p in zip(names, ["clip 00_00_01.png", "clip 00_00_02.png",
                                                               "who_ _me_.png", "_CON.png", "plain.png", "trailing"])}
    for name in names:
        assert (out / "person_A" / "2017" / rows[str(folder / name)]).read_bytes() == (folder / name).read_bytes()
    assert run_cli(args + ["-q"]) == 0  # the same plan again: nothing placed twice
    assert len(list((out / "person_A" / "2017").iterdir())) == len(names)
    # Elsewhere the names stay as they are.
    monkeypatch.setattr(organize, "filesystem_type", lambda path: "ext4")
    assert run_cli(["--embeddings", str(emb), "--output", str(tmp_path / "disk"), "--clusters", "1", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "disk" / "person_A" / "2017").iterdir()) == sorted(names)
    # Moved there, each image comes back under its own name.
    from face_organizer.cli.undo import main as undo_main

    monkeypatch.setattr(organize, "filesystem_type", lambda path: "exfat")
    before = {n: (folder / n).read_bytes() for n in names}
    assert run_cli(["--embeddings", str(emb), "--output", str(tmp_path / "moved"), "--clusters", "1", "-q",
                    "--link-mode", "move"]) == 0
    assert not list(folder.iterdir()) and (tmp_path / "moved" / "person_A" / "2017" / "_CON.png").is_file()
    assert common.run(undo_main, [str(tmp_path / "moved"), "-q"]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_drive_that_refuses_file_modes_takes_the_output_all_the_same(two_person, tmp_path, monkeypatch) -> None:
    # FAT and exFAT drives (the kernel's drivers) refuse, with EPERM, a mode their mount options do not give: the
    # mode set on each atomically written file and the mode copied onto each copy failed every run there.
    def refused(*args, **kwargs):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "chmod", refused)
    monkeypatch.setattr(os, "fchmod", refused)
    emb, labels, _ = two_person
    out = tmp_path / "usb"
    assert run_cli(["--embeddings", str(emb), "--output", str(out), "--clusters", "2", "-q"]) == 0
    with (out / "clusters.csv").open(encoding="utf-8") as table:
        rows = list(csv.DictReader(table))
    assert len({r["path"] for r in rows}) == len(labels)
    for row in rows:  # each copy whole, with its image's modification time
        source, copy = Path(row["path"]), Path(row["destination"])
        assert copy.read_bytes() == source.read_bytes() and copy.stat().st_mtime_ns == source.stat().st_mtime_ns
    embfile.save(out / "emb.pkl", embfile.load(emb))  # an embeddings file written there too
    assert embfile.load(out / "emb.pkl").rows.paths == embfile.load(emb).rows.paths


def test_links_a_filesystem_cannot_make_are_refused_before_the_output_is_begun(two_person, tmp_path, monkeypatch,
                                                                              capsys) -> None:
    # FAT and exFAT drives make neither kind of link: the first image failed ("Operation not permitted"), and the
    # output then belonged to that link mode, so that copying into it was refused as another run's.
    emb, _, _ = two_person
    out = tmp_path / "usb" / "sorted"
    out.parent.mkdir()
    args = ["--embeddings", str(emb), "--output", str(out), "--clusters", "2", "-q", "--no-previews"]

    def cannot(errno_: int):
        def make(source, dest, *a, **k):
            raise OSError(errno_, os.strerror(errno_), source, None, dest)
        return make

    for mode, call, code in (("hardlink", "link", errno.EPERM), ("symlink", "symlink", errno.ENOSYS)):
        with monkeypatch.context() as patched:
            patched.setattr(organize.os, call, cannot(code))
            assert run_cli(args + ["--link-mode", mode]) == 2
        kind = "hard" if mode == "hardlink" else "symbolic"
        assert (f"--link-mode {mode}: {out} is on a filesystem that cannot make {kind} links ("
                f"{fsutil.filesystem_type(out.parent)}: {os.strerror(code)}); use --link-mode copy (or move)"
                in capsys.readouterr().err)
        assert list(out.parent.iterdir()) == []  # no output begun, no test file left
    assert run_cli(args + ["--link-mode", "hardlink"]) == 0  # where they can be made, the same output takes them
    assert (out / "clusters.csv").is_file() and not list(out.parent.glob(".fo-partial-*"))


def test_a_growing_output_never_gives_an_earlier_image_another_name(tmp_path) -> None:
    # Names that differ only in case collide on some filesystems, so the second gets _2, in sorted order: a
    # new 'A.png' would push the earlier 'a.png' to 'a_2.png' and leave it in the output twice. Refused.
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"first image")
    out = tmp_path / "out"
    run = {"stage": "test"}
    first = organize.place_all(str(out), [str(folder / "a.png")], ["."], [str(folder)], "copy", progress=False, run=run)
    earlier = {str(folder / "a.png"): first.destinations[0]}
    (folder / "A.png").write_bytes(b"second image")
    paths = [str(folder / "A.png"), str(folder / "a.png")]
    with pytest.raises(SetupError, match=r"would give 1 image the earlier run placed another name \(such as .*a\.png → .*a_2\.png\)"):
        organize.place_all(str(out), paths, [".", "."], [str(folder)], "copy", progress=False, run=run, grows_from=earlier)
    assert sorted(p.name for p in (out / "in").iterdir()) == ["a.png"]
    (folder / "b.png").write_bytes(b"third image")  # a name of its own: the output grows
    grown = organize.place_all(str(out), [str(folder / "a.png"), str(folder / "b.png")], [".", "."], [str(folder)], "copy",
                               progress=False, run=run, grows_from=earlier)
    assert sorted(grown.status.values()) == ["exists", "placed"] and (out / "in" / "b.png").read_bytes() == b"third image"


def _library_with_an_album(lfw: Path, lfw_labels: list[dict[str, str]], library: Path, people: tuple[str, ...]
                           ) -> tuple[dict[str, str], dict[str, str], list[dict[str, str]]]:
    """``library/Photos from 2017`` with 40 strangers' single LFW photos and 12 of each of ``people``, and an album
    folder ``library/Trip`` of copies of the strangers' photos and of the last person's:
    (original -> identity, copy -> original, the strangers' label rows)."""
    singles = [r for r in lfw_labels if r["kind"] == "single"][:40]
    known = [r for person in people for r in [r for r in lfw_labels if r["identity"] == person][:12]]
    year, album = library / "Photos from 2017", library / "Trip"
    year.mkdir(parents=True)
    album.mkdir()
    originals, copies = {}, {}
    for row in singles + known:
        source = lfw / row["path"]
        originals[str(year / source.name)] = row["identity"]
        (year / source.name).write_bytes(source.read_bytes())
    for row in singles + known[-12:]:  # the last person's photos each twice: their folder has the most images
        source = lfw / row["path"]
        copies[str(album / f"copy of {source.name}")] = str(year / source.name)
        (album / f"copy of {source.name}").write_bytes(source.read_bytes())
    return originals, copies, singles


def test_copies_of_an_image_are_clustered_once_and_placed_with_it(lfw, lfw_labels, models, tmp_path, capsys,
                                                                 monkeypatch) -> None:
    """A photo library with an album folder of copies (as a Google Takeout export lays them out): two copies of a
    stranger's only photo made a folder "of two faces, each the other's most similar"; now they go to outliers
    together, and every copy goes where the face it repeats went. Contact sheets show each face once."""
    from face_organizer import cluster_stage
    from face_organizer.embed_run import run_embeddings

    sheets = []
    make_sheet = cluster_stage.contact_sheet
    monkeypatch.setattr(cluster_stage, "contact_sheet", lambda *groups: sheets.append(groups) or make_sheet(*groups))

    people = ("John_Ashcroft", "Tiger_Woods", "Tom_Ridge")
    originals, copies, singles = _library_with_an_album(lfw, lfw_labels, tmp_path / "library", people)
    year = tmp_path / "library" / "Photos from 2017"
    emb = tmp_path / "emb.pkl"
    run_embeddings(sorted([*originals, *copies]), emb, models, inputs=[str(tmp_path / "library")], progress=False)
    out = tmp_path / "out"
    assert run_cli(["--embeddings", str(emb), "--output", str(out), "--clusters", "auto"]) == 0
    printed = capsys.readouterr().out
    assert len(sheets) == len(json.loads((out / "summary.json").read_text())["clusters"])
    for central, borderline in sheets:
        shown = [copies.get(face.path, face.path) for face in [*central, *borderline]]
        assert len(shown) == len(set(shown)), shown
    with open(out / "clusters.csv", encoding="utf-8", newline="") as handle:
        folder = {row["path"]: row["cluster"] for row in csv.DictReader(handle)}
    assert all(folder[copy] == folder[original] for copy, original in copies.items())
    for name in {f for f in folder.values() if f != "outliers"}:
        # A folder is never one photo seen twice: it holds at least two photos that are not copies of each other.
        photos = {copies.get(p, p) for p, f in folder.items() if f == name}
        assert len(photos) >= 2, (name, photos)
    single_photos = {str(year / (lfw / r["path"]).name) for r in singles}
    assert sum(folder[p] != "outliers" for p in single_photos) <= 2  # strangers seen once stay out of person folders
    for person in people:  # the known people each have a folder, their copies in it
        theirs = {folder[p] for p, who in originals.items() if who == person}
        assert len(theirs) == 1 and theirs != {"outliers"}, (person, theirs)
    assert json.loads((out / "summary.json").read_text())["copies_clustered_once"] == len(copies)
    # Folders are named by their images, copies included: person_A the largest (by faces counted once, his was not).
    assert {folder[p] for p, who in originals.items() if who == "Tom_Ridge"} == {"person_A"}
    assert run_cli(["--embeddings", str(emb), "--output", str(tmp_path / "three"), "--clusters", "3", "-q"]) == 0
    for output in (out, tmp_path / "three"):
        with open(output / "clusters.csv", encoding="utf-8", newline="") as handle:
            sizes = Counter(row["cluster"] for row in csv.DictReader(handle) if row["cluster"] != "outliers")
        named = sorted(sizes, key=lambda name: (len(name), name))
        assert [sizes[n] for n in named] == sorted(sizes.values(), reverse=True), sizes
    assert (f"{len(copies)} faces repeat another face (copies of an image under other names, as album "
            "folders hold them): counted once by the clustering, each placed in the folder of the face it "
            "repeats") in printed


def test_copies_embedded_by_two_gpus_are_told_by_the_digests_of_their_bytes(lfw, lfw_labels, models, tmp_path,
                                                                           capsys) -> None:
    """``embed_all_gpus.py`` spreads a library's images over the GPUs, so an image and its copy in an album folder
    may be embedded into the files of two GPUs, where their rows can differ in their last digits. The files'
    digests of the images' bytes still tell the copies, which are clustered once and placed with the image."""
    from face_organizer.embed_run import run_embeddings

    originals, copies, _ = _library_with_an_album(lfw, lfw_labels, tmp_path / "library", ("John_Ashcroft", "Tom_Ridge"))
    gpu0, gpu1 = tmp_path / "embeddings_gpu0.pkl", tmp_path / "embeddings_gpu1.pkl"
    run_embeddings(sorted(originals), gpu0, models, inputs=[str(tmp_path / "library")], progress=False)
    run_embeddings(sorted(copies), gpu1, models, inputs=[str(tmp_path / "library")], progress=False)
    ef = embfile.load(gpu1)
    x = ef.rows.embeddings + np.random.default_rng(0).normal(0, 1e-3, ef.rows.embeddings.shape).astype(np.float32)
    embfile.save(gpu1, replace(ef, rows=replace(ef.rows, embeddings=x / np.linalg.norm(x, axis=1, keepdims=True))))
    out = tmp_path / "out"
    assert run_cli(["--embeddings", str(gpu0), str(gpu1), "--output", str(out), "--clusters", "auto",
                    "--no-previews"]) == 0
    assert json.loads((out / "summary.json").read_text())["copies_clustered_once"] == len(copies)
    with open(out / "clusters.csv", encoding="utf-8", newline="") as handle:
        folder = {row["path"]: row["cluster"] for row in csv.DictReader(handle)}
    assert all(folder[copy] == folder[original] for copy, original in copies.items())
    for name in {f for f in folder.values() if f != "outliers"}:  # no folder is one photo and its copy
        assert len({copies.get(p, p) for p, f in folder.items() if f == name}) >= 2, name
    assert f"{len(copies)} faces repeat another face (copies of an image" in capsys.readouterr().out


def test_faces_of_images_with_the_same_bytes_are_copies_where_the_same_faces_were_found() -> None:
    from face_organizer import copies

    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 16)).astype(np.float32)
    x[6] = x[0]  # the same row, whatever the bytes
    paths = ["a.jpg", "a.jpg", "b.jpg", "c.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"]
    face_index = np.array([0, 1, 0, 0, 1, 0, 0, 0])
    same = {"a.jpg": b"A", "c.jpg": b"A", "b.jpg": b"B", "d.jpg": b"B", "e.jpg": b"E", "f.jpg": b"B"}
    distinct, of = copies.first_faces(x, paths, face_index, same)
    # c repeats a face by face, d and f repeat b, e repeats a's first face by its row
    assert distinct.tolist() == [0, 1, 2] and of.tolist() == [0, 1, 2, 0, 1, 2, 0, 2]
    # a copy in which another number of faces was found stays apart, as do images of other bytes
    distinct, of = copies.first_faces(x, paths, np.array([0, 1, 0, 0, 2, 0, 0, 0]), same)
    assert distinct.tolist() == [0, 1, 2, 3, 4] and of.tolist() == [0, 1, 2, 3, 4, 2, 0, 2]
    distinct, of = copies.first_faces(x, paths, face_index, {"a.jpg": b"A", "c.jpg": b"C", "gone.jpg": b"A"})
    assert distinct.tolist() == [0, 1, 2, 3, 4, 5, 7] and of.tolist() == [0, 1, 2, 3, 4, 5, 0, 6]


def test_copies_are_told_by_their_bytes_not_by_their_hash(monkeypatch) -> None:
    """Rows are grouped by a hash of their bytes; rows that share a hash but differ stay faces of their own."""
    from face_organizer import copies

    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 16)).astype(np.float32)
    x[5], x[8], x[6] = x[1], x[1], x[0]
    distinct, of = copies.first_rows(x)
    assert distinct.tolist() == [0, 1, 2, 3, 4, 7] and of.tolist() == [0, 1, 2, 3, 4, 1, 0, 5, 1]
    monkeypatch.setattr(copies, "hash", lambda data: 7, raising=False)  # every row collides
    assert [a.tolist() for a in copies.first_rows(x)] == [distinct.tolist(), of.tolist()]
    assert [a.tolist() for a in copies.first_rows(x[:0])] == [[], []]


def test_contact_sheets_show_each_face_once(lfw_subset, tmp_path, monkeypatch) -> None:
    """24 faces nearest the centre, then up to 8 borderline ones among the rest: a folder of 25 to 31 faces showed
    some of its faces in both rows."""
    from face_organizer import cluster_stage

    sheets = []
    make_sheet = cluster_stage.contact_sheet
    monkeypatch.setattr(cluster_stage, "contact_sheet", lambda *groups: sheets.append(groups) or make_sheet(*groups))
    out = tmp_path / "out"
    assert run_cli(["--embeddings", str(lfw_subset[0]), "--output", str(out), "--clusters", "auto", "-q"]) == 0
    sizes = json.loads((out / "summary.json").read_text())["clusters"]
    assert len(sheets) == len(sizes) and any(24 < n < 32 for n in sizes.values()), sizes
    for (central, borderline), n in zip(sheets, sizes.values()):
        paths = [face.path for face in [*central, *borderline]]
        assert len(paths) == len(set(paths)) == min(n, 32) and len(central) == min(n, 24), (n, paths)


def test_clusters_renumbered_by_their_copies_keep_their_centres_and_checks() -> None:
    """Three people of 30, 20 and 10 distinct faces, the third's faces copied four times each: k-means numbers
    the clusters by distinct faces, and spreading the copies renumbers them by images (the third first). Each
    cluster's centre and one-person check move with it."""
    from face_organizer import copies
    from face_organizer.cohesion import folder_cohesion

    rng = np.random.default_rng(5)
    axes = np.linalg.qr(rng.normal(size=(64, 3)))[0].T
    people = np.repeat([0, 1, 2], [30, 20, 10])
    x = axes[people] + rng.normal(0, 0.08, (60, 64))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    everything = np.vstack([x, np.repeat(x[50:], 4, axis=0)])  # 40 copies of the third person's faces
    distinct, of = copies.first_rows(everything)
    assert distinct.tolist() == list(range(60))
    once = kmeans(x, 3, seed=0)
    assert [int((once.labels == c).sum()) for c in range(3)] == [30, 20, 10] and once.cohesion is not None
    spread = copies.spread(once, distinct, of)
    assert [int((spread.labels == c).sum()) for c in range(3)] == [50, 30, 20] and spread.copies == 40
    order = [int(np.bincount(once.labels[of][spread.labels == c]).argmax()) for c in range(3)]
    assert order == [2, 0, 1]
    np.testing.assert_array_equal(spread.centres, once.centres[order])
    assert spread.cohesion is not None
    again = folder_cohesion(x, spread.labels[:60], 3)  # computed afresh on the renumbered distinct faces
    np.testing.assert_allclose(spread.cohesion.mean_pair, again.mean_pair, atol=1e-5)
    np.testing.assert_allclose(spread.cohesion.cross_mean, again.cross_mean, atol=1e-5)
    assert spread.cohesion.sizes.tolist() == again.sizes.tolist() == [10, 30, 20]
    # A group of folders that look like one person (old 0 and 2) keeps naming the same folders (now 1 and 0).
    grouped = replace(once, cohesion=replace(once.cohesion, groups=((0, 2),)))
    assert copies.spread(grouped, distinct, of).cohesion.groups == ((0, 1),)
