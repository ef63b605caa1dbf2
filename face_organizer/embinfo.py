"""What an embeddings file holds, and how far the run writing it has got.

Reads the finished file and its checkpoint parts the way a re-run would (``embed_run.read_state``),
so an interrupted or still-running ``generate_embeddings`` can be looked at without touching it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .embed_run import photo_way, photo_ways_before, read_state
from .embfile import UNTRIED_KEY, parts_dir
from .errors import SetupError
from .faces import EmbedOptions
from .fsutil import lock_holder
from .progress import count
from .rebase import guess_move, near, spread

LOOKED_FOR = 20  # images looked for at their paths, spread over the file (a NAS answers slowly)


@dataclass
class EmbeddingsInfo:
    path: str
    meta: dict[str, Any]
    images: int  # images with rows, or photos without a face
    faces: int
    fallback: int  # crops mode: rows whose face was not detected (centre crop used)
    no_face: int  # photos mode: images without a face
    reused: int
    skipped: Counter[str] = field(default_factory=Counter)
    finished: bool = False  # the file exists, says its run finished, and no checkpoint part waits beside it
    parts: int = 0
    unreadable_parts: list[str] = field(default_factory=list)
    writer: int | None = None  # pid of the process holding the output's lock, if it is alive
    held: frozenset[str] = frozenset()  # its images (for a total over several files)
    looked: int = 0  # images looked for at their paths, spread over the file
    absent: int = 0  # of those, the ones not there now
    guess: tuple[str, str] | None = None  # --from and --to that find them, where all were absent
    dim: int | None = None  # the embeddings' length, where the file holds any

    def status(self) -> str:
        if self.writer is not None:
            return f"being written now (pid {self.writer})"
        if self.finished:
            return "finished"
        if self.meta.get("complete") is False and not self.parts and not self.unreadable_parts:
            # a file that its checkpoints were taken into (rebase_embeddings.py)
            return ("interrupted: the file holds what its run had embedded; run generate_embeddings over its inputs "
                    "again to continue")
        return (f"interrupted: {self.parts} checkpoint part(s) beside it; run the same generate_embeddings "
                "command again to continue")

    def lines(self) -> list[str]:
        m = self.meta
        files = m.get("model_files") or {}
        out = [
            f"{self.path}: {self.status()}",
            f"  model: {m.get('model_pack', '?')} ({files.get('recognition', '?')}, "
            f"{m.get('embedding_size') or self.dim or '?'}-d), "
            f"{m.get('mode', 'crops')} mode{_decoding(m)}, device {m.get('device', '?')}, run started "
            f"{m.get('created', '?')}"
            + (f", face-organizer {m['tool_version']}" if m.get("tool_version") else ""),
            "  inputs: " + (", ".join(m.get("inputs") or []) or "?"),
            *(["  paths rebased: " + "; ".join(f"{r.get('from')} → {r.get('to')} ({r.get('when')})"
                                               for r in m["rebased"] if isinstance(r, dict))]
              if isinstance(m.get("rebased"), list) and m["rebased"] else []),
            f"  images: {self.images:,}; faces: {self.faces:,}"
            + (f"; fallback (no face found, centre crop used): {self.fallback:,}" if self.fallback else "")
            + (f"; photos without a face: {self.no_face:,}" if self.no_face else "")
            + (f"; near-identical frames reused: {self.reused:,}" if self.reused else ""),
        ]
        skipped = sum(self.skipped.values())
        out.append(f"  skipped: {skipped:,}"
                   + (" (" + "; ".join(f"{r}: {n:,}" for r, n in self.skipped.most_common()) + "); each is tried "
                      "again by the next generate_embeddings run over its input" if skipped else ""))
        if self.absent:
            here = f" --from {self.guess[0]} --to {self.guess[1]}" if self.guess else ""
            out.append(f"  not at their paths now: {self.absent:,} of {count(self.looked, 'image')} looked for "
                       "(deleted; put in person folders by --link-mode move, which --moved-to follows; or their "
                       f"folders moved: rebase_embeddings.py{here})")
        out += [f"  unreadable checkpoint part (ignored): {p}" for p in self.unreadable_parts]
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "status": self.status(), "finished": self.finished, "writer_pid": self.writer,
                "checkpoint_parts": self.parts, "images": self.images, "faces": self.faces,
                "fallback": self.fallback, "no_face": self.no_face, "reused": self.reused,
                "skipped": dict(self.skipped), "unreadable_parts": self.unreadable_parts,
                "looked_for": self.looked, "not_at_their_paths": self.absent, "meta": self.meta}


def describe(path: str | os.PathLike[str]) -> EmbeddingsInfo:
    """Raises ``SetupError`` when there is neither a file nor a checkpoint at ``path``,
    ``EmbeddingsFileError`` when the file cannot be read."""
    output = Path(os.path.abspath(path))
    if not output.exists() and not parts_dir(output).is_dir():
        raise SetupError(f"{path}: no embeddings file and no checkpoint of one there")
    state = read_state(output)
    meta = dict(state.meta or {})
    held = sorted(state.held)
    sample = spread(held, LOOKED_FOR)
    absent = sum(not os.path.lexists(p) for p in sample)
    crops = meta.get("mode", "crops") == "crops"
    return EmbeddingsInfo(
        path=str(output),
        meta=meta,
        images=len(state.held),
        faces=sum(len(r) for r in state.rows),
        fallback=sum(int((~r.detected).sum()) for r in state.rows) if crops else 0,
        no_face=len(state.no_face),
        reused=len(state.reused),
        skipped=Counter(reason for p, reason in state.failed.items() if p not in state.held),
        finished=(output.exists() and state.parts_read == 0 and not state.unreadable_parts
                  and meta.get("complete") is not False),
        parts=state.parts_read,
        unreadable_parts=state.unreadable_parts,
        writer=lock_holder(output),
        held=frozenset(state.held),
        looked=len(sample),
        absent=absent,
        guess=guess_move(held, near(str(output))) if sample and absent == len(sample) else None,
        dim=next((int(r.embeddings.shape[1]) for r in state.rows if len(r)), None),
    )


def total_lines(infos: list[EmbeddingsInfo]) -> list[str]:
    """One line over several files (one per GPU): their images, each counted once, and faces."""
    seen: set[str] = set()
    both: set[str] = set()  # images held by more than one file
    for i in infos:
        both |= seen & i.held
        seen |= i.held
    images, both_count = len(seen), len(both)
    return [f"total over {len(infos)} files: {images:,} images"
            + (f" ({both_count:,} of them in more than one file, counted once)" if both_count
               else f"; faces: {sum(i.faces for i in infos):,}")
            + f"; skipped: {sum(sum(i.skipped.values()) for i in infos):,}"]


def _decoding(meta: dict) -> str:
    """How a photos-mode run detected and decoded photos, where its file says (``EmbedOptions.photo_det_size``,
    ``photo_min_side``)."""
    side, size = meta.get("photo_min_side"), meta.get("photo_det_size")
    if not isinstance(side, int) or meta.get("mode") != "photos":
        return ""
    detected = f"detected at {size:,} pixels, " if isinstance(size, int) and size != EmbedOptions.photo_det_size else ""
    before = photo_ways_before(meta)
    earlier = ("; images embedded before by other settings: "
               + "; ".join(photo_way(w["photo_det_size"], w["photo_min_side"]) for w in before) if before else "")
    faceless = meta.get("photo_turn_faceless") is True
    untried = meta.get(UNTRIED_KEY)
    left = (f"; {count(len(untried), 'photo')} without a face from a run without it not tried turned, not under its "
            "inputs" if isinstance(untried, list) and untried else "")
    turned = f", photos without a face upright tried turned (--turn-faceless{left})" if faceless else ""
    if not side:
        return f" ({detected}JPEGs decoded whole{turned}{earlier})"
    again = meta.get("photo_face_pixels")
    faces = f", again for faces under {again:,} pixels" if isinstance(again, int) and again > 0 else ""
    return f" ({detected}large JPEGs decoded shrunk to {side:,} pixels or more{faces}{turned}{earlier})"
