"""embeddings_info on real runs: finished, interrupted, running, and files it cannot describe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from face_organizer import __version__, embfile
from face_organizer.cli import common
from face_organizer.cli.info import main as info_main
from face_organizer.cli.main import main as umbrella
from face_organizer.cluster_stage import load_embeddings
from face_organizer.embed_run import run_embeddings
from face_organizer.embfile import parts_dir
from face_organizer.embinfo import describe
from face_organizer.errors import EmbeddingsFileError
from face_organizer.fsutil import exclusive, lock_path

from conftest import interrupted_at


def run_cli(args: list[str]) -> int:
    return common.run(info_main, args)


@pytest.fixture()
def folder(tmp_path, video_crops) -> tuple[Path, list[str]]:
    crops = [p for c in video_crops.values() for p in c][:9]
    paths = []
    for i, crop in enumerate(crops):
        target = tmp_path / "in" / f"frame_{i:04d}.png"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(crop.read_bytes())
        paths.append(str(target))
    (tmp_path / "in" / "cut.png").write_bytes(Path(paths[0]).read_bytes()[:300])
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    return tmp_path / "in", sorted(paths + [str(tmp_path / "in" / n) for n in ("cut.png", "empty.png")])


def test_finished_file_is_described(folder, models, tmp_path, capsys) -> None:
    root, paths = folder
    out = tmp_path / "emb.pkl"
    summary = run_embeddings(paths, out, models, inputs=[str(root)], batch_size=4, progress=False)
    info = describe(out)
    assert info.finished and info.writer is None and info.parts == 0
    assert (info.images, info.faces) == (summary.embedded, summary.faces) == (9, 9)
    assert info.skipped == summary.skipped and sum(info.skipped.values()) == 2
    assert info.fallback == summary.fallback
    assert run_cli([str(out)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0] == f"{out}: finished"
    assert "MobileFaceNet.onnx, 128-d" in text[1] and "crops mode" in text[1]
    assert text[1].endswith(f", face-organizer {__version__}")  # which release wrote it
    assert text[2] == f"  inputs: {root}"
    assert "  images: 9; faces: 9" in text[3]
    assert "empty file: 1" in text[4] and text[4].startswith("  skipped: 2")
    assert text[4].endswith("); each is tried again by the next generate_embeddings run over its input")
    ef = embfile.load(out)
    embfile.save(tmp_path / "own.pkl", embfile.EmbeddingsFile(ef.rows, [], [], {}))  # a file of one's own
    assert run_cli([str(tmp_path / "own.pkl")]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("  model: ? (?, 128-d), crops mode, device ?")


def test_interrupted_and_running_runs_are_told_apart(folder, models, tmp_path, capsys) -> None:
    _, paths = folder
    out = tmp_path / "emb.pkl"

    interrupted_at(paths, paths[6], out, models)
    assert not out.exists()
    parts = len(list(parts_dir(out).glob("part-*.pkl")))
    info = describe(out)
    assert not info.finished and info.parts == parts >= 1
    assert 1 <= info.images < 9 and sum(info.skipped.values()) == 2  # cut.png and empty.png sort first
    assert "interrupted" in info.status() and "run the same generate_embeddings command again" in info.status()
    # Clustering or searching it says the same, rather than that the file does not exist.
    with pytest.raises(EmbeddingsFileError, match=r"is not finished: its run was interrupted or is still going "
                                                  r"\(checkpoints in .*emb\.pkl\.parts\); run the same generate_embeddings"):
        embfile.load(out)
    # The pattern users give for one file per GPU, which the shell leaves as it is while only checkpoints exist:
    assert run_cli([str(tmp_path / "em*.pkl")]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: interrupted: {parts} checkpoint part(s) beside it")
    assert embfile.expand_unfinished([str(tmp_path / "x*.pkl"), str(out)]) == [str(tmp_path / "x*.pkl"), str(out)]
    # cluster_faces and search_faces given such a pattern say the same; and one that matches nothing, so.
    with pytest.raises(EmbeddingsFileError, match=rf"embeddings file {out} is not finished: its run was interrupted"):
        load_embeddings([str(tmp_path / "em*.pkl")])
    with pytest.raises(EmbeddingsFileError, match=r"no embeddings file matches .*/x\*\.pkl \(nor a run's checkpoints: "
                                                  r"x\*\.pkl\.parts\)"):
        load_embeddings([str(tmp_path / "x*.pkl")])
    # A folder (the launcher's --output-dir) stands for its files; the checkpoint folder for its file.
    for named in (tmp_path, parts_dir(out)):
        assert run_cli([str(named)]) == 0
        assert capsys.readouterr().out.startswith(f"{out}: interrupted: {parts} checkpoint part(s) beside it")
    stopped = tmp_path / "stopped.pkl"
    parts_dir(stopped).mkdir()  # a run stopped before its first checkpoint: no file, no part
    assert describe(stopped).status().startswith("interrupted: 0 checkpoint part(s) beside it")
    parts_dir(stopped).rmdir()
    (tmp_path / "empty").mkdir()
    assert run_cli([str(tmp_path / "empty")]) == 2
    assert f"{tmp_path / 'empty'}: a folder without embeddings files (*.pkl) in it" in capsys.readouterr().err

    lock = lock_path(out)
    with exclusive(out, "busy"):  # as a live run holds it
        assert describe(out).status() == f"being written now (pid {os.getpid()})"
    fresh = tmp_path / "fresh.pkl"  # a run that has not checkpointed yet: no file, no part
    with exclusive(fresh, "busy"):
        with pytest.raises(EmbeddingsFileError, match=rf"embeddings file {fresh} is not written yet: a "
                                                      rf"generate_embeddings run \(pid {os.getpid()}\) is making it"):
            embfile.load(fresh)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(str(dead.pid))  # left behind by a run killed with kill -9
    assert describe(out).writer is None
    # ... whose pid another process has been given since (pids start again from 1 in a restarted container)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(str(alive.pid))
        assert describe(out).writer is None and describe(out).status().startswith("interrupted: ")
        lock_path(fresh).write_text(str(alive.pid))
        with pytest.raises(EmbeddingsFileError, match=rf"cannot read embeddings file {fresh}: No such file"):
            embfile.load(fresh)
    finally:
        alive.kill()
        alive.wait()
    lock.unlink()

    resumed = run_embeddings(paths, out, models, progress=False)
    assert (resumed.already_done, resumed.embedded) == (info.images, 9 - info.images)  # what the re-run found
    assert run_cli([str(out), "--json"]) == 0
    (described,) = json.loads(capsys.readouterr().out)
    assert described["finished"] and described["images"] == 9 and described["checkpoint_parts"] == 0


def test_clustering_a_file_whose_next_run_was_interrupted_warns_that_images_are_missing(folder, models, tmp_path,
                                                                                         caplog) -> None:
    # Embedded once, then new images added and the re-run killed: the finished file is read as it
    # is, but the clustering says that the images embedded since are not in it yet.
    _, paths = folder
    out = tmp_path / "emb.pkl"
    run_embeddings(paths[:4], out, models, progress=False)

    interrupted_at(paths, paths[8], out, models)
    waiting = len(list(parts_dir(out).glob("part-*.pkl")))
    assert waiting >= 1 and not describe(out).finished
    with caplog.at_level("WARNING"):
        ef = load_embeddings([str(out)])
    assert len(ef.rows) == 2  # the file as the first run left it (cut.png and empty.png were skipped)
    assert (f"{out}: a later generate_embeddings run into it was interrupted ({waiting} checkpoint "
            f"part{'s' if waiting > 1 else ''} in {parts_dir(out)}), so the images that run embedded are not in it "
            "yet: run the same generate_embeddings command again") in caplog.text
    caplog.clear()
    with exclusive(out, "busy"), caplog.at_level("WARNING"):  # as the run holds it while it goes on
        load_embeddings([str(out)])
    assert (f"{out}: a generate_embeddings run (pid {os.getpid()}) is adding to it now, so the images it embeds are "
            "not in it yet: cluster or search once it has finished") in caplog.text
    caplog.clear()
    run_embeddings(paths, out, models, progress=False)
    with caplog.at_level("WARNING"):
        assert len(load_embeddings([str(out)]).rows) == 9
    assert "interrupted" not in caplog.text


def test_files_it_cannot_describe_do_not_hide_the_others(folder, models, tmp_path, capsys) -> None:
    _, paths = folder
    out = tmp_path / "emb.pkl"
    run_embeddings(paths[:3], out, models, progress=False)
    (tmp_path / "notes.pkl").write_text("not a pickle")
    code = umbrella(["info", str(tmp_path / "missing.pkl"), str(out), str(tmp_path / "notes.pkl")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{out}: finished")
    assert f"Error: {tmp_path / 'missing.pkl'}: no embeddings file and no checkpoint of one there" in captured.err
    assert "notes.pkl: not a readable embeddings file" in captured.err
    assert "name only the .pkl files" not in captured.err  # a .pkl: no hint about patterns


def test_several_files_get_a_total_that_counts_each_image_once(folder, models, tmp_path, monkeypatch, capsys) -> None:
    # One file per GPU: the total says whether they hold the whole collection, each image once.
    _, paths = folder
    runs = {"gpu0": paths[:5], "gpu1": paths[5:], "again": paths[3:7]}  # "again" repeats four of them
    for name, part in runs.items():
        run_embeddings(part, tmp_path / f"{name}.pkl", models, progress=False)
    assert run_cli([str(tmp_path / "gpu0.pkl"), str(tmp_path / "gpu1.pkl")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "total over 2 files: 9 images; faces: 9; skipped: 2"
    assert run_cli([str(tmp_path / "gpu0.pkl"), "--json", str(tmp_path / "gpu1.pkl")]) == 0  # files among options
    assert [d["path"] for d in json.loads(capsys.readouterr().out)] == [str(tmp_path / f"gpu{n}.pkl") for n in (0, 1)]
    assert run_cli([str(tmp_path / f"{name}.pkl") for name in runs]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == ("total over 3 files: 9 images (4 of them in more than one "
                                                       "file, counted once); skipped: 2")
    # Two images held by all three files count once among those in more than one (not once per extra file: 4 of 5).
    run_embeddings(paths[3:5], tmp_path / "more.pkl", models, progress=False)  # in gpu0 and again too
    assert run_cli([str(tmp_path / f"{name}.pkl") for name in ("gpu0", "again", "more")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == ("total over 3 files: 5 images (2 of them in more than one "
                                                       "file, counted once); skipped: 2")
    # A file named twice, or named and in a folder named too, is described once, where it is named first.
    monkeypatch.chdir(tmp_path)
    assert run_cli(["more.pkl", str(tmp_path / "more.pkl"), "./more.pkl", str(tmp_path)]) == 0
    described = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert described == [*(str(tmp_path / f"{name}.pkl") for name in ("more", "again", "gpu0", "gpu1")),
                         "total over 4 files"]
