"""Finding every face of one person from one or a few reference photos.

Exact inner-product search in FAISS over the normalised embeddings (on the GPU when
FAISS has one), every face above the cut-off returned, then query expansion: the
most confident matches are averaged with the references into a new query, which
reaches the person's harder photos (profile, occlusion, low light) that no single
reference is close enough to.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import faiss
import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from .errors import SetupError
from .fsutil import missing_path_hint
from .faces import EmbedOptions, FaceModels, detect_photo_faces, find_crop_face, turned_where_better
from .alignment import align
from .detection import Detections
from .images import DecodeError, read_image
from .recognition import l2_normalise
from .thresholds import ImpostorModel, impostor_model

log = logging.getLogger(__name__)

SEARCH_Z = 4.5
EXPAND_Z = 5.0
EXPAND_COUNT = 10
IMPOSTOR_PAIRS = 50_000  # a histogram mode needs far fewer pairs than clustering's 200,000
# References are alike where their faces reach this many impostor spreads above the peak of random pairs:
# a lower bar than a match's, as the references are meant to be of one person and only a photo of someone
# else is to be told apart (LFW dev, benchmarks/eval_search.py: at the match threshold, 4.5 spreads, 5.5-6.9%
# of draws of 3-5 photos of one person left one of them out, against 0.8-1.4% at 3 spreads).
REFERENCE_Z = 3.0


@dataclass(frozen=True, eq=False)  # arrays inside: equal only to itself
class Reference:
    path: str
    faces: NDArray[np.float32]  # [F, D]: every face of the photo, largest first (one for a face crop)
    boxes: NDArray[np.float32] | None  # [F, 4]: their boxes; None for a crop, where the image is the face
    chosen: int = 0  # the face searched for
    agreement: float | None = None  # in a photo of several faces: the chosen face's mean best match in the others
    runner_up_agreement: float | None = None  # there: the agreement of the face next to it

    @property
    def embedding(self) -> NDArray[np.float32]:
        return self.faces[self.chosen]

    @property
    def faces_in_photo(self) -> int:
        return len(self.faces)

    @property
    def box(self) -> NDArray[np.float32] | None:
        """The box of the face searched for, or None where the whole image is that face."""
        return None if self.boxes is None else self.boxes[self.chosen]


def embed_reference(path: str, models: FaceModels, det_size: int = EmbedOptions.photo_det_size) -> Reference:
    """The faces of a reference photo (or face crop), embedded; the largest is the one searched
    for until ``choose_faces`` picks, among several references, the one they have in common.
    ``det_size``: the size photos are detected at, that of the collection's photos mode.

    Raises ``SetupError`` for an unreadable file or an image with no face.
    """
    if not os.path.lexists(path):
        raise SetupError(f"query not found: {path}{missing_path_hint(path)}")
    try:
        image = read_image(path)
    except DecodeError as err:
        raise SetupError(f"cannot use query {path}: {err}") from None
    size = models.recognizer.input_size
    # As photos mode finds faces, but for its padded second try: a tight crop is found as crops are, below.
    photos = EmbedOptions(mode="photos", photo_det_size=det_size, photo_retry_size=0)

    def detect(images: Sequence[NDArray[np.uint8]]) -> list[Detections]:
        return detect_photo_faces(images, models.detector, photos)

    dets = turned_where_better([image], detect([image]), detect, models.detector, photos, faceless=True)[0]
    if len(dets):
        area = (dets.boxes[:, 2] - dets.boxes[:, 0]) * (dets.boxes[:, 3] - dets.boxes[:, 1])
        order = np.argsort(-area, kind="stable")
        faces = np.stack([align(image, dets.kps[i], size) for i in order])
        return Reference(path, models.recognizer.embed(faces), dets.boxes[order].astype(np.float32))
    found = find_crop_face(image, models.detector, EmbedOptions())  # a tight crop needs padding
    if found is None:
        raise SetupError(f"no face found in query {path}; use a photo where the face is visible")
    return Reference(path, models.recognizer.embed(align(image, found[0], size)[None]), None)


def choose_faces(refs: Sequence[Reference]) -> list[Reference]:
    """In each reference photo that shows several faces, the face of the person the references
    have in common: the one whose best match in the others is closest on average. Photos of one
    face (the person alone, or a crop) decide where there are any: group photos of the same people
    together would otherwise outvote them. Without them, every other reference counts (several
    group photos of one person with others). With no other reference at all, the largest face,
    with a warning."""
    alone = [r.faces for r in refs if r.faces_in_photo == 1]
    chosen = []
    for n, ref in enumerate(refs):
        if ref.faces_in_photo == 1:
            chosen.append(ref)
            continue
        others = alone or [r.faces for i, r in enumerate(refs) if i != n]
        if not others:
            log.warning("query %s shows %d faces; using the largest (add a photo of the person alone, or give "
                        "a crop of the face, to search for another)", ref.path, ref.faces_in_photo)
            chosen.append(ref)
            continue
        agreement = np.sum([np.max(ref.faces @ other.T, axis=1) for other in others], axis=0) / len(others)
        best, second = np.argsort(-agreement, kind="stable")[:2]
        log.warning("query %s shows %d faces; using the %s, the one most like the %s (similarity %.2f on average)",
                    ref.path, ref.faces_in_photo, _size_rank(int(best)),
                    "references of one face" if alone else "other references", float(agreement[best]))
        chosen.append(replace(ref, chosen=int(best), agreement=float(agreement[best]),
                              runner_up_agreement=float(agreement[second])))
    return chosen


def undecided(refs: Sequence[Reference], threshold: float) -> list[Reference]:
    """Group photos in which a second face, too, is like the other references (its agreement at or
    above the search's threshold) when no reference shows a face alone: the references show the
    same people together, and nothing says which of them is meant."""
    if any(r.faces_in_photo == 1 for r in refs):
        return []
    return [r for r in refs if r.runner_up_agreement is not None and r.runner_up_agreement >= threshold]


def alike_sets(refs: Sequence[Reference], threshold: float) -> list[list[int]]:
    """The references in sets of alike faces, largest first: two references are in one set where their
    faces searched for reach ``threshold`` (``REFERENCE_Z`` impostor spreads), directly or through others
    (one set: they agree)."""
    if not refs:
        return []
    faces = np.stack([r.embedding for r in refs])
    _, label = connected_components(csr_matrix(faces @ faces.T >= threshold), directed=False)
    sets = [np.nonzero(label == s)[0].tolist() for s in range(int(label.max()) + 1)]
    return sorted(sets, key=lambda members: (-len(members), members[0]))


def someone_else(sets: Sequence[Sequence[int]], n: int) -> list[int] | None:
    """Of ``n`` references in ``sets`` of alike faces (``alike_sets``), those outside a set of two or more
    that holds most of them: likely photos of someone else. None where no set holds most of them."""
    if not sets or len(sets[0]) < 2 or 2 * len(sets[0]) <= n:
        return None
    return sorted(set(range(n)) - set(sets[0]))


def _size_rank(index: int) -> str:
    """``largest``, ``second largest``, … for the face at ``index`` (largest first)."""
    return "largest" if index == 0 else f"{_ordinal(index + 1)} largest"


def strangers(refs: Sequence[Reference], threshold: float) -> list[Reference]:
    """Group photos among ``refs`` none of whose faces matches the other references (the chosen
    face's agreement is below the search's threshold): they likely do not show the person."""
    return [r for r in refs if r.agreement is not None and r.agreement < threshold]


def _ordinal(n: int) -> str:
    """``second``, ``third``, then ``4th`` … ``11th``, ``21st``, ``22nd``."""
    if n in (2, 3):
        return "second" if n == 2 else "third"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@dataclass
class SearchResult:
    index: NDArray[np.int64]  # rows of the embeddings, best first
    similarity: NDArray[np.float32]
    via_expansion: NDArray[np.bool_]
    threshold: float
    threshold_source: str


GPU_K_LIMIT = 2048  # FAISS GPU indexes return at most this many neighbours per query


class FaceIndex:
    """Loaded embeddings ready for queries: every row above a similarity, exactly, with
    FAISS range search on the CPU, k-NN on the GPU (falling back to the CPU index when a
    query has more matches than it returns). Build once, query many times."""

    def __init__(self, x: NDArray[np.float32], use_gpu: bool = False):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self._impostor: ImpostorModel | None = None
        self.cpu = faiss.IndexFlatIP(x.shape[1])
        self.cpu.add(x)
        self.gpu = None
        if use_gpu:
            try:
                self.gpu = faiss.index_cpu_to_all_gpus(self.cpu)
            except RuntimeError as err:
                log.warning("FAISS on the GPU failed (%s); searching on the CPU", str(err).splitlines()[0][:200])

    @property
    def impostor(self) -> ImpostorModel:
        if self._impostor is None:
            self._impostor = impostor_model(self.x, pairs=IMPOSTOR_PAIRS)
        return self._impostor

    def above(self, queries: NDArray[np.float32], cut: float) -> NDArray[np.float32]:
        """(n,) best similarity to any query for rows reaching ``cut``, -inf elsewhere."""
        best = np.full(self.cpu.ntotal, -np.inf, np.float32)
        if self.gpu is not None:
            k = min(self.cpu.ntotal, GPU_K_LIMIT)
            sims, rows = self.gpu.search(queries, k)
            if not (k == GPU_K_LIMIT and (sims[:, -1] >= cut).any()):
                keep = (rows >= 0) & (sims >= cut)
                np.maximum.at(best, rows[keep], sims[keep])
                return best
        lims, sims, rows = self.cpu.range_search(queries, cut)
        np.maximum.at(best, rows, sims)
        return best


def search(
    embeddings: NDArray[np.float32] | FaceIndex,
    references: Sequence[NDArray[np.float32]],
    *,
    threshold: float | None = None,
    calibrated: tuple[float, str] | None = None,
    expand: bool = True,
    top_k: int | None = None,
    use_gpu: bool = False,
) -> SearchResult:
    """Rows of ``embeddings`` (n, d), or of a prebuilt ``FaceIndex``, matching any
    reference (d,), best first."""
    searcher = embeddings if isinstance(embeddings, FaceIndex) else FaceIndex(embeddings, use_gpu)
    x = searcher.x
    refs = l2_normalise(np.stack(references))
    if threshold is not None:
        cut, source = float(threshold), "--threshold"
        model = None
    elif calibrated is not None:
        (cut, source), model = calibrated, None
    else:
        model = searcher.impostor
        cut = model.cut(SEARCH_Z)
        source = model.describe("impostor peak of random pairs", SEARCH_Z)
    n = len(x)
    first = searcher.above(refs, cut)
    best = first
    expanded = np.zeros(n, bool)
    if expand:
        confident_cut = model.cut(EXPAND_Z) if model is not None else cut + 0.1 * (1.0 - cut)
        confident = np.nonzero(first >= confident_cut)[0]
        confident = confident[np.argsort(-first[confident], kind="stable")][:EXPAND_COUNT]
        if confident.size:
            query = l2_normalise(np.concatenate([refs, x[confident]]).mean(axis=0, keepdims=True))
            second = searcher.above(query, cut)
            expanded = (second >= cut) & (first < cut)
            best = np.maximum(first, second)
    hits = np.nonzero(best >= cut)[0]
    hits = hits[np.argsort(-best[hits], kind="stable")]
    if top_k is not None:
        hits = hits[:top_k]
    return SearchResult(hits.astype(np.int64), best[hits], expanded[hits], float(cut), source)
