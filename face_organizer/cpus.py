"""How many CPUs a process may use, and how many image-decoding processes that leaves room for."""

from __future__ import annotations

import logging
import os
import warnings

import joblib

from .progress import size

log = logging.getLogger(__name__)

CPUS_ENV = "FACE_ORGANIZER_CPUS"  # at most this many CPUs: a process's share of a machine it shares
MAX_DEFAULT_WORKERS = 8


def usable_cpus(physical: bool = False) -> int:
    """CPUs this process may use: its CPU affinity (taskset, ``docker --cpuset-cpus``) and its
    container's CPU quota (``docker --cpus``, Kubernetes CPU limits), which ``os.cpu_count``
    does not see (joblib reads both), at most ``$FACE_ORGANIZER_CPUS`` (embed_all_gpus gives each
    of its GPU processes a share). ``physical``: also at most the physical cores, as ONNX Runtime
    and OpenMP count them by default."""
    with warnings.catch_warnings():
        # Where os.sched_getaffinity is missing, loky warns on every call that it wants psutil to read
        # the affinity; the count it gives there is the right one without it.
        warnings.filterwarnings("ignore", message="Failed to inspect CPU affinity", category=UserWarning)
        cpus = max(1, joblib.cpu_count(only_physical_cores=physical))
    share = os.environ.get(CPUS_ENV, "").strip()
    if share:
        if share.isdigit() and int(share) > 0:
            return min(cpus, int(share))
        log.warning("ignoring %s=%r: not a positive whole number of CPUs", CPUS_ENV, share)
    return cpus


def default_workers(cpus: int | None = None) -> int:
    """Image-decoding processes beside a GPU run's two streams: the CPUs left after two, at most
    ``MAX_DEFAULT_WORKERS``; with none left, each stream decodes its own images."""
    return max(0, min(MAX_DEFAULT_WORKERS, (usable_cpus() if cpus is None else cpus) - 2))


WORKER_MB = 70  # resident memory of one image-decoding process (OpenCV and numpy loaded), measured on Linux


def warn_of_extra_workers(workers: int, cpus: int | None = None) -> None:
    """Warn when ``--workers`` asks for more image-decoding processes than the CPUs this process
    may use: each holds about ``WORKER_MB`` MB, and the extra ones only take turns on the CPUs."""
    cpus = usable_cpus() if cpus is None else cpus
    if workers > cpus:
        log.warning("--workers %d: more image-decoding processes than the %d CPU%s this process may use; each holds "
                    "about %d MB (%s in all), and the extra ones only take turns on the CPUs: %d at most is useful",
                    workers, cpus, "" if cpus == 1 else "s", WORKER_MB, size(workers * WORKER_MB * 1e6), cpus)


def fit_openmp_threads() -> None:
    """Give FAISS's OpenMP pool one thread per CPU this process may use. OpenMP counts the CPUs
    of the affinity mask only, so under a container's CPU quota its threads outnumber the CPUs
    and stall each other."""
    import faiss

    faiss.omp_set_num_threads(usable_cpus())
