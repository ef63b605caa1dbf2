"""The all-GPUs launcher, run on the CPU: N workers give the same embeddings as one run."""

from __future__ import annotations

import codecs
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from face_organizer import embfile
from face_organizer.cli import common
from face_organizer.cli.embed import main as embed_main
from face_organizer.cli.multigpu import main as multi_main
from face_organizer.cluster_stage import load_embeddings
from face_organizer.errors import EmbeddingsFileError, SetupError
from face_organizer.images import file_signature, read_image
from face_organizer.moves import follow_moves, reached_elsewhere
from face_organizer.multigpu import parse_gpus, shard

from conftest import ROOT, child_processes, needs_proc, wait_gone


def test_sharding_is_balanced_complete_and_stable() -> None:
    paths = [f"/in/{year}/frame_{i:04d}.png" for year in (2006, 2007) for i in range(500)] + [f"/in/2008/x{i}.png" for i in range(7)]
    parts = shard(paths, 3)
    assert sorted(p for part in parts for p in part) == sorted(paths)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(part == sorted(part) for part in parts)
    # By file, not by folder: every worker gets files of every year.
    assert all({p.split("/")[2] for p in part} >= {"2006", "2007"} for part in parts)
    moved = sum(len(set(a) - set(b)) for a, b in zip(parts, shard(paths + ["/in/2009/new.png"], 3)))
    assert moved <= 2


def test_frame_blocks_keep_a_shots_frames_on_one_worker() -> None:
    paths = [f"/in/{year}/frame_{i:05d}.png" for year in (2006, 2007, 2008) for i in range(3000)]
    together = {}
    for block in (0, 64):
        parts = shard(paths, 4, block)
        assert sorted(p for part in parts for p in part) == sorted(paths)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        worker = {p: n for n, part in enumerate(parts) for p in part}
        together[block] = np.mean([worker[a] == worker[b] for a, b in zip(paths, paths[1:])])
    assert together[0] < 0.3 and together[64] > 0.97, together  # a shot of frames: one worker, in a row
    # Frames added at the end of a folder, and a new folder, move few of those already sharded.
    grown = paths + [f"/in/2008/frame_{i:05d}.png" for i in range(3000, 3100)] + [f"/in/2009/x{i}.png" for i in range(500)]
    before = {p: n for n, part in enumerate(shard(paths, 4, 64)) for p in part}
    after = {p: n for n, part in enumerate(shard(grown, 4, 64)) for p in part}
    assert sum(before[p] != after[p] for p in paths) <= 4 * 64, sum(before[p] != after[p] for p in paths)


def test_reuse_of_frames_finds_as_many_repeats_over_two_workers_as_in_one_run(video_crops, testpack_dir, tmp_path,
                                                                               capsys) -> None:
    from face_organizer.samples import shot_frames
    from conftest import write_image

    rng = np.random.default_rng(0)
    folder = tmp_path / "input" / "2019"
    for i, crop in enumerate(p for c in video_crops.values() for p in c[:8]):
        for f, frame in enumerate(shot_frames(read_image(crop), 4, rng)):
            write_image(folder / f"frame_{i:03d}_{f}.png", frame)
    args = ["--model", str(testpack_dir), "--device", "cpu", "--workers", "0", "--reuse-similar-frames", "-q"]
    assert common.run(embed_main, ["--input", str(folder), "--output", str(tmp_path / "one.pkl"), *args]) == 0
    out = tmp_path / "multi"
    assert common.run(multi_main, ["--input", str(folder), "--output-dir", str(out), "--gpus", "0,1", *args]) == 0
    capsys.readouterr()
    one = len(embfile.load(tmp_path / "one.pkl").reused)
    two = sum(len(embfile.load(out / f"embeddings_gpu{g}.pkl").reused) for g in (0, 1))
    assert one >= 0.6 * len(list(folder.iterdir())) and two >= one - 2, (one, two)  # a shot cut at most at the boundary


def test_gpu_list_parsing(monkeypatch) -> None:
    assert parse_gpus("0,2") == [0, 2]
    with pytest.raises(SetupError, match="must list distinct GPU ids: got '0,0'"):
        parse_gpus("0,0")
    with pytest.raises(SetupError, match=r"ids such as 0,1,2 \(for the CPU: --gpus 0 --device cpu\): got '-1'"):
        parse_gpus("-1")  # insightface's ctx_id for the CPU
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(SetupError, match="no GPU found"):
        parse_gpus("all")


def test_two_cpu_workers_equal_one_run(video_crops, testpack_dir, tmp_path, capsys) -> None:
    crops = [p for c in video_crops.values() for p in c]
    root = tmp_path / "input"
    for i, p in enumerate(crops):
        name = p.name if i != 3 else "two\nlines.png"  # the launcher's file lists must carry line breaks too
        target = root / ("2017" if i % 2 else "2018") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(p.read_bytes())
    inputs = [str(root / "2017"), str(root / "2018")]
    common_args = ["--model", str(testpack_dir), "--device", "cpu", "--workers", "0", "--batch-size", "8"]
    assert common.run(embed_main, ["--input", *inputs, "--output", str(tmp_path / "single.pkl"), "-q", *common_args]) == 0
    out = tmp_path / "multi"
    assert common.run(multi_main, ["--input", *inputs, "--output-dir", str(out), "--gpus", "0,1", "-q", *common_args]) == 0
    printed = capsys.readouterr().out
    # --device cpu: the CPU was asked for, so the workers are named as CPU workers, without a warning
    assert "worker 0 (CPU): ok: " in printed and "worker 1 (CPU): ok: " in printed and "ON THE CPU" not in printed
    files = [embfile.load(out / f"embeddings_gpu{g}.pkl") for g in (0, 1)]
    assert sorted(p.name for p in out.iterdir()) == [f"embeddings_gpu{g}.{e}" for g in (0, 1)
                                                     for e in ("files.txt", "log", "pkl")]  # status files gone
    assert all(len(f.rows) > 0 for f in files) and not set(files[0].rows.paths) & set(files[1].rows.paths)
    assert abs(len(files[0].rows) - len(files[1].rows)) <= 1
    merged = load_embeddings([str(out / "embeddings_gpu0.pkl"), str(out / "embeddings_gpu1.pkl")])
    single = embfile.load(tmp_path / "single.pkl")
    order = np.argsort(merged.rows.paths)
    assert [merged.rows.paths[i] for i in order] == single.rows.paths
    assert str(root / "2017" / "two\nlines.png") in single.rows.paths and not merged.failed
    np.testing.assert_allclose(merged.rows.embeddings[order], single.rows.embeddings, atol=1e-5)
    assert sorted(merged.meta["inputs"]) == sorted(inputs)
    # embeddings_gpu* without .pkl also names the launcher's logs and file lists: the error says so.
    with pytest.raises(EmbeddingsFileError, match=r"embeddings_gpu0\.files\.txt: not a readable embeddings file .*; "
                                                  r"name only the \.pkl files \(embeddings_gpu\*\.pkl"):
        load_embeddings(sorted(str(p) for p in out.glob("embeddings_gpu*")))
    # One summary over both workers, with the counts the one run's summary gives.
    n = len(single.rows)
    total = printed[printed.index("total over the 2 workers:"):]
    assert f"images found: {n}; already embedded: 0" in total and f"embedded now: {n} images, {n} faces" in total


@needs_proc
def test_workers_save_and_stop_when_the_launcher_is_killed(lfw, testpack_dir, tmp_path, capsys) -> None:
    """kill -9 (or the OOM killer) gives the launcher no chance to stop its workers. They stop
    themselves, their progress saved, so that the re-run finds its outputs free and goes on."""
    folder = tmp_path / "input"
    folder.mkdir()
    photos = sorted(lfw.rglob("*.jpg"))[:1000]  # long enough that no worker finishes first, even on fast cores
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    out = tmp_path / "multi"
    args = ["--input", str(folder), "--output-dir", str(out), "--gpus", "0,1", "-q", "--model", str(testpack_dir),
            "--device", "cpu", "--workers", "0", "--checkpoint-seconds", "0.5"]
    launcher = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "embed_all_gpus.py"), *args],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        done = [0, 0]
        while min(done) == 0 and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            for gpu in (0, 1):
                try:
                    done[gpu] = json.loads((out / f"embeddings_gpu{gpu}.status.json").read_text())["done"]
                except (OSError, ValueError, KeyError):
                    pass
        workers = child_processes(launcher.pid)
        assert min(done) > 0 and len(workers) == 2, "both workers embedding"
    finally:
        launcher.kill()
        launcher.wait()
    assert not wait_gone(workers, 60)
    for gpu in (0, 1):
        log = (out / f"embeddings_gpu{gpu}.log").read_text()
        assert f"the launcher (pid {launcher.pid}) has gone: stopping" in log and "Stopped by SIGTERM" in log, log
    assert common.run(multi_main, args) == 0
    total = capsys.readouterr().out
    total = total[total.index("total over the 2 workers:"):]
    assert f"images found: {len(photos):,}; already embedded: " in total and "; already embedded: 0\n" not in total
    files = [embfile.load(out / f"embeddings_gpu{g}.pkl") for g in (0, 1)]
    assert sorted(files[0].rows.paths + files[1].rows.paths) == sorted(str(folder / p.name) for p in photos)


def test_an_installed_package_runs_its_workers_without_the_scripts_folder(video_crops, testpack_dir, tmp_path) -> None:
    """pip installs the package without scripts/ (the image's face-organizer command runs that
    copy): its workers start through the package's own entry instead of the missing script."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "face_organizer", site / "face_organizer", ignore=shutil.ignore_patterns("__pycache__"))
    folder = tmp_path / "input"
    folder.mkdir()
    for i, crop in enumerate(p for c in video_crops.values() for p in c):
        (folder / f"f{i:02d}.png").write_bytes(crop.read_bytes())
    out = tmp_path / "multi"
    run = subprocess.run([sys.executable, "-m", "face_organizer", "embed-all-gpus", "--input", str(folder),
                          "--output-dir", str(out), "--gpus", "0,1", "-q", "--model", str(testpack_dir),
                          "--device", "cpu", "--workers", "0"],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "worker 0 (CPU): ok: " in run.stdout and "worker 1 (CPU): ok: " in run.stdout
    files = [embfile.load(out / f"embeddings_gpu{g}.pkl") for g in (0, 1)]
    assert len(files[0].rows) + len(files[1].rows) == len(list(folder.iterdir()))


def _crops_folder(tmp_path: Path, crops: list[Path], testpack_dir: Path) -> tuple[Path, Path, list[str]]:
    """``crops`` copied to ``input/f00.png``, …; the launcher's output folder and its arguments
    (without ``--gpus``)."""
    folder = tmp_path / "input"
    folder.mkdir()
    for i, crop in enumerate(crops):
        (folder / f"f{i:02d}.png").write_bytes(crop.read_bytes())
    out = tmp_path / "multi"
    return folder, out, ["--input", str(folder), "--output-dir", str(out), "-q", "--model", str(testpack_dir),
                         "--device", "cpu", "--workers", "0"]


def test_gpus_added_later_embed_only_the_new_images(video_crops, testpack_dir, tmp_path, capsys) -> None:
    # Two GPUs, then new images and four GPUs: what the first run embedded stays in its files
    # (re-sharding all of it would move most files to another GPU's file, embedded a second time);
    # the new images are spread over all four.
    crops = next(iter(video_crops.values()))[:12]
    folder, out, args = _crops_folder(tmp_path, crops[:8], testpack_dir)
    assert common.run(multi_main, [*args, "--gpus", "0,1"]) == 0
    first = {g: embfile.load(out / f"embeddings_gpu{g}.pkl").rows.paths for g in (0, 1)}
    for i, crop in enumerate(crops[8:], start=8):
        (folder / f"f{i:02d}.png").write_bytes(crop.read_bytes())
    capsys.readouterr()
    # A dry run first: what each worker would embed, and nothing written (no file list, no file, no log).
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert common.run(multi_main, [*args, "--gpus", "0,1,2,3", "--dry-run"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    planned = capsys.readouterr().out.splitlines()
    assert planned[0] == "dry run: nothing was embedded or written"
    assert planned[-1] == "to embed over the 4 workers: 4 images"
    for gpu in (0, 1):
        at = planned.index(f"worker {gpu} (CPU): 5 files")
        assert planned[at + 1:at + 4] == [f"  embeddings file: {out / f'embeddings_gpu{gpu}.pkl'}: 4 faces",
                                          "  images found: 5; already embedded: 4", "  to embed: 1 image"]
    at = planned.index("worker 3 (CPU): 1 file")
    assert planned[at + 1:at + 4] == [f"  embeddings file: {out / 'embeddings_gpu3.pkl'}: new",
                                      "  images found: 1; already embedded: 0", "  to embed: 1 image"]
    assert common.run(multi_main, [*args, "--gpus", "0,1,2,3"]) == 0
    printed = capsys.readouterr().out
    assert "images found: 12; already embedded: 8\n  embedded now: 4 images" in printed
    files = {g: embfile.load(out / f"embeddings_gpu{g}.pkl").rows.paths for g in (0, 1, 2, 3)}
    assert all(set(first[g]) <= set(files[g]) for g in (0, 1))
    assert [len(files[g]) - len(first.get(g, [])) for g in (0, 1, 2, 3)] == [1, 1, 1, 1]
    # Each worker's log keeps the runs before it, one header a run.
    headers = [line for line in (out / "embeddings_gpu0.log").read_text().splitlines() if line.startswith("=== ")]
    assert len(headers) == 2 and headers[0].endswith(": GPU 0, 4 files") and headers[1].endswith(": GPU 0, 5 files")
    assert sorted(p for g in files for p in files[g]) == sorted(str(p) for p in folder.iterdir())  # each once
    # --no-resume starts over: the lists of the run before are not followed, the shares are equal.
    assert common.run(multi_main, [*args, "--gpus", "0,1,2,3", "--no-resume"]) == 0
    assert [len(embfile.load(out / f"embeddings_gpu{g}.pkl").rows) for g in (0, 1, 2, 3)] == [3, 3, 3, 3]


def test_a_gpu_no_longer_given_keeps_what_its_file_holds(video_crops, testpack_dir, models, tmp_path, capsys) -> None:
    # Three GPUs; GPU 2 dies part-way (its file: a checkpoint of its first two images), and one of
    # those is rewritten since. Re-run on GPUs 0 and 1: the image GPU 2's file still holds rightly
    # stays there, only the rest of its files are embedded by the others, and its file is finished.
    from face_organizer import images
    from face_organizer.embed_run import run_embeddings
    from face_organizer.embfile import parts_dir
    from face_organizer.multigpu import read_file_list

    crops = [p for c in video_crops.values() for p in c]
    folder, out, args = _crops_folder(tmp_path, crops[:12], testpack_dir)
    assert common.run(multi_main, [*args, "--gpus", "0,1,2"]) == 0
    listed = read_file_list(str(out / "embeddings_gpu2.files.txt"))
    assert len(listed) == 4
    gpu2 = out / "embeddings_gpu2.pkl"
    gpu2.unlink()

    def dying(paths):
        if set(paths) & set(listed[2:]):
            raise KeyboardInterrupt
        return images.load_many(paths)

    with pytest.raises(KeyboardInterrupt):
        run_embeddings(listed, gpu2, models, batch_size=1, streams=1, checkpoint_seconds=0, progress=False,
                       loader=dying)
    assert not gpu2.exists() and len(list(parts_dir(gpu2).glob("part-*.pkl"))) == 2
    Path(listed[1]).write_bytes(crops[12].read_bytes())  # another face since
    os.utime(listed[1], ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
    for i, crop in enumerate(crops[13:15], start=13):  # and new images
        (folder / f"f{i:02d}.png").write_bytes(crop.read_bytes())
    capsys.readouterr()
    kept = f"worker 2 (CPU): not given: its {gpu2} keeps 1 image, not embedded again; 3 files spread over the others"
    assert common.run(multi_main, [*args, "--gpus", "0,1", "--dry-run"]) == 0  # says so; GPU 2's parts stay
    planned = capsys.readouterr().out.splitlines()
    assert kept in planned and planned[-1] == "to embed over the 2 workers: 5 images"
    assert len(list(parts_dir(gpu2).glob("part-*.pkl"))) == 2 and not gpu2.exists()
    assert common.run(multi_main, [*args, "--gpus", "0,1"]) == 0
    printed = capsys.readouterr().out
    assert kept in printed
    # 8 held by GPUs 0 and 1; 2 new, 2 GPU 2 never embedded and the rewritten one: 5 embedded now.
    assert "images found: 13; already embedded: 8\n  embedded now: 5 images" in printed
    assert "  beside these, 1 image in the files of GPUs not given (see above)" in printed
    assert embfile.load(gpu2).rows.paths == [listed[0]] and not parts_dir(gpu2).exists()
    assert read_file_list(str(out / "embeddings_gpu2.files.txt")) == [listed[0]]
    files = [str(out / f"embeddings_gpu{g}.pkl") for g in (0, 1, 2)]
    rows = [p for f in files for p in embfile.load(f).rows.paths]
    assert sorted(rows) == sorted(str(p) for p in folder.iterdir())  # each image in one file only
    merged = load_embeddings(files)
    assert common.run(embed_main, ["--input", str(folder), "--output", str(tmp_path / "one.pkl"), *args[4:]]) == 0
    single = embfile.load(tmp_path / "one.pkl")
    order = np.argsort(merged.rows.paths)
    assert [merged.rows.paths[i] for i in order] == single.rows.paths
    np.testing.assert_allclose(merged.rows.embeddings[order], single.rows.embeddings, atol=1e-5)
    # GPU 2 given again: its list still says what its file holds, so nothing is embedded twice.
    capsys.readouterr()
    assert common.run(multi_main, [*args, "--gpus", "0,1,2"]) == 0
    assert "images found: 14; already embedded: 14\n  embedded now: 0 images" in capsys.readouterr().out


def test_failing_worker_is_reported_with_rerun_command(video_crops, testpack_dir, tmp_path, capsys) -> None:
    root = tmp_path / "input"
    for i, p in enumerate(next(iter(video_crops.values()))[:6]):
        (root / "2017").mkdir(parents=True, exist_ok=True)
        (root / "2017" / f"f{i}.png").write_bytes(p.read_bytes())
    out = tmp_path / "multi"
    (out / "embeddings_gpu1.pkl").mkdir(parents=True)  # worker 1 cannot write its file
    code = common.run(multi_main, ["--input", str(root / "2017"), "--output-dir", str(out), "--gpus", "0,1", "-q",
                                   "--model", str(testpack_dir), "--device", "cpu", "--workers", "0"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "worker 0 (CPU): ok" in printed and "worker 1 (CPU): FAILED" in printed
    assert "is a folder" in printed and "GPU_ID=1 " in printed and "re-run it alone" in printed
    assert "or leave 1 out of --gpus and run this command again" in printed
    assert "total over the 1 of 2 workers that finished:\n  images found: 3; already embedded: 0" in printed
    assert (out / "embeddings_gpu0.pkl").is_file()
    # The list the re-run command names is there; the finished worker's status file is gone.
    assert (out / "embeddings_gpu1.files.txt").is_file() and not (out / "embeddings_gpu0.status.json").exists()
    # GPU 1 left out, as the failure line offers: its files go to GPU 0.
    assert common.run(multi_main, ["--input", str(root / "2017"), "--output-dir", str(out), "--gpus", "0", "-q",
                                   "--model", str(testpack_dir), "--device", "cpu", "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "images found: 6; already embedded: 3\n  embedded now: 3 images" in printed
    assert f"worker 1 (CPU): not given: {out / 'embeddings_gpu1.pkl'} cannot be read (" in printed, printed
    assert not (out / "embeddings_gpu1.files.txt").exists()
    # Every worker failing (here neither can write its file) is no GPU's fault: leaving one out is not offered.
    both = tmp_path / "both"
    for gpu in (0, 1):
        (both / f"embeddings_gpu{gpu}.pkl").mkdir(parents=True)
    assert common.run(multi_main, ["--input", str(root / "2017"), "--output-dir", str(both), "--gpus", "0,1", "-q",
                                   "--model", str(testpack_dir), "--device", "cpu", "--workers", "0"]) == 1
    failing = capsys.readouterr().out
    assert "out of --gpus" not in failing and failing.count("re-run it alone") == 2
    assert failing.endswith("every worker failed: mend what they said, then run this command again (each resumes)\n")


def test_file_lists_one_per_line_or_nul_separated(tmp_path) -> None:
    from face_organizer.multigpu import read_file_list, write_file_list

    names = [str(tmp_path / "a b.png"), str(tmp_path / "two\nlines.png"), str(tmp_path / "end\r.png")]
    write_file_list(tmp_path / "nul.txt", names)
    assert read_file_list(str(tmp_path / "nul.txt")) == sorted(names)
    write_file_list(tmp_path / "plain.txt", names[:1])
    assert (tmp_path / "plain.txt").read_text() == names[0] + "\n"  # readable where it can be
    (tmp_path / "crlf.txt").write_bytes(b"x.png\r\n\r\n./y.png\r\n")  # written on Windows, blank line
    assert read_file_list(str(tmp_path / "crlf.txt")) == [os.path.abspath("x.png"), os.path.abspath("y.png")]
    (tmp_path / "in" / "y.png").parent.mkdir()
    (tmp_path / "in" / "y.png").write_bytes(b"")
    # Under the input that holds it; a name none holds stays relative to the current folder.
    assert read_file_list(str(tmp_path / "crlf.txt"), [str(tmp_path / "no"), str(tmp_path / "in")]) == sorted(
        [os.path.abspath("x.png"), str(tmp_path / "in" / "y.png")])
    (tmp_path / "same").symlink_to(tmp_path / "in")  # one folder named twice: one image
    assert read_file_list(str(tmp_path / "crlf.txt"), [str(tmp_path / "in"), str(tmp_path / "same")]) == sorted(
        [os.path.abspath("x.png"), str(tmp_path / "in" / "y.png")])
    (tmp_path / "also" / "y.png").parent.mkdir()
    (tmp_path / "also" / "y.png").write_bytes(b"")  # frame_0001.png is in every year folder
    with pytest.raises(SetupError, match=r"crlf.txt: \./y.png is in more than one --input folder \(.*/in/y.png, "
                                         r".*/also/y.png\); list full paths, or give only the folder the list "
                                         "was made in"):
        read_file_list(str(tmp_path / "crlf.txt"), [str(tmp_path / "in"), str(tmp_path / "also")])


def test_file_lists_saved_by_windows_tools(tmp_path) -> None:
    # Notepad and PowerShell's Out-File -Encoding utf8 start UTF-8 with a byte-order mark, which began the
    # first name (listed as "file no longer exists"); Windows PowerShell's > writes UTF-16, whose zero bytes
    # were taken for NUL separators between names.
    from face_organizer.multigpu import read_file_list

    folder = tmp_path / "2017"
    names = ["frame_0001.png", "Zoë é.png", "frame_0002.png"]
    for name in names:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"")
    expected = sorted(str(folder / name) for name in names)
    text = "\r\n".join(names) + "\r\n"
    for encoding in ("utf-8-sig", "utf-16", "utf-16-le", "utf-16-be"):
        data = text.encode(encoding)
        if encoding.endswith(("-le", "-be")):  # a mark of the other byte order, as the text starts with it
            data = "\ufeff".encode(encoding) + data
        (tmp_path / f"{encoding}.txt").write_bytes(data)
        assert read_file_list(str(tmp_path / f"{encoding}.txt"), [str(folder)]) == expected, encoding
    (tmp_path / "odd.txt").write_bytes(codecs.BOM_UTF16_LE + b"a\0b")  # an odd number of bytes: not UTF-16
    with pytest.raises(SetupError, match="odd.txt starts as UTF-16 text but is not; save it as UTF-8"):
        read_file_list(str(tmp_path / "odd.txt"), [str(folder)])


def test_relative_names_in_a_file_list_are_found_under_the_inputs(video_crops, testpack_dir, tmp_path, monkeypatch,
                                                                   capsys) -> None:
    # `cd /workspace/input/2017 && find . -name '*.png' > list.txt`, then a docker exec (which starts in /app):
    # every name was read relative to /app, and every image listed as "file no longer exists".
    crops = [p for c in video_crops.values() for p in c[:2]][:6]
    inputs = [tmp_path / "input" / "2017", tmp_path / "input" / "2018"]
    for i, crop in enumerate(crops):
        target = inputs[i % 2] / "shot" / f"frame_{i:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(crop, target)
    listing = tmp_path / "list.txt"
    listing.write_text("./shot/frame_0000.png\nshot/frame_0001.png\nshot/frame_0002.png\n"
                       f"{inputs[1] / 'shot' / 'frame_0003.png'}\n")
    elsewhere = tmp_path / "app"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "emb.pkl"
    assert common.run(embed_main, ["--input", *map(str, inputs), "--output", str(out), "--file-list", str(listing),
                                   "--model", str(testpack_dir), "--device", "cpu", "-q"]) == 0
    ef = embfile.load(out)
    assert sorted(ef.rows.paths) == sorted(str(inputs[i % 2] / "shot" / f"frame_{i:04d}.png") for i in range(4))
    assert ef.failed == []
    capsys.readouterr()
    # A list made on the host names the host's paths: none exists in the container. The run "finished" with
    # every image listed as "file no longer exists" and an empty embeddings file.
    host = tmp_path / "host.txt"
    host.write_text("".join(f"/home/me/workspace/input/2017/shot/frame_{i:04d}.png\n" for i in range(3)))
    new = tmp_path / "new.pkl"
    assert common.run(embed_main, ["--input", *map(str, inputs), "--output", str(new), "--file-list", str(host),
                                   "--model", str(testpack_dir), "--device", "cpu", "-q"]) == 2
    assert capsys.readouterr().err == (
        f"Error: --file-list {host}: none of the 3 files it names exists (first: /home/me/workspace/input/2017/shot/"
        "frame_0000.png); a list made on the host names the host's paths, not the container's: make it in the "
        "container, or with names relative to the input folder (find . in it)\n")
    assert not new.exists()
    # A list on standard input (find … -print0 | docker exec -i … --file-list -) reads as a file does.
    names = b"\0".join(os.fsencode(p) for p in sorted(ef.rows.paths)[:2]) + b"\0"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(names)))
    piped = tmp_path / "piped.pkl"
    assert common.run(embed_main, ["--input", *map(str, inputs), "--output", str(piped), "--file-list", "-",
                                   "--model", str(testpack_dir), "--device", "cpu", "-q"]) == 0
    assert embfile.load(piped).rows.paths == sorted(ef.rows.paths)[:2]
    capsys.readouterr()
    # Into an existing file (the same command after its images were moved into person folders): as before.
    assert common.run(embed_main, ["--input", *map(str, inputs), "--output", str(out), "--file-list", str(host),
                                   "--model", str(testpack_dir), "--device", "cpu", "-q"]) == 0
    capsys.readouterr()


def test_options_every_worker_would_refuse_are_refused_before_any_starts(tmp_path, capsys) -> None:
    out = tmp_path / "embeddings"
    base = ["--input", str(tmp_path), "--output-dir", str(out), "--gpus", "0,1", "--device", "cpu"]
    for extra, said in ((["--wrkers", "2"], "unrecognized arguments: --wrkers 2"),
                        (["--workers", "x"], "argument --workers: invalid"),
                        (["--output", "x.pkl"], "set for each worker by embed_all_gpus"),  # not --output-dir
                        (["--out", "x.pkl"], "set for each worker"),  # generate_embeddings reads it as --output
                        (["--file-list=files.txt"], "set for each worker"),
                        (["--prefix", "../gpu"], "argument --prefix: the start of a file name, without '/'")):
        with pytest.raises(SystemExit) as stopped:
            multi_main(base + extra)
        assert stopped.value.code == 2
        assert "embed_all_gpus.py: error: " in (err := capsys.readouterr().err) and said in err, extra
    assert not out.exists() and not (tmp_path / "x.pkl").exists()
    # A model pack that is not there: one line before any worker starts, not one failure per worker.
    assert common.run(multi_main, base + ["--model", "nope", "--model-root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"Error: model pack 'nope' not found: {tmp_path / 'nope'} does not exist")
    # Options of the other mode, which every worker would refuse.
    for extra, flag in ((["--det-size", "1280"], "--det-size"), (["--full-resolution"], "--full-resolution"),
                        (["--mode", "photos", "--reuse-similar-frames"], "--reuse-similar-frames")):
        assert common.run(multi_main, base + extra) == 2
        assert capsys.readouterr().err.startswith(f"Error: {flag} is for --mode ")
    # TensorRT asked for on the CPU: passed over before, with every worker on the CPU.
    assert common.run(multi_main, base + ["--tensorrt"]) == 2
    assert capsys.readouterr().err.startswith("Error: --tensorrt is ONNX Runtime's provider for NVIDIA GPUs, and "
                                              "--device cpu runs on the CPU: leave one of them out")
    assert not out.exists()


def test_fewer_images_than_gpus_and_emptied_folders(video_crops, testpack_dir, tmp_path, capsys) -> None:
    folder = tmp_path / "input" / "2017"
    folder.mkdir(parents=True)
    image = folder / "f0.png"
    image.write_bytes(next(iter(video_crops.values()))[0].read_bytes())
    out = tmp_path / "multi"
    run = ["--input", str(folder), "--output-dir", str(out), "--gpus", "0,1", "-q",
           "--model", str(testpack_dir), "--device", "cpu", "--workers", "0"]
    assert common.run(multi_main, run) == 0  # GPU 1 has nothing to do: not a failure
    printed = capsys.readouterr().out
    assert "worker 0 (CPU): ok: 1 file →" in printed
    assert "worker 1 (CPU): not started, no images for it: no file written" in printed
    assert embfile.load(out / "embeddings_gpu0.pkl").rows.paths == [str(image)]
    assert not (out / "embeddings_gpu1.pkl").exists()
    written = (out / "embeddings_gpu0.pkl").read_bytes()
    image.unlink()  # moved into a person folder since: the year loop goes on, the file stays
    assert common.run(multi_main, run) == 0
    captured = capsys.readouterr()
    assert "no images" in captured.err
    assert "worker 0 (CPU): not started, no images for it: its earlier file is left" in captured.out
    assert (out / "embeddings_gpu0.pkl").read_bytes() == written
    image.write_bytes(b"")  # present again (an empty file) so that only the left-over file is in the way
    assert common.run(multi_main, ["--input", str(folder), "--output-dir", str(out), "--gpus", "1,0", "-q",
                                   "--no-resume", "--model", str(testpack_dir), "--device", "cpu"]) == 2
    assert "--no-resume: " + str(out / "embeddings_gpu0.pkl") in capsys.readouterr().err
    assert (out / "embeddings_gpu0.pkl").read_bytes() == written and not list(out.glob("*.files.txt"))  # untouched
    image.unlink()
    assert common.run(multi_main, run[:2] + ["--output-dir", str(tmp_path / "new")] + run[4:]) == 2  # no file yet
    assert "Error: no images" in capsys.readouterr().err


def test_a_worker_that_runs_on_the_cpu_instead_of_its_gpu_is_named(video_crops, testpack_dir, tmp_path, capsys) -> None:
    # GPUs 98 and 99 exist nowhere: with --device auto each worker falls back to the CPU (as on a
    # machine whose GPU fails its self-test), and the launcher says so, during the run and at the end,
    # with the warning that says why, which was in the worker's log only.
    folder = tmp_path / "input"
    folder.mkdir()
    for i, crop in enumerate(next(iter(video_crops.values()))[:2]):
        (folder / f"f{i}.png").write_bytes(crop.read_bytes())
    out = tmp_path / "multi"
    assert common.run(multi_main, ["--input", str(folder), "--output-dir", str(out), "--gpus", "98,99", "-q",
                                   "--model", str(testpack_dir), "--device", "auto", "--workers", "0"]) == 0
    captured = capsys.readouterr()
    for gpu in (98, 99):
        assert f"GPU {gpu}: ok, but ON THE CPU (its log says why): 1 file" in captured.out
        assert f"WARNING: GPU {gpu}: its worker runs on the CPU, not on the GPU" in captured.err
        assert captured.err.count(f"WARNING: GPU {gpu}: no CUDA provider in this ONNX Runtime") == 1


def test_the_launchers_progress_in_a_log_is_a_few_lines_not_one_per_poll(tmp_path, capsys) -> None:
    from face_organizer.multigpu import Worker, run_workers

    # Stand-ins for workers: each writes its status file (as generate_embeddings does) for about a second.
    script = tmp_path / "worker.py"
    script.write_text("import json, sys, time\n"
                      "path = sys.argv[sys.argv.index('--status-file') + 1]\n"
                      "for done in range(1, 21):\n"
                      "    json.dump({'done': done, 'total': 20, 'device': 'cpu'}, open(path, 'w'))\n"
                      "    time.sleep(0.05)\n")
    workers = [Worker(g, 20, tmp_path / f"e{g}.pkl", tmp_path / f"e{g}.log", [sys.executable, str(script)])
               for g in (0, 1)]
    run_workers(workers, 40, poll=0.02)  # stderr is captured: not a terminal
    lines = capsys.readouterr().err.splitlines()
    assert [w.code for w in workers] == [0, 0] and 1 <= len(lines) <= 3 and "40/40" in lines[-1], lines


def test_files_rebased_after_the_folders_moved_resume_on_the_same_gpus(video_crops, testpack_dir, tmp_path,
                                                                       capsys) -> None:
    # The launcher's file lists say which GPU's file holds each image; rebase_embeddings rewrites them
    # with the files, so that a re-run at the new place embeds nothing again (without them, each image
    # would be spread anew by its new path, mostly to another GPU than the one whose file holds it).
    from face_organizer.cli.rebase import main as rebase_main

    crops = [p for c in video_crops.values() for p in c][:12]
    old = tmp_path / "workspace"
    old.mkdir()
    folder, out, args = _crops_folder(old, crops, testpack_dir)
    assert common.run(multi_main, [*args, "--gpus", "0,1,2"]) == 0
    held = {g: embfile.load(out / f"embeddings_gpu{g}.pkl").rows.paths for g in (0, 1, 2)}
    new = tmp_path / "srv" / "faces"
    new.parent.mkdir()
    old.rename(new)
    files = [str(new / "multi" / f"embeddings_gpu{g}.pkl") for g in (0, 1, 2)]
    lists = {f: Path(f).with_suffix(".files.txt").read_bytes() for f in files}
    assert common.run(rebase_main, [*files, "--from", str(old), "--to", str(new), "--in-place", "--dry-run"]) == 0
    assert {f: Path(f).with_suffix(".files.txt").read_bytes() for f in files} == lists
    capsys.readouterr()
    assert common.run(rebase_main, [*files, "--from", str(old), "--to", str(new), "--in-place"]) == 0
    assert capsys.readouterr().out.count("its file list (embed_all_gpus.py) rewritten too") == 3
    moved_args = [a.replace(str(old), str(new)) for a in args]
    assert common.run(multi_main, [*moved_args, "--gpus", "0,1,2"]) == 0
    assert "images found: 12; already embedded: 12\n  embedded now: 0 images" in capsys.readouterr().out
    for g in (0, 1, 2):
        assert embfile.load(new / "multi" / f"embeddings_gpu{g}.pkl").rows.paths == [
            p.replace(str(old), str(new)) for p in held[g]]


def test_moved_files_are_followed_by_name_size_and_time_or_by_name_and_size_where_no_other_file_shares_them(
        tmp_path) -> None:
    now, other = tmp_path / "now", tmp_path / "other"
    for folder, names in [(now, ("a", "b", "c", "d", "f", "g")), (other, ("f",))]:
        folder.mkdir()
        for name in names:
            (folder / f"{name}.png").write_bytes(b"bb" if name == "b" else name.encode())
    sig = {str(path.relative_to(tmp_path)): signature for path in tmp_path.glob("*/*.png")
           if (signature := file_signature(str(path))) is not None}
    assert len(sig) == 7
    size, time = sig["now/a.png"]
    gone = {"/old/2017/a.png": sig["now/a.png"],  # moved as it was
            "/old/2017/b.png": sig["now/a.png"],  # b's size was not b's now: another file
            "/old/2017/c.png": sig["now/c.png"], "/old/2018/c.png": sig["now/c.png"],  # which c moved is not told
            "/old/2017/d.png": (size, time - 10**9),  # copied without its time (cp -r): its name and size alone
            "/old/2017/f.png": (size, time - 10**9),  # copied twice since: which copy is it not told
            "/old/2017/g.png": (size, time - 10**9), "/old/2018/g.png": sig["now/g.png"]}  # its time tells
    found = [str(now / f"{name}.png") for name in "abcdefg"] + [str(other / "f.png")]  # e.png: not there
    assert follow_moves(gone, found) == {str(now / "a.png"): "/old/2017/a.png", str(now / "d.png"): "/old/2017/d.png",
                                         str(now / "g.png"): "/old/2018/g.png"}
    assert follow_moves({}, found) == {} and follow_moves(gone, []) == {}


def test_paths_reached_through_a_linked_folder_are_told_by_their_real_folder_and_name(tmp_path) -> None:
    media, other = tmp_path / "media" / "2017", tmp_path / "media" / "2018"
    media.mkdir(parents=True)
    other.mkdir()
    for name in ("a.png", "b.png"):
        (media / name).write_bytes(b"x")
    (media / "c.png").symlink_to(media / "a.png")  # a file of its own name: not a.png's path
    (tmp_path / "workspace").symlink_to(tmp_path / "media", target_is_directory=True)
    held = [str(media / "a.png"), str(media / "b.png"), str(media / "c.png"), str(other / "a.png")]
    linked = tmp_path / "workspace" / "2017"
    assert reached_elsewhere(held, [str(linked / "a.png"), str(linked / "c.png")]) == {held[0], held[2]}
    assert reached_elsewhere(held, [str(media / "c.png")]) == set()  # the same path, not another
    assert reached_elsewhere([str(media / "a.png")], [str(media / "c.png")]) == set()
    assert reached_elsewhere([], [str(linked / "a.png")]) == reached_elsewhere(held, []) == set()


@pytest.mark.parametrize("move", ["rename", "plain copy", "symlink"])
def test_a_folder_renamed_since_is_embedded_on_the_gpus_whose_files_hold_its_images(move, video_crops, testpack_dir,
                                                                                    tmp_path, capsys) -> None:
    # The input folder renamed (or copied elsewhere without the files' times, as a plain cp -r does, and deleted;
    # or named through a symbolic link to it), and the launcher run over it at its new place without a rebase: each
    # image goes to the GPU whose file holds it (found by name, size and time, or name and size), takes its rows
    # there by its bytes, and the file drops the old path. Spread anew by its new path, most images went to another
    # GPU, which embedded them again, and the old paths stayed in the files, where the later stages called them
    # missing (through a link, clustering placed every image twice).
    crops = [p for c in video_crops.values() for p in c][:12]
    folder, out, args = _crops_folder(tmp_path, crops, testpack_dir)
    assert common.run(multi_main, [*args, "--gpus", "0,1,2"]) == 0
    held = {g: embfile.load(out / f"embeddings_gpu{g}.pkl") for g in (0, 1, 2)}
    renamed = tmp_path / "input 2017"
    if move == "rename":
        folder.rename(renamed)
    elif move == "symlink":
        renamed.symlink_to(folder, target_is_directory=True)
    else:
        time.sleep(0.01)
        shutil.copytree(folder, renamed, copy_function=shutil.copyfile)
        shutil.rmtree(folder)
        assert all(file_signature(str(renamed / Path(p).name)) != signature  # the times are not kept
                   for p, signature in held[0].signatures.items())
    (renamed / "f99.png").write_bytes((renamed / "f00.png").read_bytes())  # a new copy: its old path is there
    capsys.readouterr()
    # The dry run counts the moved images as moved, not to embed: only the new copy is (the run finds its bytes).
    assert common.run(multi_main, ["--input", str(renamed), *args[2:], "--gpus", "0,1,2", "--dry-run"]) == 0
    planned = capsys.readouterr().out.splitlines()
    assert sum(int(line.split("): ")[1].split()[0]) for line in planned if "moved since embedded" in line) == 12
    assert planned[-1] == "to embed over the 3 workers: 1 image"
    assert common.run(multi_main, ["--input", str(renamed), *args[2:], "--gpus", "0,1,2"]) == 0
    printed = capsys.readouterr().out
    assert "moved since embedded, named through a linked folder now, or a copy deleted (the same bytes found at " \
           "another path under the inputs, and the old path gone or the same file): 12 images" in printed
    for g in (0, 1, 2):
        ef = embfile.load(out / f"embeddings_gpu{g}.pkl")
        moved = [p for p in ef.rows.paths if Path(p).name != "f99.png"]
        assert moved == [str(renamed / Path(p).name) for p in held[g].rows.paths]  # the same images, each once
        np.testing.assert_array_equal(ef.rows.embeddings[:len(moved)], held[g].rows.embeddings)
    assert sum("f99.png" in p for g in (0, 1, 2) for p in embfile.load(out / f"embeddings_gpu{g}.pkl").rows.paths) == 1
