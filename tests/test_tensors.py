"""Model inputs: the values insightface's models expect, in the layout they take, made on the CPU
(``planar_rgb``) or inside the model (``with_uint8_bgr_input``) with the same result."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from conftest import read_labels
from onnx import helper

import face_organizer.detection as detection
import face_organizer.gender as gender
from face_organizer.detection import DETECTOR_NORMALISATION, SCRFD
from face_organizer.images import read_image
from face_organizer.providers import open_session
from face_organizer.recognition import Recognizer, input_normalisation
from face_organizer.tensors import planar_rgb, takes_uint8_images, with_uint8_bgr_input


@pytest.mark.parametrize(("mean", "std"), [(127.5, 127.5), (0.0, 1.0), (127.5, 128.0)])
def test_planar_rgb_is_the_normalised_rgb_planes(mean: float, std: float) -> None:
    images = np.random.default_rng(3).integers(0, 256, (5, 7, 9, 3), dtype=np.uint8)
    got = planar_rgb(images, mean, std)
    want = ((images[..., ::-1].astype(np.float32) - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2)
    assert got.dtype == np.float32 and got.shape == (5, 3, 7, 9) and got.flags.c_contiguous
    assert np.array_equal(got, want)
    red = np.float32((float(images[1, 2, 3, 2]) - mean) / std)  # in float32, as numpy 1 compares scalars in float64
    assert got[1, 0, 2, 3] == red  # plane 0 is red, BGR's last channel


def _session(model: onnx.ModelProto):
    return open_session(model.SerializeToString(), "model", "cpu", 0, threads=1, quiet=True)[0]


def test_detector_input_is_letterboxed_and_normalised_as_insightface_feeds_it(models, testpack) -> None:
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((256, 256), (120, 200), (300, 90))]
    assert models.detector.takes_uint8  # the stage's detector normalises inside the model
    canvases, places = models.detector._input(images, (192, 160), pad_ratio=0.25)
    assert canvases.dtype == np.uint8 and canvases.shape == (3, 160, 192, 3)
    for image, canvas, (scale, offset) in zip(images, canvases, places):
        h, w = image.shape[:2]
        border = round(max(h, w) * 0.25)
        assert scale == pytest.approx(min(192 / (w + 2 * border), 160 / (h + 2 * border)))
        assert offset == round(border * scale)
        new_w, new_h = min(round(w * scale), 192 - offset), min(round(h * scale), 160 - offset)
        assert np.array_equal(canvas[offset : offset + new_h, offset : offset + new_w], cv2.resize(image, (new_w, new_h)))
        assert not canvas[:offset].any() and not canvas[offset + new_h :].any() and not canvas[:, offset + new_w :].any()
    plain = SCRFD(_session(onnx.load(str(testpack.detector))))  # the exported model: float planes
    blob, same_places = plain._input(images, (192, 160), pad_ratio=0.25)
    assert not plain.takes_uint8 and same_places == places
    want = cv2.dnn.blobFromImages(list(canvases), 1.0 / 128.0, (192, 160), (127.5, 127.5, 127.5), swapRB=True)
    assert np.array_equal(blob, want)  # insightface's own SCRFD input


@pytest.mark.parametrize("cast_first", [False, True])
def test_models_taking_uint8_images_give_the_exported_models_outputs(testpack, lfw, cast_first: bool) -> None:
    face = read_image(lfw / "Tony_Blair" / "Tony_Blair_0001.jpg")
    canvas = cv2.resize(face, (160, 160))[None]
    exported = onnx.load(str(testpack.detector))
    wrapped = _session(with_uint8_bgr_input(exported, *DETECTOR_NORMALISATION, cast_first=cast_first))
    arg = wrapped.get_inputs()[0]
    assert takes_uint8_images(wrapped) and arg.shape[0] == 1 and arg.shape[3] == 3  # (1, h, w, 3), as exported
    got = wrapped.run(None, {arg.name: canvas})
    want = _session(exported).run(None, {exported.graph.input[0].name: planar_rgb(canvas, *DETECTOR_NORMALISATION)})
    assert len(got) == len(want) == 9 and all(np.array_equal(g, w) for g, w in zip(got, want))
    assert max(float(o.max()) for o in got[:3]) > 0.5  # a face was seen: the image reached the network

    exported = onnx.load(str(testpack.recognizer))
    faces = np.stack([cv2.resize(face[60:190, 60:190], (112, 112))])
    uint8_model = with_uint8_bgr_input(exported, *input_normalisation(exported), cast_first=cast_first)
    uint8_recogniser = Recognizer(_session(uint8_model), exported, 1)
    float_recogniser = Recognizer(_session(exported), exported, 1)
    assert uint8_recogniser.takes_uint8 and not float_recogniser.takes_uint8
    assert uint8_recogniser.input_size == float_recogniser.input_size == 112
    assert np.array_equal(uint8_recogniser.embed(faces), float_recogniser.embed(faces))


def test_only_image_models_get_a_uint8_input() -> None:
    def model(channels: int, elem_type: int = onnx.TensorProto.FLOAT) -> onnx.ModelProto:
        x = helper.make_tensor_value_info("x", elem_type, ["n", channels, 4, 4])
        y = helper.make_tensor_value_info("y", elem_type, ["n", channels, 4, 4])
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
        # IR version 8 (opset 13's): onnx's default is newer than older ONNX Runtime releases read
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)

    grey, doubles, colour = model(1), model(3, onnx.TensorProto.DOUBLE), model(3)
    assert with_uint8_bgr_input(grey, 0.0, 1.0) is grey and with_uint8_bgr_input(doubles, 0.0, 1.0) is doubles
    images = np.random.default_rng(5).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    for cast_first in (False, True):
        wrapped = with_uint8_bgr_input(colour, 10.0, 2.0, cast_first=cast_first)
        onnx.checker.check_model(wrapped, full_check=True)
        ops = [node.op_type for node in wrapped.graph.node]
        # TensorRT takes a uint8 input only straight into a Cast; elsewhere the uint8 pixels are moved first
        assert ops == (["Cast", "Transpose", "Gather"] if cast_first else ["Transpose", "Gather", "Cast"]) + ["Sub", "Div", "Identity"]
        assert list(wrapped.graph.node[0].input) == ["face_organizer_bgr_images"]
        out = _session(wrapped).run(None, {"face_organizer_bgr_images": images})[0]
        assert np.array_equal(out, planar_rgb(images, 10.0, 2.0))


@pytest.mark.parametrize("tensorrt", [False, True])
def test_stage_models_cast_first_only_for_tensorrt(testpack, monkeypatch, tensorrt: bool) -> None:
    import face_organizer.faces as faces

    orders = []

    def recording(model, mean, std, *, cast_first=False):
        orders.append(cast_first)
        return with_uint8_bgr_input(model, mean, std, cast_first=cast_first)

    monkeypatch.setattr(detection, "with_uint8_bgr_input", recording)
    monkeypatch.setattr(faces, "with_uint8_bgr_input", recording)
    models = faces.load_face_models(testpack, "cpu", 0, tensorrt=tensorrt)
    assert orders == [tensorrt, tensorrt] and models.detector.takes_uint8 and models.recognizer.takes_uint8


def test_gender_models_take_uint8_and_predict_as_the_exported_ones(testpack, utkface, monkeypatch) -> None:
    items = [(r["path"], read_image(utkface / r["path"])) for r in read_labels(utkface)[::25]]
    uint8 = gender.InsightFaceGender(testpack, "cpu")
    for module in (gender, detection):
        monkeypatch.setattr(module, "with_uint8_bgr_input", lambda model, mean, std, cast_first=False: model)
    exported = gender.InsightFaceGender(testpack, "cpu")
    assert uint8.takes_uint8 and uint8.detector.takes_uint8 and uint8.size == exported.size
    assert not exported.takes_uint8 and not exported.detector.takes_uint8
    got, want = uint8.predict(items), exported.predict(items)
    assert got == want and sum(p.gender is not None for p in got) >= 18  # the same genders, confidences and ages
