"""benchmark_backends and the DeepFace paths, offline, on real UTKFace crops."""

from __future__ import annotations

import os
import shutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

from face_organizer.cli import common
from face_organizer.cli.backends import main as backends_main
from face_organizer.cli.gender import main as gender_main


def _haar_cascades_shipped() -> bool:
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", "")
    return bool(folder) and (Path(folder) / "haarcascade_frontalface_default.xml").is_file()


@pytest.fixture()
def offline_deepface_home(tmp_path, monkeypatch):
    home = tmp_path / "deepface_home"
    monkeypatch.setenv("DEEPFACE_HOME", str(home))
    return home


def test_benchmark_runs_offline_backends_and_lists_the_rest(utkface, testpack_dir, shared, offline_deepface_home, capsys) -> None:
    yunet = next((shared / "models" / "yunet").glob("*.onnx"))
    code = common.run(backends_main, ["--input", str(utkface), "--samples", "12", "--model", str(testpack_dir),
                                      "--yunet-model", str(yunet), "--backends", "scrfd,yunet,mtcnn,opencv,retinaface",
                                      "--gender", "Woman", "-q"])
    assert code == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in
            ("scrfd", "yunet", "mtcnn", "opencv", "retinaface")}
    for name in ("scrfd", "yunet", "mtcnn"):
        assert "12/12" in rows[name] or "11/12" in rows[name], rows[name]
    # DeepFace's OpenCV backend reads Haar cascades from OpenCV's wheel: 5.0 left them out (DeepFace then
    # downloads them, which fails offline), 4.x and 5.1 ship them.
    if _haar_cascades_shipped():
        found = re.search(r"\b(\d+)/12\b", rows["opencv"])
        assert "unavailable" not in rows["opencv"] and found and int(found.group(1)) >= 9, rows["opencv"]
    else:
        assert "unavailable" in rows["opencv"] and "weights" in rows["opencv"], rows["opencv"]
    assert "unavailable" in rows["retinaface"] and "weights" in rows["retinaface"], rows["retinaface"]
    assert "Matched" in out and "Recommendation:" in out and "Traceback" not in out


def test_yunet_is_found_beside_the_model_packs(utkface, shared, offline_deepface_home, monkeypatch, capsys) -> None:
    # /models/yunet/*.onnx next to /models/buffalo_l: no --yunet-model needed.
    monkeypatch.delenv("FACE_ORGANIZER_YUNET", raising=False)
    code = common.run(backends_main, ["--input", str(utkface), "--samples", "6", "--model-root", str(shared / "models"),
                                      "--model", "testpack", "--backends", "yunet", "-q"])
    assert code == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("yunet"))
    assert "unavailable" not in row and ("6/6" in row or "5/6" in row), row
    assert re.search(r"would take about \d+(\.\d)? (s|min|h) on this machine", out)


def test_prepare_deepface_weights_offline(shared, offline_deepface_home, monkeypatch, capsys) -> None:
    weights = offline_deepface_home / ".deepface" / "weights"
    source = next((shared / "models" / "yunet").glob("*.onnx"))
    real_copy = shutil.copyfileobj

    def cut_short(src, dst, length=0):  # Ctrl-C (or a full disk) halfway through the copy
        dst.write(src.read(1000))
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfileobj", cut_short)
    assert common.run(backends_main, ["--prepare-deepface-weights", str(source.parent)]) == common.EXIT_INTERRUPTED
    assert not [p for p in weights.iterdir() if p.suffix == ".onnx" or "partial" in p.name]  # nothing half-copied
    monkeypatch.setattr(shutil, "copyfileobj", real_copy)
    assert common.run(backends_main, ["--prepare-deepface-weights", str(source.parent)]) == 0
    assert (weights / "face_detection_yunet_2023mar.onnx").read_bytes() == source.read_bytes()


def test_deepface_gender_without_weights_is_a_clear_error(utkface, tmp_path, offline_deepface_home, capsys) -> None:
    code = common.run(gender_main, ["--input", str(utkface / "female"), "--output", str(tmp_path / "o"), "--gender", "Woman",
                                    "--backend", "deepface", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "gender model weights are missing" in err and "Traceback" not in err


def test_deepface_starts_without_tensorflows_startup_lines(utkface, tmp_path, offline_deepface_home) -> None:
    # TensorFlow's C++ side prints oneDNN and CUDA notes before its log level applies, and DeepFace logs each
    # download it tries: between the command's own lines they read as errors. Only the command's lines remain.
    script = Path(__file__).resolve().parents[1] / "scripts" / "gender_filter.py"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "DEEPFACE_LOG_LEVEL")}
    done = subprocess.run([sys.executable, str(script), "--input", str(utkface / "female"), "--output", str(tmp_path / "o"),
                           "--gender", "Woman", "--backend", "deepface", "--workers", "0"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: DeepFace's gender model weights are missing"), done.stderr
    assert all(line.startswith(("INFO: ", "WARNING: ", "Error: ")) for line in lines), done.stderr


def test_deepface_gender_through_deepface_itself(utkface, shared, tmp_path, offline_deepface_home, monkeypatch,
                                                 capsys) -> None:
    # The original tool's path: DeepFace.analyze finds the face (its yunet backend, weights from the shared
    # folder) and runs its gender model, whose weights cannot be had offline: a stand-in takes the model's
    # place inside DeepFace, answering Woman 90% and Man 80% by turns. Each row must carry DeepFace's answer
    # (its scores are percentages, its labels Woman and Man) and only the women go to the output.
    import csv

    import cv2
    import numpy as np

    from face_organizer.deepface_import import import_deepface

    assert common.run(backends_main, ["--prepare-deepface-weights", str(shared / "models" / "yunet")]) == 0
    import_deepface()
    from deepface.modules import modeling

    real, seen = modeling.build_model, []

    class StandIn:
        def predict(self, face: np.ndarray) -> np.ndarray:
            seen.append(face.shape)
            return np.array([0.9, 0.1]) if len(seen) % 2 else np.array([0.2, 0.8])

    monkeypatch.setattr(modeling, "build_model", lambda task, model_name: StandIn() if model_name == "Gender"
                        else real(task=task, model_name=model_name))
    folder = tmp_path / "input"
    for sex in ("female", "male"):
        for image in sorted((utkface / sex).iterdir())[:4]:
            (folder / f"{sex}_{image.name}").parent.mkdir(exist_ok=True)
            (folder / f"{sex}_{image.name}").write_bytes(image.read_bytes())
    cv2.imwrite(str(folder / "wall.png"), np.full((200, 200, 3), 128, np.uint8))  # no face in it
    out = tmp_path / "women"
    assert common.run(gender_main, ["--input", str(folder), "--output", str(out), "--gender", "Woman", "--backend",
                                    "deepface", "--detector-backend", "yunet", "--workers", "0", "-q"]) == 0
    capsys.readouterr()
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(out / "predictions.csv", newline=""))}
    assert len(rows) == 9 and len(seen) == 8 and all(shape == (1, 224, 224, 3) for shape in seen)
    assert rows.pop("wall.png")["reason"] == "no face"
    assert {r["gender"] for r in rows.values()} == {"Woman", "Man"}
    for name, row in rows.items():
        woman = row["gender"] == "Woman"
        assert float(row["confidence"]) == pytest.approx(0.9 if woman else 0.8), row
        assert bool(row["destination"]) == woman, row
        if woman:
            placed = Path(row["destination"])
            assert out in placed.parents and placed.read_bytes() == (folder / name).read_bytes()
    assert len([p for p in out.rglob("*.jpg")]) == sum(r["gender"] == "Woman" for r in rows.values())
