"""The README's quick start: sample faces from pip packages, embedded and sorted."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT


def test_demo_sorts_each_sample_person_into_one_folder(testpack_dir, tmp_path, monkeypatch, capsys) -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    out = tmp_path / "demo_output"
    assert demo.main(["--output", str(out), "--model", str(testpack_dir)]) == 0
    summary = json.loads((out / "clustered" / "summary.json").read_text())
    folders = {k: v for k, v in summary["clusters"].items() if k != "outliers"}
    assert len(folders) == 8 and all(v == 6 for v in folders.values())  # t1.jpg's six, Tom Hanks, the astronaut
    for folder in folders:
        people = {p.name.split("_")[0] for p in (out / "clustered" / folder).rglob("*.png")}
        assert len(people) == 1, (folder, people)  # face07_… files of one source person only
    assert (out / "clustered" / "index.html").is_file()


def test_demo_refuses_a_folder_it_did_not_make(tmp_path) -> None:
    """The demo empties its folder before each run: one that holds a user's photos is refused, untouched."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import demo
    from face_organizer.errors import SetupError

    photos = tmp_path / "Pictures"
    (photos / "2017").mkdir(parents=True)
    (photos / "2017" / "holiday.jpg").write_bytes(b"not really a photo")
    with pytest.raises(SetupError, match=r"holds files the demo did not make \(such as 2017\)"):
        demo.main(["--output", str(photos), "--model", "testpack-that-is-not-needed"])
    assert (photos / "2017" / "holiday.jpg").read_bytes() == b"not really a photo"
    with pytest.raises(SetupError, match="is a file"):
        demo.main(["--output", str(photos / "2017" / "holiday.jpg")])
    demo.check_own_folder(tmp_path / "new")  # not there yet: made by the run
    for made in ("input", "clustered", "embeddings_gpu0.pkl", ".embeddings_gpu0.pkl.lock"):
        (tmp_path / "again" / made).mkdir(parents=True)
    demo.check_own_folder(tmp_path / "again")  # an earlier demo's: emptied and made again
