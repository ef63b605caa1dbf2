"""gender_filter on real UTKFace crops."""

from __future__ import annotations

import csv
import errno
import os
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from face_organizer.cli import common
from face_organizer.cli.gender import main as gender_main
from face_organizer.errors import RunStopped, SetupError
from face_organizer.gender import InsightFaceGender
from face_organizer.gender_stage import filter_by_gender, progress_path
from face_organizer.images import read_image
from face_organizer.progress import count

from conftest import read_labels, tree_of


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
    # On the CPU the crops are detected by the detector's coarse levels first: the same predictions as the whole
    # network alone gives.
    assert predictor.detector.coarse is not None
    coarse, predictor.detector.coarse = predictor.detector.coarse, None
    try:
        whole = predictor.predict([(r["path"], read_image(utkface / r["path"])) for r in rows[:60]])
    finally:
        predictor.detector.coarse = coarse
    assert [(p.gender, p.confidence, p.age) for p in whole] == [(p.gender, p.confidence, p.age) for p in preds[:60]]


def test_filter_copies_one_gender_and_reports_bad_files(utkface, testpack_dir, tmp_path, capsys) -> None:
    rows = read_labels(utkface)
    chosen = [r for r in rows if r["gender"] == "female"][:8] + [r for r in rows if r["gender"] == "male"][:8]
    folder = tmp_path / "input" / "2017"
    folder.mkdir(parents=True)
    for r in chosen:
        (folder / Path(r["path"]).name).write_bytes((utkface / r["path"]).read_bytes())
    (folder / "broken.jpg").write_text("not an image")
    (folder / "wall.png").write_bytes(b"")
    cv2.imwrite(str(folder / "grey.png"), np.full((200, 200, 3), 128, np.uint8))  # decodes, but shows no face
    out = tmp_path / "women"
    assert run_cli(["--input", str(folder), "--output", str(out), "--gender", "Woman", "--model", str(testpack_dir),
                    "--workers", "0", "-q"]) == 0
    predictions = list(csv.DictReader(open(out / "predictions.csv", newline="", encoding="utf-8")))
    assert len(predictions) == len(chosen) + 3
    grey = next(p for p in predictions if p["path"].endswith("grey.png"))
    assert (grey["gender"], grey["reason"], grey["destination"]) == ("", "no face", "")
    assert {"path", "gender", "confidence", "age"} <= set(predictions[0])
    female = {Path(r["path"]).name for r in chosen if r["gender"] == "female"}
    copied = {p.name for p in (out / "2017").iterdir()}
    assert len(copied & female) >= 7 and len(copied - female) <= 1
    reasons = {Path(p["path"]).name: p["reason"] for p in predictions}
    assert "not a decodable image" in reasons["broken.jpg"] and reasons["wall.png"] == "empty file"
    printed = capsys.readouterr().out
    assert f"Woman: {len(copied)} images" in printed and "errors: 2" in printed
    # The same run typed otherwise (women, female, any case) is the same run: it finds its output done.
    for typed in ("women", "FEMALE"):
        assert run_cli(["--input", str(folder), "--output", str(out), "--gender", typed, "--model", str(testpack_dir),
                        "--workers", "0", "-q"]) == 0
        assert f"Woman: {len(copied)} images" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_cli(["--input", str(folder), "--output", str(out), "--gender", "both"])
    assert "argument --gender: 'both' is not a gender: Woman or Man" in capsys.readouterr().err


class _Watched:
    """The real predictor, recording what it is asked, and stopping (as Ctrl-C would) after ``stop_after`` images,
    or failing as ONNX Runtime does on a GPU out of memory after ``fail_after``."""

    def __init__(self, inner, stop_after: int | None = None, name: str | None = None, fail_after: int | None = None,
                 device: str | None = None):
        self.inner, self.stop_after, self.fail_after = inner, stop_after, fail_after
        self.asked: list[str] = []
        self.device, self.name = device or inner.device, name or inner.name

    def predict(self, items):
        if self.stop_after is not None and len(self.asked) >= self.stop_after:
            raise KeyboardInterrupt
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                               "running Conv node.\n Status Message: CUDA failure 2: out of memory")
        self.asked += [path for path, _ in items]
        return self.inner.predict(items)


def test_more_decoding_processes_than_cpus_are_warned_about_first(testpack_dir, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FACE_ORGANIZER_CPUS", "1")
    (tmp_path / "empty").mkdir()
    assert run_cli(["--input", str(tmp_path / "empty"), "--output", str(tmp_path / "women"), "--gender", "Woman",
                    "--model", str(testpack_dir), "--workers", "3"]) == 2
    err = capsys.readouterr().err
    assert "--workers 3: more image-decoding processes than the 1 CPU this process may use" in err


def _predictions(out: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(open(out / "predictions.csv", newline="", encoding="utf-8")))
    return [{k: v for k, v in r.items() if k != "destination"} for r in rows]


def test_interrupted_filter_continues_where_it_stopped(utkface, predictor, tmp_path) -> None:
    rows = read_labels(utkface)[:16]
    folder = tmp_path / "input"
    folder.mkdir()
    for r in rows:
        (folder / Path(r["path"]).name).write_bytes((utkface / r["path"]).read_bytes())
    (folder / "000_broken.jpg").write_text("not an image")  # sorts first
    paths = sorted(str(p) for p in folder.iterdir())
    decodable = [p for p in paths if not p.endswith("000_broken.jpg")]
    run: dict[str, Any] = dict(workers=0, batch_size=4, progress=False)

    whole = _Watched(predictor)
    filter_by_gender(paths, [str(folder)], str(tmp_path / "whole"), "Woman", whole, **run)
    assert whole.asked == decodable and not Path(progress_path(str(tmp_path / "whole"))).exists()

    out = tmp_path / "women"
    with pytest.raises(KeyboardInterrupt):
        filter_by_gender(paths, [str(folder)], str(out), "Woman", _Watched(predictor, stop_after=8), **run)
    saved = Path(progress_path(str(out)))
    assert len(saved.read_text().splitlines()) == 1 + 8 + 1  # the predictor, 000_broken.jpg, 8 predictions
    with open(saved, "a") as handle:
        handle.write('{"path": "' + decodable[9][:20])  # a line cut short by kill -9
    again = _Watched(predictor)
    summary = filter_by_gender(paths, [str(folder)], str(out), "Woman", again, **run)
    assert again.asked == decodable[8:] and summary.resumed == 9
    assert "continued an interrupted run: 9 images already predicted" in summary.lines()
    assert _predictions(out) == _predictions(tmp_path / "whole")
    assert sorted(p.name for p in out.rglob("*.jpg")) == sorted(p.name for p in (tmp_path / "whole").rglob("*.jpg"))
    assert not saved.exists()

    other = tmp_path / "men"
    with pytest.raises(KeyboardInterrupt):
        filter_by_gender(paths, [str(folder)], str(other), "Man", _Watched(predictor, stop_after=4), **run)
    by_other_model = _Watched(predictor, name="another model")
    assert filter_by_gender(paths, [str(folder)], str(other), "Man", by_other_model, **run).resumed == 0
    assert by_other_model.asked == decodable


class _FillsUp:
    """A file on a disk that fills up after ``room`` characters: the write that passes it fails, naming no file."""

    def __init__(self, handle: Any, room: int):
        self.handle, self.room = handle, room

    def write(self, text: str) -> int:
        if len(text) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(text)
        return self.handle.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)


def test_a_full_disk_names_the_progress_file_and_the_rerun_keeps_what_was_saved(utkface, predictor, tmp_path,
                                                                                 monkeypatch) -> None:
    from face_organizer import gender_stage

    rows = read_labels(utkface)[:12]
    folder = tmp_path / "input"
    folder.mkdir()
    for r in rows:
        (folder / Path(r["path"]).name).write_bytes((utkface / r["path"]).read_bytes())
    paths = sorted(str(p) for p in folder.iterdir())
    out = str(tmp_path / "women")
    run: dict[str, Any] = dict(workers=0, batch_size=4, progress=False)

    def fills_up(path: str, *args: Any, **kwargs: Any) -> Any:
        handle = open(path, *args, **kwargs)
        return _FillsUp(handle, 1500) if path == progress_path(out) else handle

    monkeypatch.setattr(gender_stage, "open", fills_up, raising=False)
    with pytest.raises(OSError) as full:
        filter_by_gender(paths, [str(folder)], out, "Woman", predictor, **run)
    assert full.value.filename == progress_path(out)  # the error line names it, not "No space left" alone
    saved = len(Path(progress_path(out)).read_text().splitlines()) - 1  # after the predictor's line
    assert 4 <= saved < len(paths)
    monkeypatch.undo()
    again = _Watched(predictor)
    assert filter_by_gender(paths, [str(folder)], out, "Woman", again, **run).resumed == saved
    assert again.asked == paths[saved:]


def _some_faces(utkface: Path, folder: Path, n: int) -> tuple[Path, list[str]]:
    """The first ``n`` UTKFace crops copied into ``folder``, and their paths there, sorted."""
    folder.mkdir()
    for r in read_labels(utkface)[:n]:
        (folder / Path(r["path"]).name).write_bytes((utkface / r["path"]).read_bytes())
    return folder, sorted(str(p) for p in folder.iterdir())


def test_a_gpu_that_fails_part_way_stops_the_filter_in_one_line_with_its_progress_saved(utkface, predictor,
                                                                                         tmp_path) -> None:
    # ONNX Runtime's error ended the run in a traceback, which said nothing of what to do.
    folder, paths = _some_faces(utkface, tmp_path / "input", 12)
    run: dict[str, Any] = dict(workers=0, batch_size=4, progress=False)
    out = tmp_path / "women"
    with pytest.raises(RunStopped) as stopped:
        failing = _Watched(predictor, fail_after=8, device="cuda")
        filter_by_gender(paths, [str(folder)], str(out), "Woman", failing, **run)
    assert str(stopped.value) == (
        "predicting gender failed for a batch of 4 images (RuntimeError: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : "
        "Non-zero status code returned while running Conv node. Status Message: CUDA failure 2: out of memory); the "
        "GPU ran out of memory: stop other work on it (nvidia-smi lists what runs there) or give a smaller "
        "--batch-size. Progress is saved: run the same command again to go on from there")
    assert stopped.value.exit_code == 1
    again = _Watched(predictor)
    assert filter_by_gender(paths, [str(folder)], str(out), "Woman", again, **run).resumed == 8
    assert again.asked == paths[8:]
    filter_by_gender(paths, [str(folder)], str(tmp_path / "whole"), "Woman", predictor, **run)
    assert _predictions(out) == _predictions(tmp_path / "whole")


def test_an_input_that_goes_away_part_way_stops_the_filter_and_its_images_are_predicted_once_back(
        utkface, predictor, tmp_path) -> None:
    # A drive unplugged mid-run: every image left was listed under 'errors' and the run exited 0; and
    # an interrupted run's unreadable images were trusted as such by the next run, never read again.
    folder, paths = _some_faces(utkface, tmp_path / "input", 80)
    run: dict[str, Any] = dict(workers=0, batch_size=4, progress=False)

    class Unplugging(_Watched):
        def predict(self, items):
            if not self.asked:
                folder.rename(tmp_path / "unplugged")  # the images decoded ahead (16) are still predicted
            return super().predict(items)

    out = tmp_path / "women"
    with pytest.raises(RunStopped) as stopped:
        filter_by_gender(paths, [str(folder)], str(out), "Woman", Unplugging(predictor), **run)
    assert str(stopped.value).startswith(f"{folder} went away during the run: 32 images in a row could not be read "
                                         "(file no longer exists); it was unmounted")
    (tmp_path / "unplugged").rename(folder)
    again = _Watched(predictor)
    summary = filter_by_gender(paths, [str(folder)], str(out), "Woman", again, **run)
    assert summary.resumed == 16 and again.asked == paths[16:] and not summary.errors
    filter_by_gender(paths, [str(folder)], str(tmp_path / "whole"), "Woman", predictor, **run)
    assert _predictions(out) == _predictions(tmp_path / "whole")


def test_the_same_command_again_predicts_only_images_new_or_changed_since(utkface, predictor, tmp_path) -> None:
    # A loop over year folders run again: DeepFace takes hours on a large folder, and the finished
    # run's predictions.csv already holds every answer whose image is the file it was.
    import codecs
    import os
    import time

    rows = read_labels(utkface)
    folder = tmp_path / "input"
    folder.mkdir()
    for r in rows[:10]:
        (folder / Path(r["path"]).name).write_bytes((utkface / r["path"]).read_bytes())
    run: dict[str, Any] = dict(workers=0, batch_size=4, progress=False)
    out = tmp_path / "women"

    def paths() -> list[str]:
        return sorted(str(p) for p in folder.iterdir())

    filter_by_gender(paths(), [str(folder)], str(out), "Woman", _Watched(predictor), **run)
    first = _predictions(out)
    table = out / "predictions.csv"  # opened in Excel and saved as "CSV UTF-8", which starts with a BOM
    table.write_bytes(codecs.BOM_UTF8 + table.read_bytes())
    again = _Watched(predictor)
    summary = filter_by_gender(paths(), [str(folder)], str(out), "Woman", again, **run)
    assert again.asked == [] and summary.kept == 10 and _predictions(out) == first
    assert ("10 images predicted by the earlier run into this output and unchanged since: not predicted again"
            in summary.lines())
    changed = Path(paths()[3])
    changed.write_bytes((utkface / rows[20]["path"]).read_bytes())  # another face under the same name
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    added = folder / Path(rows[21]["path"]).name
    added.write_bytes((utkface / rows[21]["path"]).read_bytes())
    third = _Watched(predictor)
    summary = filter_by_gender(paths(), [str(folder)], str(out), "Woman", third, **run)
    assert sorted(third.asked) == sorted([str(changed), str(added)]) and summary.kept == 9
    by_path, before = {r["path"]: r for r in _predictions(out)}, {r["path"]: r for r in first}
    assert len(by_path) == 11 and by_path[str(changed)] != before[str(changed)]  # the new face's prediction
    assert all(by_path[p] == before[p] for p in before if p != str(changed))
    # An interrupted run's kept predictions are checked the same way.
    men = tmp_path / "men"
    with pytest.raises(KeyboardInterrupt):
        filter_by_gender(paths(), [str(folder)], str(men), "Man", _Watched(predictor, stop_after=4), **run)
    first_four = paths()[:4]
    os.utime(first_four[1], ns=(time.time_ns(), time.time_ns() + 4 * 10**9))  # rewritten since
    resumed = _Watched(predictor)
    summary = filter_by_gender(paths(), [str(folder)], str(men), "Man", resumed, **run)
    assert resumed.asked == [first_four[1], *paths()[4:]] and summary.resumed == 3


def test_a_dry_run_says_what_the_same_command_would_predict_and_writes_nothing(utkface, predictor, testpack_dir,
                                                                               tmp_path, monkeypatch, capsys) -> None:
    import os
    import time

    rows = read_labels(utkface)
    folder, _ = _some_faces(utkface, tmp_path / "input", 10)
    out = tmp_path / "women"
    command = ["--input", str(folder), "--output", str(out), "--gender", "Woman", "--model", str(testpack_dir),
               "--workers", "0", "--batch-size", "4", "-q", "--dry-run"]

    class NotLoaded(InsightFaceGender):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("a dry run loaded the model")

    def dry_run() -> list[str]:
        before = tree_of(tmp_path)
        with monkeypatch.context() as m:
            m.setattr("face_organizer.cli.gender.InsightFaceGender", NotLoaded)
            assert run_cli(command) == 0
        assert tree_of(tmp_path) == before  # no folder, lock, progress file or copy made
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "dry run: nothing was predicted or written"
        return lines[1:]

    assert dry_run() == [f"output: {out}: new", "images found: 10; predicted before and unchanged since: 0",
                         "to predict: 10 images (new: 10; rewritten since predicted: 0)"]
    # Interrupted after 4 predictions; then one of those 4 rewritten and an image added: the same command
    # predicts exactly what the dry run counts.
    def paths() -> list[str]:
        return sorted(str(p) for p in folder.iterdir())

    run: dict[str, Any] = dict(workers=0, batch_size=4, progress=False)
    with pytest.raises(KeyboardInterrupt):  # the predictor the command names: its predictions stand
        filter_by_gender(paths(), [str(folder)], str(out), "Woman", _Watched(predictor, stop_after=4), **run)
    os.utime(paths()[1], ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    (folder / Path(rows[30]["path"]).name).write_bytes((utkface / rows[30]["path"]).read_bytes())
    said = dry_run()
    assert said == [f"output: {out}: 0 images placed by earlier runs",
                    "images found: 11; predicted before and unchanged since: 3 (3 by an interrupted run)",
                    "to predict: 8 images (new: 7; rewritten since predicted: 1)",
                    f"Woman (at --min-confidence 0.5) among those predicted before: {said[-1].rsplit(' ', 1)[-1]}"]
    resumed = _Watched(predictor)
    summary = filter_by_gender(paths(), [str(folder)], str(out), "Woman", resumed, **run)
    assert len(resumed.asked) == 8 and summary.resumed == 3
    # Finished: nothing to predict, and the matches of the predictions that stand are counted.
    assert dry_run() == [f"output: {out}: {count(summary.matches, 'image')} placed by earlier runs",
                         "images found: 11; predicted before and unchanged since: 11",
                         "to predict: 0 images (new: 0; rewritten since predicted: 0)",
                         f"Woman (at --min-confidence 0.5) among those predicted before: {summary.matches}"]
    # An output the run would refuse is refused by the dry run too.
    command[command.index("--gender") + 1] = "Man"
    assert run_cli(command) == 2
    assert f"--output {out} holds the output of another gender_filter run, made with other settings (gender Woman, " \
           "now Man)" in capsys.readouterr().err


def test_a_copy_edited_in_the_output_is_kept_when_the_same_command_runs_again(utkface, predictor, tmp_path) -> None:
    folder, paths = _some_faces(utkface, tmp_path / "input", 12)
    out = tmp_path / "women"
    run: dict[str, Any] = dict(workers=0, batch_size=4, progress=False)
    first = filter_by_gender(paths, [str(folder)], str(out), "Woman", predictor, **run)
    copies = sorted(p for p in out.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png"))
    assert first.matches >= 2 and len(copies) == first.matches
    copies[0].write_bytes(b"cropped by hand")
    copies[1].unlink()
    again = filter_by_gender(paths, [str(folder)], str(out), "Woman", predictor, **run)
    assert copies[0].read_bytes() == b"cropped by hand" and copies[1].is_file()
    assert again.status["kept"] == 1 and again.status["placed"] == 1
    lines = again.lines()
    assert "1 not placed: another file is there" in lines[2] and any(
        line.startswith("1 place in the output already held another file (changed or put there since): left as it "
                        "is; move it out of the output and run the same command again") for line in lines)


@pytest.mark.parametrize("link_mode", ["copy", "hardlink", "symlink"])
def test_the_same_command_again_places_the_matches_of_a_folder_that_grew(utkface, predictor, tmp_path, link_mode) -> None:
    # New frames in a year folder, the loop run again: their matches join the earlier run's output. Before,
    # any new match changed the plan and the output was refused as another run's.
    import os
    import time

    def decided(rows):  # images the model calls a woman or a man with some confidence, as the tool would
        found = predictor.predict([(r["path"], read_image(utkface / r["path"])) for r in rows])
        return ([r for r, p in zip(rows, found) if p.gender == "Woman" and p.confidence > 0.8],
                [r for r, p in zip(rows, found) if p.gender == "Man" and p.confidence > 0.8])

    women, men = decided(read_labels(utkface)[:60])
    assert len(women) >= 6 and len(men) >= 2
    folder = tmp_path / "input"
    folder.mkdir()
    for r in women[:3] + men[:1]:
        (folder / Path(r["path"]).name).write_bytes((utkface / r["path"]).read_bytes())
    run: dict[str, Any] = dict(workers=0, batch_size=4, progress=False, link_mode=link_mode)
    out = tmp_path / "women"

    def paths() -> list[str]:
        return sorted(str(p) for p in folder.iterdir())

    def rewrite(path: Path, row: dict[str, str]) -> None:  # another face under the same name (a new file), a later time
        (tmp_path / "new.jpg").write_bytes((utkface / row["path"]).read_bytes())
        os.replace(tmp_path / "new.jpg", path)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))

    first = filter_by_gender(paths(), [str(folder)], str(out), "Woman", predictor, **run)
    assert first.matches == 3 and first.status == {"placed": 3}
    placed = {r["path"]: r["destination"] for r in csv.DictReader(open(out / "predictions.csv", encoding="utf-8"))}
    renewed, turned = (folder / Path(women[0]["path"]).name), (folder / Path(women[1]["path"]).name)
    rewrite(renewed, women[4])  # another woman: her copy is made anew
    rewrite(turned, men[1])  # a man now: the earlier copy stays, and the summary says so
    added = folder / Path(women[5]["path"]).name
    added.write_bytes((utkface / women[5]["path"]).read_bytes())
    watched = _Watched(predictor)
    summary = filter_by_gender(paths(), [str(folder)], str(out), "Woman", watched, **run)
    assert sorted(watched.asked) == sorted(map(str, (renewed, turned, added)))
    assert summary.matches == 3
    assert summary.status == ({"placed": 1, "exists": 2} if link_mode == "symlink" else {"placed": 2, "exists": 1})
    assert Path(placed[str(renewed)]).read_bytes() == renewed.read_bytes()
    if link_mode != "symlink":  # a link shows the file as it is now
        assert Path(placed[str(turned)]).read_bytes() == (utkface / women[1]["path"]).read_bytes()
    left = ("1 image placed here by an earlier run no longer matches (rewritten since): its copy is left in place, "
            "with its destination in predictions.csv (matched 0)")
    assert left in summary.lines()
    after = {r["path"]: r for r in csv.DictReader(open(out / "predictions.csv", encoding="utf-8"))}
    assert after[str(added)]["matched"] == "1" and Path(after[str(added)]["destination"]).read_bytes() == added.read_bytes()
    assert all(after[p]["destination"] == d for p, d in placed.items())  # the copy left in place too
    assert (after[str(turned)]["gender"], after[str(turned)]["matched"]) == ("Man", "0")
    # Once more, nothing new: nothing is predicted or placed again, and the copy left is still told of.
    again = _Watched(predictor)
    summary = filter_by_gender(paths(), [str(folder)], str(out), "Woman", again, **run)
    assert again.asked == [] and summary.status == {"exists": 3} and left in summary.lines()
    # An image taken out of the folder, then put back as another woman's face: its copy is made anew.
    back = folder / Path(women[2]["path"]).name
    back.unlink()
    filter_by_gender(paths(), [str(folder)], str(out), "Woman", predictor, **run)
    rewrite(back, women[3])
    filter_by_gender(paths(), [str(folder)], str(out), "Woman", predictor, **run)
    assert Path(placed[str(back)]).read_bytes() == back.read_bytes()
    # Another gender into the same output is still another run's output.
    with pytest.raises(SetupError, match="gender"):
        filter_by_gender(paths(), [str(folder)], str(out), "Man", predictor, **run)


@pytest.mark.parametrize("link_mode", ["copy", "hardlink"])
def test_an_interrupted_placement_goes_on_over_a_folder_changed_since(utkface, predictor, tmp_path, monkeypatch,
                                                                       link_mode) -> None:
    # Stopped while placing (Ctrl-C, a full disk), then new frames and a rewritten one before the re-run:
    # the re-run adds to what was placed and makes the rewritten image's copy anew.
    import os
    import time

    from face_organizer import organize

    found = predictor.predict([(r["path"], read_image(utkface / r["path"])) for r in read_labels(utkface)[:60]])
    women = [r for r, p in zip(read_labels(utkface)[:60], found) if p.gender == "Woman" and p.confidence > 0.8]
    folder = tmp_path / "input"
    folder.mkdir()
    for r in women[:4]:
        (folder / Path(r["path"]).name).write_bytes((utkface / r["path"]).read_bytes())
    run: dict[str, Any] = dict(workers=0, batch_size=4, progress=False, link_mode=link_mode)
    out = tmp_path / "women"

    def paths() -> list[str]:
        return sorted(str(p) for p in folder.iterdir())

    real, calls = organize.place, []

    def cut(*args, **kwargs):
        calls.append(args)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(organize, "place", cut)
    with pytest.raises(KeyboardInterrupt):
        filter_by_gender(paths(), [str(folder)], str(out), "Woman", predictor, **run)
    monkeypatch.undo()
    first = Path(calls[0][0])  # placed before the stop
    (tmp_path / "new.jpg").write_bytes((utkface / women[4]["path"]).read_bytes())
    os.replace(tmp_path / "new.jpg", first)  # another woman's face under its name
    os.utime(first, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    added = folder / Path(women[5]["path"]).name
    added.write_bytes((utkface / women[5]["path"]).read_bytes())
    summary = filter_by_gender(paths(), [str(folder)], str(out), "Woman", predictor, **run)
    assert summary.matches == 5
    table = {r["path"]: r for r in csv.DictReader(open(out / "predictions.csv", encoding="utf-8"))}
    for p in paths():
        assert table[p]["matched"] == "1" and Path(table[p]["destination"]).read_bytes() == Path(p).read_bytes()


@pytest.mark.parametrize("link_mode", ["copy", "hardlink", "symlink"])
def test_a_folder_changing_between_runs_keeps_every_match_placed(utkface, predictor, tmp_path, monkeypatch,
                                                                 link_mode) -> None:
    # A year folder as a loop over years meets it run after run: images added, rewritten as new files and
    # taken out between runs, some runs stopped while predicting or while placing, then run again. After
    # every run that finishes, each match's destination holds the image as it is now.
    import os
    import random
    import time

    from face_organizer import organize

    rng = random.Random(link_mode)
    rows = [r["path"] for r in read_labels(utkface)]
    folder, out = tmp_path / "input", tmp_path / "women"
    folder.mkdir()
    names = [f"frame_{i:02d}.jpg" for i in range(30)]

    def put(name: str, stamp: int) -> None:
        (tmp_path / "new.jpg").write_bytes((utkface / rng.choice(rows)).read_bytes())
        os.replace(tmp_path / "new.jpg", folder / name)
        os.utime(folder / name, ns=(time.time_ns(), time.time_ns() + stamp * 10**9))

    class Stopping:  # Ctrl-C after the first batch of predictions
        name, device = predictor.name, predictor.device

        def __init__(self) -> None:
            self.asked = 0

        def predict(self, items):
            if self.asked:
                raise KeyboardInterrupt
            self.asked += len(items)
            return predictor.predict(items)

    real_place, placed = organize.place, []

    def stop_placing_after_one(*args, **kwargs):  # Ctrl-C after one file is placed
        placed.append(args)
        if len(placed) % 2 == 0:
            raise KeyboardInterrupt
        return real_place(*args, **kwargs)

    for name in names[:8]:
        put(name, 0)
    for turn in range(1, 13):
        paths = sorted(str(p) for p in folder.iterdir())
        stopped = rng.choice(["no", "predicting", "placing"])
        with monkeypatch.context() as patch:
            if stopped == "placing":
                patch.setattr(organize, "place", stop_placing_after_one)
            if stopped != "no":
                with pytest.raises(KeyboardInterrupt):
                    filter_by_gender(paths, [str(folder)], str(out), "Woman", Stopping() if stopped == "predicting"
                                     else predictor, workers=0, batch_size=2, progress=False, link_mode=link_mode)
        if stopped == "placing" and rng.random() < 0.5:  # changed again before the re-run
            put(rng.choice([p.name for p in folder.iterdir()]), turn)
            paths = sorted(str(p) for p in folder.iterdir())
        filter_by_gender(paths, [str(folder)], str(out), "Woman", predictor, workers=0, batch_size=4, progress=False,
                         link_mode=link_mode)
        table = {r["path"]: r for r in csv.DictReader(open(out / "predictions.csv", encoding="utf-8"))}
        for p in paths:
            if table[p]["matched"] == "1":
                assert Path(table[p]["destination"]).read_bytes() == Path(p).read_bytes(), (turn, p)
        present = [p.name for p in folder.iterdir()]
        for name in rng.sample([n for n in names if n not in present], 2):
            put(name, turn)
        for name in rng.sample(present, 2):
            put(name, turn)
        (folder / rng.choice(present)).unlink()


def test_the_same_command_again_with_nothing_new_loads_no_model(utkface, testpack_dir, tmp_path, monkeypatch,
                                                                capsys) -> None:
    # DeepFace imports TensorFlow and builds its model: seconds in every pass of a loop over year folders.
    folder = tmp_path / "input"
    folder.mkdir()
    for r in read_labels(utkface)[:4]:
        (folder / Path(r["path"]).name).write_bytes((utkface / r["path"]).read_bytes())
    (folder / "broken.jpg").write_text("not an image")  # its error stands too, as its file is unchanged
    command = ["--input", str(folder), "--output", str(tmp_path / "o"), "--gender", "Man", "--model", str(testpack_dir),
               "--workers", "0", "-q"]
    assert run_cli(command) == 0
    first = capsys.readouterr().out
    assert re.search(r"^elapsed: \d+\.\d s, \d+\.\d images/s predicted, device: cpu$", first, re.M), first

    class NotLoaded(InsightFaceGender):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise AssertionError("the model was loaded for a re-run with nothing to predict")

    monkeypatch.setattr("face_organizer.cli.gender.InsightFaceGender", NotLoaded)
    assert run_cli(command) == 0
    again = capsys.readouterr().out
    assert again.splitlines()[:2] == first.splitlines()[:2]  # the same matches, the same counts
    assert "5 images predicted by the earlier run into this output and unchanged since" in again
    assert re.search(r"^elapsed: \d+\.\d s, device: none \(nothing new to predict\)$", again, re.M), again


def test_a_confidence_at_the_threshold_is_decided_alike_when_read_back(utkface, tmp_path) -> None:
    # predictions.csv keeps 4 digits: 0.49996 reads back as 0.5000. Decided on the unrounded value,
    # the first run left it out and the re-run, reading 0.5000, took it in: another plan, refused.
    from face_organizer.gender import GenderPrediction

    class AtThreshold:
        device, name = "cpu", "fixed"

        def predict(self, items):
            return [GenderPrediction(path, "Woman", 0.49996, 30.0) for path, _ in items]

    image = tmp_path / "input" / "face.jpg"
    image.parent.mkdir()
    image.write_bytes((utkface / read_labels(utkface)[0]["path"]).read_bytes())
    run: dict[str, Any] = dict(min_confidence=0.5, workers=0, batch_size=4, progress=False)
    out = tmp_path / "women"
    first = filter_by_gender([str(image)], [str(image.parent)], str(out), "Woman", AtThreshold(), **run)
    again = filter_by_gender([str(image)], [str(image.parent)], str(out), "Woman", AtThreshold(), **run)
    assert first.matches == again.matches == 1 and again.kept == 1


def test_unusable_output_is_refused_before_predicting(utkface, predictor, tmp_path) -> None:
    # DeepFace takes hours on a large folder: an output that could never be written is refused first.
    image = tmp_path / "input" / "face.jpg"
    image.parent.mkdir()
    image.write_bytes((utkface / read_labels(utkface)[0]["path"]).read_bytes())
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("user file")
    watched = _Watched(predictor)
    for output in (taken, taken / "notes.txt", Path("/sys/face-organizer-output")):  # /sys: read-only, root too
        with pytest.raises(SetupError):
            filter_by_gender([str(image)], [str(image.parent)], str(output), "Woman", watched, workers=0,
                             batch_size=4, progress=False)
        assert not Path(progress_path(str(output))).exists()
    assert watched.asked == []
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]


def test_an_output_of_other_input_folders_is_refused_before_predicting(utkface, predictor, tmp_path) -> None:
    # A loop over year folders given one --output: the second year is refused at once, not after
    # hours of predictions; the same command again finds its own output and places nothing twice.
    labels = read_labels(utkface)
    women, men = [r for r in labels if r["gender"] == "female"][:3], [r for r in labels if r["gender"] == "male"][:3]
    years = {}
    for year, part in (("2017", women[:2] + men[:1]), ("2018", women[2:] + men[1:])):
        years[year] = tmp_path / "input" / year
        years[year].mkdir(parents=True)
        for r in part:
            (years[year] / Path(r["path"]).name).write_bytes((utkface / r["path"]).read_bytes())
    out = tmp_path / "women"

    def run(year: str, gender: str = "Woman", model: _Watched | None = None):
        paths = sorted(str(p) for p in years[year].iterdir())
        return filter_by_gender(paths, [str(years[year])], str(out), gender, model or _Watched(predictor),
                                workers=0, batch_size=4, progress=False)

    first = run("2017")
    assert first.matches >= 1
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    watched = _Watched(predictor)
    with pytest.raises(SetupError, match=r"another gender_filter run, of .*2017: give each input folder its own"):
        run("2018", model=watched)
    assert watched.asked == [] and not Path(progress_path(str(out))).exists()
    with pytest.raises(SetupError, match="made with other settings \\(gender Woman, now Man\\)"):
        run("2017", "Man", watched)
    assert watched.asked == []
    again = run("2017")  # the same run: nothing new, nothing refused
    assert again.matches == first.matches and sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


@pytest.mark.parametrize(("given", "message"), [
    (["--detector-backend", "retinaface"], "--detector-backend is for --backend deepface: the insightface backend "
     "finds faces with the pack's own detector"),
    (["--backend", "deepface", "--device", "cuda"], "--device cuda is for --backend insightface: DeepFace runs on the "
     "CPU here"),
    (["--backend", "deepface", "--tensorrt"], "--tensorrt is for --backend insightface"),
])
def test_options_the_backend_would_not_follow_are_refused_before_any_work(given, message, tmp_path, capsys) -> None:
    # Passed over without a word: --device cuda ran DeepFace on the CPU, and --detector-backend changed nothing.
    with pytest.raises(SystemExit) as usage:
        gender_main(["--input", str(tmp_path / "faces"), "--output", str(tmp_path / "out"), "--gender", "Woman",
                     *given])
    assert usage.value.code == 2 and f"gender_filter.py: error: {message}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_tensorrt_on_the_cpu_is_refused_before_any_work(tmp_path, capsys) -> None:
    assert run_cli(["--input", str(tmp_path / "faces"), "--output", str(tmp_path / "out"), "--gender", "Woman",
                    "--device", "cpu", "--tensorrt"]) == 2
    assert capsys.readouterr().err.startswith("Error: --tensorrt is ONNX Runtime's provider for NVIDIA GPUs")
    assert not list(tmp_path.iterdir())


def test_deepface_that_cannot_make_its_folder_is_one_clear_line(tmp_path, monkeypatch) -> None:
    # DeepFace makes its folders under $DEEPFACE_HOME as it is imported: a root-owned volume, read by a
    # non-root user (docker exec -u), stopped it with a bare "Permission denied".
    import sys

    from face_organizer.gender import DeepFaceGender

    fake = tmp_path / "deepface"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise PermissionError(13, 'Permission denied', '/models/deepface')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "deepface", raising=False)
    monkeypatch.setenv("DEEPFACE_HOME", "/models/deepface")
    with pytest.raises(SetupError, match=r"^--backend deepface: DeepFace cannot make its folder in /models/deepface "
                                         r"\(Permission denied\); set DEEPFACE_HOME to a folder this user"):
        DeepFaceGender()


def test_deepface_without_its_weights_names_the_folder_they_go_in(tmp_path, monkeypatch) -> None:
    # Offline, DeepFace's download error was cut at 120 characters, mid-address, and the line said
    # "$DEEPFACE_HOME/.deepface/weights" where DEEPFACE_HOME was not set.
    import face_organizer.gender as gender

    class Offline:
        @staticmethod
        def build_model(name: str, task: str) -> None:
            raise ValueError("An exception occurred while downloading gender_model_weights.h5 from https://"
                             + "x" * 200)

    monkeypatch.setattr(gender, "import_deepface", lambda: Offline)
    # TensorFlow imported here, before DeepFace (which sets TF_USE_LEGACY_KERAS as it is imported), gave the
    # DeepFace detectors of test_backends.py, run after this file, a Keras of the other kind.
    monkeypatch.setattr(gender, "_keep_tensorflow_off_gpu", lambda: None)
    monkeypatch.delenv("DEEPFACE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(SetupError) as caught:
        gender.DeepFaceGender()
    assert f"put gender_model_weights.h5 into {tmp_path}/.deepface/weights (" in str(caught.value)
    assert "x" * 10 not in str(caught.value)
    monkeypatch.setenv("DEEPFACE_HOME", "/models/deepface")
    with pytest.raises(SetupError, match="into /models/deepface/.deepface/weights "):
        gender.DeepFaceGender()
