"""Atomic file writes (a crash never leaves a half-written file in place) and one writer per output."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import filecmp
import functools
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import SetupError
from .processes import describe, has_open
from .progress import size

log = logging.getLogger(__name__)

OUTPUT_MARKER = ".face-organizer-plan.json"  # in every folder that cluster_faces, search or gender wrote
# Absolute paths of the files this process writes for itself (its --log): an output folder that holds only these
# (and folders made for them) is as new to the stage that sorts into it, so `--output out --log out/run.log` works.
RUN_FILES: set[str] = set()


SIDE_NAME_MAX = 200  # bytes of a file's name kept in the name of a file beside it (limit: 255)


def short_name(name: str) -> str:
    """``name``, or where it is too long to be part of a file name beside it (a temporary or a
    lock file), its start and a digest of the whole."""
    raw = os.fsencode(name)
    if len(raw) <= SIDE_NAME_MAX:
        return name
    return f"{name[:40]}-{hashlib.sha1(raw).hexdigest()[:16]}"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: object) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and ``os.replace`` it into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_partial_prefix(target), suffix=PARTIAL_SUFFIX, dir=target.parent)
    # mkstemp makes 0600; results are ordinary user files. FAT and exFAT drives (the kernel's drivers) refuse
    # a mode their mount options do not give, with EPERM: there the file keeps the mode the mount gives it.
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:  # type: ignore[call-overload]
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # a write that failed (a full disk) names no file
            err.filename = str(target)
        raise
    _sync_folder(target.parent)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable: after a power cut the new file is in place, not only its
    bytes somewhere (what a later step, such as removing a run's checkpoints, relies on). Where the
    filesystem cannot sync a folder (some network shares), its own ordering is all there is."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


PARTIAL_SUFFIX = ".tmp"


def _partial_prefix(target: Path) -> str:
    """How the temporary files that ``atomic_open`` writes beside ``target`` begin; tempfile adds 8
    characters and ``PARTIAL_SUFFIX``."""
    return f".{short_name(target.name)}."


def remove_partial_writes(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that ``atomic_open`` left beside ``target`` when its writer was
    killed while writing it (``kill -9``, a power cut, ``docker stop``): a gigabyte each for an
    embeddings file of 500,000 faces, hidden, and never used. Only for a holder of the lock
    (``exclusive``), as no other process writes ``target`` then. Returns those removed."""
    target = Path(target)
    prefix, removed = _partial_prefix(target), list[Path]()
    try:
        with os.scandir(target.parent) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix) and e.is_file(follow_symlinks=False)]
    except OSError:
        return removed
    for name in names:
        random = name[len(prefix):-len(PARTIAL_SUFFIX)]
        if name.endswith(PARTIAL_SUFFIX) and len(random) == 8 and set(random) <= _TEMP_CHARACTERS:
            with contextlib.suppress(OSError):
                os.unlink(target.parent / name)
                removed.append(target.parent / name)
    if removed:
        log.info("removed %d partial file(s) left beside %s by a run killed while writing it (%s)", len(removed),
                 target, ", ".join(p.name for p in removed))
    return removed


_TEMP_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")  # tempfile's names for its files


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 text atomically. A file name that is not valid UTF-8 (an old archive's
    Latin-1 names) reaches Python as lone surrogates; it is written back as its own bytes."""
    with atomic_open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as handle:
        handle.write(text)


def same_size(a: str, b: str) -> bool:
    """Whether the files ``a`` and ``b`` both exist and have the same size."""
    try:
        return os.path.getsize(a) == os.path.getsize(b)
    except OSError:
        return False


def same_bytes(a: str, b: str) -> bool:
    """Whether the files ``a`` and ``b`` hold the same bytes (sizes first, then contents)."""
    return same_size(a, b) and filecmp.cmp(a, b, shallow=False)


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Flush everything written to the filesystem holding ``path`` (``syncfs``; ``sync`` where
    the C library lacks it): one flush for thousands of files instead of an fsync each."""
    syncfs = _syncfs()
    fd = os.open(path, os.O_RDONLY)
    try:
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def _syncfs() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


MOUNTS = "/proc/self/mounts"


def filesystem_type(path: str | os.PathLike[str], mounts: str = MOUNTS) -> str | None:
    """The type of the filesystem that holds ``path`` (or where it does not exist yet, its nearest
    folder that does): ``ext4``, ``exfat``, ``fuseblk``, ``cifs``, …, from the mount table; None
    where there is none to read (not Linux)."""
    mount = mount_of(path, mounts)
    return mount[1] if mount else None


def mount_of(path: str | os.PathLike[str], mounts: str = MOUNTS) -> tuple[str, str] | None:
    """(mount point, filesystem type) of the deepest mount holding ``path``, or where it does not
    exist yet its nearest folder that does (symbolic links resolved); None without a mount table."""
    target = os.path.realpath(path)
    while not os.path.exists(target) and target != os.path.dirname(target):
        target = os.path.dirname(target)
    best: tuple[str, str] | None = None
    for point, kind in _mount_table(mounts):
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):  # of one point mounted twice, the last
            best = (point, kind)
    return best


@functools.lru_cache(maxsize=4)
def _mount_table(mounts: str) -> tuple[tuple[str, str], ...]:
    """(mount point, type) of each line of the mount table (read once per process)."""
    try:
        with open(mounts, encoding="utf-8", errors="surrogateescape") as handle:
            table = [line.split() for line in handle]
    except OSError:
        return ()
    return tuple((re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), f[1]), f[2])  # "\040" is a space
                 for f in table if len(f) >= 3)


CONTAINER_ENV = "FACE_ORGANIZER_CONTAINER"  # set in the image (Dockerfile)


def in_container_only(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` lies in the container's own filesystem (its root), not in a folder mounted
    from the host: what is written there is gone once the container is removed. Asked only in the
    image, whose layout is known; elsewhere a root filesystem is as lasting as any."""
    if not os.environ.get(CONTAINER_ENV):
        return False
    mount = mount_of(path)
    return mount is not None and mount[0] == "/"


WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")  # C:\Users\…, C:/Users/…, \\nas\photos


def host_mounts(mounts: str = MOUNTS) -> list[str]:
    """The folders of the container mounted from the host, as the container sees them (``/workspace``,
    ``/media``, ``/models`` in the compose file): the mount points outside the system's own folders."""
    system = ("/proc", "/sys", "/dev", "/etc", "/run", "/tmp", "/usr", "/var", "/opt", "/app", "/lib", "/lib64", "/bin",
              "/sbin", "/boot")
    return sorted({point for point, _ in _mount_table(mounts) if point != "/"
                   and not any(point == s or point.startswith(s + "/") for s in system)})


def missing_path_hint(path: str | os.PathLike[str], mounts: str = MOUNTS) -> str:
    """Why a path named by the user may not exist, where the path itself shows it ("" otherwise), as
    "; …" to end an error with: a Windows path, or, in the image, a path outside every folder mounted
    from the host (the host's own path, ``/home/me/faces``, typed into ``docker exec``)."""
    name = os.fspath(path)
    if WINDOWS_PATH.match(name):
        return "; that is a Windows path: name the folder as it is mounted where this runs (such as /workspace/…)"
    if not os.environ.get(CONTAINER_ENV) or not os.path.isabs(name):
        return ""
    mounted = host_mounts(mounts)
    if not mounted or any(name == m or name.startswith(m.rstrip("/") + "/") for m in mounted):
        return ""
    return f"; in the container the host's folders are where they are mounted: {', '.join(mounted)}"


def warn_if_in_container_only(path: str | os.PathLike[str]) -> None:
    """Warn, before a run writes ``path``, where it would be lost with the container (``docker exec … --output
    ~/emb.pkl``: the host's shell makes ``~`` the host's home, a folder only the container has)."""
    if in_container_only(path):
        workspace = (mount_of("/workspace") or ("",))[0] == "/workspace"  # the compose file's mount
        where = "under /workspace (./workspace on the host)" if workspace else "in a folder mounted from the host"
        log.warning("%s is inside the container, not in a folder mounted from the host: it is lost when the container "
                    "is removed (docker compose down, an upgrade of the image); write it %s", path, where)


def full_disk_advice(path: str | None, quota: bool = False) -> str:
    """What to do about "No space left on device" (or ``quota`` exceeded) at ``path``. The filesystem
    may have space left and be out of inodes (many small files: `df -i`), or the folder out of entries
    (about 65,000 on FAT32), where "free some space" would send the user to the wrong thing. Free space
    counts as "left" only where it is plenty (1 GB and a tenth of the disk): a write that failed has just
    freed what it had written (a partial embeddings file is a gigabyte)."""
    again = "then re-run the same command: it continues where it stopped"
    if quota:
        return f"your disk quota is used up: free some space or have it raised, {again}"
    folder = os.path.dirname(os.path.abspath(path)) if path else None
    while folder and not os.path.isdir(folder) and folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
    try:
        fs = os.statvfs(folder) if folder else None
    except OSError:
        fs = None
    if fs is not None and fs.f_files > 0 and fs.f_favail <= max(16, fs.f_files // 1000):  # what the failed write freed
        return (f"{folder} has room for no more files (every inode is used, see `df -i`, though "
                f"{size(fs.f_bavail * fs.f_frsize)} is free): remove files there or sort onto another disk, {again}")
    free = fs.f_bavail * fs.f_frsize if fs is not None else 0
    if fs is not None and free >= max(1 << 30, fs.f_blocks * fs.f_frsize // 10):
        return (f"{size(free)} is free there, so a limit other than space was reached, such as a folder full "
                f"of entries (about 65,000 on FAT32): sort onto another disk, {again}")
    return f"free some space, {again}"


def full_disk_hint(err: OSError, path: str | None) -> str:
    """``"; <what to do>"`` after ``err`` at ``path`` where it says the disk or quota is full
    (``full_disk_advice``), "" after any other error: for the end of an error line."""
    if err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return ""
    return f"; {full_disk_advice(path, quota=err.errno == errno.EDQUOT)}"


def check_writable_dir(path: str | os.PathLike[str], make: bool = True) -> None:
    """Raise ``PermissionError``/``OSError`` early if files cannot be created in ``path``
    (made first, with its parents, when ``make``)."""
    if make:
        Path(path).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
        pass


def lock_path(path: str | os.PathLike[str]) -> Path:
    """``.<name>.lock`` beside ``path``: the file ``exclusive`` locks, holding its owner's pid
    (a long name shortened by ``short_name``). Made absolute first: ``--output .`` has no name of its own, and
    its lock went inside it, so the folder was no longer empty."""
    target = Path(os.path.abspath(path))
    return target.parent / f".{short_name(target.name)}.lock"


def lock_holder(path: str | os.PathLike[str]) -> int | None:
    """The process holding the lock of ``path`` (see ``exclusive``), if one does: the run writing
    it now; the pid its lock file names.

    Whether the lock is held is asked of the kernel, by a shared lock tried for an instant: a lock
    file left by a killed run may name a pid that another process has since been given (after a
    container restart pids start again from 1), and a run in a container has a pid of its own
    there. Where the filesystem has no locks, a live process of that pid is taken for the holder."""
    try:
        fd = os.open(lock_path(path), os.O_RDONLY)
    except OSError:
        return None  # no lock file: no run took it (``exclusive`` makes it before locking)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            held: bool | None = True
        except OSError:
            held = None  # cannot tell here: as the pid says
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            held = False
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    finally:
        os.close(fd)
    pid = int(text) if text.isdigit() else 0
    if held is not None:
        return (pid or None) if held else None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:  # alive, but another user's
        return pid
    except OSError:
        return None
    return pid


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], hint: str) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``path`` for as long as the block runs; raise ``SetupError``
    (ending with ``hint``) at once if another process holds it. The kernel drops the lock when its
    holder dies (even by ``kill -9``), so a file left by a crashed run does not block the next one;
    the file is removed on exit. Taking it, a run removes what its predecessors' ``atomic_open``
    left beside ``path`` when they were killed while writing it. Where no lock can be had (a network
    share without locks, a read-only parent folder), the block runs unguarded, with a warning. Every
    output passes here first, so here a run is warned whose output would go with the container."""
    target = Path(os.path.abspath(path))  # its name and the folder beside it, also for ``.``
    warn_if_in_container_only(target)
    lock = lock_path(target)
    with contextlib.suppress(OSError):  # a parent that cannot be made: _acquire fails to open the lock
        lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(lock, target, hint)
    if fd is None:
        yield
        return
    try:
        pid = str(os.getpid()).encode()
        os.pwrite(fd, pid, 0)  # then cut: never empty while held, for ``lock_holder``
        os.ftruncate(fd, len(pid))
        remove_partial_writes(target)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _acquire(lock: Path, target: Path, hint: str) -> int | None:
    """A descriptor holding ``lock``; None (after a warning) where locking is impossible."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            _unguarded(lock, target, err)
            return None
        try:
            _lock_soon(fd)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise SetupError(_taken(lock, target, int(owner) if owner.isdigit() else 0, hint)) from None
        except OSError as err:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(lock)
            _unguarded(lock, target, err)
            return None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder removed the file after we opened it: lock the new one


def _taken(lock: Path, target: Path, pid: int, hint: str) -> str:
    """The error line for ``target`` held by process ``pid`` (0: unknown), naming what it runs and how to stop
    it. ``docker exec`` without ``-it`` leaves its run going when Ctrl-C ends the client, and the same command
    again then finds that run here."""
    if pid <= 0:
        return f"another process is writing {target}; {hint}"
    if has_open(pid, lock) is False:  # its pid is of another pid namespace: a container's, or the host's
        return f"another process (in another container, or outside this one) is writing {target}; {hint}"
    return f"another process, pid {describe(pid)}, is writing {target}; {hint}, or stop it with kill {pid} (its " \
           "progress is saved)"


LOCK_PATIENCE = 0.05  # seconds: ``lock_holder`` holds a shared lock for microseconds, a busy machine aside


def _lock_soon(fd: int) -> None:
    """Take the exclusive lock on ``fd``, waiting a moment for one that ``lock_holder`` is trying;
    ``BlockingIOError`` where a run holds it."""
    deadline = time.monotonic() + LOCK_PATIENCE
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _unguarded(lock: Path, target: Path, err: OSError) -> None:
    try:
        check_writable_dir(target if target.is_dir() else target.parent, make=False)  # an output folder, or a file's
    except OSError:
        return  # the run cannot write there either, and its own check says so in one line
    log.warning("cannot lock %s (%s): a second process writing %s at the same time would not be stopped",
                lock, err.strerror or err, target)
