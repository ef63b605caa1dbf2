"""Run cluster_faces on the two-person collection plus one more embeddings file, and score it."""

from __future__ import annotations

import csv
from pathlib import Path

from face_organizer.cli import common
from face_organizer.cli.cluster import main as cluster_main
from face_organizer.evaluation import FolderReport, folder_report

PEOPLE = ("Tony_Blair", "Donald_Rumsfeld")


def cluster_with(two_person, extra: tuple[Path, list[str]], label: str, out: Path,
                 *args: str) -> tuple[dict[str, dict[str, str]], FolderReport]:
    """``clusters.csv`` rows by path, and the folder report, where every face of ``extra``
    counts as ``label``."""
    emb, labels, _ = two_person
    labels = {**labels, **{p: label for p in extra[1]}}
    assert common.run(cluster_main, ["--embeddings", str(emb), str(extra[0]), "--output", str(out), "-q",
                                     "--no-previews", *args]) == 0
    rows = list(csv.DictReader(open(out / "clusters.csv", newline="", encoding="utf-8")))
    report = folder_report([labels[r["path"]] for r in rows], [r["cluster"] for r in rows], PEOPLE)
    return {r["path"]: r for r in rows}, report
