"""What a ``generate_embeddings`` run would do, told without loading a model or writing a file (``--dry-run``):
over half a million images on GPUs, a user checks what a re-run after a new year folder, or one after an
interruption, will embed before starting it.

The images are counted the way the run counts them (``embed_run.read_state``, ``embed_run.go_on_from``), with
one difference: the run finds an image embedded before under another path by the digest of its bytes, and
gives it that image's rows, which takes reading every new image; the plan counts only those moved since (a
folder renamed: ``moves.follow_moves``; or named through a linked folder: ``moves.reached_elsewhere``), and
counts other copies as images to embed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .embed_run import check_compatible, go_on_from, gone_lines, read_state
from .embfile import check_replaceable, parts_dir
from .faces import EmbedOptions
from .fsutil import lock_holder
from .moves import follow_moves, reached_elsewhere
from .progress import count


HEADER = "dry run: nothing was embedded or written"


@dataclass
class RunPlan:
    output: str
    resume: bool
    total_images: int
    already_done: int = 0  # embedded before, unchanged since: left as they are
    changed: int = 0  # embedded before, rewritten since: embedded again
    turned_again: int = 0  # photos without a face before, not tried turned then: embedded again (--turn-faceless)
    retried: int = 0  # failed before: tried again
    not_found: int = 0  # held in the file, not under the inputs now: kept
    failures_gone: int = 0  # failed before, deleted since: no longer listed as failed
    moved: int = 0  # at a new path, gone from the one the file holds (``follow_moves``): its rows kept
    faces_in_file: int = 0  # the finished file's rows and its checkpoint parts', as the run would read them
    parts: int = 0  # checkpoint parts of an interrupted run, merged into the file by the run
    exists: bool = False  # a file or checkpoint parts are there
    writer: int | None = None  # pid of a run writing the file now

    @property
    def to_embed(self) -> int:
        return self.total_images - self.already_done - self.moved

    def file_line(self) -> str:
        if not self.exists:
            held = "new"
        elif not self.resume:
            held = "replaced (--no-resume), with any checkpoint parts beside it"
        elif self.parts:
            held = (f"{count(self.faces_in_file, 'face')} so far, and {count(self.parts, 'checkpoint part')} beside "
                    "it that the run would merge into it")
        else:
            held = count(self.faces_in_file, "face")
        return (f"embeddings file: {self.output}: {held}"
                + (f"; another run is writing it now (pid {self.writer}), so this command would stop at once: run "
                   "it once that one has ended (counted here: what that run had checkpointed)" if self.writer else ""))

    def lines(self) -> list[str]:
        """What the run would do, after ``HEADER``."""
        new = self.to_embed - self.changed - self.retried - self.turned_again
        kinds = [f"new: {new:,}", f"changed since embedded: {self.changed:,}",
                 f"failed before, tried again: {self.retried:,}",
                 *([f"without a face before, tried turned: {self.turned_again:,}"] if self.turned_again else [])]
        return [
            self.file_line(),
            f"images found: {self.total_images:,}; already embedded: {self.already_done:,}",
            f"to embed: {count(self.to_embed, 'image')}"
            + (f" ({'; '.join(kinds)})" if self.changed or self.retried or self.turned_again else ""),
            *gone_lines(self.not_found, self.failures_gone),
            *([f"moved since embedded, or named through a linked folder now (the same name and size at a new path "
               f"under the inputs, and the old path gone or the same file): {count(self.moved, 'image')}; they would "
               "keep their rows, read but not embedded again, and the file would name them where they are now"]
              if self.moved else []),
        ]


def plan_run(paths: Sequence[str], output: str | os.PathLike[str], recogniser: str,
             options: EmbedOptions = EmbedOptions(), *, resume: bool = True) -> RunPlan:
    """What ``run_embeddings`` over ``paths`` into ``output`` with the recogniser file ``recogniser`` would
    embed; reads the file and its checkpoint parts, and stats the images embedded before. Refuses
    (``SetupError``) a file the run would refuse: of another recogniser or mode."""
    out = Path(output).absolute()
    plan = RunPlan(str(out), resume, len(paths), exists=out.exists() or parts_dir(out).is_dir(),
                   writer=lock_holder(out))
    if not resume:
        check_replaceable(out)
    if not resume or not plan.exists:
        return plan
    state = read_state(out, check=lambda meta, where: check_compatible(meta, recogniser, options.mode, where))
    plan.faces_in_file = sum(len(r) for r in state.rows)
    plan.parts = state.parts_read
    _, changed, again = go_on_from(state, paths, options)
    done = state.done()
    todo = [p for p in paths if p not in done]
    plan.already_done = len(paths) - len(todo)
    plan.changed = len(changed)
    plan.turned_again = len(again)
    plan.retried = sum(p in state.failed and p not in changed for p in todo)
    # As the run drops the old path of an image it finds at a new one, where its file has the image's digest.
    new = [p for p in todo if p not in state.held and p not in state.failed]
    known = {p: signature for p in state.held.difference(paths)
             if p in state.digests and (signature := state.signatures.get(p)) is not None}
    there = {p for p in known if os.path.lexists(p)}
    gone = {p: signature for p, signature in known.items() if p not in there}
    gone.update((p, known[p]) for p in reached_elsewhere(there, new))  # found now through a linked folder
    moved = follow_moves(gone, new)
    plan.moved = len(moved)
    plan.not_found = len(state.held.difference(paths)) - len(set(moved.values()))
    plan.failures_gone = len(state.failures_gone)
    return plan
