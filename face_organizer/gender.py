"""Gender (and age) per image: InsightFace's genderage model of the pack, batched, or
DeepFace's ``analyze`` as the original tool did.

The insightface backend finds the face as generate_embeddings does (padding tight
crops first: the detector finds nothing on a 200x200 UTKFace crop without it), then
crops it as insightface's ``Attribute`` model expects: centred on the box, 1.5x its
longer side, 96x96, no rotation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from numpy.typing import NDArray

from .buckets import run_batched
from .deepface_import import deepface_home_default, import_deepface
from .detection import SCRFD, coarse_detector, load_detector_model
from .errors import ModelPackError, SetupError
from .faces import EmbedOptions, find_crop_face
from .modelpack import ModelPack
from .providers import Device, SessionReport, open_session
from .recognition import input_normalisation
from .tensors import model_input, takes_uint8_images, with_uint8_bgr_input

log = logging.getLogger(__name__)

GENDERS = ("Woman", "Man")  # insightface's genderage: index 0 female, 1 male


@dataclass(frozen=True)
class GenderPrediction:
    path: str
    gender: str | None
    confidence: float
    age: float | None
    reason: str | None = None  # why there is no prediction: 'no face' or a decode error


def attribute_crop(image: NDArray[np.uint8], box: NDArray[np.floating], size: int = 96) -> NDArray[np.uint8]:
    """The face box centred in a ``size`` square spanning 1.5x its longer side."""
    x1, y1, x2, y2 = [float(v) for v in box[:4]]
    scale = size / (max(x2 - x1, y2 - y1) * 1.5)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    matrix = np.array([[scale, 0, size / 2 - cx * scale], [0, scale, size / 2 - cy * scale]], np.float64)
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)


def _softmax(x: NDArray[np.floating]) -> NDArray[np.float64]:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _genderage(pack: ModelPack) -> Path:
    if pack.genderage is None:
        raise ModelPackError(f"model pack {pack.name} at {pack.folder} has no gender/age model (genderage.onnx)")
    return pack.genderage


class InsightFaceGender:
    """Batched genderage inference with the pack's detector and attribute model."""

    @staticmethod
    def name_for(pack: ModelPack) -> str:
        """The predictor's name (see ``gender_stage.Predictor``), without loading it."""
        return f"insightface {pack.name} {pack.detector.name} {_genderage(pack).name}"

    def __init__(self, pack: ModelPack, device: Device = "auto", gpu_id: int = 0, *, threads: int = 0, batch_size: int = 64):
        self.name = self.name_for(pack)  # what made the predictions
        # Both sessions take the uint8 images and normalise them themselves (see tensors.py).
        det_model = load_detector_model(pack.detector)
        det_session, det_report = open_session(det_model.SerializeToString(), pack.detector.name, device, gpu_id,
                                               threads=threads)
        genderage = _genderage(pack)
        model = onnx.load(str(genderage))
        self.mean, self.std = input_normalisation(model)
        if any(n.name == "bn_data" for n in model.graph.node[:3]):
            self.mean, self.std = 0.0, 1.0  # normalisation inside the graph, as insightface detects it
        model = with_uint8_bgr_input(model, self.mean, self.std)
        self.session, report = open_session(model.SerializeToString(), genderage.name, device, gpu_id, threads=threads)
        self.reports: list[SessionReport] = [det_report, report]
        self.detector = SCRFD(det_session)
        if det_report.device == "cpu":  # crops detected by its coarse levels first (``SCRFD.detect_crops``)
            self.detector.coarse = coarse_detector(det_model, self.detector, lambda serialized: open_session(
                serialized, pack.detector.name, "cpu", gpu_id, threads=threads, quiet=True)[0])
        arg = self.session.get_inputs()[0]
        self.takes_uint8 = takes_uint8_images(self.session)
        self.input_name, self.size = arg.name, int(arg.shape[1] if self.takes_uint8 else arg.shape[2])
        batch_dim = arg.shape[0]
        self.batch = batch_size if not (isinstance(batch_dim, int) and batch_dim > 0) else batch_dim
        self.options = EmbedOptions()

    @property
    def device(self) -> str:
        return self.reports[-1].device

    def _run(self, faces: NDArray[np.uint8]) -> NDArray[np.float32]:
        blob = model_input(faces, self.takes_uint8, self.mean, self.std)
        return run_batched(self.session, None, self.input_name, blob, self.batch, pad=self.device != "cpu")

    def predict_crop(self, crop: NDArray[np.uint8]) -> str:
        """Gender of one face already cropped by ``attribute_crop``."""
        preds = (self._run(crop[None]) + self._run(crop[None, :, ::-1])) / 2
        return GENDERS[int(np.argmax(preds[0, :2]))]

    def predict(self, items: Sequence[tuple[str, NDArray[np.uint8]]]) -> list[GenderPrediction]:
        crops, owners, results = [], [], {}
        for path, image in items:
            found = find_crop_face(image, self.detector, self.options)
            if found is None:
                results[path] = GenderPrediction(path, None, 0.0, None, "no face")
                continue
            crops.append(attribute_crop(image, found[1], self.size))
            owners.append(path)
        if crops:
            faces = np.stack(crops)
            # Average the face and its mirror image: a cheap, standard test-time augmentation
            # for this 96x96 model (measured on UTKFace dev: see PROJECT_PLAN.md).
            preds = (self._run(faces) + self._run(faces[:, :, ::-1])) / 2
            probs = _softmax(preds[:, :2])
            for path, p, pred in zip(owners, probs, preds):
                k = int(np.argmax(p))
                results[path] = GenderPrediction(path, GENDERS[k], float(p[k]), float(pred[2] * 100))
        return [results[path] for path, _ in items]


class DeepFaceGender:
    """DeepFace ``analyze(actions=['gender'])`` with a chosen detector backend (optional extra)."""

    @staticmethod
    def name_for(detector_backend: str) -> str:
        return f"deepface {detector_backend}"

    def __init__(self, detector_backend: str = "opencv"):
        try:
            DeepFace = import_deepface()
        except ImportError as err:
            raise SetupError("--backend deepface needs DeepFace and TensorFlow: pip install 'face-organizer[deepface]'") from err
        except OSError as err:  # DeepFace makes its folders under $DEEPFACE_HOME as it is imported
            home = deepface_home_default()
            raise SetupError(f"--backend deepface: DeepFace cannot make its folder in {home} ({err.strerror or err}); "
                             f"set DEEPFACE_HOME to a folder this user (uid {os.getuid()}) can write, or run as the owner "
                             "of that one (docker exec runs as root unless -u is given)") from None
        _keep_tensorflow_off_gpu()
        try:
            DeepFace.build_model("Gender", task="facial_attribute")
        except Exception as err:  # noqa: BLE001 - offline weight downloads fail in many ways
            logging.getLogger(__name__).debug("DeepFace said: %s", err)
            weights = deepface_home_default() / ".deepface" / "weights"
            raise SetupError(
                "DeepFace's gender model weights are missing and could not be downloaded (-vv shows why): put "
                f"gender_model_weights.h5 into {weights} (scripts/benchmark_backends.py --prepare-deepface-weights "
                "FOLDER copies it there; DEEPFACE_HOME chooses the folder) or use --backend insightface"
            ) from None
        self.deepface, self.detector_backend = DeepFace, detector_backend
        self.name = self.name_for(detector_backend)
        self.device = "cpu"

    def predict(self, items: Sequence[tuple[str, NDArray[np.uint8]]]) -> list[GenderPrediction]:
        out = []
        for path, image in items:
            try:
                result: Any = self.deepface.analyze(image, actions=["gender"], detector_backend=self.detector_backend,
                                                    enforce_detection=True, silent=True)
            except ValueError as err:
                out.append(GenderPrediction(path, None, 0.0, None, "no face" if "Face could not be detected" in str(err) else str(err)[:200]))
                continue
            face = result[0] if isinstance(result, list) else result
            scores = face.get("gender", {})
            gender = face.get("dominant_gender")
            out.append(GenderPrediction(path, gender, float(scores.get(gender, 0.0)) / 100.0, None))
        return out


def _keep_tensorflow_off_gpu() -> None:
    """TensorFlow would grab the GPU and load its own CUDA libraries beside ONNX Runtime's."""
    try:
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")
    except Exception as err:  # noqa: BLE001 - already initialised, or no TensorFlow GPU support
        log.debug("TensorFlow GPU hiding skipped: %s", err)
