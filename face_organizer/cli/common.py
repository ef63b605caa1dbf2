"""What every command shares: logging, the error boundary, environment settings."""

from __future__ import annotations

import argparse
import glob
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import FaceOrganizerError, SetupError
from ..fsutil import RUN_FILES, full_disk_hint
from ..modelpack import DEFAULT_PACK, MODEL_ROOT_ENV, default_model_root
from ..progress import count, some

EXIT_INTERRUPTED = 130
OTHER_RUN = "wait for it to finish or choose another --output"


_REDIRECTED: list[tuple[int, int]] = []  # (stdout or stderr's descriptor, a copy of what it was)
_LOG_FILE: list[str] = []  # the file they go to meanwhile


def _text_or_new(path: str) -> bool:
    """Whether ``path`` is not a file (not there, or ``/dev/stdout``, a pipe: never read, which would wait for input),
    or one that begins as a text file does: no NUL byte in its first 4 KiB (the headers of JPEG, PNG and the other
    image formats, and of a pickle, hold some)."""
    if not os.path.isfile(path):
        return True
    try:
        with open(path, "rb") as handle:
            return b"\0" not in handle.read(4096)
    except OSError:
        return True  # not there, or not readable: opening it for the log says so


def log_to_file(path: str) -> None:
    """Send everything the command writes from here on (log, progress, summary, errors, and
    what native libraries and child processes write) to the end of ``path``, as ``> FILE 2>&1``
    would: for runs started with ``docker exec -d``, whose output is otherwise lost. Progress
    then comes as one line a minute. ``restore_output`` undoes it."""
    named, path = path, os.path.abspath(path)
    if os.path.isdir(path) or named.endswith(("/", os.sep)):  # a folder meant, made or not
        raise SetupError(f"--log {named} is a folder; give a file name such as {os.path.join(path, 'run.log')}")
    if not _text_or_new(path):
        raise SetupError(f"--log {named} is a file that is not a log (an image, an embeddings file: it holds binary "
                         "data), which the run's output would be appended to; give a log file's name such as "
                         f"{os.path.join(os.path.dirname(path), 'run.log')}")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as err:
        raise SetupError(f"cannot write the log file --log {path}: {err.strerror or err}") from None
    print(f"logging to {path}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    for target in (1, 2):
        _REDIRECTED.append((target, os.dup(target)))
        os.dup2(fd, target)
    os.close(fd)
    _LOG_FILE[:] = [path]
    RUN_FILES.add(path)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"=== {started}: {' '.join([os.path.basename(sys.argv[0]), *sys.argv[1:]])}", file=sys.stderr, flush=True)


def restore_output() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    while _REDIRECTED:
        target, saved = _REDIRECTED.pop()
        os.dup2(saved, target)
        os.close(saved)
    RUN_FILES.difference_update(_LOG_FILE)
    _LOG_FILE.clear()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes, not to the one there when the logging was set
    up: a caller that swaps it (a test's capture, a program running a stage in-process) gets the lines that follow,
    where they went to a stream since closed ("Logging error ... I/O operation on closed file")."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # set by StreamHandler's constructor: sys.stderr is read at each record instead


def setup_logging(verbose: int = 0, quiet: bool = False, log: str | None = None) -> None:
    """Log on stderr: warnings and errors only with ``quiet``, debug with ``verbose`` > 1;
    with ``log``, stderr and stdout go to that file (``log_to_file``)."""
    if log:
        log_to_file(log)
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", handlers=[_StderrHandler()], force=True)
    if verbose < 2:
        logging.getLogger("PIL").setLevel(logging.WARNING)


STOP_SIGNALS = ("SIGTERM", "SIGHUP")  # kill, docker/systemd stop, a closed terminal


class Stopped(KeyboardInterrupt):
    """A stop signal turned into an exception, so that a run saves its progress as on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _already_stopping(signum: int, frame: Any) -> None:
    """A stop signal during the cleanup of an earlier one: ignored."""


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise ``Stopped`` in the main thread, as Ctrl-C raises
    ``KeyboardInterrupt``.

    After the first of these, SIGTERM and SIGHUP are ignored, so the cleanup it starts (a
    checkpoint) is not cut short: Ctrl-C in a terminal reaches the multi-GPU launcher and
    its workers, and the launcher's SIGTERM then finds them already saving. A second Ctrl-C
    still interrupts. A signal that was ignored when the command started (``nohup`` ignores
    SIGHUP, a shell's background jobs SIGINT) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def stop(signum: int, frame: Any) -> None:
        for number in previous:
            if number != signal.SIGINT:
                # A handler that does nothing, not SIG_IGN: a signal that came just before the
                # switch (the launcher's SIGTERM right after Ctrl-C) would find SIG_IGN and be
                # reported with a traceback ("Signal 15 ignored due to race condition").
                signal.signal(number, _already_stopping)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        raise Stopped(signum)

    for name in ("SIGINT", *STOP_SIGNALS):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) not in (signal.SIG_IGN, None):
            previous[number] = signal.signal(number, stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def stop_when_launcher_ends(launcher: int, interval: float = 0.5) -> None:
    """Stop this command as SIGTERM does (its progress saved) once ``launcher``, its parent, is
    gone. A launcher killed outright (``kill -9``, the OOM killer) cannot stop its workers: they
    would run on, holding their GPU and their output, and the launcher's re-run would find them
    still writing it."""
    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(interval)
        logging.getLogger(__name__).warning("the launcher (pid %d) has gone: stopping", launcher)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="follow-launcher", daemon=True).start()


def _names_printable() -> None:
    """File names that are not UTF-8 (Latin-1 names of old archives) reach Python as lone surrogates, which
    stdout refuses under a UTF-8 locale such as ``en_US.UTF-8`` (under ``C`` or ``C.UTF-8`` Python escapes them
    itself): a finished run ended in a traceback at its summary. They are printed as their own bytes, as ``ls``
    does."""
    stream = sys.stdout
    if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        utf8 = (getattr(stream, "encoding", "") or "").lower().replace("-", "") == "utf8"
        stream.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a command, turning domain errors into ``Error: …`` and an exit code, and stop
    signals into the same orderly stop as Ctrl-C (exit 128 + the signal's number). Its last
    line goes where its output went (``--log``), then the output is restored."""
    _names_printable()
    code = 1
    try:
        code = _run(main, argv)
        return code
    except Exception:
        if _LOG_FILE:  # a crash's traceback belongs in the log too: a detached run has no terminal
            traceback.print_exc()
        raise
    finally:
        logged = _LOG_FILE[:]
        restore_output()
        if logged and code != 0:
            print(f"exit {code}: the end of {logged[0]} says why", file=sys.stderr)


def _run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    try:
        with stop_signals_raise():
            return main(argv)
    except FaceOrganizerError as err:
        print(f"Error: {err}", file=sys.stderr)
        return err.exit_code
    except Stopped as stop:
        print(f"Stopped by {signal.Signals(stop.signum).name}: progress so far is saved; "
              "re-run the same command to continue.", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("Interrupted: progress so far is saved; re-run the same command to continue.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 1
    except OSError as err:  # a full disk, a folder that went away: one line, not a traceback
        logging.getLogger(__name__).debug("the error in full", exc_info=True)
        where = f": {err.filename}" if err.filename else ""
        print(f"Error: {err.strerror or err}{where}{full_disk_hint(err, err.filename)}", file=sys.stderr)
        return 1



# ("face-organizer gender", {script: its command}) while the umbrella command runs a stage
_INVOKED_AS: list[tuple[str, dict[str, str]]] = []
_SCRIPT_RUN = re.compile(r"python (?:/app/)?scripts/([\w.]+\.py)")


@contextmanager
def invoked_as(name: str, commands: dict[str, str] | None = None) -> Iterator[None]:
    """Within, a stage's usage lines and errors name it ``name`` instead of its script, and the
    examples of its ``--help`` run each script of ``commands`` (file name: command) as that command."""
    _INVOKED_AS.append((name, dict(commands or {})))
    try:
        yield
    finally:
        _INVOKED_AS.pop()


def parser(prog: str, description: str, examples: str, *, allow_abbrev: bool = True) -> argparse.ArgumentParser:
    if _INVOKED_AS:
        prog, commands = _INVOKED_AS[-1]
        examples = _SCRIPT_RUN.sub(lambda m: commands.get(m.group(1), m.group(0)), examples)
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="examples:\n" + examples,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=allow_abbrev,
    )
    p.add_argument("--version", action="version", version=f"face-organizer {__version__}")
    return p


def add_logging_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more detail on stderr (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr, no progress bar")
    p.add_argument("--log", metavar="FILE", type=path, default=None,
                   help="append everything the command prints to FILE instead (for runs started with docker exec -d, "
                        "whose output is otherwise lost); progress then comes once a minute")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_PACK, type=path,
                   help=f"model pack name or folder (default: {DEFAULT_PACK})")
    p.add_argument("--model-root", default=None, type=path,
                   help=f"folder holding model packs (default: ${MODEL_ROOT_ENV}, else {default_model_root()})")


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: GPU if it really works, else CPU with a warning; cuda: fail unless the GPU is used")
    p.add_argument("--tensorrt", action="store_true", help="try ONNX Runtime's TensorRT provider before CUDA")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
               without_effect: Callable[[argparse.Namespace], str | None]) -> argparse.Namespace:
    """``parser``'s arguments, after a usage line for options given where they would change nothing
    (``without_effect`` says why, or None), rather than being passed over."""
    args = parser.parse_args(argv)
    if unused := without_effect(args):
        parser.error(unused)
    return args


def check_device_args(args: argparse.Namespace) -> None:
    """``SetupError`` for device options that contradict each other (``add_device_args``)."""
    if args.tensorrt and args.device == "cpu":
        raise SetupError("--tensorrt is ONNX Runtime's provider for NVIDIA GPUs, and --device cpu runs on the CPU: "
                         "leave one of them out")


def add_moved_to_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--moved-to", nargs="+", default=[], metavar="DIR", type=path,
                   help="output folders of an earlier cluster_faces --link-mode move: images no longer where they "
                        "were embedded are read from where that run put them (its clusters.csv)")


def model_root(arg: str | None) -> Path | None:
    value = arg or os.environ.get(MODEL_ROOT_ENV)
    return Path(value).expanduser() if value else None


def gpu_id_from_env() -> int:
    """``GPU_ID``: the one GPU this process runs on (0 when unset). A list of GPUs, which a user may
    take it for, and insightface's ``ctx_id=-1`` for the CPU each get a line saying what to do instead."""
    raw = os.environ.get("GPU_ID", "0").strip() or "0"
    if re.fullmatch(r"\d+([,\s]+\d+)+", raw):
        raise SetupError(f"GPU_ID names one GPU per process, got {raw!r}: start one run per GPU, each with its own "
                         "GPU_ID (embed_all_gpus.py --gpus does this for embeddings)")
    try:
        value = int(raw)
    except ValueError:
        raise SetupError(f"GPU_ID must be a GPU number such as 0 or 1 (nvidia-smi's index), got {raw!r}") from None
    if value < 0:
        raise SetupError(f"GPU_ID must be 0 or more, got {value} (insightface's -1 for the CPU): unset it, and "
                         "give --device cpu to run on the CPU")
    return value


def shell_patterns(names: Sequence[str], option: str) -> list[str]:
    """``names``, with each pattern that the shell left as it was expanded here, sorted. Typed to
    ``docker exec face-organizer … --input /workspace/input/20*``, the pattern is expanded by the
    host's shell, where no ``/workspace`` is, and so reaches the container as typed. A pattern that
    matches nothing here either stays, for the stage's own error; a name that exists is never one."""
    out: list[str] = []
    for name in names:
        if os.path.lexists(name) or not glob.has_magic(name):
            out.append(name)
            continue
        found = sorted(glob.glob(name))
        if found:
            logging.getLogger(__name__).info("%s %s: %s", option, name, some(found, 10))
        out += found or [name]
    return out


def find_images(inputs: Sequence[str], *, none_ok: bool = False) -> list[str]:
    """Images under the input folders, or a ``SetupError`` naming what is wrong; folders that
    hold none are only warned about with ``none_ok``."""
    from ..images import READ_FORMATS, discover_images

    started = time.monotonic()
    try:
        paths = discover_images(inputs)
    except FileNotFoundError as err:
        raise SetupError(str(err)) from None
    if not paths:
        message = f"no images ({READ_FORMATS}) found under {some(inputs)}"
        if not none_ok:
            raise SetupError(message)
        logging.getLogger(__name__).warning("%s", message)
        return []
    logging.getLogger(__name__).info("%s found under %s (%.1f s)", count(len(paths), "image"), some(inputs),
                                     time.monotonic() - started)
    return paths


def file_output(name: str, example: str) -> str:
    """``--output`` that names a file, as an absolute path; a folder, or a name ending in a slash
    (``--output /workspace/embeddings/``, a folder meant even where it does not exist yet), is
    refused with a file name inside it as the example."""
    output = os.path.abspath(name)
    if os.path.isdir(output) or name.endswith(("/", os.sep)):
        raise SetupError(f"--output {name} is a folder; give a file name such as {os.path.join(output, example)}")
    return output


GENDER_NAMES = {"woman": "Woman", "women": "Woman", "female": "Woman", "f": "Woman",
                "man": "Man", "men": "Man", "male": "Man", "m": "Man"}


def gender(value: str) -> str:
    """``Woman`` or ``Man``, as DeepFace names them, from any case of those or of women/female/f,
    men/male/m."""
    try:
        return GENDER_NAMES[value.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a gender: Woman or Man") from None


def path(value: str) -> str:
    """A file or folder argument: an empty one (``--input "$DIR"`` with ``DIR`` unset) is refused, not
    taken for the current folder; so is one that exists only without the spaces around it (a name
    copied with a space: "input folder not found: /workspace/input/2017 " shows none). A leading ``~``
    is the home folder, as the shell would have made it: shells leave ``--output=~/emb.pkl`` as typed,
    which made a folder named ``~`` in the current one (kept where the current folder holds one)."""
    if not value:
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?)")
    if value.startswith("~") and not os.path.lexists(value.split(os.sep, 1)[0]):
        value = os.path.expanduser(value)
    if value != value.strip() and value.strip() and not os.path.lexists(value) and os.path.lexists(value.strip()):
        raise argparse.ArgumentTypeError(f"{value!r} does not exist, but {value.strip()!r} does: a space copied "
                                         "with the name?")
    return value


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return number


MAX_BATCH = 4096  # a stream holds a batch of decoded images: 4,096 crops of 512 px are 3.2 GB


def batch_size(value: str) -> int:
    """Images per batch: 1 to ``MAX_BATCH``. A GPU gains nothing from larger batches, and the decoded
    images of one (``--batch-size 100000``: tens of GB per stream) would run the machine out of memory."""
    number = positive(value)
    if number > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"at most {MAX_BATCH:,}: each stream holds a batch of decoded images "
                                         f"({MAX_BATCH:,} crops of 512 px are 3.2 GB)")
    return number


def non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


SEED_MAX = 2**31 - 1  # FAISS keeps its k-means seed in a C int


def seed(value: str) -> int:
    """A random seed FAISS and numpy both take: 0 to 2**31 - 1."""
    number = int(value)
    if not 0 <= number <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed lies between 0 and {SEED_MAX:,}, not {value}")
    return number


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None


def non_negative_float(value: str) -> float:
    number = _number(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return number


def similarity(value: str) -> float:
    """A cosine similarity cut-off: -1 to 1."""
    number = _number(value)
    if not -1.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity lies between -1 and 1, not {value}")
    return number


def probability(value: str) -> float:
    number = _number(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return number


def rate(value: str) -> float:
    """A rate strictly between 0 and 1 (a false-match rate)."""
    number = _number(value)
    if not 0.0 < number < 1.0:
        raise argparse.ArgumentTypeError(f"must be above 0 and below 1, not {value}")
    return number


def graph_neighbours(value: str) -> int:
    """Neighbours per face in the clustering graph: the face itself plus the two a core face needs."""
    number = int(value)
    if number < 3:
        raise argparse.ArgumentTypeError("must be 3 or more (a face's nearest neighbours include the face itself, "
                                         "and a face needs two more to form a group)")
    return number
