"""Progress bars on stderr that suit a terminal and a log file alike, and the counts summaries print.

In a terminal the bar redraws several times a second. Written to a file (a background
``nohup docker exec … > run.log 2>&1 &``), every redraw would be a line, and a run of
hours would write megabytes of them: there it prints one line a minute.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from tqdm import tqdm

LOG_INTERVAL_S = 60.0


def count(n: int, noun: str) -> str:
    """``1 image``, ``2,000 images``: a number and its noun for summaries."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def size(n: float) -> str:
    """``812 kB``, ``1.30 MB``, ``2.41 GB``: bytes for messages, in the unit that suits them."""
    if n < 1000:
        return f"{n:.0f} B"
    text = tqdm.format_sizeof(n, "B")
    return f"{text[:-2]} {text[-2:]}"


def some(names: Sequence[str], most: int = 3) -> str:
    """``names`` for a log line: the first ``most`` of them, and how many more."""
    return ", ".join(names[:most]) + (f" and {len(names) - most:,} more" if len(names) > most else "")


def listed(names: Sequence[str], noun: str, shown: int = 6) -> str:
    """``A``, ``A and B``, ``A, B and C``; past ``shown`` names, ``A, B, … and 12 more folders``
    (``noun``: ``folder``)."""
    if len(names) > shown:
        return f"{', '.join(names[:shown])} and {count(len(names) - shown, 'more ' + noun)}"
    return " and ".join([", ".join(names[:-1]), names[-1]]) if len(names) > 1 else "".join(names)


def _interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """``tqdm`` on stderr; ``enabled=False`` draws nothing. Keyword arguments go to tqdm."""
    interactive = _interactive()
    options: dict[str, Any] = {"file": sys.stderr, "dynamic_ncols": interactive, "disable": not enabled}
    if not interactive:
        options.update(file=_Lines(sys.stderr), mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S)
    options.update(kwargs)
    return tqdm(iterable, **options)


class _Lines:
    """A log file's view of a bar: tqdm redraws in place (``\r`` and the bar, padded), which a log
    viewer, ``grep`` or ``docker logs`` would see as one ever-growing line; here each redraw is a
    line of its own, and a redraw that repeats the last one is left out."""

    def __init__(self, out: Any):
        self.out, self.last = out, ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line and line != self.last:
            self.out.write(line + "\n")
            self.last = line

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def ticker(desc: str, *, enabled: bool = True, delay: float = 3.0) -> Iterator[None]:
    """Work that reports no progress of its own (FAISS's k-means, which lets go of the GIL while it
    runs): from ``delay`` seconds on, a line on stderr that shows how long it has run, redrawn each
    second in a terminal and once a minute in a log file, so that minutes of it are seen to be work."""
    with bar(total=None, desc=desc, bar_format="{desc}: {elapsed}", delay=delay, enabled=enabled) as shown:
        stop = threading.Event()

        def redraw() -> None:
            while not stop.wait(1.0):
                shown.update(0)  # drawn once ``delay`` and the bar's interval (a minute in a log file) have passed

        thread = threading.Thread(target=redraw, name="ticker", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
