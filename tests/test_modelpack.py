from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from face_organizer.errors import ModelPackError
from face_organizer.modelpack import classify, resolve_pack
from face_organizer.recognition import with_dynamic_batch


def test_testpack_roles(testpack_dir: Path) -> None:
    pack = resolve_pack("testpack", testpack_dir.parent)
    assert pack.detector.name == "det_500m.onnx"
    assert pack.recognizer.name == "MobileFaceNet.onnx"
    assert pack.genderage is not None and pack.genderage.name == "genderage.onnx"
    assert classify(testpack_dir / "genderage.onnx") == "genderage"


def test_missing_pack_names_folder_and_files(tmp_path: Path) -> None:
    with pytest.raises(ModelPackError) as err:
        resolve_pack("buffalo_l", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "buffalo_l") in message and "w600k_r50.onnx" in message and "--model-root" in message


def test_pack_without_recogniser(tmp_path: Path, testpack_dir: Path) -> None:
    (tmp_path / "half").mkdir()
    shutil.copy(testpack_dir / "det_500m.onnx", tmp_path / "half" / "det_500m.onnx")
    with pytest.raises(ModelPackError, match="no recognition model"):
        resolve_pack("half", tmp_path)


def test_dynamic_batch_rewrite_matches_single(models, testpack) -> None:
    import numpy as np
    import onnxruntime as ort

    assert models.batchable and models.recognizer.max_batch == 8  # CPU cap
    model = onnx.load(str(testpack.recognizer))
    single = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batched = ort.InferenceSession(with_dynamic_batch(model).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((5, 3, 112, 112)).astype(np.float32)
    expected = np.concatenate([single.run(None, {"input0": x[i : i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(batched.run(None, {"input0": x})[0], expected, rtol=1e-4, atol=1e-5)


def test_pack_unzipped_into_a_folder_of_its_own_name(tmp_path: Path, testpack_dir: Path) -> None:
    """antelopev2.zip unpacked into models/antelopev2/ leaves its files one folder further down."""
    inner = tmp_path / "models" / "mypack" / "mypack"
    shutil.copytree(testpack_dir, inner)
    pack = resolve_pack("mypack", tmp_path / "models", download=False)
    assert pack.name == "mypack" and pack.folder == inner and pack.recognizer.name == "MobileFaceNet.onnx"
    # --model-root pointing at ~/.insightface rather than ~/.insightface/models finds it too
    assert resolve_pack("mypack", tmp_path, download=False).folder == inner
    # two folders of models inside: which one is meant is not guessed
    shutil.copytree(testpack_dir, inner.parent / "other")
    with pytest.raises(ModelPackError, match="no detection or recognition model") as err:
        resolve_pack("mypack", tmp_path / "models", download=False)
    assert "folders holding some: mypack, other" in str(err.value)
