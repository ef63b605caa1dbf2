"""Five-point alignment: the same warp as insightface's ``face_align``, without its per-call cost (and
bicubic where a face is enlarged much).

insightface keeps the template in float32 and scikit-image fits in the landmarks' precision, so the
matrices agree to about 1e-5 rather than exactly; a wrong fit would be off by whole pixels."""

from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from face_organizer.alignment import ARCFACE_TEMPLATE, align, similarity_transform, template_for
from face_organizer.images import read_image

face_align = pytest.importorskip("insightface.utils.face_align")


def _insightface(function, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image's SimilarityTransform.estimate is deprecated
        return function(*args)


@pytest.mark.parametrize("size", [112, 128, 224])
def test_similarity_transform_is_insightfaces_estimate_norm(size: int) -> None:
    rng = np.random.default_rng(5)
    for i in range(200):
        if i % 3 == 0:  # a face: the template scaled, shifted, turned and jittered
            angle = rng.uniform(-1.2, 1.2)
            turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            kps = ARCFACE_TEMPLATE @ turn.T * rng.uniform(0.5, 4) + rng.uniform(-50, 300, 2) + rng.normal(0, 3, (5, 2))
        elif i % 3 == 1:  # mirrored landmarks: the best fit without mirroring
            kps = ARCFACE_TEMPLATE * [-1, 1] * rng.uniform(0.5, 3) + rng.normal(0, 2, (5, 2))
        else:  # anything
            kps = rng.normal(0, 40, (5, 2))
        np.testing.assert_allclose(similarity_transform(kps, template_for(size)), _insightface(face_align.estimate_norm, kps, size), atol=1e-4)


def test_align_gives_insightfaces_crop(shared, models) -> None:
    image = read_image(shared / "datasets" / "lfw_dev" / "Tony_Blair" / "Tony_Blair_0001.jpg")
    kps = models.detector.detect(image, (640, 640), 0.5).kps[0]
    ours, theirs = align(image, kps, 112).astype(int), _insightface(face_align.norm_crop, image, kps, 112).astype(int)
    assert np.abs(ours - theirs).max() <= 1 and np.mean(ours != theirs) < 0.001


def test_tiny_faces_are_told_apart_better_than_by_a_bilinear_warp(lfw, lfw_labels, models, tmp_path,
                                                                  monkeypatch) -> None:
    """Faces 24 pixels wide (a distant face in a video frame), enlarged to the recogniser's 112: warped
    bicubically, as ``align`` warps a face enlarged that much, same and different people are told apart
    better than with insightface's bilinear ``norm_crop``, on LFW dev faces of three people and 20 strangers."""
    from face_organizer import embfile, faces
    from face_organizer.embed_run import run_embeddings
    from face_organizer.evaluation import roc_auc

    chosen = [r for p in ("Tony_Blair", "Donald_Rumsfeld", "Junichiro_Koizumi")
              for r in [r for r in lfw_labels if r["identity"] == p][:30]]
    chosen += [r for r in lfw_labels if r["kind"] == "single"][:20]
    identity = {}
    for i, row in enumerate(chosen):
        photo = read_image(lfw / row["path"])
        h, w = photo.shape[:2]
        face = cv2.resize(photo[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4], (24, 24), interpolation=cv2.INTER_AREA)
        path = tmp_path / "tiny" / f"face_{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        assert cv2.imwrite(str(path), face)
        identity[str(path)] = row["identity"]

    def auc(out: Path) -> float:
        run_embeddings(list(identity), out, models, progress=False)
        rows = embfile.load(out).rows
        assert len(rows) == len(identity)
        labels = [identity[p] for p in rows.paths]
        upper = np.triu_indices(len(labels), 1)
        same = np.array([labels[a] == labels[b] for a, b in zip(*upper)])
        return roc_auc((rows.embeddings @ rows.embeddings.T)[upper], same)

    ours = auc(tmp_path / "ours.pkl")
    monkeypatch.setattr(faces, "align",
                        lambda image, kps, size=112: _insightface(face_align.norm_crop, image, kps, size))
    bilinear = auc(tmp_path / "bilinear.pkl")
    assert ours > bilinear + 0.01, (ours, bilinear)
