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
    (out / "clustered" / "index.html").unlink()
    assert demo.main(["--output", str(out), "--model", str(testpack_dir)]) == 0  # its own folder: made again
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
    # A new folder a Mac or Windows has shown holds their files of its own, which the demo may empty; not folders.
    shown = tmp_path / "shown"
    shown.mkdir()
    for name in (".DS_Store", "._.DS_Store", "Thumbs.db"):
        (shown / name).write_bytes(b"\0\0\0\1Bud1")
    demo.check_own_folder(shown)
    (shown / "$RECYCLE.BIN").mkdir()
    with pytest.raises(SetupError, match=r"holds files the demo did not make \(such as \$RECYCLE.BIN\)"):
        demo.check_own_folder(shown)
    # A workspace laid out as the demo's folder is (input/, embeddings_gpu0.pkl, clustered…/) is not the demo's.
    workspace = tmp_path / "workspace"
    for made in ("input/2017", "clustered_faces/person_A"):
        (workspace / made).mkdir(parents=True)
    (workspace / "embeddings_gpu0.pkl").write_bytes(b"hours of embedding")
    with pytest.raises(SetupError, match="holds files the demo did not make"):
        demo.check_own_folder(workspace)
    assert (workspace / "embeddings_gpu0.pkl").read_bytes() == b"hours of embedding"


@pytest.mark.parametrize("where", ["shared", "elsewhere"])
def test_demo_takes_its_model_from_the_shared_setting(testpack_dir, tmp_path, where) -> None:
    """The demo finds the testpack where $FACE_ORGANIZER_SHARED says, as the tests do, not only at ../shared."""
    import os
    import subprocess

    shared = testpack_dir.parents[1] if where == "shared" else tmp_path
    env = {**os.environ, "FACE_ORGANIZER_SHARED": str(shared)}
    shown = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--help"], env=env,
                           capture_output=True, text=True, check=True).stdout
    expected = str(testpack_dir.resolve()) if where == "shared" else "buffalo_l"
    assert f"(default here: {expected})" in " ".join(shown.split())


def test_demo_offline_without_the_testpack_says_where_it_looked(tmp_path) -> None:
    """Offline, with no testpack where the setting points, the error says how to give the demo one."""
    import os
    import subprocess

    env = {**os.environ, "FACE_ORGANIZER_SHARED": str(tmp_path / "nowhere"), "HOME": str(tmp_path),
           "FACE_ORGANIZER_MODEL_ROOT": str(tmp_path / "models"), "HTTPS_PROXY": "http://127.0.0.1:9"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--output", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: model pack 'buffalo_l' not found") and "FACE_ORGANIZER_SHARED" in last
    assert str(tmp_path / "nowhere") in last
    assert str(tmp_path / "models" / "buffalo_l") in last  # FACE_ORGANIZER_MODEL_ROOT, as generate_embeddings reads
