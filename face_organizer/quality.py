"""Faces too degraded to recognise: badly blurred frames, tiny or smeared faces.

Once a face is blurred past recognition its embedding loses the person and drifts
towards one region shared by all such faces (different people's heavily blurred crops
meet at cosine 0.45 with the testpack model, sharp ones near 0). That region's centre
is found per model by embedding heavily blurred versions of the sample faces that ship
with insightface; stage 1 stores it in the embeddings file's ``meta``, and clustering
sets aside faces whose similarity to it stands out from the collection's own, instead
of letting them pollute a person's folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
from numpy.typing import NDArray

from .alignment import align
from .detection import pick_central
from .images import DecodeError
from .recognition import NonFiniteEmbedding
from .samples import sample_photos
from .thresholds import impostor_from_similarities

if TYPE_CHECKING:
    from .faces import FaceModels

log = logging.getLogger(__name__)

META_KEY = "unrecognisable_centre"
# Gaussian blurs (pixels at the 112-pixel alignment) that leave no identity in a face,
# and how many spreads above the collection's own peak a face must stand to be set aside.
BLUR_SIGMAS = (3.0, 4.0, 5.0)
UNRECOGNISABLE_Z = 3.5


def sample_faces(models: FaceModels) -> list[NDArray[np.uint8]]:
    """The package-shipped sample faces, aligned for the recogniser: the six people of
    insightface's ``t1.jpg``, its Tom Hanks photo and, when installed, scikit-image's astronaut."""
    size = models.recognizer.input_size
    group, singles = sample_photos()
    faces = [align(group, kps, size) for kps in models.detector.detect(group, (640, 640), 0.5).kps]
    for image in singles:
        found = models.detector.detect(image, (640, 640), 0.5, pad_ratio=0.3)
        if len(found):
            faces.append(align(image, found.kps[pick_central(found, image.shape)], size))
    return faces


def unrecognisable_centre(models: FaceModels) -> NDArray[np.float32] | None:
    """Unit mean embedding of the sample faces blurred past recognition, mirrored too;
    None (with a warning) when the sample faces cannot be had."""
    try:
        faces = sample_faces(models)
    except (ImportError, OSError, ValueError, DecodeError) as err:
        log.warning("blurred faces will not be set aside when clustering: no sample faces to find the "
                    "unrecognisable-face centre with (%s); install the 'insightface' extra", err)
        return None
    if len(faces) < 3:
        log.warning("blurred faces will not be set aside when clustering: only %d sample faces found", len(faces))
        return None
    scale = models.recognizer.input_size / 112
    blurred = [cv2.GaussianBlur(face, (0, 0), sigma * scale) for face in faces for sigma in BLUR_SIGMAS]
    blurred += [np.ascontiguousarray(face[:, ::-1]) for face in blurred]
    try:
        centre = models.recognizer.embed(np.stack(blurred)).mean(axis=0)
    except NonFiniteEmbedding as err:  # the run's own faces then stop it, with what to do, if they fail too
        log.warning("blurred faces will not be set aside when clustering: %s", err)
        return None
    return (centre / np.linalg.norm(centre)).astype(np.float32)


@dataclass(frozen=True)
class Unrecognisable:
    """``mask``: faces set aside, those at ``cutoff`` or more from the centre."""

    mask: NDArray[np.bool_]
    cutoff: float
    source: str

    @property
    def count(self) -> int:
        return int(self.mask.sum())


def find_unrecognisable(embeddings: NDArray[np.float32], centre: NDArray[np.floating] | None,
                        z: float = UNRECOGNISABLE_Z) -> Unrecognisable | None:
    """Faces whose similarity to the unrecognisable-face centre stands ``z`` spreads above
    the collection's peak (found as the impostor peak of pairs is: recognisable faces form
    the peak, the blurred ones a tail above). None without a centre
    or when its size does not match the embeddings."""
    if centre is None or len(embeddings) == 0:
        return None
    centre = np.asarray(centre, np.float32)
    if centre.shape != (embeddings.shape[1],):
        log.warning("ignoring an unrecognisable-face centre of %s values for %d-d embeddings", centre.size, embeddings.shape[1])
        return None
    similarity = (embeddings @ centre).astype(np.float32)
    model = impostor_from_similarities(similarity, embeddings.shape[1])
    cutoff = model.cut(z)
    source = f"peak of the faces' similarity to it {model.centre:.3f} + {z} x {model.spread:.3f}"
    return Unrecognisable(similarity >= cutoff, cutoff, source)
