"""Run cluster_faces on the two-person collection plus one more embeddings file, and score it."""

from __future__ import annotations

import csv
from pathlib import Path

from face_organizer import embfile
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


def private_copy(two_person, tmp_path: Path) -> embfile.EmbeddingsFile:
    """The two-person collection's embeddings, naming copies of its images under ``tmp_path/input``
    (for placements that move them)."""
    emb, labels, input_root = two_person
    ef = embfile.load(emb)
    private = tmp_path / "input"
    new_paths = []
    for p in ef.rows.paths:
        target = private / Path(p).relative_to(input_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(Path(p).read_bytes())
        new_paths.append(str(target))
    ef.rows.paths = new_paths
    ef.meta["inputs"] = [str(private)]
    return ef


GROUP_PHOTO = "examples__knn_examples__test__obama_and_biden.jpg"


def obama_biden_library(shared: Path, tmp_path: Path) -> Path:
    """A photo library: face_recognition's photos of Obama and of Biden, and one of the two together
    (``_multi_face/GROUP_PHOTO``), copied under ``tmp_path/library``."""
    examples = shared / "datasets" / "face_recognition_examples"
    library = tmp_path / "library"
    for source in [*sorted((examples / "barack_obama").iterdir()), *sorted((examples / "joe_biden").iterdir()),
                   examples / "_multi_face" / GROUP_PHOTO]:
        (library / source.parent.name).mkdir(parents=True, exist_ok=True)
        (library / source.parent.name / source.name).write_bytes(source.read_bytes())
    return library
