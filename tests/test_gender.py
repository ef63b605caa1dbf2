"""gender_filter on real UTKFace crops."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from face_organizer.cli import common
from face_organizer.cli.gender import main as gender_main
from face_organizer.gender import InsightFaceGender
from face_organizer.images import read_image

from conftest import read_labels


def run_cli(args: list[str]) -> int:
    return common.run(gender_main, args)


@pytest.fixture(scope="module")
def predictor(testpack):
    return InsightFaceGender(testpack, "cpu")


def test_accuracy_on_utkface(utkface, predictor) -> None:
    rows = read_labels(utkface)[::2]  # 250 of the 500, both genders
    preds = predictor.predict([(r["path"], read_image(utkface / r["path"])) for r in rows])
    truth = {r["path"]: "Man" if r["gender"] == "male" else "Woman" for r in rows}
    accuracy = np.mean([p.gender == truth[p.path] for p in preds])
    assert accuracy >= 0.9, accuracy
    assert all(p.gender is not None for p in preds)  # tight crops are found thanks to padding
    ages = np.array([p.age for p in preds])
    assert 15 < np.median(ages) < 60


def test_filter_copies_one_gender_and_reports_bad_files(utkface, testpack_dir, tmp_path, capsys) -> None:
    rows = read_labels(utkface)
    chosen = [r for r in rows if r["gender"] == "female"][:8] + [r for r in rows if r["gender"] == "male"][:8]
    folder = tmp_path / "input" / "2017"
    folder.mkdir(parents=True)
    for r in chosen:
        (folder / Path(r["path"]).name).write_bytes((utkface / r["path"]).read_bytes())
    (folder / "broken.jpg").write_text("not an image")
    (folder / "wall.png").write_bytes(b"")
    out = tmp_path / "women"
    assert run_cli(["--input", str(folder), "--output", str(out), "--gender", "Woman", "--model", str(testpack_dir),
                    "--workers", "0", "-q"]) == 0
    predictions = list(csv.DictReader(open(out / "predictions.csv", newline="", encoding="utf-8")))
    assert len(predictions) == len(chosen) + 2
    assert {"path", "gender", "confidence", "age"} <= set(predictions[0])
    female = {Path(r["path"]).name for r in chosen if r["gender"] == "female"}
    copied = {p.name for p in (out / "2017").iterdir()}
    assert len(copied & female) >= 7 and len(copied - female) <= 1
    reasons = {Path(p["path"]).name: p["reason"] for p in predictions}
    assert "not a decodable image" in reasons["broken.jpg"] and reasons["wall.png"] == "empty file"
    printed = capsys.readouterr().out
    assert f"Woman: {len(copied)} images" in printed and "errors: 2" in printed
