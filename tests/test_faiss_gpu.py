"""FAISS on the GPU: which path each stage takes when faiss-gpu sees a GPU, and what it does when the GPU
fails. No GPU here: FAISS's two GPU entry points are replaced, ``get_num_gpus`` (by a count) and
``index_cpu_to_all_gpus`` (by a copy of the CPU index, or by the error a faiss-gpu build gives on a GPU it
has no kernels for), so everything else runs as it would with faiss-gpu."""

from __future__ import annotations

import logging

import faiss
import numpy as np
import pytest

from face_organizer import embfile
from face_organizer.cluster_stage import ClusterConfig, cluster_faces, load_embeddings, run_clustering
from face_organizer.search import FaceIndex, search

NO_KERNEL = "CUDA error 209 no kernel image is available for execution on the device"


class FakeGpus:
    """``faiss.index_cpu_to_all_gpus`` on one GPU: the index each stage moves to it, searched on the CPU."""

    def __init__(self, fails: bool = False):
        self.fails = fails
        self.moved: list[str] = []

    def __call__(self, index, co=None, resources=None, ngpu=-1):
        self.moved.append(type(index).__name__)
        if self.fails:
            raise RuntimeError(f"Error in virtual void faiss::gpu::StandardGpuResourcesImpl::initializeForDevice: "
                               f"{NO_KERNEL}")
        return faiss.clone_index(index)


class RangeSearches:
    """A CPU index that counts its range searches: the search of a query the GPU could not answer."""

    def __init__(self, index):
        self.index, self.calls = index, 0

    def __getattr__(self, name):
        return getattr(self.index, name)

    def range_search(self, *args):
        self.calls += 1
        return self.index.range_search(*args)


@pytest.fixture
def gpus(monkeypatch):
    def install(fails: bool = False) -> FakeGpus:
        fake = FakeGpus(fails)
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", fake)
        return fake
    return install


@pytest.mark.parametrize("clusters", [2, None], ids=["k-means", "auto"])
def test_clustering_takes_the_gpu_when_faiss_sees_one_and_sorts_as_on_the_cpu(two_person, gpus, clusters) -> None:
    ef = embfile.load(two_person[0])
    on_cpu = run_clustering(ef, ClusterConfig(clusters=clusters, use_gpu=False))
    fake = gpus()
    on_gpu = run_clustering(ef, ClusterConfig(clusters=clusters))  # use_gpu None: FAISS GPU when one is usable
    assert fake.moved, "the GPU was not used"
    assert np.array_equal(on_gpu.labels, on_cpu.labels) and len(set(on_cpu.labels)) > 2


@pytest.mark.parametrize("clusters", [2, None], ids=["k-means", "auto"])
def test_a_gpu_faiss_cannot_use_is_left_for_the_cpu_with_a_warning(two_person, gpus, clusters, caplog) -> None:
    # faiss-gpu wheels carry kernels for some compute capabilities only: on another GPU every call fails.
    ef = embfile.load(two_person[0])
    on_cpu = run_clustering(ef, ClusterConfig(clusters=clusters, use_gpu=False))
    fake = gpus(fails=True)
    with caplog.at_level(logging.WARNING):
        fell_back = run_clustering(ef, ClusterConfig(clusters=clusters))
    assert fake.moved and np.array_equal(fell_back.labels, on_cpu.labels)
    assert "FAISS on the GPU failed" in caplog.text and NO_KERNEL in caplog.text
    assert "clustering on the CPU" in caplog.text


def test_search_on_the_gpu_finds_what_the_cpu_finds_past_the_gpu_limit_on_neighbours(lfw_subset, gpus,
                                                                                   monkeypatch) -> None:
    # A FAISS GPU index returns at most 2,048 neighbours per query; a query with more matches than that is
    # answered on the CPU instead. The limit is lowered here so that the matches of one person of LFW pass it.
    ef = embfile.load(lfw_subset[0])
    x = ef.rows.embeddings
    truth = [lfw_subset[1][p] for p in ef.rows.paths]
    many = [i for i, name in enumerate(truth) if name == "Tony_Blair"]
    few = [i for i, name in enumerate(truth) if name == "Tiger_Woods"]
    cpu = FaceIndex(x)
    fake = gpus()
    gpu = FaceIndex(x, use_gpu=True)
    assert fake.moved == ["IndexFlatIP"] and gpu.gpu is not None
    monkeypatch.setattr("face_organizer.search.GPU_K_LIMIT", 16)
    counted = RangeSearches(gpu.cpu)
    gpu.cpu = counted  # type: ignore[assignment]  # answers as the index it wraps
    for person, on_cpu in ((many, True), (few, False)):
        refs = [x[person[0]], x[person[1]]]
        want = search(cpu, refs, threshold=0.4, expand=False)
        counted.calls = 0
        got = search(gpu, refs, threshold=0.4, expand=False)
        assert np.array_equal(got.index, want.index) and np.allclose(got.similarity, want.similarity, atol=1e-6)
        assert (counted.calls > 0) == on_cpu and (len(want.index) > 16) == on_cpu


def test_a_search_index_the_gpu_cannot_take_stays_on_the_cpu(lfw_subset, gpus, caplog) -> None:
    x = embfile.load(lfw_subset[0]).rows.embeddings
    gpus(fails=True)
    with caplog.at_level(logging.WARNING):
        index = FaceIndex(x, use_gpu=True)
    assert index.gpu is None and "FAISS on the GPU failed" in caplog.text and "searching on the CPU" in caplog.text
    assert np.array_equal(search(index, [x[0]], threshold=0.3).index, search(FaceIndex(x), [x[0]], threshold=0.3).index)


def test_sorting_into_an_earlier_runs_people_takes_the_gpu_too(two_person, interviewer, gpus, tmp_path, caplog) -> None:
    # --people-from looks for people new since among the faces that match none of the earlier ones (here an
    # interviewer): that graph went to the CPU whatever FAISS could use.
    earlier = tmp_path / "sorted_2017"
    cluster_faces(embfile.load(two_person[0]), str(earlier), ClusterConfig(previews=False, use_gpu=False),
                  progress=False)
    ef = load_embeddings([str(two_person[0]), str(interviewer[0])])
    config = ClusterConfig(people_from=str(earlier))
    on_cpu = run_clustering(ef, ClusterConfig(people_from=str(earlier), use_gpu=False))
    assert on_cpu.extra_groups and on_cpu.extra_groups[0] >= 8  # the interviewer
    fake = gpus()
    on_gpu = run_clustering(ef, config)
    assert fake.moved and np.array_equal(on_gpu.labels, on_cpu.labels) and on_gpu.extra_groups == on_cpu.extra_groups
    fake.fails = True
    with caplog.at_level(logging.WARNING):
        fell_back = run_clustering(ef, config)
    assert np.array_equal(fell_back.labels, on_cpu.labels) and fell_back.extra_groups == on_cpu.extra_groups
    assert "FAISS on the GPU failed" in caplog.text
