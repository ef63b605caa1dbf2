"""The container's first process (pid 1): keeps it up for ``docker exec``, reaps orphaned
processes, and on ``docker stop`` lets every run save before the container goes.

``docker stop`` signals pid 1 only, and the kernel kills every other process of the container
with SIGKILL as soon as pid 1 is gone. With ``sleep infinity`` as pid 1 (which ignores SIGTERM),
runs started with ``docker exec`` were killed outright ten seconds later: up to a minute of
embeddings since the last checkpoint lost, a gender filter's last batch predicted again. Here
SIGTERM (or SIGINT) is passed on to every other process of the container, and pid 1 waits until
they have ended, up to ``$FACE_ORGANIZER_STOP_SECONDS`` (default 100; the compose file gives
docker 120 before its SIGKILL). Each face-organizer run saves its progress on SIGTERM and exits.

Run it only as pid 1 of a container (``python3 -m face_organizer.keeper``), or as the one child of
``docker run --init``'s init: elsewhere SIGTERM to every other process would reach the whole
machine, so it refuses to start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence

from .processes import describe, stat_fields

STOP_SECONDS_ENV = "FACE_ORGANIZER_STOP_SECONDS"
DEFAULT_STOP_SECONDS = 100.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


INITS = ("docker-init", "tini", "tini-static", "dumb-init")  # ``docker run --init``, compose's ``init: true``


def others(proc: str = "/proc") -> list[int]:
    """The processes of this pid namespace (a container: those ``/proc`` shows) other than this
    one and its parent, zombies left out: they have ended, and only their parent's wait is missing.
    (The parent is pid 1's own kernel parent outside, or a tiny init that started this one.)"""
    skip, pids = {os.getpid(), os.getppid()}, list[int]()
    try:
        names = os.listdir(proc)
    except OSError:
        return pids
    for name in names:
        if name.isdigit() and int(name) not in skip and _running(int(name), proc):
            pids.append(int(name))
    return sorted(pids)


def first_process(proc: str = "/proc") -> bool:
    """Whether this is a container's first process: pid 1, or started by a tiny init that is
    (``docker run --init``), which passes docker's SIGTERM on to it alone."""
    if os.getpid() == 1:
        return True
    if os.getppid() != 1:
        return False
    try:
        with open(f"{proc}/1/comm") as handle:
            return handle.read().strip() in INITS
    except OSError:
        return False


def _running(pid: int, proc: str = "/proc") -> bool:
    """Whether ``pid`` exists and is not a zombie (``/proc/PID/stat``'s state after the name)."""
    try:
        state = stat_fields(pid, proc)[:1]
    except OSError:
        return False
    return state not in ([b"Z"], [b"X"], [])


def reap() -> None:
    """Collect every child that has ended: processes whose parent died are handed to pid 1, and a
    pid 1 that does not wait for them leaves them as zombies (``sleep infinity`` did)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


HANGUP_AFTER = 1.0  # seconds between SIGTERM and SIGHUP


def stop_all(pids: Callable[[], Sequence[int]], seconds: float, *, log: Callable[[str], None],
             kill: Callable[[int, int], None] = os.kill, reaper: Callable[[], None] = reap,
             poll: float = 0.2) -> list[int]:
    """Send SIGTERM to every process ``pids`` gives, a second later SIGHUP to those still running,
    then wait, reaping, until ``pids`` gives none or ``seconds`` have passed. Returns those still
    running then (left to docker's SIGKILL).

    SIGHUP is for the shells of ``docker exec -it``, which ignore SIGTERM and would hold the stop
    for its whole time; a face-organizer run ignores stop signals after its first, while it saves."""
    targets = list(pids())
    if not targets:
        return []
    log(f"stopping {len(targets)} process(es) so that runs save their progress: "
        + ", ".join(describe(p) for p in targets[:8]) + (", …" if len(targets) > 8 else ""))
    _signal(targets, signal.SIGTERM, kill)
    started, hung_up = time.monotonic(), False
    while True:
        reaper()
        left = list(pids())
        if not left:
            log(f"all stopped in {time.monotonic() - started:.1f} s")
            return []
        waited = time.monotonic() - started
        if waited >= seconds:
            log(f"{len(left)} still running after {seconds:g} s, left to be killed: "
                + ", ".join(describe(p) for p in left[:8]))
            return left
        if not hung_up and waited >= HANGUP_AFTER:
            _signal(left, signal.SIGHUP, kill)
            hung_up = True
        time.sleep(poll)


def _signal(pids: Sequence[int], signum: int, kill: Callable[[int, int], None]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(pid, signum)


def stop_seconds() -> float:
    """How long a stop waits for the runs: ``$FACE_ORGANIZER_STOP_SECONDS``, else 100."""
    value = os.environ.get(STOP_SECONDS_ENV, "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_STOP_SECONDS
    except ValueError:
        return DEFAULT_STOP_SECONDS


def main(argv: Sequence[str] | None = None) -> int:
    def log(message: str) -> None:
        with contextlib.suppress(OSError):  # a closed or broken log must not end pid 1, and the container with it
            print(f"face-organizer keeper: {message}", file=sys.stderr, flush=True)

    if not first_process():
        log(f"this is the first process of a container (pid 1), not pid {os.getpid()}: it would signal every "
            "process of this machine on a stop, so it does not run here")
        return 2
    watched = {*STOP_SIGNALS, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    log(f"up; docker exec runs are given SIGTERM and up to {stop_seconds():g} s to save on docker stop")
    while True:
        received = signal.sigwait(watched)
        if received == signal.SIGCHLD:
            reap()
            continue
        stop_all(others, stop_seconds(), log=log)
        return 0


if __name__ == "__main__":
    sys.exit(main())
