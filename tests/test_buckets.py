"""Batches padded to a few shapes for accelerators: same faces, same embeddings, few shapes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from face_organizer.alignment import align
from face_organizer.buckets import bucket, pad_batch
from face_organizer.detection import SCRFD
from face_organizer.faces import EmbedOptions, find_crop_faces
from face_organizer.images import read_image
from face_organizer.recognition import Recognizer

POWERS = {1, 2, 4, 8, 16, 32}


class ShapeRecorder:
    """Passes calls through to a real session and records the batch size of each."""

    def __init__(self, session):
        self.session, self.batches = session, []

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, names, feeds):
        self.batches.append(len(next(iter(feeds.values()))))
        return self.session.run(names, feeds)


def test_bucket_sizes() -> None:
    assert [bucket(n, 64) for n in (1, 2, 3, 5, 17, 33, 64)] == [1, 2, 4, 8, 32, 64, 64]
    assert bucket(37, 48) == 48 and bucket(48, 48) == 48 and bucket(3, 3) == 3
    blob = np.ones((5, 3, 2, 2), np.float32)
    padded = pad_batch(blob, 64)
    assert padded.shape == (8, 3, 2, 2) and np.all(padded[:5] == 1) and np.all(padded[5:] == 0)
    four = blob[:4]
    assert pad_batch(four, 64) is four  # already a bucket size: sent as it is


@pytest.fixture(scope="module")
def crops_and_faces(video_crops, models):
    crops = [read_image(p) for c in video_crops.values() for p in c]
    found = find_crop_faces(crops, models.detector, EmbedOptions())
    faces = np.stack([align(image, f[0], models.recognizer.input_size) for image, f in zip(crops, found) if f is not None])
    return crops, faces


def test_padded_recogniser_gives_the_same_embeddings(testpack, models, crops_and_faces) -> None:
    _, faces = crops_and_faces
    plain = models.recognizer
    assert plain.max_batch == 8 and not plain.pad_batches  # the CPU gets no padding
    recorder = ShapeRecorder(plain.session)
    padded = Recognizer(recorder, onnx.load(str(testpack.recognizer)), max_batch=32, pad_batches=True)
    recorder.batches.clear()
    for n in (1, 3, 5, 11, 29, len(faces)):
        np.testing.assert_allclose(padded.embed(faces[:n]), plain.embed(faces[:n]), atol=1e-5)
    assert set(recorder.batches) <= POWERS and {4, 8, 16, 32} <= set(recorder.batches)


def test_padded_detector_finds_the_same_faces(models, crops_and_faces) -> None:
    crops, _ = crops_and_faces
    plain = models.detector
    recorder = ShapeRecorder(plain.session)
    padded = SCRFD(recorder, plain.layout, max_batch=32, pad_batches=True)
    for n in (3, 13):
        got = padded.detect_many(crops[:n], (192, 192), 0.35, pad_ratio=0.3)
        want = plain.detect_many(crops[:n], (192, 192), 0.35, pad_ratio=0.3)
        assert [len(d) for d in got] == [len(d) for d in want] and sum(len(d) for d in want) >= n
        for a, b in zip(got, want):
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
            np.testing.assert_allclose(a.kps, b.kps, atol=1e-3)
            np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert recorder.batches == [4, 16]


def test_gpu_sessions_get_whole_padded_batches(testpack, models, video_crops, monkeypatch) -> None:
    """Sessions that report CUDA (here CPU sessions in disguise, as no GPU exists) get the
    whole --batch-size, padded to powers of two, and give the CPU plan's embeddings."""
    from face_organizer import faces
    from face_organizer.faces import embed_batch, load_face_models
    from face_organizer.providers import CPU, CUDA, SessionReport, open_session

    class AsIfCuda(ShapeRecorder):
        def get_providers(self):
            return [CUDA, CPU]

    sessions: list[AsIfCuda] = []

    def cuda_session(model, name, device, gpu_id, **kwargs):
        session, _ = open_session(model, name, "cpu", gpu_id, quiet=True)
        sessions.append(AsIfCuda(session))
        return sessions[-1], SessionReport(name, (CUDA, CPU), (CUDA, CPU), "cuda", gpu_id)

    monkeypatch.setattr(faces, "open_session", cuda_session)
    gpu = load_face_models(testpack, "cuda", 0, batch_size=16)
    assert gpu.device == "cuda" and gpu.recognizer.max_batch == 16 and gpu.detector.max_batch == 16
    assert gpu.recognizer.pad_batches and gpu.detector.pad_batches
    assert gpu.detector.coarse is None and models.detector.coarse is not None  # the CPU's saving only
    for s in sessions:
        s.batches.clear()
    batch = [(str(p), read_image(p)) for c in video_crops.values() for p in c][:21]
    got, want = embed_batch(batch, gpu, EmbedOptions()).rows, embed_batch(batch, models, EmbedOptions()).rows
    assert got.paths == want.paths and np.array_equal(got.detected, want.detected)
    np.testing.assert_allclose(got.embeddings, want.embeddings, atol=1e-5)
    sent = [b for s in sessions for b in s.batches]
    assert sent and set(sent) <= POWERS | {16} and 16 in sent
