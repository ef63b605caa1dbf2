"""Input folders that go away during a run: a drive unplugged, a network share or a bind mount gone.

Each file of such a folder then fails on its own ("file no longer exists"), and a run that went on
would list every file left as gone and end as if it had finished. ``Vanishing`` counts the files
that could not be reached in a row and, after ``IN_A_ROW`` of them, checks the run's input folders:
one gone, or another folder now (an unmounted share leaves its empty mount point), stops the run
with ``RunStopped``; files deleted from folders still there are left to the run to list.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import RunStopped

IN_A_ROW = 32


def identity(folder: str) -> tuple[int, int] | None:
    """Which folder ``folder`` is now (device and inode), None where it cannot be reached. A bind
    mount unmounted leaves the mount point, on the same device but another inode."""
    try:
        stat = os.stat(folder)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


class Vanishing:
    """Watches the input ``folders`` of a run, as they were when it started."""

    def __init__(self, folders: Iterable[str]):
        self.folders = {folder: identity(folder) for folder in folders}
        self.in_a_row = 0

    def reached(self) -> None:
        """A file was read: the files that could not be were not a folder gone."""
        self.in_a_row = 0

    def not_reached(self, files: int, reason: str) -> None:
        """``files`` more could not be reached, the last for ``reason``; raises ``RunStopped`` once
        ``IN_A_ROW`` in a row could not, where an input folder went away."""
        self.in_a_row += files
        if self.in_a_row < IN_A_ROW:
            return
        gone = [folder for folder, was in self.folders.items() if was is not None and identity(folder) != was]
        missed, self.in_a_row = self.in_a_row, 0  # the folders are where they were: files deleted or moved
        if gone:
            more = f" (and {len(gone) - 1} more input folders)" if len(gone) > 1 else ""
            raise RunStopped(f"{gone[0]}{more} went away during the run: {missed} images in a row could not be read "
                             f"({reason}); it was unmounted, or its drive or network share disconnected. Progress "
                             "is saved: when it is back, run the same command again to go on from there")
