"""One embedding worker process per GPU, from one command.

Files (not folders) are spread over the GPUs in equal shares, ordered by a hash of
their path. Each GPU's list of files stays in the output folder, and a re-run gives every
file listed there the same GPU again, so that each worker resumes its own embeddings file;
only the files no list holds are spread anew, evenly, also over GPUs added since. A GPU
no longer given keeps what its embeddings file holds (``Dropped``); only the rest of its files
are spread over the others. Each worker is an ordinary generate_embeddings process with its
own ``GPU_ID``, so a failed one can be re-run alone with the command the launcher prints.
With ``--reuse-similar-frames``, runs of consecutive files of a folder are hashed instead, so
that a shot's frames stay together.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence, Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from . import images
from .cpus import CPUS_ENV, usable_cpus
from .embed_run import close_run, read_state
from .errors import EmbeddingsFileError, SetupError
from .fsutil import atomic_write_bytes, exclusive, lock_holder, missing_path_hint
from .moves import follow_moves, reached_elsewhere
from .progress import bar as progress_bar
from .progress import count
from .providers import visible_gpus

log = logging.getLogger(__name__)


def _key(path: str) -> bytes:
    return hashlib.blake2b(path.encode("utf-8", "surrogateescape"), digest_size=8).digest()


def shard(paths: Sequence[str], shards: int, block: int = 0) -> list[list[str]]:
    """Split paths over ``shards`` workers: ordered by a hash of the path, cut into equal runs.

    Balanced to one file, independent of folder sizes, reproducible; a file added later
    moves at most one file across each boundary (``assign`` keeps earlier files in place
    whatever the cuts). With ``block``, the hash is of the file's folder and its place there
    divided by ``block``: runs of ``block`` consecutive files of a folder (a shot's frames)
    stay with one worker, which ``--reuse-similar-frames`` needs to find repeats.
    """
    if block:
        keys: dict[str, bytes] = {}
        for folder, names in _by_folder(paths).items():
            for i, path in enumerate(names):
                keys[path] = _key(f"{folder}\0{i // block}")
        ordered = sorted(paths, key=lambda path: (keys[path], path))
    else:
        ordered = sorted(paths, key=_key)
    base, extra = divmod(len(ordered), shards)
    out, start = [], 0
    for i in range(shards):
        stop = start + base + (1 if i < extra else 0)
        out.append(sorted(ordered[start:stop]))
        start = stop
    return out


def _by_folder(paths: Sequence[str]) -> dict[str, list[str]]:
    folders: dict[str, list[str]] = {}
    for path in sorted(paths):
        folders.setdefault(os.path.dirname(path), []).append(path)
    return folders


def parse_gpus(spec: str) -> list[int]:
    if spec == "all":
        gpus = visible_gpus()
        if not gpus:
            raise SetupError("--gpus all: no GPU found (nvidia-smi lists none); name GPU ids, e.g. --gpus 0,1, "
                             "or --gpus 0 --device cpu for a CPU run")
        return gpus
    try:
        gpus = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SetupError(f"--gpus must be 'all' or ids such as 0,1,2: got {spec!r}") from None
    if not gpus or min(gpus) < 0:  # -1 is insightface's ctx_id for the CPU
        raise SetupError(f"--gpus must be 'all' or ids such as 0,1,2 (for the CPU: --gpus 0 --device cpu): "
                         f"got {spec!r}")
    if len(set(gpus)) != len(gpus):
        raise SetupError(f"--gpus must list distinct GPU ids: got {spec!r}")
    return gpus


@dataclass
class Worker:
    gpu: int
    files: int
    output: Path
    log: Path
    command: list[str]
    process: subprocess.Popen | None = None
    code: int | None = None
    device: str | None = None  # what its sessions run on, as it reported ("cuda", "tensorrt", "cpu")
    summary: dict | None = None  # its run's counts when it finished (``RunSummary.counts``)
    paths: list[str] = field(default_factory=list)  # its files, for ``write_list``
    log_from: int = 0  # where this run's part of its log begins

    def warnings(self) -> list[str]:
        """The warnings its run wrote to its log (``WARNING: …``, without the prefix), once each: a worker runs
        ``--quiet``, so these are all it said but its summary."""
        try:
            with open(self.log, "rb") as handle:
                handle.seek(self.log_from)
                said = handle.read().decode("utf-8", errors="replace")
        except OSError:
            return []
        prefix = "WARNING: "
        return list(dict.fromkeys(line[len(prefix):] for line in said.splitlines() if line.startswith(prefix)))

    @property
    def status_file(self) -> Path:
        return self.output.with_suffix(".status.json")

    @property
    def file_list(self) -> Path:
        return file_list_of(self.output)

    def write_list(self) -> None:
        """Its ``--file-list``; a GPU with no files (not started) keeps none, which would say that its
        embeddings file holds files it may not."""
        if self.paths:
            write_file_list(self.file_list, self.paths)
        else:
            self.file_list.unlink(missing_ok=True)

    def tidy(self) -> None:
        """After a worker finished: its status file is of no more use. (Its file list stays: the next
        run reads from it which files this GPU's embeddings file holds.)"""
        self.status_file.unlink(missing_ok=True)

    def rerun_line(self) -> str:
        return f"GPU_ID={self.gpu} " + " ".join(shlex.quote(c) for c in self.command)


def file_list_of(output: Path) -> Path:
    """The list of the files a GPU's worker was given, beside its embeddings file ``output``."""
    return output.with_suffix(".files.txt")


def read_file_list(path: str, under: Sequence[str] = ()) -> list[str]:
    """The images a ``--file-list`` names: one path per line or, where names hold line breaks,
    separated by NUL bytes (as ``find -print0`` and the GPU launcher write them). A relative name
    is looked for under the folders of ``under`` (the ``--input`` folders), as rsync's
    ``--files-from`` reads names relative to its source: a list made by ``find .`` in an input
    folder means that folder's images, not the current folder's (``docker exec`` starts in /app).
    A relative name found under none of them is taken relative to the current folder; one found
    under several is refused (``SetupError``). ``-`` reads the list from standard input
    (``find … -print0 | docker exec -i face-organizer … --file-list -``)."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as handle:
                data = handle.read()
    except OSError as err:
        hint = missing_path_hint(path) if isinstance(err, FileNotFoundError) else ""
        raise SetupError(f"cannot read --file-list {path}: {err.strerror or err}{hint}") from None
    data = _without_bom(data, path)
    if b"\0" in data:
        names = data.split(b"\0")
    else:
        names = [line.rstrip(b"\r") for line in data.split(b"\n") if line.strip()]
    folders = list(dict.fromkeys(os.path.abspath(f) for f in under if os.path.isdir(f)))
    listings = _Listings()
    paths: set[str] = set()
    for name in (os.fsdecode(n) for n in names if n):  # names need not be UTF-8
        found = [] if os.path.isabs(name) else [os.path.normpath(p) for f in folders
                                                 if listings.holds(p := os.path.join(f, name))]
        if len(found) > 1 and len({os.path.realpath(p) for p in found}) > 1:  # frame_0001.png is in every year folder
            raise SetupError(f"--file-list {path}: {name} is in more than one --input folder ({found[0]}, "
                             f"{found[1]}); list full paths, or give only the folder the list was made in")
        paths.add(found[0] if found else os.path.abspath(name))
    return sorted(paths)


def _without_bom(data: bytes, path: str) -> bytes:
    """A list as Windows tools write it: UTF-8 after a byte-order mark (Notepad, PowerShell's
    ``Out-File -Encoding utf8``), or UTF-16 (Windows PowerShell's ``>``), as the bytes of its names.
    The mark would start the first name, and UTF-16's zero bytes would split every name."""
    if data.startswith(codecs.BOM_UTF8):
        return data[len(codecs.BOM_UTF8):]
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return os.fsencode(data.decode("utf-16"))
        except UnicodeDecodeError:
            raise SetupError(f"--file-list {path} starts as UTF-16 text but is not; save it as UTF-8") from None
    return data


class _Listings:
    """Whether a path exists (a dangling link too), from one listing of each folder: half a million
    relative names over several input folders cost a listing per folder, not a stat per name and input."""

    def __init__(self) -> None:
        self.names: dict[str, frozenset[str]] = {}

    def holds(self, path: str) -> bool:
        folder, name = os.path.split(path)
        if folder not in self.names:
            try:
                with os.scandir(folder) as entries:
                    self.names[folder] = frozenset(entry.name for entry in entries)
            except OSError:
                self.names[folder] = frozenset()
        return name in self.names[folder]


def write_file_list(path: Path, files: Sequence[str]) -> None:
    """One path per line, readable in a pager; NUL-separated instead when a name holds a line break."""
    sep = b"\0" if any("\n" in f or "\r" in f for f in files) else b"\n"
    atomic_write_bytes(path, b"".join(os.fsencode(f) + sep for f in files))  # the next run reads it back


FRAME_BLOCK = 64  # consecutive files kept on one worker (``block``) with --reuse-similar-frames


def assign(paths: Sequence[str], gpus: Sequence[int], previous: dict[int, set[str]], block: int = 0,
           elsewhere: AbstractSet[str] = frozenset(), follows: Mapping[str, int] | None = None) -> list[list[str]]:
    """Each GPU's files: those an earlier run gave it (``previous``, its file list) stay with it, so
    that its embeddings file already holds them, and so do those ``follows`` gives it (images moved since,
    ``moved_images``); the rest are ``shard``ed evenly over all the GPUs, except those in ``elsewhere``
    (held by the file of a GPU no longer given).

    With the same GPUs as before this is the new images spread evenly; with GPUs added (2 to 4),
    nothing already embedded is embedded again (re-sharding everything would move three quarters
    of the files to another GPU's file, each embedded a second time), and the new GPUs take their
    share of the new images.
    """
    held = {**(follows or {}), **{path: gpu for gpu in gpus for path in previous.get(gpu, ())}}
    kept: dict[int, list[str]] = {gpu: [] for gpu in gpus}
    new = []
    for path in paths:
        if path in held:
            kept[held[path]].append(path)
        elif path not in elsewhere:
            new.append(path)
    return [sorted(kept[gpu] + part) for gpu, part in zip(gpus, shard(new, len(gpus), block))]


def embed_command() -> list[str]:
    """How a worker runs generate_embeddings: the script beside this package (a checkout, the
    image's ``/app``), else the installed package's own entry (a pip-installed package has no
    ``scripts/`` folder)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "generate_embeddings.py"
    if script.is_file():
        return [sys.executable, str(script)]
    return [sys.executable, "-m", "face_organizer", "embed"]


def plan_workers(inputs: Sequence[str], paths: Sequence[str], gpus: Sequence[int], out_dir: Path, prefix: str,
                 extra: Sequence[str], block: int = 0, resume: bool = True,
                 elsewhere: AbstractSet[str] = frozenset()) -> list[Worker]:
    """One worker per GPU with its files; nothing is written (``Worker.write_list`` does). With
    ``resume``, the lists an earlier run left in ``out_dir`` say which files each GPU's embeddings
    file already holds (see ``assign``); ``elsewhere`` are files that GPUs no longer given hold."""
    stage = embed_command()
    workers = [Worker(gpu, 0, out_dir / f"{prefix}{gpu}.pkl", out_dir / f"{prefix}{gpu}.log", []) for gpu in gpus]
    previous = {w.gpu: set(read_file_list(str(w.file_list))) for w in workers if resume and w.file_list.is_file()}
    follows = moved_images(paths, previous, {w.gpu: w.output for w in workers})
    for worker, files in zip(workers, assign(paths, gpus, previous, block, elsewhere, follows)):
        worker.files, worker.paths = len(files), files
        worker.command = [*stage, "--input", *inputs, "--file-list", str(worker.file_list),
                          "--output", str(worker.output), *extra]
    return workers


def moved_images(paths: Sequence[str], previous: Mapping[int, AbstractSet[str]],
                 outputs: Mapping[int, Path]) -> dict[str, int]:
    """Image found now at a path no GPU was given -> the GPU whose embeddings file holds it at a path it is
    gone from since, found by name, size and modification time, or name and size (``moves.follow_moves``: a
    folder renamed, or moved with ``mv``, ``cp -a`` or ``cp -r``), or that it holds through other folders (the
    input named through a symbolic link one time and not another: ``moves.reached_elsewhere``). Given to that
    GPU, it takes its rows there by its bytes and the file drops the old path (``embed_run``), where another GPU
    would embed it again. Only where some listed path is not found now."""
    listed = {p for files in previous.values() for p in files}
    new = [p for p in paths if p not in listed]
    found = set(paths)  # a path not found may be of other inputs: gone only where it is not on the disk
    left = {p: gpu for gpu, files in previous.items() for p in files if new and p not in found}
    there = {p for p in left if os.path.lexists(p)}
    linked = reached_elsewhere(there, new)  # on the disk still, and found now through a linked folder
    gone = {p: gpu for p, gpu in left.items() if p not in there or p in linked}
    signatures: dict[str, images.Signature] = {}
    for gpu in sorted(set(gone.values())):  # read only where an image is gone: a rename, or a move into folders
        try:
            held = read_state(outputs[gpu]).signatures
        except (EmbeddingsFileError, OSError):
            continue  # its run is told why when it starts
        signatures.update((path, signature) for path, signature in held.items() if gone.get(path) == gpu)
    follows = {path: gone[old] for path, old in follow_moves(signatures, new).items()}
    if follows:
        log.info("%s moved since an earlier run (found by name and size under a new path): each goes to the "
                 "GPU whose file holds it", count(len(follows), "image"))
    return follows


@dataclass
class Dropped:
    """A GPU that an earlier run gave files to and this one does not (it failed, or is busy with
    other work). The images its embeddings file holds stay there, not embedded again (cluster_faces
    reads ``embeddings_gpu*.pkl``); only the rest of its files are spread over the GPUs given."""

    gpu: int
    output: Path
    listed: list[str]  # its file list
    kept: set[str] = field(default_factory=set)  # of those, the ones its file holds (all while a run writes it)
    writer: int | None = None  # a live run writing its file now
    why_none: str = ""  # why its file keeps none of them
    interrupted: bool = False  # checkpoint parts to merge into its file (``settle``)
    changed: set[str] = field(default_factory=set)  # images rewritten since its file read them
    released: int = 0  # its files found now and not kept: spread over the GPUs given

    @property
    def file_list(self) -> Path:
        return file_list_of(self.output)

    def settle(self) -> None:
        """Its file finished with what it holds (an interrupted run's parts merged in, the rows of
        images changed since dropped) and its list cut to what the file holds, so that the list goes
        on saying which files this GPU's file holds should the GPU be given again."""
        if self.writer is not None:
            return
        if self.kept and (self.interrupted or self.changed):
            log.info("finishing %s with the %s it holds (GPU %d is not given)", self.output,
                     count(len(self.kept), "image"), self.gpu)
            with exclusive(self.output, "wait for it to finish, or give this GPU again"):
                close_run(self.output, self.changed)
        if self.kept:
            write_file_list(self.file_list, sorted(self.kept))
        else:
            self.file_list.unlink(missing_ok=True)

    def line(self, name: str) -> str:
        """Its outcome, for the launcher's summary."""
        if self.writer is not None:
            return (f"{name}: not given, but a run (pid {self.writer}) is writing {self.output}: its "
                    f"{count(len(self.listed), 'file')} are left to that run")
        spread = f"{count(self.released, 'file')} spread over the others"
        if not self.kept:
            return f"{name}: not given: {self.why_none}; its {spread}"
        return (f"{name}: not given: its {self.output} keeps {count(len(self.kept), 'image')}, not embedded again"
                + (f"; {spread}" if self.released else ""))


def find_dropped(out_dir: Path, prefix: str, gpus: Sequence[int], recognizer: str, mode: str,
                 paths: Sequence[str]) -> list[Dropped]:
    """The GPUs that have a file list in ``out_dir`` from an earlier run but are not in ``gpus``,
    with what each one's embeddings file holds (read only: ``Dropped.settle`` writes). A file made
    with another recogniser or mode keeps nothing: this run's images need the new one. ``paths``
    are the images found now."""
    dropped = []
    found = set(paths)
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.files\.txt")
    for listing in sorted(out_dir.glob(glob.escape(prefix) + "*.files.txt")):
        match = pattern.fullmatch(listing.name)
        gpu = int(match[1]) if match else -1
        if listing.name != f"{prefix}{gpu}.files.txt" or gpu in gpus:
            continue
        d = Dropped(gpu, out_dir / f"{prefix}{gpu}.pkl", read_file_list(str(listing)))
        dropped.append(d)
        if (writer := lock_holder(d.output)) is not None:
            d.writer, d.kept = writer, set(d.listed)
            continue
        try:
            state = read_state(d.output)
        except EmbeddingsFileError as err:
            d.why_none = f"{d.output} cannot be read ({err})"
            continue
        meta = state.meta or {}
        made_with = (meta.get("model_files", {}).get("recognition"), meta.get("mode", "crops"))
        if not state.held & set(d.listed):
            d.why_none = f"{d.output} holds none of them" if meta else f"no {d.output.name} was written"
        elif made_with != (recognizer, mode):
            d.why_none = f"{d.output} was made with {made_with[0]} ({made_with[1]} mode)"
        else:
            held = state.held & set(d.listed)
            d.changed = state.changed({p: images.file_signature(p) for p in held})
            d.kept, d.interrupted = held - d.changed, bool(state.parts_read or state.unreadable_parts)
            if not d.kept:
                d.why_none = "each of its images changed since it was embedded"
    for d in dropped:
        d.released = sum(1 for p in d.listed if p in found and p not in d.kept)
    return dropped


STOP_GRACE_S = 60.0  # for a worker to save its checkpoint after SIGTERM


def worker_env(worker: Worker, workers: int) -> dict[str, str]:
    """The environment of one of ``workers`` processes: its ``GPU_ID`` and an equal share of the
    CPUs, so that their decoding processes and threads together fit the machine."""
    share = max(1, usable_cpus() // max(1, workers))
    return dict(os.environ, GPU_ID=str(worker.gpu), PYTHONUNBUFFERED="1", **{CPUS_ENV: str(share)})


def run_workers(workers: list[Worker], total: int, progress: bool = True, poll: float = 1.0,
                expect_gpu: bool = False) -> list[Worker]:
    """Start every worker, show overall progress from their status files, wait for all.
    With ``expect_gpu``, a worker that reports running on the CPU is warned about at once: a GPU
    that does not work would otherwise go unnoticed in that worker's log for hours."""
    for w in workers:
        env = worker_env(w, len(workers))
        w.status_file.unlink(missing_ok=True)
        with open(w.log, "a", encoding="utf-8") as output:  # a re-run adds to the log of the runs before
            output.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}: GPU {w.gpu}, {count(w.files, 'file')}\n")
            output.flush()
            w.log_from = output.tell()
            w.process = subprocess.Popen([*w.command, "--quiet", "--status-file", str(w.status_file),
                                          "--launcher-pid", str(os.getpid())],
                                         stdout=output, stderr=subprocess.STDOUT, env=env)
    bar = progress_bar(total=total, unit="img", enabled=progress)

    def update() -> None:
        done = 0
        for w in workers:
            status = _status(w)
            done += int(status.get("done", 0))
            w.summary = status.get("summary") or w.summary
            if w.device is None and status.get("device"):
                w.device = str(status["device"])
                if expect_gpu and w.device == "cpu":
                    with bar.external_write_mode(file=sys.stderr):
                        log.warning("GPU %d: its worker runs on the CPU, not on the GPU (see %s): stop it with "
                                    "Ctrl-C and run diagnostic_test.py, or let it go on at CPU speed", w.gpu, w.log)
        bar.update(max(0, done - bar.n))  # redrawn as often as the bar allows: in a log, once a minute

    try:
        while any(w.process.poll() is None for w in workers if w.process):
            update()
            time.sleep(poll)
        update()
    except KeyboardInterrupt:
        stop_workers(workers)
        raise
    finally:
        bar.close()
    for w in workers:
        w.code = w.process.wait() if w.process else None
    return workers


def stop_workers(workers: list[Worker], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM every worker still running (each saves a checkpoint and exits), wait up to
    ``grace`` seconds for them all, then kill those still running."""
    running = [w.process for w in workers if w.process and w.process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for w in workers:
        w.code = w.process.poll() if w.process else None


def _status(worker: Worker) -> dict:
    try:
        status = json.loads(worker.status_file.read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}
