"""rebase_embeddings: an embeddings file's paths under a new folder, so moved images need no new embedding."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from face_organizer import embfile
from face_organizer.cli import common
from face_organizer.cli.embed import main as embed_main
from face_organizer.cli.rebase import main as rebase_main
from face_organizer.errors import SetupError
from face_organizer.rebase import moved, rebase
from face_organizer.rows import FaceRows

from conftest import ROOT


def file_of(paths: list[str], failed: list[tuple[str, str]] | None = None, no_face: list[str] | None = None,
            **extra) -> embfile.EmbeddingsFile:
    """A small file naming ``paths`` (its embeddings do not matter here); ``extra``: reused, signatures."""
    n = len(paths)
    rows = FaceRows(list(paths), np.eye(n, 4, dtype=np.float32), np.ones(n, bool), np.ones(n, np.float32),
                    np.zeros((n, 4), np.float32), np.zeros(n, np.int32))
    meta = embfile.make_meta(pack_name="testpack", model_files={"recognition": "MobileFaceNet.onnx"}, dim=4,
                             device="cpu", inputs=["/workspace/input/2017", "/elsewhere"], mode="photos")
    return embfile.EmbeddingsFile(rows, failed or [], no_face or [], meta, **extra)


def test_paths_under_the_folder_move_and_nothing_else_changes(tmp_path) -> None:
    names = ["/workspace/input/2017/a.png", "/workspace/input/2017/b.png", "/workspace/inputs/c.png", "/elsewhere/d.png",
             "/workspace/input/2017/caf\udce9.png"]  # a name that is not UTF-8 keeps its bytes
    ef = file_of(names, failed=[("/workspace/input/2017/bad.jpg", "empty file"), ("/elsewhere/x.jpg", "empty file")],
                 no_face=["/workspace/input/2017/sky.jpg"], reused=[("/workspace/input/2017/b.png", "/workspace/input/2017/a.png")],
                 signatures={"/workspace/input/2017/a.png": (10, 5), "/elsewhere/d.png": (11, 6)})
    (tmp_path / "2017").mkdir()
    (tmp_path / "2017" / "a.png").write_bytes(b"x")
    done = rebase(ef, "/workspace/input/", str(tmp_path))
    new = done.file
    assert new.rows.paths == [f"{tmp_path}/2017/a.png", f"{tmp_path}/2017/b.png", "/workspace/inputs/c.png",
                              "/elsewhere/d.png", f"{tmp_path}/2017/caf\udce9.png"]  # "inputs" is another folder
    np.testing.assert_array_equal(new.rows.embeddings, ef.rows.embeddings)
    assert new.failed == [(f"{tmp_path}/2017/bad.jpg", "empty file"), ("/elsewhere/x.jpg", "empty file")]
    assert new.no_face == [f"{tmp_path}/2017/sky.jpg"]
    assert new.reused == [(f"{tmp_path}/2017/b.png", f"{tmp_path}/2017/a.png")]
    assert new.signatures == {f"{tmp_path}/2017/a.png": (10, 5), "/elsewhere/d.png": (11, 6)}
    assert new.meta["inputs"] == [f"{tmp_path}/2017", "/elsewhere"]
    assert [(r["from"], r["to"]) for r in new.meta["rebased"]] == [("/workspace/input", str(tmp_path))]
    # Four of the six images moved; one of the four looked for is there already.
    assert (done.images, done.total, done.checked, done.found) == (4, 6, 4, 1)
    assert ef.rows.paths == names  # the file read is left as it was
    # Back again: the same paths, and the record of both rewrites.
    back = rebase(new, str(tmp_path), "/workspace/input").file
    assert back.rows.paths == names and back.failed == ef.failed and back.signatures == ef.signatures
    assert len(back.meta["rebased"]) == 2
    assert moved("/a/b", "/", "/c") == "/c/a/b" and moved("/a", "/a", "/c") == "/c"


def test_a_prefix_nothing_lies_under_or_one_that_makes_two_images_one_is_refused() -> None:
    ef = file_of(["/workspace/input/a.png", "/data/a.png"])
    with pytest.raises(SetupError, match="no image in the embeddings file lies under /workspace/inp "):
        rebase(ef, "/workspace/inp", "/data")
    with pytest.raises(SetupError, match="/data/a.png and /workspace/input/a.png would both become /data/a.png"):
        rebase(ef, "/workspace/input", "/data")
    with pytest.raises(SetupError, match=r"--from and --to are the same folder \(/data\)"):
        rebase(ef, "/data/", "/data")


def test_moved_images_are_found_by_every_stage_without_embedding_them_again(video_crops, testpack_dir, tmp_path,
                                                                           capsys) -> None:
    # Embedded under one folder, then the folder moves (another disk, or the host's view of a container's
    # mount): rewritten, the file resumes there with nothing to embed, and clustering finds every image.
    old = tmp_path / "workspace" / "input" / "2017"
    for person, crops in video_crops.items():
        for crop in crops[:4]:
            target = old / person / crop.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(crop, target)
    emb = tmp_path / "emb.pkl"
    embed = ["--output", str(emb), "--model", str(testpack_dir), "-q"]
    assert common.run(embed_main, ["--input", str(old)] + embed) == 0
    first = embfile.load(emb)
    new_root = tmp_path / "srv" / "faces"
    new_root.parent.mkdir(parents=True)
    (tmp_path / "workspace").rename(new_root)
    capsys.readouterr()

    moved_file = tmp_path / "host.pkl"
    assert common.run(rebase_main, [str(emb), "--from", str(tmp_path / "workspace"), "--to", str(new_root),
                                    "--output", str(moved_file)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(first.rows)} images of {len(first.rows)} moved from {tmp_path / 'workspace'} to {new_root}" in printed
    assert f"found at the new paths: {len(first.rows)} of {len(first.rows)} looked for" in printed
    assert embfile.load(emb).rows.paths == first.rows.paths  # a new file; the old one is kept
    host = embfile.load(moved_file)
    assert host.rows.paths == [p.replace(str(tmp_path / "workspace"), str(new_root)) for p in first.rows.paths]
    assert all(os.path.isfile(p) for p in host.rows.paths)
    from face_organizer.embinfo import describe

    when = host.meta["rebased"][0]["when"]
    assert f"  paths rebased: {tmp_path / 'workspace'} → {new_root} ({when})" in describe(moved_file).lines()
    assert f"  inputs: {new_root / 'input' / '2017'}" in describe(moved_file).lines()

    # The same folder embedded at its new place: nothing new, no model loaded (a rename keeps sizes and times).
    new_input = new_root / "input" / "2017"
    assert common.run(embed_main, ["--input", str(new_input), "--output", str(moved_file), "--model",
                                   str(testpack_dir), "-q"]) == 0
    assert "nothing new, so it was left as it was" in capsys.readouterr().out
    from face_organizer.cli.cluster import main as cluster_main

    out = tmp_path / "sorted"
    assert common.run(cluster_main, ["--embeddings", str(moved_file), "--output", str(out), "--clusters", "3",
                                     "--no-previews", "-q"]) == 0
    assert f"files: {len(first.rows)} placed" in capsys.readouterr().out
    # The file as it was finds none of its images any more, and says how to rewrite it: with the images
    # beside the output, which --from and --to find them.
    assert common.run(cluster_main, ["--embeddings", str(emb), "--output", str(tmp_path / "nothing"), "-q"]) == 2
    assert ("rewrite the file's paths (rebase_embeddings.py FILE --from OLD --to NEW), or add --moved-to"
            in capsys.readouterr().err)
    assert common.run(cluster_main, ["--embeddings", str(emb), "--output", str(new_root / "sorted"), "-q"]) == 2
    assert (f"(rebase_embeddings.py FILE --from OLD --to NEW (here: --from {tmp_path / 'workspace'} --to {new_root} "
            "finds them))") in capsys.readouterr().err
    # In place, through the script as users run it; a second file is never overwritten.
    script = [sys.executable, str(ROOT / "scripts" / "rebase_embeddings.py"), str(emb), "--from",
              str(tmp_path / "workspace"), "--to", str(new_root)]
    refused = subprocess.run(script + ["--output", str(moved_file)], capture_output=True, text=True)
    assert refused.returncode == 2 and f"--output {moved_file} exists" in refused.stderr
    subprocess.run(script + ["--in-place"], check=True, capture_output=True)
    assert embfile.load(emb).rows.paths == host.rows.paths


def test_a_file_being_written_is_refused(tmp_path, capsys) -> None:
    emb = tmp_path / "emb.pkl"
    embfile.save(emb, file_of(["/workspace/a.png"]))
    embfile.parts_dir(emb).mkdir()
    args = [str(emb), "--from", "/workspace", "--to", str(tmp_path), "--in-place"]
    assert common.run(rebase_main, args) == 2
    assert "was interrupted" in capsys.readouterr().err
    embfile.parts_dir(emb).rmdir()
    from face_organizer.fsutil import exclusive

    with exclusive(emb, "busy"):
        # The lock's holder is this process: as seen from a run of its own, the file is being written.
        assert common.run(rebase_main, args) == 2
    assert f"a generate_embeddings run (pid {os.getpid()}) is writing" in capsys.readouterr().err
    assert common.run(rebase_main, args + ["--dry-run"]) == 0
    assert "(dry run: nothing written)" in capsys.readouterr().out
    assert embfile.load(emb).rows.paths == ["/workspace/a.png"]
    assert common.run(rebase_main, args) == 0 and embfile.load(emb).rows.paths == [f"{tmp_path}/a.png"]
    hostile = tmp_path / "hostile.pkl"
    hostile.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")
    assert common.run(rebase_main, [str(hostile), "--from", "/", "--to", "/x", "--in-place"]) == 2
    assert "refusing to load os.system" in capsys.readouterr().err
    assert Path(hostile).read_bytes() == b"cos\nsystem\n(S'echo pwned'\ntR."
