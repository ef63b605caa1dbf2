"""Decoding images ahead of the models in worker processes, in input order.

The workers leave stopping to the run that started them. Ctrl-C in a terminal, a hang-up
of the terminal, and a SIGTERM sent to the whole process group (``timeout``, ``kill --
-PGID``) reach every process: a worker that took them would print a traceback of its own,
or die while sending a result, which leaves the pool waiting for the rest of it for ever,
while the run saves its progress and shuts the pool down. So a worker starts with these
signals blocked (the mask it inherits from the thread that starts it) and then ignores
SIGINT and SIGHUP, and SIGTERM from anyone but its run: the pool terminates its workers
with SIGTERM when one of them died. A run killed outright (``kill -9``, the OOM killer)
cannot shut its pool down; its workers notice that their parent is gone and exit,
instead of waiting on their queue for ever, holding their memory and the run's output
open (``… | tee log`` would never end).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from . import images
from .progress import count

log = logging.getLogger(__name__)

Loader = Callable[[list[str]], list[images.Loaded]]

LEFT_TO_THE_RUN = tuple(getattr(signal, name) for name in ("SIGINT", "SIGHUP", "SIGTERM") if hasattr(signal, name))
# Where a thread cannot wait for SIGTERM and learn who sent it (macOS), a worker takes it as usual.
_SENDER_KNOWN = hasattr(signal, "sigtimedwait") and hasattr(signal, "pthread_sigmask")


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT, SIGHUP and SIGTERM in this thread while inside. A process started here
    inherits the block; in this process a signal that arrives meanwhile is taken by another
    thread or waits until the block ends, never lost."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, LEFT_TO_THE_RUN)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _worker_init(parent: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # the pool already uses every core; nested threads only contend
    for number in LEFT_TO_THE_RUN:
        if number != signal.SIGTERM:
            signal.signal(number, signal.SIG_IGN)  # also drops one that came while starting
    if not _SENDER_KNOWN and hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, LEFT_TO_THE_RUN)
    # Otherwise SIGTERM stays blocked in every thread (they all start from this one), so only
    # the thread below takes it.
    threading.Thread(target=_follow_parent, args=(parent,), name="follow-parent", daemon=True).start()


def _follow_parent(parent: int, interval: float = 0.5) -> None:
    """Exit when the parent is gone, or when it sends SIGTERM (ignored from anyone else)."""
    while os.getppid() == parent:
        if not _SENDER_KNOWN:
            time.sleep(interval)
            continue
        info = signal.sigtimedwait([signal.SIGTERM], interval)
        if info is not None and info.si_pid == parent:
            os._exit(128 + signal.SIGTERM)
    os._exit(1)


class _Pool:
    """A pool of decoding processes, each started with the stop signals blocked."""

    def __init__(self, workers: int, context: Any):
        with stop_signals_blocked():  # the queues' resource tracker starts here
            self._executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                                 initargs=(os.getpid(),))

    def submit(self, loader: Loader, paths: list[str]) -> Future[list[images.Loaded]]:
        with stop_signals_blocked():  # processes start on demand, here
            return self._executor.submit(loader, paths)

    def shutdown(self) -> None:
        self._executor.shutdown(cancel_futures=True)


def _decode_isolated(context: Any, paths: list[str], loader: Loader) -> list[images.Loaded]:
    """Decode files one per fresh process after a worker died, to find the file that kills it."""
    results = []
    for path in paths:
        single = _Pool(1, context)
        try:
            results.extend(single.submit(loader, [path]).result())
        except BrokenProcessPool:
            results.append(images.Loaded(path, None, "decoder process crashed on this file"))
        finally:
            single.shutdown()
    return results


def iter_loaded(paths: Sequence[str], workers: int, chunk: int = 16,
                loader: Loader = images.load_many) -> Iterator[images.Loaded]:
    """Decoded images in input order; ``workers`` processes decode ahead, bounded in memory.

    A worker that dies (a decoder crash, the OOM killer) does not hang the run: its
    chunk is decoded again file by file, and a file that crashes its decoder again
    is reported as failed. ``loader`` (a picklable module-level function) decodes a chunk.
    """
    if workers <= 0:
        for start in range(0, len(paths), chunk):
            yield from loader(list(paths[start : start + chunk]))
        return
    context = multiprocessing.get_context("spawn")
    chunks = [list(paths[i : i + chunk]) for i in range(0, len(paths), chunk)]
    pool = _Pool(workers, context)
    try:
        pending: deque[tuple[list[str], Future[list[images.Loaded]]]] = deque()
        next_chunk = 0
        while pending or next_chunk < len(chunks):
            while next_chunk < len(chunks) and len(pending) < workers * 4:
                pending.append((chunks[next_chunk], pool.submit(loader, chunks[next_chunk])))
                next_chunk += 1
            part, future = pending.popleft()
            try:
                yield from future.result()
            except BrokenProcessPool:
                log.warning("an image-decoding process died; retrying %s one by one", count(len(part), "file"))
                pool.shutdown()
                yield from _decode_isolated(context, part, loader)
                retry = [p for waiting, _ in pending for p in waiting]
                pending.clear()
                pool = _Pool(workers, context)
                for i in range(0, len(retry), chunk):
                    piece = retry[i : i + chunk]
                    pending.append((piece, pool.submit(loader, piece)))
    finally:
        pool.shutdown()
