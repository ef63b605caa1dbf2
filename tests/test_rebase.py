"""rebase_embeddings: an embeddings file's paths under a new folder, so moved images need no new embedding."""

from __future__ import annotations

import csv
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

from conftest import ROOT, interrupted_at


def file_of(paths: list[str], failed: list[tuple[str, str]] | None = None, no_face: list[str] | None = None,
            **extra) -> embfile.EmbeddingsFile:
    """A small file naming ``paths`` (its embeddings do not matter here); ``extra``: reused, signatures,
    digests."""
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
                 signatures={"/workspace/input/2017/a.png": (10, 5), "/elsewhere/d.png": (11, 6)},
                 digests={"/workspace/input/2017/a.png": b"a" * 16, "/elsewhere/d.png": b"d" * 16})
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
    assert new.digests == {f"{tmp_path}/2017/a.png": b"a" * 16, "/elsewhere/d.png": b"d" * 16}
    assert new.meta["inputs"] == [f"{tmp_path}/2017", "/elsewhere"]
    assert [(r["from"], r["to"]) for r in new.meta["rebased"]] == [("/workspace/input", str(tmp_path))]
    # Four of the six images moved; one of the four looked for is there already.
    assert (done.images, done.total, done.checked, done.found) == (4, 6, 4, 1)
    assert ef.rows.paths == names  # the file read is left as it was
    # Back again: the same paths, and the record of both rewrites.
    back = rebase(new, str(tmp_path), "/workspace/input").file
    assert back.rows.paths == names and back.failed == ef.failed and back.signatures == ef.signatures
    assert back.digests == ef.digests
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
    assert not any("not at their paths" in line for line in describe(moved_file).lines())
    # The file as it was says its images are gone, and beside them, which --from and --to find them.
    n = min(len(first.rows), 20)
    assert (f"  not at their paths now: {n} of {n} images looked for (deleted; put in person folders by --link-mode "
            "move, which --moved-to follows; or their folders moved: rebase_embeddings.py)") in describe(emb).lines()
    shutil.copy(emb, new_root / "emb.pkl")
    assert describe(new_root / "emb.pkl").lines()[-1].endswith(
        f"rebase_embeddings.py --from {tmp_path / 'workspace'} --to {new_root})")
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


def test_a_file_being_written_is_refused_and_a_run_that_saved_nothing_is_left_alone(tmp_path, capsys) -> None:
    emb = tmp_path / "emb.pkl"
    embfile.save(emb, file_of(["/workspace/a.png"]))
    args = [str(emb), "--from", "/workspace", "--to", str(tmp_path), "--in-place"]
    lone = tmp_path / "lone.pkl"
    embfile.parts_dir(lone).mkdir()  # a run stopped before its first checkpoint
    assert common.run(rebase_main, [str(lone)] + args[1:]) == 0
    assert f"{lone}: its run was interrupted before it saved anything: nothing to rebase" in capsys.readouterr().out
    assert embfile.parts_dir(lone).is_dir() and not lone.exists()  # the re-run at the new place starts again
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


def test_an_output_a_move_filled_before_the_rebase_still_serves_moved_to(two_person, testpack_dir, tmp_path,
                                                                          capsys) -> None:
    # Sorted with --link-mode move in the container (its clusters.csv names /workspace paths), then used
    # on the host, where the file was rebased: --moved-to finds the images by the paths the table knows.
    from clusterrun import private_copy
    from face_organizer.cli.cluster import main as cluster_main
    from face_organizer.cli.search import main as search_main

    ef = private_copy(two_person, tmp_path / "workspace")
    emb = tmp_path / "emb.pkl"
    embfile.save(emb, ef)
    content = {p: Path(p).read_bytes() for p in ef.rows.paths}
    assert common.run(cluster_main, ["--embeddings", str(emb), "--output", str(tmp_path / "workspace" / "sorted"),
                                     "--link-mode", "move", "--no-previews", "-q"]) == 0
    host = tmp_path / "srv" / "faces"
    host.parent.mkdir()
    (tmp_path / "workspace").rename(host)
    assert common.run(rebase_main, [str(emb), "--from", str(tmp_path / "workspace"), "--to", str(host),
                                    "--in-place", "-q"]) == 0
    rebased = embfile.load(emb).rows.paths
    assert (f"none is there now (is {host} mounted? images that a --link-mode move took are found with --moved-to)"
            in capsys.readouterr().out)
    again = host / "again"
    assert common.run(cluster_main, ["--embeddings", str(emb), "--output", str(again), "-q"]) == 2
    assert f"(here: --moved-to {host / 'sorted'} finds them)" in capsys.readouterr().err  # by the table's old paths
    assert common.run(cluster_main, ["--embeddings", str(emb), "--output", str(again), "--clusters", "3",
                                     "--link-mode", "move", "--moved-to", str(host / "sorted"), "--no-previews"]) == 0
    printed = capsys.readouterr()
    assert f"files: {len(set(rebased))} placed" in printed.out
    assert f"{len(set(rebased))} images read from where an earlier move put them" in printed.err
    assert not [f for f in (host / "sorted").rglob("*.png")]  # moved on: nothing left behind
    table = list(csv.DictReader((again / "clusters.csv").open(encoding="utf-8")))
    assert sorted(r["path"] for r in table) == sorted(rebased)  # named by the paths of the file as it is now
    for row in table:
        embedded_at = moved(row["path"], str(host), str(tmp_path / "workspace"))
        assert Path(row["destination"]).read_bytes() == content[embedded_at]
    # A search through the latest output finds them as well.
    query = tmp_path / "query.png"
    query.write_bytes(Path(table[0]["destination"]).read_bytes())
    assert common.run(search_main, ["--embeddings", str(emb), "--query", str(query), "--output",
                                    str(tmp_path / "found"), "--model", str(testpack_dir), "--moved-to", str(again),
                                    "-q"]) == 0
    matches = list(csv.DictReader((tmp_path / "found" / "matches.csv").open(encoding="utf-8")))
    assert len(matches) > 10 and {m["status"] for m in matches} == {"placed"}


def test_every_gpus_file_is_checked_before_any_is_written_and_the_same_command_again_leaves_them(tmp_path,
                                                                                                 capsys) -> None:
    gpu0, gpu1, other = (tmp_path / f"embeddings_{n}.pkl" for n in ("gpu0", "gpu1", "other"))
    embfile.save(gpu0, file_of(["/workspace/input/2017/a.png"]))
    embfile.save(gpu1, file_of(["/workspace/input/2018/b.png"], failed=[("/workspace/input/2018/c.jpg", "empty file")]))
    embfile.save(other, file_of(["/data/d.png"]))
    args = [str(gpu0), str(gpu1), "--from", "/workspace", "--to", str(tmp_path)]
    from face_organizer.fsutil import exclusive

    with exclusive(gpu1, "busy"):
        assert common.run(rebase_main, args + ["--in-place"]) == 2
    assert f"is writing {gpu1}" in capsys.readouterr().err
    assert common.run(rebase_main, [str(other)] + args + ["--in-place"]) == 2
    assert f"{other}: no image in the embeddings file lies under /workspace" in capsys.readouterr().err
    assert embfile.load(gpu0).rows.paths == ["/workspace/input/2017/a.png"]  # neither was written
    assert common.run(rebase_main, args + ["--output", str(tmp_path / "new.pkl")]) == 2
    assert "--output names one new file, for one FILE (2 given)" in capsys.readouterr().err
    assert common.run(rebase_main, args[:1] + args[2:] + ["--output", f"{tmp_path / 'host'}/"]) == 2
    assert (f"--output {tmp_path / 'host'}/ is a folder; give a file name such as "
            f"{tmp_path / 'host' / 'embeddings_gpu0.pkl'}") in capsys.readouterr().err

    assert common.run(rebase_main, args + ["--in-place"]) == 0
    printed = capsys.readouterr().out
    assert f"1 image of 1 moved from /workspace to {tmp_path} → {gpu0}" in printed and f"→ {gpu1}" in printed
    assert embfile.load(gpu0).rows.paths == [f"{tmp_path}/input/2017/a.png"]
    assert embfile.load(gpu1).failed == [(f"{tmp_path}/input/2018/c.jpg", "empty file")]
    # The same command again (a loop run twice, the files typed among the options): each file is left as it
    # was, and said to be done.
    written = {f: f.stat().st_mtime_ns for f in (gpu0, gpu1)}
    assert common.run(rebase_main, [str(gpu0), "--in-place", str(gpu1), *args[2:]]) == 0
    printed = capsys.readouterr().out
    for f in (gpu0, gpu1):
        assert f"{f}: rebased from /workspace to {tmp_path} already (" in printed and "left as it was" in printed
    assert {f: f.stat().st_mtime_ns for f in (gpu0, gpu1)} == written
    # Back, one file: rewritten again (the latest rewrite is another one).
    assert common.run(rebase_main, [str(gpu0), "--from", str(tmp_path), "--to", "/workspace", "--in-place", "-q"]) == 0
    assert embfile.load(gpu0).rows.paths == ["/workspace/input/2017/a.png"]


def test_files_merged_keep_each_ones_rewrites_and_a_table_from_before_them_is_read_under_the_new_paths() -> None:
    from face_organizer.rebase import former_paths, steps

    gpu0 = rebase(file_of(["/workspace/input/a.png"], digests={"/workspace/input/a.png": b"a" * 16}), "/workspace",
                  "/srv/faces").file
    gpu1 = rebase(file_of(["/mnt/old/b.png"], digests={"/mnt/old/b.png": b"b" * 16}), "/mnt/old",
                  "/srv/faces/b_disk").file
    gpu1 = rebase(gpu1, "/srv/faces/b_disk", "/srv/faces/input").file
    merged = embfile.merge([gpu0, gpu1, gpu0], ["gpu0.pkl", "gpu1.pkl", "gpu0 again"])
    assert merged.digests == {"/srv/faces/input/a.png": b"a" * 16, "/srv/faces/input/b.png": b"b" * 16}
    assert steps(merged.meta) == [("/workspace", "/srv/faces"), ("/mnt/old", "/srv/faces/b_disk"),
                                  ("/srv/faces/b_disk", "/srv/faces/input")]
    former = former_paths(merged.rows.paths, steps(merged.meta))
    # Each image's names before its own file's rewrites, though the files' rewrites are listed together:
    assert former["/workspace/input/a.png"] == "/srv/faces/input/a.png"
    assert former["/mnt/old/b.png"] == former["/srv/faces/b_disk/b.png"] == "/srv/faces/input/b.png"
    assert not set(former) & set(merged.rows.paths)
    # A former name that is another image's path now stays that image's.
    assert former_paths(["/b/x.png", "/a/x.png"], [("/a", "/b")]) == {}
    assert steps({"rebased": [{"from": "/a"}, "edited by hand", {"from": "/a", "to": "/b"}]}) == [("/a", "/b")]


def test_an_interrupted_run_is_rebased_with_its_checkpoints_and_goes_on_at_the_new_place(video_crops, models,
                                                                                         testpack_dir, tmp_path,
                                                                                         capsys) -> None:
    # Stopped half-way, then the folders moved: the run cannot go on where the images were, so its
    # checkpoints are rewritten with the file, and the run goes on at the new place from them.
    old = tmp_path / "workspace" / "input"
    for person, crops in video_crops.items():
        for crop in crops[:4]:
            (old / person).mkdir(parents=True, exist_ok=True)
            shutil.copy2(crop, old / person / crop.name)
    frames = sorted(str(p) for p in old.rglob("*.png"))
    emb = tmp_path / "emb.pkl"

    interrupted_at(frames, frames[7], emb, models, batch_size=1, inputs=[str(old)])
    parts = embfile.checkpoint_parts(emb)
    assert not emb.exists() and len(parts) >= 2
    saved = {p: e for part in parts for p, e in zip(embfile.load(part).rows.paths, embfile.load(part).rows.embeddings)}
    host = tmp_path / "srv" / "faces"
    host.parent.mkdir()
    (tmp_path / "workspace").rename(host)
    # Named by the pattern of one file per GPU, which the shell leaves as it is while only checkpoints exist.
    args = [str(tmp_path / "em*.pkl"), "--from", str(tmp_path / "workspace"), "--to", str(host), "--in-place"]
    assert common.run(rebase_main, args + ["--dry-run"]) == 0
    assert embfile.checkpoint_parts(emb) == parts and not emb.exists()  # the dry run wrote nothing
    capsys.readouterr()
    assert common.run(rebase_main, args) == 0
    assert (f"its run was interrupted: what its {len(parts)} checkpoint parts held is in the rewritten file too"
            in capsys.readouterr().out)
    assert not embfile.parts_dir(emb).exists()
    rebased = embfile.load(emb)
    assert rebased.meta["complete"] is False and rebased.meta["inputs"] == [str(host / "input")]
    assert sorted(rebased.rows.paths) == sorted(moved(p, str(tmp_path / "workspace"), str(host)) for p in saved)
    from face_organizer.embinfo import describe

    assert describe(emb).status().startswith("interrupted: the file holds what its run had embedded")
    from face_organizer.cluster_stage import load_embeddings

    capsys.readouterr()
    assert len(load_embeddings([str(emb)]).rows) == len(saved)
    assert "its generate_embeddings run was interrupted before it had embedded every image" in capsys.readouterr().err
    # The run goes on at the new place: only the images it had left are embedded.
    assert common.run(embed_main, ["--input", str(host / "input"), "--output", str(emb), "--model", str(testpack_dir),
                                   "--workers", "0", "-q"]) == 0
    assert f"images found: {len(frames)}; already embedded: {len(saved)}" in capsys.readouterr().out
    final = embfile.load(emb)
    assert final.rows.paths == [moved(p, str(tmp_path / "workspace"), str(host)) for p in frames]
    assert describe(emb).status() == "finished"
    load_embeddings([str(emb)])
    assert "interrupted" not in capsys.readouterr().err
    for path, vector in saved.items():
        np.testing.assert_array_equal(final.rows.embeddings[final.rows.paths.index(
            moved(path, str(tmp_path / "workspace"), str(host)))], vector)  # kept, not embedded again
