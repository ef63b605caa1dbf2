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
two (asked for two folders, given one person's frames) from two people. Folders join into one
person as the graph's groups do, only while their faces are alike on average: with many small
folders, one alike pair of faces across two people's folders would otherwise chain the two
people together.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix

from .thresholds import (ALIKE_Z, IMPOSTOR_CENTRE_MAX, PAIR_Z, ImpostorModel, impostor_from_cross_cluster_pairs,
                         impostor_model)

BLOCK = 16_384
SCALE_PAIRS = 50_000  # random pairs to read the impostor scale from: its centre to about 0.001
MERGE_MIN_GROUP = 3  # groups of fewer faces join by their edge alone (see join_groups)
# A folder holds a group of alike faces when the group has this share of its faces (of a sample): a folder is
# one person when one person has 90% of its faces (``benchmarks/eval_folder_check.py``).
MIXED_SHARE = 0.1


@dataclass(frozen=True)
class Cohesion:
    """``mean_pair``: (k,) mean similarity of each cluster's pairs of faces (NaN below two
    faces); ``cross_mean``: (k, k) mean similarity of the pairs across two clusters;
    ``sizes``: (k,) faces per cluster; ``groups``: clusters that look like one person split
    over several folders, two or more to a group (see ``one_person_groups``); ``cutoff``: the
    mean that one person's faces reach, ``source``: where its scale came from."""

    mean_pair: NDArray[np.float32]
    cross_mean: NDArray[np.float32]
    sizes: NDArray[np.int64]
    groups: tuple[tuple[int, ...], ...]
    cutoff: float
    source: str
    # Folders that hold several groups of alike faces (``mixed_folders``): (folder, each group's faces of the sample)
    mixed: tuple[tuple[int, tuple[int, ...]], ...] = ()

    @property
    def not_alike(self) -> tuple[int, ...]:
        """Clusters whose faces are on average no more alike than different people's."""
        return tuple(int(c) for c in np.nonzero(self.mean_pair < self.cutoff)[0])

    @property
    def not_one_person(self) -> tuple[int, ...]:
        """Clusters that are not one person: not alike on average, or holding several groups of alike faces."""
        return tuple(sorted({*self.not_alike, *(c for c, _ in self.mixed)}))

    @property
    def same_person(self) -> tuple[tuple[int, int], ...]:
        """Pairs of clusters (i < j) in the same group: one person split over two folders."""
        return tuple(sorted(pair for group in self.groups for pair in combinations(group, 2)))

    def across(self, group: tuple[int, ...]) -> float:
        """Mean similarity of the pairs of faces in different clusters of ``group``."""
        pairs = [(self.sizes[i] * self.sizes[j], self.cross_mean[i, j]) for i, j in combinations(group, 2)]
        return float(sum(float(w) * float(m) for w, m in pairs) / sum(float(w) for w, _ in pairs))

    @property
    def people(self) -> int:
        """How many people the clusters that are one person hold, each group counted once."""
        one = int((self.sizes > 0).sum()) - len(self.not_one_person)
        return one - sum(len(g) - 1 for g in self.groups)

    @property
    def person(self) -> NDArray[np.int64]:
        """For each cluster, the first cluster of its group (itself when in none)."""
        return person_of(self.groups, len(self.mean_pair))


def mixed_folders(folder: NDArray[np.int64], group: NDArray[np.int64], k: int,
                  smallest: int) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The folders among ``k`` that hold two or more groups of alike faces, each of at least ``smallest`` faces
    and ``MIXED_SHARE`` of the folder's: ``folder`` and ``group`` give each face's (of a sample; -1: none).
    Returns (folder, the faces of each such group there, largest first).

    The mean similarity of a folder's pairs tells a folder of many different people, but not one of a few
    people each seen many times, which k-means puts together when asked for fewer folders than there are
    people, as it gathers faces alike to one centre: LFW dev's people with five photos or more in ten folders
    gave folders of two or three people of 5-10 photos each whose mean pair similarities (0.287-0.344) passed
    as one person's (0.272). The graph of a sample sees each person as a group."""
    counts = group_counts(folder, group, k)
    faces = np.bincount(folder[folder >= 0], minlength=k)
    out = []
    for c in range(k):
        held = sorted((int(m) for m in counts[c] if m >= max(smallest, MIXED_SHARE * faces[c])), reverse=True)
        if len(held) >= 2:
            out.append((c, tuple(held)))
    return tuple(out)


def group_counts(folder: NDArray[np.int64], group: NDArray[np.int64], k: int) -> NDArray[np.int64]:
    """(k, groups): how many faces of each group each of ``k`` folders holds, from each face's folder and
    group (of a sample; -1: none)."""
    both = (folder >= 0) & (group >= 0)
    n_groups = int(group.max()) + 1 if both.any() else 0
    return np.bincount(folder[both] * n_groups + group[both], minlength=k * n_groups).reshape(k, n_groups)


def person_of(groups: tuple[tuple[int, ...], ...], k: int) -> NDArray[np.int64]:
    """For each of ``k`` clusters, the first cluster of the group it is in (itself when in none)."""
    person = np.arange(k)
    for group in groups:
        person[list(group)] = group[0]
    return person


def join_groups(x: NDArray[np.floating], src: NDArray[np.int64], dst: NDArray[np.int64],
                weight: NDArray[np.floating], min_mean: float,
                sizes: NDArray[np.int64] | None = None) -> tuple[NDArray[np.int64], int]:
    """Groups of the graph's edges, most similar edge first, where an edge joins two groups
    only when the mean similarity of all pairs across them (the dot product of their mean
    embeddings) is at least ``min_mean``. Returns each face's group (a member's row) and how
    many edges were refused.

    Plain connected components let any edge join two groups. A face collection holds many
    near-copies (a video shot, the same photo cropped twice), so every face of a look-alike
    pair is a core face, and one such pair of shots joins two people, then a third: LFW dev
    as shots of five occluded crops fell to BCubed precision 0.84 (Tony Blair's cluster took
    in David Beckham, John Snow and others; ``benchmarks/eval_clustering.py --frames 5``),
    against 0.98 with this rule. Across two people the mean over all pairs stays near the impostor
    centre however alike one pair is, while within one person it stays near the genuine level.

    A group of one or two faces is judged by its edge alone: the mean of so few is as noisy
    as one pair, and two of a person's harder faces can be alike to each other but not, on
    average, to the rest of him. Judged by their mean, such pairs became extra folders of 2-5
    faces and starved the second pass (two-person draws with --clusters auto: Tony Blair's
    recall fell from 0.958-0.993 to 0.931-0.972). Group sums are kept only for groups of two
    or more.

    A row may stand for several faces: ``x`` the sum of their unit embeddings, ``sizes`` how
    many (k-means folders joined into people, see ``one_person_groups``); by default one each.
    """
    n = len(x)
    a, b = np.minimum(src, dst), np.maximum(src, dst)
    key, first = np.unique(a * np.int64(n) + b, return_index=True)  # an edge found from both ends once
    order = np.argsort(-weight[first], kind="stable")
    parent = list(range(n))
    size = [1] * n if sizes is None else [int(s) for s in sizes]
    sums: dict[int, NDArray[np.floating]] = {}
    refused = 0

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip((key[order] // n).tolist(), (key[order] % n).tolist()):
        ri, rj = find(i), find(j)
        if ri == rj:
            continue
        si, sj = sums.get(ri, x[ri]), sums.get(rj, x[rj])
        if min(size[ri], size[rj]) >= MERGE_MIN_GROUP and float(si @ sj) < min_mean * size[ri] * size[rj]:
            refused += 1
            continue
        if size[ri] < size[rj]:
            ri, rj, si, sj = rj, ri, sj, si
        parent[rj] = ri
        size[ri] += size[rj]
        sums[ri] = si + sj
        sums.pop(rj, None)
    return np.fromiter((find(i) for i in range(n)), np.int64, n), refused


def folder_cohesion(x: NDArray[np.float32], labels: NDArray[np.int64], k: int, *, seed: int = 0,
                    random_pairs: ImpostorModel | None = None) -> Cohesion:
    """Mean pair similarities within and across the ``k`` clusters, from each cluster's sum
    of unit rows (|sum|^2 = n + 2 x the sum over its pairs): O(n d), no pairs are formed.

    The cut-off lies ``ALIKE_Z`` impostor spreads up, the scale read from random pairs of
    faces in different clusters, or, when those centre above ``IMPOSTOR_CENTRE_MAX`` (one
    person split over the clusters) or there is one cluster, from the impostor peak of
    random pairs of all faces (``random_pairs`` when the caller has it already). Clusters that
    look like one person by the lower of the two cut-offs are taken as one cluster before the
    scale is read again, so that one person's pairs across their folders do not widen it."""
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
    random = random_pairs or impostor_model(x, seed=seed)

    def scale(lab: NDArray[np.int64], what: str) -> tuple[ImpostorModel, str]:
        model = impostor_from_cross_cluster_pairs(x, lab, seed=seed, pairs=SCALE_PAIRS) if k >= 2 else None
        if model is not None and model.centre <= IMPOSTOR_CENTRE_MAX:
            return model, what
        return random, "impostor peak of random pairs of faces"

    model, what = scale(labels, "similarity of faces in different folders")
    if k >= 2:
        # Pairs of one person's faces in two folders are no impostor pairs, and a person split
        # over folders spreads the scale of pairs across folders up to where the person's own
        # folders no longer look like one person. Folders that look like one person by the lower
        # of that scale and random pairs' impostor peak are taken as one, and the scale is read
        # again from the pairs across the others.
        lower = min((model, random), key=lambda m: m.cut(ALIKE_Z))
        groups = one_person_groups(sums, n.astype(np.int64), mean < lower.cut(ALIKE_Z), cross, lower)
        if groups:
            person = person_of(groups, k)
            model, what = scale(np.where(labels >= 0, person[np.maximum(labels, 0)], -1),
                                "similarity of faces in different folders, those that look like one person taken as one")
    cutoff = model.cut(ALIKE_Z)
    groups = one_person_groups(sums, n.astype(np.int64), mean < cutoff, cross, model)
    return Cohesion(mean.astype(np.float32), cross.astype(np.float32), n.astype(np.int64), groups, cutoff,
                    model.describe(what, ALIKE_Z))


def one_person_groups(sums: NDArray[np.floating], sizes: NDArray[np.int64], not_alike: NDArray[np.bool_],
                      cross: NDArray[np.floating], scale: ImpostorModel) -> tuple[tuple[int, ...], ...]:
    """Clusters joined into people as the graph's groups are (``join_groups``): pairs of
    clusters whose faces are on average alike across (``cross`` at least ``ALIKE_Z`` spreads up
    ``scale``), most alike first, join unless both groups hold ``MERGE_MIN_GROUP`` faces or more
    and are not alike on average over all their pairs. Pair by pair, with many small clusters (a
    face each), one alike pair of faces across two people would chain them into one. Across
    clusters so small that fewer than four pairs of faces cross them, the mean needs
    ``PAIR_Z / sqrt(pairs)`` spreads: across two single faces it is one pair, and 2.5 spreads let
    0.6% of impostor pairs through, which chained 35 folders of UTKFace's different people (500
    crops in 500 folders) into one "person". A cluster that is not one person (``not_alike``)
    joins none. Returns the groups of two or more clusters."""
    eligible = (sizes > 0) & ~not_alike
    cutoff = scale.cut(ALIKE_Z)
    pairs = np.maximum(np.outer(sizes, sizes), 1).astype(np.float64)  # of faces across two clusters
    needed = scale.centre + np.maximum(ALIKE_Z, PAIR_Z / np.sqrt(pairs)) * scale.spread
    alike = np.triu(np.nan_to_num(cross, nan=-np.inf) >= needed, 1) & np.outer(eligible, eligible)
    src, dst = np.nonzero(alike)
    if not src.size:
        return ()
    group, _ = join_groups(sums, src.astype(np.int64), dst.astype(np.int64), cross[src, dst], cutoff, sizes)
    members: dict[int, list[int]] = {}
    for cluster, root in enumerate(group.tolist()):
        members.setdefault(root, []).append(cluster)
    return tuple(sorted(tuple(m) for m in members.values() if len(m) > 1))
