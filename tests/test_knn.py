"""The k-NN graph: the list-by-list search of an IVF index finds what FAISS's own search of it finds."""

from __future__ import annotations

import faiss
import numpy as np

from face_organizer import knn
from face_organizer.knn import self_search


def _people(n: int, d: int, people: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((people, d)).astype(np.float32)
    x = centres[rng.integers(0, people, n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_list_by_list_search_finds_what_faiss_finds() -> None:
    x = _people(6_000, 32, 150, seed=0)
    nlist, nprobe, k = 60, 6, 11
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(32), 32, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    index.nprobe = nprobe
    want_s, want_i = index.search(x, k)
    done: list[int] = []
    got_s, got_i = self_search(x, index.quantizer, nlist, nprobe, k, on_list=done.append)
    assert len(done) == nlist
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)  # most similar first, as FAISS orders them
    same = np.mean([set(a) == set(b) for a, b in zip(got_i, want_i)])
    assert same > 0.999, same  # ties in similarity may order two neighbours either way
    assert np.all(got_i[:, 0] == np.arange(len(x)))  # each face is its own nearest


def test_merging_often_changes_nothing(monkeypatch) -> None:
    x = _people(3_000, 16, 80, seed=1)
    quantizer = faiss.IndexFlatIP(16)
    kmeans = faiss.Kmeans(16, 30, niter=10, seed=1, spherical=True)
    kmeans.train(x)
    quantizer.add(kmeans.centroids)
    once_s, once_i = self_search(x, quantizer, 30, 5, 8)
    monkeypatch.setattr("face_organizer.knn.MERGE_EVERY", 0)  # merge after every list
    often_s, often_i = self_search(x, quantizer, 30, 5, 8)
    np.testing.assert_array_equal(once_s, often_s)
    assert np.mean(once_i == often_i) > 0.999


def test_knn_graph_searches_the_lists_beyond_the_exact_limit(monkeypatch) -> None:
    x = _people(4_000, 24, 100, seed=2)
    exact_s, exact_i = knn.knn_graph(x, 10)
    monkeypatch.setattr(knn, "EXACT_KNN_LIMIT", 1_000)  # 252 lists, 16 probed
    ivf_s, ivf_i = knn.knn_graph(x, 10)
    assert ivf_s.shape == exact_s.shape == (4_000, 11)
    # IVF is approximate: nearly every face keeps its exact neighbours.
    assert np.mean([len(set(a) & set(b)) for a, b in zip(ivf_i, exact_i)]) > 10.5
    assert np.all(np.diff(ivf_s, axis=1) <= 1e-6)
