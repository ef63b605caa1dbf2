"""What the benchmark scripts share: where ``../shared`` is, the testpack models on the CPU, the
datasets' labels, and embedded collections of labelled photos and video-style crops."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from face_organizer import embfile  # noqa: E402
from face_organizer.embed_run import plan_streams, run_embeddings  # noqa: E402
from face_organizer.faces import FaceModels, load_face_models  # noqa: E402
from face_organizer.images import discover_images  # noqa: E402
from face_organizer.modelpack import resolve_pack  # noqa: E402
from face_organizer.samples import LabelledImage, two_person_collection  # noqa: E402
from face_organizer.thresholds import CALIBRATION_ENV  # noqa: E402

DEFAULT_SHARED = str(Path(__file__).resolve().parents[2] / "shared")


def add_shared_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shared", default=os.environ.get("FACE_ORGANIZER_SHARED", DEFAULT_SHARED),
                        help="the shared models and datasets (default: $FACE_ORGANIZER_SHARED, else ../shared)")


def testpack_streams(shared: Path) -> tuple[FaceModels, int]:
    """The testpack's models on the CPU, threaded for as many embedding streams as suit this machine."""
    streams, threads = plan_streams(True)
    return load_face_models(resolve_pack(str(shared / "models" / "testpack")), "cpu", 0, threads=threads), streams


def lfw_testpack(shared_arg: str) -> tuple[Path, Path, FaceModels, int]:
    """For the evaluations on LFW dev: warnings only on stderr, then the shared folder, LFW dev in
    it, and the testpack's models with their number of streams. A calibration the user stored
    (``search_faces.py --calibrate``) is set aside: the evaluations measure the cut-offs the data gives,
    as README reports them (one that measures a calibration names its own file)."""
    logging.basicConfig(level=logging.WARNING)
    os.environ[CALIBRATION_ENV] = os.path.join(tempfile.gettempdir(), f"face-organizer-eval-{os.getpid()}-none.json")
    shared = Path(shared_arg)
    return (shared, shared / "datasets" / "lfw_dev", *testpack_streams(shared))


def embedded_collection(lfw: Path, root: Path, models: FaceModels, streams: int, people: tuple[str, ...],
                        **kwargs: Any) -> tuple[list[LabelledImage], embfile.EmbeddingsFile, dict[str, str]]:
    """``samples.two_person_collection`` of ``people`` written under ``root/input`` and embedded into
    ``root/embeddings.pkl``: its items, the loaded file, and each image path's label."""
    items = two_person_collection(lfw, root / "input", models.detector, people, **kwargs)
    run_embeddings([str(i.path) for i in items], root / "embeddings.pkl", models, inputs=[str(root / "input")],
                   streams=streams, progress=False)
    return items, embfile.load(root / "embeddings.pkl"), {str(i.path): i.label for i in items}


def read_labels(folder: Path) -> list[dict[str, str]]:
    """A shared dataset's ``labels.csv``: one row per image, ``path`` relative to ``folder``."""
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def embedded_photos(folder: Path, out: Path, models: FaceModels, streams: int) -> tuple[embfile.EmbeddingsFile, list[str]]:
    """Every image of a labelled dataset (LFW dev) embedded into ``out``: the loaded file and
    each row's identity."""
    run_embeddings(discover_images([folder]), out, models, inputs=[str(folder)], streams=streams, progress=False)
    ef = embfile.load(out)
    identity = {str((folder / r["path"]).absolute()): r["identity"] for r in read_labels(folder)}
    return ef, [identity[p] for p in ef.rows.paths]


def alternating_speeds(paths: list[str], ways: dict[str, Any], models: FaceModels, streams: int, rounds: int,
                       folder: Path) -> dict[str, list[float]]:
    """Images/s of ``run_embeddings`` over ``paths`` with each of ``ways`` (name: ``EmbedOptions``), the ways
    alternating in each of ``rounds`` so that a machine's drifting speed slows them alike; way n writes
    ``folder/way<n>.pkl`` anew each round (the last round's files stay)."""
    speeds: dict[str, list[float]] = {name: [] for name in ways}
    for round_ in range(rounds):
        for way, (name, options) in enumerate(ways.items()):
            started = time.perf_counter()
            run_embeddings(paths, folder / f"way{way}.pkl", models, options, streams=streams, resume=False,
                           progress=False)
            speeds[name].append(len(paths) / (time.perf_counter() - started))
            print(f"round {round_ + 1}: {name}: {speeds[name][-1]:.1f} images/s", flush=True)
    return speeds


def speeds_line(speeds: dict[str, list[float]]) -> str:
    """``name median (rounds a, b, c); …``"""
    return "; ".join(f"{name} {statistics.median(s):.1f} (rounds {', '.join(f'{v:.1f}' for v in s)})"
                     for name, s in speeds.items())
