"""Near-identical consecutive video frames sharing one embedding (--reuse-similar-frames),
on video-style crops of real LFW faces made into shots of jittered frames."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from face_organizer import embfile
from face_organizer.cli import common
from face_organizer.cli.cluster import main as cluster_main
from face_organizer.cli.embed import main as embed_main
from face_organizer.embed_run import run_embeddings
from face_organizer.faces import EmbedOptions
from face_organizer.frames import DEFAULT_THRESHOLD, MAX_THRESHOLD, repeated_frames
from face_organizer.images import discover_images, read_image
from face_organizer.samples import shot_frames

from conftest import write_image


def _crops(video_crops) -> list[np.ndarray]:
    return [read_image(p) for crops in video_crops.values() for p in crops]


def test_frames_of_a_shot_repeat_their_first_frame(video_crops) -> None:
    rng = np.random.default_rng(0)
    crops = _crops(video_crops)[:6]
    frames, shot = [], []
    for s, crop in enumerate(crops):
        for frame in shot_frames(crop, 5, rng):
            frames.append(frame)
            shot.append(s)
    source = repeated_frames(frames)
    starts = [i for i in range(len(frames)) if i == 0 or shot[i] != shot[i - 1]]
    assert all(source[i] == -1 for i in starts)  # a new shot is always embedded
    repeats = [i for i, s in enumerate(source) if s >= 0]
    assert all(shot[source[i]] == shot[i] and source[source[i]] == -1 for i in repeats)
    assert len(repeats) >= 0.8 * (len(frames) - len(starts))


def test_different_photos_never_repeat_each_other(video_crops) -> None:
    # Crops of the same three people from different photos: each is embedded on its own, also
    # at the largest distance --reuse-similar-frames accepts.
    crops = _crops(video_crops)
    assert repeated_frames(crops) == [-1] * len(crops)
    assert repeated_frames(crops, threshold=MAX_THRESHOLD) == [-1] * len(crops)


def test_interleaved_faces_and_other_sizes(video_crops) -> None:
    rng = np.random.default_rng(1)
    a, b = _crops(video_crops)[:2]
    fa, fb = shot_frames(a, 4, rng), shot_frames(b, 4, rng)
    interleaved = [f for pair in zip(fa, fb) for f in pair]  # frame_0001_0, frame_0001_1, frame_0002_0, ...
    source = repeated_frames(interleaved)
    assert source[:2] == [-1, -1]
    assert all(s == -1 or s % 2 == i % 2 for i, s in enumerate(source))  # A frames repeat A, B frames repeat B
    assert sum(s >= 0 for s in source) >= 4
    smaller = a[8:-8, 8:-8]
    assert repeated_frames([a, smaller]) == [-1, -1]  # other size: never compared


def _shot_folder(tmp_path: Path, video_crops) -> tuple[Path, dict[str, int]]:
    """Year folders of 4 shots x 4 frames, same file names in each year, plus 3 single crops."""
    rng = np.random.default_rng(2)
    crops = _crops(video_crops)
    shot_of: dict[str, int] = {}
    for s in range(4):
        year = ("2017", "2018")[s % 2]
        for f, frame in enumerate(shot_frames(crops[s], 4, rng)):
            path = write_image(tmp_path / "input" / year / f"frame_{(s // 2) * 4 + f:04d}.png", frame)
            shot_of[str(path)] = s
    for k, crop in enumerate(crops[10:13]):
        shot_of[str(write_image(tmp_path / "input" / "2019" / f"frame_{k:04d}.png", crop))] = 100 + k
    return tmp_path / "input", shot_of


def test_run_reuses_repeated_frames_and_records_them(tmp_path, video_crops, models) -> None:
    folder, shot_of = _shot_folder(tmp_path, video_crops)
    paths = discover_images([folder])
    options = EmbedOptions(reuse_similar_frames=DEFAULT_THRESHOLD)
    summary = run_embeddings(paths, tmp_path / "reuse.pkl", models, options, batch_size=8, streams=2, progress=False)
    run_embeddings(paths, tmp_path / "full.pkl", models, batch_size=8, streams=2, progress=False)
    ef, every = embfile.load(tmp_path / "reuse.pkl"), embfile.load(tmp_path / "full.pkl")
    assert ef.rows.paths == every.rows.paths == paths and every.reused == []
    assert ef.meta["reuse_similar_frames"] == DEFAULT_THRESHOLD
    reused = dict(ef.reused)
    assert summary.reused == len(reused) >= 9 and summary.embedded == len(paths)
    row = {p: i for i, p in enumerate(ef.rows.paths)}
    for path, source in reused.items():
        assert shot_of[path] == shot_of[source] < 100 and source not in reused
        np.testing.assert_array_equal(ef.rows.embeddings[row[path]], ef.rows.embeddings[row[source]])
    # The embedding taken over is as close to the frame's own as the recogniser's noise allows.
    own = np.einsum("ij,ij->i", ef.rows.embeddings, every.rows.embeddings)
    assert np.median(own[[row[p] for p in reused]]) > 0.95
    np.testing.assert_allclose(own[[row[p] for p in paths if p not in reused]], 1.0, atol=1e-5)
    # Resumed: nothing left to do, the record of reuse kept; merged with another file: kept too.
    again = run_embeddings(paths, tmp_path / "reuse.pkl", models, options, progress=False)
    assert again.embedded == 0 and dict(embfile.load(tmp_path / "reuse.pkl").reused) == reused
    assert dict(embfile.merge([ef, every], ["reuse.pkl", "full.pkl"]).reused) == reused


def test_cli_reuse_flag(tmp_path, video_crops, testpack_dir, capsys) -> None:
    folder, _ = _shot_folder(tmp_path, video_crops)
    out = tmp_path / "o.pkl"
    code = common.run(embed_main, ["--input", str(folder), "--output", str(out), "--model", str(testpack_dir),
                                   "--reuse-similar-frames", "--quiet"])
    assert code == 0 and len(embfile.load(out).reused) >= 9
    assert "near-identical frames that took the embedding of the frame they repeat" in capsys.readouterr().out
    # Sorted, each such frame counts once with the frame it repeats, and goes where that frame goes.
    reused = dict(embfile.load(out).reused)
    assert common.run(cluster_main, ["--embeddings", str(out), "--output", str(tmp_path / "sorted"),
                                     "--clusters", "auto", "-q", "--no-previews"]) == 0
    with open(tmp_path / "sorted" / "clusters.csv", encoding="utf-8", newline="") as handle:
        placed = {row["path"]: row["cluster"] for row in csv.DictReader(handle)}
    assert all(placed[frame] == placed[source] for frame, source in reused.items())
    assert (f"{len(reused)} faces repeat another face (copies of an image under other names, as album "
            "folders hold them, or frames given an earlier frame's embedding by --reuse-similar-frames): counted once "
            "by the clustering") in capsys.readouterr().out
    code = common.run(embed_main, ["--input", str(folder), "--output", str(tmp_path / "p.pkl"), "--model", str(testpack_dir),
                                   "--mode", "photos", "--reuse-similar-frames"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("Error: --reuse-similar-frames is for --mode crops")


@pytest.mark.parametrize("value", ["-0.1", "nan", "x"])
def test_cli_reuse_distance_must_be_a_number(value, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        embed_main(["--input", str(tmp_path), "--output", str(tmp_path / "o.pkl"), "--reuse-similar-frames", value])
    assert exit_info.value.code == 2 and "--reuse-similar-frames" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0.3", "2", "5"])
def test_cli_reuse_distance_past_the_safe_range_is_refused(value, tmp_path, capsys) -> None:
    # A distance read as pixels (2, 5) made 72 of 74 crops of different people take another's embedding.
    with pytest.raises(SystemExit) as exit_info:
        embed_main(["--input", str(tmp_path), "--output", str(tmp_path / "o.pkl"), "--reuse-similar-frames", value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert (f"argument --reuse-similar-frames: a thumbnail difference from 0 to {MAX_THRESHOLD} (default "
            f"{DEFAULT_THRESHOLD}), not {value}: different photos of one person differ by 0.26 or more") in err
