"""Faces blurred past recognition: found by the model's blurred-face centre, kept out of the folders."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np

from clusterrun import cluster_with
from conftest import ROOT
from face_organizer import embfile, quality
from face_organizer.cluster_stage import ClusterConfig, load_embeddings, run_clustering
from face_organizer.samples import sample_photos


def test_blurred_faces_stand_out_from_sharp_ones(lfw_subset, blurred_strangers) -> None:
    sharp, blurred = embfile.load(lfw_subset[0]), embfile.load(blurred_strangers[0])
    centre = sharp.meta[quality.META_KEY]
    assert blurred.meta[quality.META_KEY] == centre  # the same model gives the same centre
    x = np.concatenate([sharp.rows.embeddings, blurred.rows.embeddings])
    found = quality.find_unrecognisable(x, centre)
    assert found is not None
    n = len(sharp.rows)
    assert found.mask[n:].mean() >= 0.75  # blurred past recognition (13 of 16 with the testpack)
    assert found.mask[:n].mean() <= 0.01  # LFW photos, sharp or not
    # No centre (a file made before it was recorded), or one of another size: nothing is set aside.
    assert quality.find_unrecognisable(x, None) is None
    assert quality.find_unrecognisable(x, np.ones(512, np.float32)) is None


def test_blurred_strangers_go_to_outliers(two_person, blurred_strangers, tmp_path, capsys) -> None:
    emb, labels, _ = two_person
    shaky, shaky_paths = blurred_strangers
    assert len(shaky_paths) >= 12
    out = tmp_path / "clustered"
    row, report = cluster_with(two_person, blurred_strangers, "stranger:blurred", out)
    assert all(p == 1.0 for p in report.purity.values()), report.lines()
    assert all(r >= 0.9 for r in report.recall.values()), report.lines()
    assert all(row[p]["cluster"] == "outliers" for p in shaky_paths)
    marked = {p for p, r in row.items() if r["unrecognisable"] == "1"}
    assert sum(p in marked for p in shaky_paths) >= 0.75 * len(shaky_paths)
    assert not any(labels.get(p) in ("Tony_Blair", "Donald_Rumsfeld") for p in marked)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unrecognisable_in_outliers"] == len(marked)
    assert f"outliers/ also holds {len(marked)} faces too blurred or degraded to recognise" in capsys.readouterr().out

    # --keep-unrecognisable: blurred faces are clustered like the others. k-means put 12 of the 16 in one
    # person's folder, whose centre they pull towards them, and against that centre they passed the cut. As the
    # cut takes more than a fifth of that folder (strangers, non-face crops), it is cut again against the centre
    # of the person's group of alike faces, which keeps all 16 out and every face of the two people in.
    ef = load_embeddings([str(emb), str(shaky)])
    kept = run_clustering(ef, ClusterConfig(clusters=2, set_aside_unrecognisable=False))
    assert kept.set_aside is None
    index = {p: i for i, p in enumerate(ef.rows.paths)}
    assert (kept.labels[[index[p] for p in shaky_paths]] >= 0).sum() == 0
    person = [i for i, p in enumerate(ef.rows.paths) if labels.get(p) in ("Tony_Blair", "Donald_Rumsfeld")]
    assert (kept.labels[person] >= 0).all()


def test_files_without_a_centre_are_clustered_as_before(two_person, caplog) -> None:
    ef = embfile.load(two_person[0])
    with_centre = run_clustering(ef, ClusterConfig(clusters=2))
    del ef.meta[quality.META_KEY]
    with caplog.at_level(logging.WARNING, logger="face_organizer.cluster_stage"):
        without = run_clustering(ef, ClusterConfig(clusters=2))
    assert without.set_aside is None and "does not say where its model puts unrecognisable faces" in caplog.text
    assert with_centre.set_aside is not None
    # Only faces set aside differ; the people's faces land alike.
    people = ~with_centre.set_aside
    assert ((with_centre.labels >= 0) == (without.labels >= 0))[people].mean() >= 0.95


def test_no_sample_faces_means_no_centre(models, monkeypatch, caplog) -> None:
    def missing(name="t1.jpg"):
        raise FileNotFoundError(f"{name} is not in this insightface installation")

    monkeypatch.setattr("face_organizer.samples.insightface_sample", missing)
    with caplog.at_level(logging.WARNING, logger="face_organizer.quality"):
        assert quality.unrecognisable_centre(models) is None
    assert "blurred faces will not be set aside" in caplog.text


def test_sample_photos_are_found_without_importing_their_packages() -> None:
    # Every stage-1 run embeds the sample faces; importing insightface and skimage.data to find
    # them added a fraction of a second to each start.
    code = ("import sys; from face_organizer.samples import sample_photos; group, singles = sample_photos(); "
            "print(group.shape[2], len(singles), 'insightface' in sys.modules, 'skimage.data' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["3", "2", "False", "False"]
    from skimage import data as skdata

    # The astronaut read from its file is the image skimage's loader gives, in BGR order.
    np.testing.assert_array_equal(sample_photos()[1][1], skdata.astronaut()[:, :, ::-1])
