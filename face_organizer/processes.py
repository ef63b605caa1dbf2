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
    open files cannot be read (another user's, or no ``/proc``). A pid written into a file by a process
    of another pid namespace (a container's, read on the host) may name an unrelated process here: this
    tells them apart."""
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


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def stat_fields(pid: int | str, proc: str = "/proc") -> list[bytes]:
    """The fields of ``/proc/PID/stat`` after the command name (which may hold spaces and parentheses):
    the state first, then the parent's pid. Raises ``OSError`` where the process is gone."""
    return _read(f"{proc}/{pid}/stat").rsplit(b")", 1)[1].split()


def _parent(pid: str, proc: str) -> str:
    return stat_fields(pid, proc)[1].decode()


def _embeds(argv: list[bytes]) -> bool:
    """Whether a command line is a stage 1 run: the script, or the umbrella command's ``embed``."""
    if any(os.path.basename(word) == b"generate_embeddings.py" for word in argv):
        return True
    return b"embed" in argv and any(os.path.basename(word) in (b"face-organizer", b"face_organizer") for word in argv)


def _number(value: bytes) -> bytes:
    """A ``GPU_ID`` as the stages read it (`` 01`` is 1; unset or empty is 0)."""
    try:
        return str(int(value.strip() or b"0")).encode()
    except ValueError:
        return value


def _on_cpu(argv: list[bytes]) -> bool:
    return b"--device=cpu" in argv or any(a == b"--device" and b == b"cpu" for a, b in zip(argv, argv[1:]))


def embedding_runs_on_gpu(gpu_id: int, proc: str = "/proc") -> list[int]:
    """Other stage 1 runs here given the same GPU: ``GPU_ID`` (unset: 0) and ``CUDA_VISIBLE_DEVICES``
    alike, and not ``--device cpu``. ``GPU_ID=1 docker exec …`` sets it on the host only, so the run in
    the container takes GPU 0 beside the one meant for it, at half speed each. A run's own decoding
    processes (children with its command line) count as that run; runs whose environment cannot be
    read (another user's) are not counted."""
    me = str(os.getpid())
    mine = (_number(str(gpu_id).encode()), os.environ.get("CUDA_VISIBLE_DEVICES", "").encode())
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit() and e != me]
    except OSError:
        return []
    commands = {me: _read(f"{proc}/{me}/cmdline") if os.path.exists(f"{proc}/{me}") else b""}
    same: dict[str, str] = {}  # pid: parent, of the runs on this GPU
    for pid in entries:
        try:
            commands[pid] = command = _read(f"{proc}/{pid}/cmdline")
            argv = command.split(b"\0")
            if not _embeds(argv) or _on_cpu(argv):
                continue
            env = dict(item.partition(b"=")[::2] for item in _read(f"{proc}/{pid}/environ").split(b"\0") if item)
            if (_number(env.get(b"GPU_ID", b"0")), env.get(b"CUDA_VISIBLE_DEVICES", b"")) == mine:
                same[pid] = _parent(pid, proc)
        except (OSError, IndexError):
            continue  # ended meanwhile, or another user's
    # A run's decoding processes are its forks: children with its command line.
    return sorted(int(pid) for pid, parent in same.items() if commands.get(parent) != commands[pid])
