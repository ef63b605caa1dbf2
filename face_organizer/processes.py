"""What another process runs, read from ``/proc``, for messages that name it (Linux; elsewhere nothing)."""

from __future__ import annotations

import os


def describe(pid: int, proc: str = "/proc") -> str:
    """``pid`` and its command line, shortened: ``6129 (python /app/scripts/generate_embeddings.py --input
    /workspace/input/2017)``; the pid alone where its command line cannot be read."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as handle:
            words = handle.read().split(b"\0")
    except OSError:
        return str(pid)
    command = " ".join(os.path.basename(w.decode(errors="replace")) if i == 0 else w.decode(errors="replace")
                       for i, w in enumerate(words[:4]) if w)
    command = " ".join(command.split())[:80]  # one line: an argument may hold line breaks
    return f"{pid} ({command})" if command else str(pid)


def has_open(pid: int, path: str | os.PathLike[str], proc: str = "/proc") -> bool | None:
    """Whether process ``pid`` has ``path`` open (False where there is no such process); None where its
    open files cannot be read (another user's, or no ``/proc``). A pid written into a file by a process of another pid namespace (a
    container's, read on the host) may name an unrelated process here: this tells them apart."""
    if not os.path.isdir(proc):
        return None
    try:
        fds = os.listdir(f"{proc}/{pid}/fd")
    except FileNotFoundError:
        return False  # no such process here
    except OSError:
        return None
    target = os.path.realpath(path)
    for fd in fds:
        try:
            if os.readlink(f"{proc}/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue  # closed meanwhile
    return False
