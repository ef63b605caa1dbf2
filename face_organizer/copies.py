"""Faces embedded more than once: copies of an image under other names.

Photo libraries hold the same photo in several folders: an album folder beside the year folder, as a
Google Takeout export lays them out, or a folder copied into another. Their faces' embeddings are the
same to the last bit (the models run the same way on the same pixels; on the CPU this holds whatever
the batch). Clustered as they are, two copies of a stranger's only photo are "each other's most similar
face" and make a folder of two, and a photo copied many times pulls its k-means centre as many times.
The clustering therefore takes each distinct embedding once, and every copy goes where the face it
repeats went (``spread``). Frames that took the embedding of the near-identical frame they repeat
(``--reuse-similar-frames``) count once with it in the same way.

Stage 1 gives a copy the rows of the image it repeats when its run, or an earlier run into the same file,
embedded that image (``embed_run``). Copies embedded apart on a GPU (into the files of two GPUs) may differ
in their last digits (cuDNN chooses its algorithms per shape, timing them in each process). The files keep a
digest of each image's bytes, so ``first_faces`` finds such copies by their bytes as well: the faces of two
images with the same bytes are copies where both runs found the same faces. Files of releases before the
digests are told by their rows alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from .clustering import Clustering


def first_rows(x: NDArray[np.floating]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """``(distinct, of)``: the rows of ``x`` (n, d) that repeat no earlier row, ascending, and for each
    row the position in ``distinct`` of the first row equal to it. Rows are hashed (about half a second
    for 500,000 x 512) and rows of one hash compared byte for byte, so a collision never joins two faces."""
    n = len(x)
    keys = np.fromiter((hash(row.tobytes()) for row in x), np.int64, n)
    first = np.arange(n)
    pending = np.argsort(keys, kind="stable")  # rows of one key in their order: the first comes first
    while pending.size:
        pending_keys = keys[pending]
        starts = np.flatnonzero(np.r_[True, pending_keys[1:] != pending_keys[:-1]])
        head = pending[np.repeat(starts, np.diff(np.r_[starts, pending.size]))]  # the first row of each one's key
        later = np.flatnonzero(head != pending)
        same = np.zeros(later.size, bool)
        for block in range(0, later.size, 4096):  # byte for byte, a block at a time
            rows = later[block : block + 4096]
            same[block : block + rows.size] = (x[pending[rows]] == x[head[rows]]).all(axis=1)
        first[pending[later[same]]] = head[later[same]]
        pending = pending[later[~same]]  # rows unlike the first of their key (a collision): each key again
    distinct = np.flatnonzero(first == np.arange(n))
    position = np.full(n, -1, np.intp)
    position[distinct] = np.arange(distinct.size)
    return distinct, position[first]


def first_faces(x: NDArray[np.floating], paths: Sequence[str], face_index: NDArray[np.integer],
                digests: Mapping[str, bytes]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """``first_rows`` of ``x``, with the faces of images of the same bytes (``digests``, path -> digest) joined
    too: face ``i`` of a copy repeats face ``i`` of the first image with its bytes, where the two images have
    the same faces (a face at the detection threshold, found in one run only, leaves the two apart)."""
    distinct, of = first_rows(x)
    pairs = _same_bytes(paths, face_index, digests)
    if not pairs:
        return distinct, of
    first = distinct[of]  # each row's first row equal to it
    parent: dict[int, int] = {}

    def root(row: int) -> int:
        while (up := parent.get(row, row)) != row:
            row = up
        return row

    for row, earlier in pairs:
        a, b = root(int(first[row])), root(int(first[earlier]))
        if a != b:
            parent[max(a, b)] = min(a, b)
    joined = np.fromiter(parent, np.intp, len(parent))
    to = np.arange(len(x))
    to[joined] = [root(int(row)) for row in joined]
    first = to[first]
    distinct = np.flatnonzero(first == np.arange(len(x)))
    position = np.full(len(x), -1, np.intp)
    position[distinct] = np.arange(distinct.size)
    return distinct, position[first]


def _same_bytes(paths: Sequence[str], face_index: NDArray[np.integer],
                digests: Mapping[str, bytes]) -> list[tuple[int, int]]:
    """(row, the row of the same face in the first image of the same bytes) for the faces of each later such image
    (first: by its first row; images without rows, failed or without a face, are left out)."""
    seen: dict[bytes, str] = {}
    repeated: set[bytes] = set()
    for path, digest in digests.items():
        if seen.setdefault(digest, path) != path:
            repeated.add(digest)
    if not repeated:
        return []
    wanted = {path: digest for path, digest in digests.items() if digest in repeated}
    faces: dict[str, dict[int, int]] = {}  # path -> face index -> row, in the order of the rows
    for row, path in enumerate(paths):
        if path in wanted:
            faces.setdefault(path, {})[int(face_index[row])] = row
    first: dict[bytes, dict[int, int]] = {}
    pairs: list[tuple[int, int]] = []
    for path, mine in faces.items():
        theirs = first.setdefault(wanted[path], mine)
        if theirs is not mine and mine.keys() == theirs.keys():
            pairs.extend((row, theirs[i]) for i, row in mine.items())
    return pairs


def spread(result: Clustering, distinct: NDArray[np.intp], of: NDArray[np.intp]) -> Clustering:
    """``result`` of clustering the ``distinct`` rows spread over every row (``first_rows``): each copy in the
    cluster, and with the similarity, of the face it repeats, and marked in ``repeats``."""
    set_aside = None if result.set_aside is None else result.set_aside[of]
    repeats = np.ones(len(of), bool)
    repeats[distinct] = False
    return _by_image_count(replace(result, labels=result.labels[of], similarity=result.similarity[of],
                                   set_aside=set_aside, repeats=repeats))


def _by_image_count(result: Clustering) -> Clustering:
    """The clusters numbered by their images, copies included, as folders are named (``person_A`` the
    largest): the clustering numbered them by distinct faces. An earlier run's people keep their numbers."""
    k = result.n_clusters
    if result.known_people or k < 2:
        return result
    counts = np.bincount(result.labels[result.labels >= 0], minlength=k)
    order = np.argsort(-counts, kind="stable")  # as many images: the clustering's order
    if (order == np.arange(k)).all():
        return result
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    labels = np.where(result.labels >= 0, rank[np.maximum(result.labels, 0)], result.labels)
    cohesion = result.cohesion
    if cohesion is not None:
        groups = tuple(sorted(tuple(sorted(int(rank[c]) for c in group)) for group in cohesion.groups))
        cohesion = replace(cohesion, mean_pair=cohesion.mean_pair[order], sizes=cohesion.sizes[order],
                           cross_mean=cohesion.cross_mean[np.ix_(order, order)], groups=groups)
    return replace(result, labels=labels, centres=result.centres[order], cohesion=cohesion)
