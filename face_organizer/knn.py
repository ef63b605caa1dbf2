"""Every face's nearest neighbours among the faces themselves: the k-NN graph that
``--clusters auto`` cuts. Exact search up to ``EXACT_KNN_LIMIT`` faces, an IVF index beyond.

FAISS's ``IndexIVFFlat.search`` takes the queries one by one: each scans its probed lists
(16 lists of about 180 faces at 500,000 x 512, 5.8 MB), so on a CPU the search is bound by
memory reads, not arithmetic (259 s of a 316 s ``--clusters auto`` run at 500,000 faces).
When the queries are the indexed faces, the work can go list by list instead
(``self_search``): all faces that probe one list are multiplied with its members in one
matrix product (BLAS), and only similarities above a face's current k-th best are kept. The
candidates are those FAISS would scan (same coarse quantiser, same probes), so the
neighbours are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import faiss
import numpy as np
from numpy.typing import NDArray

from . import progress

log = logging.getLogger(__name__)

EXACT_KNN_LIMIT = 60_000
TRAIN_PER_LIST = 20  # faces per IVF list to train the coarse quantiser on, beyond EXACT_KNN_LIMIT
IVF_PROBES = 16  # lists each face's neighbours are looked for in
SEARCH_BLOCK = 16_384  # faces per FAISS search call: its temporaries grow with the block

# Candidates gathered (as multiples of the number of faces) before they are merged into the
# running best lists, which raises each face's k-th best and so filters the later lists harder.
MERGE_EVERY = 2


def knn_graph(x: NDArray[np.float32], k: int, *, seed: int = 1234, use_gpu: bool = False) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """(similarities, neighbours), each (n, k+1) including the point itself.

    Exact inner-product search up to ``EXACT_KNN_LIMIT`` points, an IVF index beyond
    (about 4 sqrt(n) lists, 16 probed) so 500k faces take a minute or two, not hours. On the
    CPU the IVF lists are searched list by list (``self_search``: the same
    candidates as FAISS's own search, about twice as fast at 500,000 x 512).
    """
    n, d = x.shape
    k = min(k + 1, n)
    # Minutes at 500,000 faces on two cores: a progress bar, unless logging was quietened (-q).
    show = n > SEARCH_BLOCK and log.isEnabledFor(logging.INFO)
    if n <= EXACT_KNN_LIMIT:
        index: faiss.Index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        index.cp.min_points_per_centroid = TRAIN_PER_LIST  # FAISS warns below its default of 39
        index.train(x[np.sort(rng.choice(n, min(n, nlist * TRAIN_PER_LIST), replace=False))])
        index.nprobe = IVF_PROBES
        if not use_gpu:
            with progress.bar(total=nlist, unit="list", desc="nearest neighbours", enabled=show) as bar:
                return self_search(x, index.quantizer, nlist, IVF_PROBES, k, on_list=bar.update)
    if use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(x)
    sims = np.empty((n, k), np.float32)
    neighbours = np.empty((n, k), np.int64)
    bar = progress.bar(total=n, unit="face", desc="nearest neighbours", enabled=show)
    for start in range(0, n, SEARCH_BLOCK):
        stop = min(n, start + SEARCH_BLOCK)
        sims[start:stop], neighbours[start:stop] = index.search(x[start:stop], k)
        bar.update(stop - start)
    bar.close()
    return sims, neighbours


def self_search(x: NDArray[np.float32], quantizer: faiss.Index, nlist: int, nprobe: int, k: int,
                on_list: Callable[[int], object] | None = None) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """(similarities, neighbours), each (n, k), most similar first, of every row of ``x`` among
    the rows of ``x`` in the ``nprobe`` lists (of ``quantizer``'s ``nlist`` centroids) nearest
    to it; each row belongs to the list of its nearest centroid, as ``IndexIVFFlat.add`` puts it.
    ``on_list``, when given, is called with the number of lists done, for a progress bar."""
    n = len(x)
    nprobe = min(nprobe, nlist)
    _, probes = quantizer.search(x, nprobe)
    order = np.argsort(probes[:, 0], kind="stable")  # faces grouped by their own list
    bounds = np.searchsorted(probes[order, 0], np.arange(nlist + 1))
    # Each list's members are gathered when it is searched (about 360 KB for a list of 500,000 x 512),
    # not copied in list order all at once (1 GB more at the peak).
    best_s = np.full((n, k), -np.inf, np.float32)
    best_i = np.full((n, k), -1, np.int64)
    # Each face against its own list first: a k-th best to filter the other lists with.
    for lst in range(nlist):
        a, b = bounds[lst], bounds[lst + 1]
        if a < b:
            rows = order[a:b]
            members = x[rows]
            top_s, top_i = _top(members @ members.T, rows, k)
            best_s[rows, :top_s.shape[1]], best_i[rows, :top_s.shape[1]] = top_s, top_i
    # Then every other probed list, the faces that probe it together.
    others = probes[:, 1:].ravel()
    queries = np.argsort(others, kind="stable")
    qbounds = np.searchsorted(others[queries], np.arange(nlist + 1))
    queries //= max(nprobe - 1, 1)
    kth = best_s.min(axis=1)
    found: list[tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]] = []
    pending = 0
    for lst in range(nlist):
        a, b = bounds[lst], bounds[lst + 1]
        qa, qb = qbounds[lst], qbounds[lst + 1]
        if a < b and qa < qb:
            qs = queries[qa:qb]
            sims = x[qs] @ x[order[a:b]].T
            r, c = np.nonzero(sims > kth[qs, None])
            if r.size:
                found.append((qs[r], sims[r, c], order[a + c]))
                pending += r.size
            if pending > MERGE_EVERY * n:
                _merge(best_s, best_i, found, k)
                kth, found, pending = best_s.min(axis=1), [], 0
        if on_list is not None:
            on_list(1)
    _merge(best_s, best_i, found, k)
    rank = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, rank, 1), np.take_along_axis(best_i, rank, 1)


def _top(sims: NDArray[np.float32], rows: NDArray[np.int64], k: int) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The ``k`` largest of each row of ``sims`` (columns are ``rows``), unordered."""
    if sims.shape[1] <= k:
        return sims, np.broadcast_to(rows, sims.shape)
    top = np.argpartition(sims, -k, axis=1)[:, -k:]
    return np.take_along_axis(sims, top, 1), rows[top]


def _merge(best_s: NDArray[np.float32], best_i: NDArray[np.int64],
           found: list[tuple[NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]], k: int) -> None:
    """Candidates (face, similarity, neighbour) merged into the faces' best ``k``, in place."""
    if not found:
        return
    q = np.concatenate([f[0] for f in found])
    s = np.concatenate([f[1] for f in found])
    i = np.concatenate([f[2] for f in found])
    o = np.lexsort((-s, q))  # by face, most similar first
    q, s, i = q[o], s[o], i[o]
    faces, start, count = np.unique(q, return_index=True, return_counts=True)
    rank = np.arange(q.size) - np.repeat(start, count)
    keep = rank < k
    row = np.repeat(np.arange(faces.size), count)[keep]
    new_s = np.full((faces.size, k), -np.inf, np.float32)
    new_i = np.full((faces.size, k), -1, np.int64)
    new_s[row, rank[keep]], new_i[row, rank[keep]] = s[keep], i[keep]
    all_s = np.concatenate([best_s[faces], new_s], axis=1)
    all_i = np.concatenate([best_i[faces], new_i], axis=1)
    top = np.argpartition(all_s, -k, axis=1)[:, -k:]
    best_s[faces], best_i[faces] = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
