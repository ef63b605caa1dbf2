"""Does a folder hold one person? The mean similarity of its faces' pairs, judged on the
impostor scale.

k-means fills the number of folders it is asked for, whatever the collection holds: two
folders from a collection of many different people, or a second folder of strangers when
one person is there. Such a folder looks like a person's but is not. Within one person,
the mean similarity over all pairs of faces stays near the genuine level (0.38-0.60 for
the 128-d testpack model on occluded video crops, about 4-5 impostor spreads above the
impostor centre); in a folder of different people it stays near the impostor centre
(0.06-0.22, about 1 spread), however alike a few of its pairs are
(``benchmarks/eval_folder_check.py``). ``ALIKE_Z`` lies between the two, and
is the same rule by which the graph of ``--clusters auto`` lets two groups join. Across two
folders, the mean over the pairs of their faces tells, by the same rule, one person split in
two (asked for two folders, given one person's frames) from two people.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

from .thresholds import ALIKE_Z, IMPOSTOR_CENTRE_MAX, ImpostorModel, impostor_from_cross_cluster_pairs, impostor_model

BLOCK = 16_384
SCALE_PAIRS = 50_000  # random pairs to read the impostor scale from: its centre to about 0.001


@dataclass(frozen=True)
class Cohesion:
    """``mean_pair``: (k,) mean similarity of each cluster's pairs of faces (NaN below two
    faces); ``cross_mean``: (k, k) mean similarity of the pairs across two clusters;
    ``cutoff``: the mean that one person's faces reach, ``source``: where its scale came from."""

    mean_pair: NDArray[np.float32]
    cross_mean: NDArray[np.float32]
    cutoff: float
    source: str

    @property
    def not_alike(self) -> tuple[int, ...]:
        """Clusters whose faces are on average no more alike than different people's."""
        return tuple(int(c) for c in np.nonzero(self.mean_pair < self.cutoff)[0])

    @property
    def same_person(self) -> tuple[tuple[int, int], ...]:
        """Pairs of clusters (i < j) whose faces are on average as alike across the two as one
        person's: one person split over two folders."""
        i, j = np.nonzero(np.triu(self.cross_mean >= self.cutoff, 1))
        return tuple(zip(i.tolist(), j.tolist()))

    @property
    def people(self) -> int:
        """How many people the clusters are, joining the clusters that look like one person."""
        k = len(self.mean_pair)
        if not k:
            return 0
        i, j = np.array(self.same_person, np.int64).reshape(-1, 2).T
        graph = csr_matrix((np.ones(i.size), (i, j)), shape=(k, k))
        return int(connected_components(graph, directed=False)[0])


def folder_cohesion(x: NDArray[np.float32], labels: NDArray[np.int64], k: int, *, seed: int = 0,
                    random_pairs: ImpostorModel | None = None) -> Cohesion:
    """Mean pair similarities within and across the ``k`` clusters, from each cluster's sum
    of unit rows (|sum|^2 = n + 2 x the sum over its pairs): O(n d), no pairs are formed.

    The cut-off lies ``ALIKE_Z`` impostor spreads up, the scale read from random pairs of
    faces in different clusters, or, when those centre above ``IMPOSTOR_CENTRE_MAX`` (one
    person split over the clusters) or there is one cluster, from the impostor peak of
    random pairs of all faces (``random_pairs`` when the caller has it already)."""
    sums = np.zeros((k, x.shape[1]), np.float64)
    for start in range(0, len(x), BLOCK):  # float32 sums of a block, added up in float64
        lab = labels[start:start + BLOCK]
        member = np.nonzero(lab >= 0)[0]
        membership = csr_matrix((np.ones(member.size, np.float32), (lab[member], member)), shape=(k, lab.size))
        sums += membership @ x[start:start + BLOCK]
    n = np.bincount(labels[labels >= 0], minlength=k).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n >= 2, (np.einsum("ij,ij->i", sums, sums) - n) / (n * (n - 1)), np.nan)
        cross = np.where(np.outer(n, n) > 0, (sums @ sums.T) / np.outer(n, n), np.nan)
    model: ImpostorModel | None = None
    if k >= 2:
        model = impostor_from_cross_cluster_pairs(x, labels, seed=seed, pairs=SCALE_PAIRS)
    what = "similarity of faces in different folders"
    if model is None or model.centre > IMPOSTOR_CENTRE_MAX:
        model, what = random_pairs or impostor_model(x, seed=seed), "impostor peak of random pairs of faces"
    return Cohesion(mean.astype(np.float32), cross.astype(np.float32), model.cut(ALIKE_Z), model.describe(what, ALIKE_Z))
