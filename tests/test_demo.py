"""The README's quick start: sample faces from pip packages, embedded and sorted."""

from __future__ import annotations

import json
import sys

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
