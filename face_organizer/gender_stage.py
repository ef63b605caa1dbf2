"""gender_filter as a stage: folders of faces in, the matching gender copied out, with
predictions.csv and a summary."""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


from .embed_run import iter_loaded
from .fsutil import atomic_write_text
from .gender import GenderPrediction
from .organize import LinkMode, place_all
from .progress import bar as progress_bar


class Predictor(Protocol):
    device: str

    def predict(self, items: Sequence[tuple[str, object]]) -> list[GenderPrediction]: ...


@dataclass
class GenderSummary:
    output: str
    gender: str
    matches: int = 0
    non_matches: int = 0
    low_confidence: int = 0
    no_face: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def lines(self) -> list[str]:
        errors = sum(self.errors.values())
        return [
            f"{self.gender}: {self.matches:,} images → {self.output}{os.sep}",
            f"other gender: {self.non_matches:,}; below --min-confidence: {self.low_confidence:,}; "
            f"no face: {self.no_face:,}; errors: {errors:,}"
            + (" (" + "; ".join(f"{r}: {n:,}" for r, n in self.errors.most_common()) + ")" if errors else ""),
        ]


def filter_by_gender(paths: Sequence[str], roots: Sequence[str], output: str, gender: str, predictor: Predictor, *,
                     min_confidence: float = 0.5, link_mode: LinkMode = "copy", workers: int = 0, batch_size: int = 64,
                     progress: bool = True) -> GenderSummary:
    output = os.path.abspath(output)
    summary = GenderSummary(output, gender)
    predictions: list[GenderPrediction] = []
    batch: list[tuple[str, object]] = []
    bar = progress_bar(total=len(paths), unit="img", enabled=progress)

    def flush() -> None:
        predictions.extend(predictor.predict(batch))
        bar.update(len(batch))
        batch.clear()

    for loaded in iter_loaded(list(paths), workers):
        if loaded.image is None:
            predictions.append(GenderPrediction(loaded.path, None, 0.0, None, loaded.reason))
            bar.update(1)
            continue
        batch.append((loaded.path, loaded.image))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    matched = []
    for p in predictions:
        if p.gender is None:
            if p.reason == "no face":
                summary.no_face += 1
            else:
                summary.errors[p.reason or "unknown"] += 1
        elif p.gender != gender:
            summary.non_matches += 1
        elif p.confidence < min_confidence:
            summary.low_confidence += 1
        else:
            matched.append(p.path)
    summary.matches = len(matched)
    placement = place_all(output, matched, ["."] * len(matched), roots, link_mode, progress=progress)
    destination = dict(zip(matched, placement.destinations))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "gender", "confidence", "age", "matched", "reason", "destination"])
    for p in predictions:
        writer.writerow([p.path, p.gender or "", f"{p.confidence:.4f}", "" if p.age is None else f"{p.age:.1f}",
                         int(p.path in destination), p.reason or "", destination.get(p.path, "")])
    atomic_write_text(os.path.join(output, "predictions.csv"), buffer.getvalue())
    return summary
