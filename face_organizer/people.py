"""The people of a finished ``cluster_faces`` run, kept so that later runs can sort new
faces (next year's folder) into the same ``person_A/``, ``person_B/``, … .

A run writes ``people.npy`` (float32 [K, D]: row i is the centre of the i-th person folder,
``person_A`` first) beside ``summary.json``, which records the file, the folders' names, the
cut-off and the model. It is read with ``allow_pickle=False``: plain numbers only.

A folder renamed since (``person_A/`` to ``alice/``) keeps its new name in later runs, and the
faces of a folder emptied into another (two folders of one person made one) go to that one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .clustering import cluster_name
from .errors import SetupError
from .fsutil import atomic_open, missing_path_hint
from .relocate import NOT_A_PERSON, folder_names

PEOPLE_FILE = "people.npy"


@dataclass(frozen=True)
class People:
    folder: str
    centres: NDArray[np.float32]  # (K, D)
    names: list[str]  # the folder of each centre, as it is named now
    cutoff: float
    cutoff_source: str
    recognition: str | None  # the recogniser file that made the embeddings
    method: str


def save(output: str, centres: NDArray[np.float32]) -> str:
    """Write the centres atomically; returns the file name to record in summary.json."""
    with atomic_open(os.path.join(output, PEOPLE_FILE), "wb") as handle:
        np.save(handle, np.ascontiguousarray(centres, np.float32), allow_pickle=False)
    return PEOPLE_FILE


def load(folder: str) -> People:
    """The people of the ``cluster_faces`` output ``folder``, or a ``SetupError`` saying why not."""
    folder = os.path.abspath(folder)
    try:
        with open(os.path.join(folder, "summary.json"), encoding="utf-8") as handle:
            summary = json.load(handle)
    except (OSError, ValueError):
        if not os.path.lexists(folder):
            raise SetupError(f"--people-from {folder}: no such folder{missing_path_hint(folder)}") from None
        raise SetupError(f"--people-from {folder}: no summary.json from a finished cluster_faces run there") from None
    name = summary.get("people_file")
    if not name:
        raise SetupError(f"--people-from {folder}: that run did not keep its people (made before people.npy existed, "
                         "or a dry run); run cluster_faces again into a new folder to get one")
    try:
        centres = np.load(os.path.join(folder, os.path.basename(name)), allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SetupError(f"--people-from {folder}: cannot read {name}: {err}") from None
    if centres.ndim != 2 or centres.dtype.kind != "f":
        raise SetupError(f"--people-from {folder}: {name} is not a (people x embedding size) array")
    cutoff, source = summary.get("similarity_cutoff"), str(summary.get("cutoff_source", ""))
    second = summary.get("second_pass")
    if isinstance(second, dict) and isinstance(second.get("cutoff"), (int, float)):
        # --clusters auto: the edge cut-off compares two faces; the second pass's compares a face
        # with a centre, as assigning to these people does.
        cutoff, source = second["cutoff"], f"second pass, {second.get('cutoff_source', '')}"
    if not isinstance(cutoff, (int, float)):
        raise SetupError(f"--people-from {folder}: summary.json has no similarity_cutoff")
    written = summary.get("people_names") or [cluster_name(i) for i in range(len(centres))]
    if (not isinstance(written, list) or len(written) != len(centres)
            or not all(isinstance(n, str) and n and os.sep not in n and n not in {".", "..", *NOT_A_PERSON}
                       for n in written)):
        raise SetupError(f"--people-from {folder}: summary.json's people_names do not name one folder per person")
    names = folder_names(folder, written, "--people-from")
    return People(folder, centres.astype(np.float32), names, float(cutoff), source,
                  (summary.get("model_files") or {}).get("recognition"), str(summary.get("method", "")))


def check_model(people: People, recognition: str | None, dim: int) -> None:
    """Refuse embeddings of another model: their similarities to these centres mean nothing."""
    theirs = (people.recognition, people.centres.shape[1])
    if theirs != (recognition, dim):
        raise SetupError(f"--people-from {people.folder} was sorted with {theirs[0]} ({theirs[1]}-d embeddings); these "
                         f"embeddings are from {recognition} ({dim}-d): re-embed with the same model pack")
