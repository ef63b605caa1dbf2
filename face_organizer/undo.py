"""Putting back the images that ``cluster_faces --link-mode move`` took into an output folder.

The output's ``clusters.csv`` names, for every face, the path its image was embedded at and the
file the move made of it (``relocate.moved_locations``, which reads only files inside the
output). Each image goes back to its path as a move does (a rename, or a durable copy before the
delete across filesystems), so an interruption leaves it in one of the two places and running
again finishes. The extra copies a photo with faces in several folders got are removed once the
photo is back, and only when their bytes are the photo's. Nothing is overwritten: a different
file at an image's path keeps its place, and the image stays in the output, named in the report.
Nor is a folder made where the image's own folder is gone: a move leaves the folders it empties,
so a missing one was moved or deleted since (the whole tree taken to another disk), and the
image would land in a tree the user left. Given the tree's old and new folders (``rewrite``, as
``rebase_embeddings`` takes them), the images go back into the tree where it is now.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import relocate
from .errors import SetupError
from .fsutil import same_bytes
from .images import is_image_name
from .organize import STATE_FILE, mark_undone, place, saved_state
from .progress import bar as progress_bar
from .progress import count
from .rebase import folder_prefix, guess_move, near, renaming

SHOWN_CONFLICTS = 20


@dataclass
class UndoReport:
    output: str
    restored: int = 0  # moved back to where it was embedded
    already_back: int = 0  # at its path before this run (an earlier undo, or a move cut short)
    copies_removed: int = 0  # a group photo's copies in the folders of its other faces
    gone: int = 0  # neither at its path nor in the output: moved on by a later run, or deleted
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (its path, the file left in the output)
    # (its path, the file left in the output): the folder it was embedded in is gone (the tree moved since)
    no_folder: list[tuple[str, str]] = field(default_factory=list)
    others: list[str] = field(default_factory=list)  # images in the output where the move put none: by hand
    dry_run: bool = False
    rewrite: tuple[str, str] | None = None  # (old folder, new folder): the tree moved since

    @property
    def left(self) -> int:
        """Images that stay in the output: a different file at their path, their folder gone, or
        not where the move put any image (``others``)."""
        return len(self.conflicts) + len(self.no_folder) + len(self.others)

    def lines(self) -> list[str]:
        verb = "would put back" if self.dry_run else "put back"
        where = "where they were embedded" if self.rewrite is None else \
            f"where they were embedded, under {self.rewrite[1]} instead of {self.rewrite[0]}"
        out = [f"{verb}: {count(self.restored, 'image')} {where}, from {self.output}"]
        if self.already_back or self.copies_removed:
            out.append(f"already back: {count(self.already_back, 'image')}; copies of photos in several folders "
                       f"{'to remove' if self.dry_run else 'removed'}: {self.copies_removed:,}")
        if self.gone:
            out.append(f"not in {self.output} any more: {count(self.gone, 'image')} (moved on by a later "
                       "--link-mode move: undo that output; or deleted)")
        if self.conflicts:
            out.append(f"left in {self.output}: {count(len(self.conflicts), 'image')}, as a different file is at its "
                       "path now (nothing is overwritten):")
            out += [f"  {kept} (its path: {path})" for path, kept in self.conflicts[:SHOWN_CONFLICTS]]
            if len(self.conflicts) > SHOWN_CONFLICTS:
                out.append(f"  … and {len(self.conflicts) - SHOWN_CONFLICTS:,} more")
        if self.no_folder:
            folders = sorted({os.path.dirname(path) for path, _ in self.no_folder})
            moves = guess_move(folders, near(self.output))
            found = f" (here: --from {moves[0]} --to {moves[1]} finds them)" if moves else ""
            out.append(f"left in {self.output}: {count(len(self.no_folder), 'image')} whose folder is gone "
                       f"({count(len(folders), 'folder')}, such as {folders[0]}): moved or deleted since, so "
                       "nothing is put there; create a folder again to put its images back into it, or name "
                       f"where the folders are now with --from OLD --to NEW{found}")
        if self.others:
            out.append(f"left in {self.output}: {count(len(self.others), 'other image')}, not where the move put any "
                       "(moved there by hand, or added since); put these back by hand:")
            out += [f"  {path}" for path in self.others[:SHOWN_CONFLICTS]]
            if len(self.others) > SHOWN_CONFLICTS:
                out.append(f"  … and {len(self.others) - SHOWN_CONFLICTS:,} more")
        if self.dry_run:
            out.append("dry run: nothing was moved")
        return out


def _moved_there(output: str) -> None:
    """Refuse a folder that no ``--link-mode move`` filled: its images never left their places."""
    state = saved_state(output)
    if state is None:
        raise SetupError(f"{output} holds no output of cluster_faces (no readable {STATE_FILE})")
    if (mode := state.get("mode")) != "move":
        raise SetupError(f"{output} was filled with --link-mode {mode}: the images never left where they were "
                         "embedded, so there is nothing to put back (removing the folder removes the "
                         f"{'copies' if mode == 'copy' else 'links'})")


def undo_move(output: str, *, dry_run: bool = False, progress: bool = True,
              rewrite: tuple[str, str] | None = None) -> UndoReport:
    """Move every image of ``output`` (a ``cluster_faces --link-mode move`` output) back to the
    path it was embedded at, under ``rewrite``'s new folder instead of its old one where given;
    see the module's description."""
    output = os.path.abspath(output)
    _moved_there(output)
    if rewrite is not None:
        rewrite = folder_prefix(rewrite[0]), folder_prefix(rewrite[1])
    report = UndoReport(output, dry_run=dry_run, rewrite=rewrite)
    moved = relocate.moved_locations([output], option="")  # the command's own argument: no option
    if rewrite is not None:
        renamed = renaming(sorted(moved), *rewrite, "of the output")
        moved = {renamed[p]: files for p, files in moved.items()}
    folders: set[str] = set()
    for path, files in progress_bar(sorted(moved.items()), unit="img", enabled=progress, desc="undo"):
        here = [f for f in files if os.path.lexists(f)]
        back = os.path.lexists(path)
        if not back:
            if not here:
                report.gone += 1
                continue
            if not os.path.isdir(os.path.dirname(path)):  # a move leaves its emptied folders where they were
                report.no_folder.append((path, here[0]))
                continue
            report.restored += 1
            if dry_run:
                report.copies_removed += len(here) - 1
                continue
            place(here[0], path, "move", folders=folders)
            here = here[1:]
        conflicts = len(report.conflicts)
        for copy in here:
            if os.path.isfile(path) and same_bytes(path, copy):
                report.copies_removed += 1
                if not dry_run:
                    os.unlink(copy)
            else:
                report.conflicts.append((path, copy))
        if back and len(report.conflicts) == conflicts:  # not when a different file is at its path
            report.already_back += 1
    report.others = _other_images(os.path.realpath(output), {file for files in moved.values() for file in files})
    if not dry_run:
        _remove_empty_folders(output)
        if not report.left:
            mark_undone(output)
    return report


def _other_images(output: str, known: set[str]) -> list[str]:
    """The images in ``output``, outside ``previews/``, that are none of the ``known`` files the move
    made: an image dropped where no lookup finds it (a folder made by hand inside another), or one
    added since. They keep the output from counting as emptied, whose removal would lose them."""
    found = []
    for folder, subfolders, files in os.walk(output):
        if folder == output:
            subfolders[:] = [f for f in subfolders if f != "previews"]
        found += [path for name in files if is_image_name(name) and (path := os.path.join(folder, name)) not in known]
    return sorted(found)


def _remove_empty_folders(output: str) -> None:
    """The person folders the images left, once empty (``os.rmdir`` removes nothing else)."""
    for folder, _, _ in sorted(os.walk(output), key=lambda entry: -len(entry[0])):
        if folder != output:
            try:
                os.rmdir(folder)
            except OSError:
                pass  # not empty: a file the move did not make, or one left in place
