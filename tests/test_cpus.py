"""How many CPUs the stages plan for: affinity, a container's CPU quota, a launcher's share."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest

from face_organizer import cpus
from face_organizer.embed_run import plan_streams
from face_organizer.multigpu import Worker, worker_env
from face_organizer.providers import session_options


@pytest.fixture
def machine(monkeypatch):
    """A machine whose CPU count (as joblib reads it: affinity and quota) the test sets."""
    monkeypatch.delenv(cpus.CPUS_ENV, raising=False)

    def set_cpus(logical: int, physical: int | None = None) -> None:
        monkeypatch.setattr(cpus.joblib, "cpu_count",
                            lambda only_physical_cores=False: physical or logical if only_physical_cores else logical)

    return set_cpus


def test_usable_cpus_without_an_affinity_call(monkeypatch) -> None:
    # macOS and Windows have no os.sched_getaffinity: the CPU count stands in.
    monkeypatch.delenv(cpus.CPUS_ENV, raising=False)
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning asking for psutil
        assert cpus.usable_cpus() == (os.cpu_count() or 1)


def test_a_cpu_quota_sizes_streams_threads_and_decoding_processes(machine) -> None:
    # docker --cpus=3 on a 64-core host: joblib reads 3 (os.cpu_count() would say 64).
    machine(3)
    assert cpus.usable_cpus() == 3
    assert plan_streams(on_cpu=True) == (3, 1)
    assert cpus.default_workers() == 1
    assert session_options().intra_op_num_threads == 3
    assert session_options(2).intra_op_num_threads == 2  # an explicit count stays
    machine(64, physical=32)  # no quota: ONNX Runtime's own default, one thread per physical core
    assert plan_streams(on_cpu=True) == (16, 4) and cpus.default_workers() == 8
    assert session_options().intra_op_num_threads == 32


def test_a_share_set_in_the_environment_caps_the_count(machine, monkeypatch, caplog) -> None:
    machine(16)
    monkeypatch.setenv(cpus.CPUS_ENV, "4")
    assert cpus.usable_cpus() == 4 and cpus.default_workers() == 2 and plan_streams(on_cpu=True) == (4, 1)
    monkeypatch.setenv(cpus.CPUS_ENV, "64")
    assert cpus.usable_cpus() == 16  # a share cannot add CPUs
    for bad in ("0", "two", "-3"):
        monkeypatch.setenv(cpus.CPUS_ENV, bad)
        with caplog.at_level(logging.WARNING):
            assert cpus.usable_cpus() == 16
        assert f"ignoring {cpus.CPUS_ENV}={bad!r}" in caplog.text


def test_each_gpu_process_of_the_launcher_gets_an_equal_share(machine, monkeypatch, tmp_path: Path) -> None:
    worker = Worker(3, 10, tmp_path / "embeddings_gpu3.pkl", tmp_path / "embeddings_gpu3.log", ["true"])
    machine(16)
    env = worker_env(worker, 4)
    assert env["GPU_ID"] == "3" and env[cpus.CPUS_ENV] == "4"
    assert worker_env(worker, 3)[cpus.CPUS_ENV] == "5"
    assert worker_env(worker, 32)[cpus.CPUS_ENV] == "1"
    # With 4 GPUs on 16 CPUs, each process then plans 2 decoding processes beside its 2 streams.
    monkeypatch.setenv(cpus.CPUS_ENV, env[cpus.CPUS_ENV])
    assert cpus.default_workers() == 2


def test_faiss_threads_follow_the_usable_cpus(machine) -> None:
    import faiss

    before = faiss.omp_get_max_threads()
    try:
        machine(1)
        cpus.fit_openmp_threads()
        assert faiss.omp_get_max_threads() == 1
    finally:
        faiss.omp_set_num_threads(before)


def test_more_decoding_processes_than_cpus_are_warned_about(caplog) -> None:
    # --workers 500 on 2 CPUs started 500 processes of about 70 MB each, with nothing said.
    with caplog.at_level(logging.WARNING):
        cpus.warn_of_extra_workers(2, cpus=2)
        cpus.warn_of_extra_workers(0, cpus=1)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        cpus.warn_of_extra_workers(500, cpus=2)
    assert ("--workers 500: more image-decoding processes than the 2 CPUs this process may use; each holds about "
            "70 MB (35.0 GB in all), and the extra ones only take turns on the CPUs: 2 at most is useful"
            ) in caplog.text
