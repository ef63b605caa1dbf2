"""Scores used by the evaluation scripts and tests: ROC AUC, pairwise and BCubed metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.stats import rankdata


def roc_auc(scores: NDArray[np.floating], positive: NDArray[np.bool_]) -> float:
    """Area under the ROC curve (Mann-Whitney U): the chance a positive outscores a negative."""
    positive = np.asarray(positive, bool)
    ranks = rankdata(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("need both positive and negative pairs")
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def d_prime(scores: NDArray[np.floating], positive: NDArray[np.bool_]) -> float:
    """How far apart the positives' and negatives' scores lie, in their pooled standard deviations."""
    positive = np.asarray(positive, bool)
    pos, neg = scores[positive], scores[~positive]
    return float((pos.mean() - neg.mean()) / np.sqrt((pos.var() + neg.var()) / 2))


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float

    @property
    def f(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


Labels = Sequence[object] | NDArray[np.generic]  # one per item: a name, a number, a folder


def _codes(labels: Labels) -> NDArray[np.int64]:
    array = np.asarray(labels)
    if array.dtype.kind not in "iu":
        array = array.astype(object).astype(str)
    return np.unique(array, return_inverse=True)[1].astype(np.int64).ravel()


def bcubed(truth: Labels, pred: Labels) -> PRF:
    """BCubed precision/recall: per item, the share of its predicted cluster that shares its
    true label, and the share of its true class that shares its predicted cluster."""
    t, p = _codes(truth), _codes(pred)
    if len(t) == 0:
        return PRF(1.0, 1.0)
    joint = np.unique(t * (p.max() + 1) + p, return_inverse=True, return_counts=True)
    both = joint[2][joint[1]]
    pred_size = np.bincount(p)[p]
    true_size = np.bincount(t)[t]
    return PRF(float(np.mean(both / pred_size)), float(np.mean(both / true_size)))


def pairwise(truth: Labels, pred: Labels) -> PRF:
    """Pairwise precision/recall over all pairs of items, computed from cluster sizes."""
    t, p = _codes(truth), _codes(pred)
    joint = np.unique(t * (p.max() + 1 if len(p) else 1) + p, return_counts=True)[1]

    def pairs(counts: NDArray) -> float:
        return float((counts * (counts - 1) / 2).sum())

    tp = pairs(joint)
    pred_pairs, true_pairs = pairs(np.bincount(p)), pairs(np.bincount(t))
    return PRF(tp / pred_pairs if pred_pairs else 1.0, tp / true_pairs if true_pairs else 1.0)


@dataclass(frozen=True)
class FolderReport:
    """How two-person folders came out: purity and recall per person folder, and the
    share of strangers and junk kept out of the person folders."""

    purity: dict[str, float]
    recall: dict[str, float]
    folder_of: dict[str, str]
    strangers_out: float
    junk_out: float

    def lines(self) -> list[str]:
        out = [f"{folder}: {person}, purity {self.purity[folder]:.4f}, recall {self.recall[folder]:.4f}"
               for person, folder in self.folder_of.items()]
        out.append(f"strangers in outliers/: {self.strangers_out:.3f}; junk in outliers/: {self.junk_out:.3f}")
        return out


def folder_report(truth: Sequence[str], folders: Sequence[str], people: Sequence[str]) -> FolderReport:
    """``truth``: identity, 'stranger:…' or 'junk' per image; ``folders``: cluster per image."""
    t, f = np.asarray(truth, dtype=object), np.asarray(folders, dtype=object)
    purity, recall, folder_of = {}, {}, {}
    for person in people:
        mine = t == person
        names, counts = np.unique(f[mine & (f != "outliers")], return_counts=True)
        folder = str(names[np.argmax(counts)]) if len(names) else "outliers"
        folder_of[person] = folder
        in_folder = f == folder
        purity[folder] = float((t[in_folder] == person).mean()) if in_folder.any() else 0.0
        recall[folder] = float((in_folder & mine).sum() / max(1, mine.sum()))
    strangers = np.array([str(x).startswith("stranger:") for x in t])
    junk = t == "junk"
    return FolderReport(purity, recall, folder_of,
                        float((f[strangers] == "outliers").mean()) if strangers.any() else 1.0,
                        float((f[junk] == "outliers").mean()) if junk.any() else 1.0)


def largest_face_rows(paths: Sequence[str], bbox: NDArray[np.floating]) -> NDArray[np.intp]:
    """The row of each image's largest face (photos mode: a labelled photo's largest face is the
    person it is labelled with), in row order."""
    area = (bbox[:, 2] - bbox[:, 0]) * (bbox[:, 3] - bbox[:, 1])
    largest: dict[str, int] = {}
    for i, path in enumerate(paths):
        if path not in largest or area[i] > area[largest[path]]:
            largest[path] = i
    return np.array(sorted(largest.values()), np.intp)
