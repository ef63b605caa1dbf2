"""Grouping embeddings into people with FAISS: spherical k-means for a known number
of people, and a density-based graph clustering over a k-nearest-neighbour graph
when the number is unknown. Nothing builds an N x N matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import faiss
import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from scipy.special import ndtr, ndtri

from .cohesion import Cohesion, folder_cohesion, group_counts, join_groups, mixed_folders
from .knn import SEARCH_BLOCK, knn_graph
from . import progress
from .progress import count
from .thresholds import (ALIKE_Z, CENTRE_Z, IMPOSTOR_CENTRE_MAX, MIN_VALUES, OTHER_CENTRE_Z, PAIR_Z, ImpostorModel,
                         impostor_from_cross_cluster_pairs, impostor_from_other_centre_pairs, impostor_from_impostors,
                         impostor_model)

log = logging.getLogger(__name__)

OUTLIER = -1
# Graph edges need GRAPH_Z impostor spreads (chosen on LFW dev) up to GRAPH_Z_FACES faces. Each
# face's nearest neighbours are the best of n candidates, so beyond that the cut-off rises to keep
# the expected number of impostors above it per face as at GRAPH_Z_FACES (see graph_z).
GRAPH_Z = PAIR_Z
GRAPH_Z_FACES = 10_000
# Second pass of the graph clustering: an outlier joins its nearest cluster when its similarity
# to that centre is ATTACH_Z spreads above faces' similarities to other clusters' centres (chosen
# on LFW dev), up to ATTACH_Z_CLUSTERS clusters; beyond, it rises like graph_z (see attach_z).
ATTACH_Z = 4.0
ATTACH_Z_CLUSTERS = 200
# Two groups of the graph join along an edge only when their faces are on average alike: the mean
# similarity of all their pairs must be MERGE_Z impostor spreads above the impostor centre (chosen
# on LFW dev as shots of five occluded crops; see cohesion.join_groups).
MERGE_Z = ALIKE_Z
# The graph is cut again on the scale of pairs of faces in different groups of its first cut when
# that scale's spread is at most this share of random pairs' (see graph_clusters): clearly narrower,
# as where a few people fill the collection (0.088 against 0.139), not by the 1-7% by which the two
# differ where random pairs are not disturbed (two-person draws, LFW dev; at the floor on synthetic data).
RECUT_SPREAD_SHARE = 0.9
# With a fixed k, groups beyond k are looked for in a random sample of this many faces (an exact
# k-NN graph: about a second for 512-d). Each that holds MIN_SMALL_GROUP faces of the sample gets a
# centre of its own, at most MAX_EXTRA_GROUPS of them, largest first, so that its faces go to
# outliers/ instead of the nearest person's folder. Groups of MIN_GROUP faces of the sample are
# counted as people elsewhere (people new since an earlier run, ``new_groups``).
GROUP_SAMPLE = 10_000
MIN_GROUP = 10
# Where fewer groups of MIN_GROUP faces than k turn up and the k-means clusters are k different
# people, smaller groups down to this size make up the k (a person with seven photos in a library):
# k-means alone then had two outcomes of about equal cost, and a change of 0.00006 in the
# embeddings' cosine (a GPU's against the CPU's numbers) chose between them. Beyond k, groups of this
# size are strangers seen a few times: with groups of MIN_GROUP alone, LFW dev's people with five
# photos or more in two folders put Michael Bloomberg's 9 photos in Tony Blair's folder (72 of 81),
# and 4 people of 8-14 photos in Donald Rumsfeld's place; with them, the two folders are Blair's 72
# and Rumsfeld's 61 photos alone (the two-person draws of eval_clustering.py are unchanged).
MIN_SMALL_GROUP = 5
MAX_EXTRA_GROUPS = 32
# A k-means folder is named as not one person when it holds two or more of the sample's groups of this many
# faces (and a tenth of the folder's, ``cohesion.mixed_folders``): in a library of a few photos per person,
# DeepFace's test photos in two folders gave folders of people with 5, 4 and 3 photos and of 6 and 4, whose
# mean pair similarity passed as one person's; with groups of MIN_SMALL_GROUP, neither was named. No folder
# of one person was named in ``benchmarks/eval_folder_check.py`` either way.
MIXED_GROUP = 3
# k-means trains on a random sample of at most this many faces per centre (all faces' clusters
# are then assigned from the trained centres, and each folder's centre is the mean of all its
# faces). A centre read from 10,000 faces is off by about 1% of one face's spread from the same
# people's centre read from all of them, far less than what separates two people; a larger sample
# only costs time (at 500,000 faces, k = 2: 2.8-3.3 s of training on 100,000 faces against 0.5 s).
KMEANS_FACES_PER_CENTRE = 10_000
# Faces x centres of similarities kept from k-means (240 MB with the centres' numbers): past it, a sample's.
KMEANS_TABLE_LIMIT = 20_000_000
# A folder that holds one person and of which the outlier cut took more than this share of the faces is
# cut again against the centre of its faces in its group of alike faces (``_recentred``; K = 1 too): strangers
# k-means gives a small folder pull its centre towards them. In the two-person draws of eval_clustering.py the
# cut takes 6-14% of a folder; where a few people are seen among many strangers, 6-73%.
RECENTRE_SHARE = 0.2


@dataclass
class Clustering:
    """``labels``: (n,) int, 0 = largest cluster, ``OUTLIER`` = -1; ``similarity``: (n,) to
    the face's own cluster centre (to the nearest centre for outliers)."""

    labels: NDArray[np.int64]
    similarity: NDArray[np.float32]
    centres: NDArray[np.float32]
    threshold: float
    threshold_source: str
    method: str
    extra_groups: tuple[int, ...] = ()  # k-means: faces of each group found beyond k, sent to outliers
    set_aside: NDArray[np.bool_] | None = None  # faces kept out of the clustering (too degraded to recognise)
    set_aside_reason: str = ""
    known_people: bool = False  # assigned to an earlier run's people: extra_groups are people new since
    attached: int = 0  # graph: outliers given to their nearest cluster by the second pass
    attach_cutoff: float | None = None  # graph: the similarity to a centre that the second pass asked for
    attach_source: str = ""
    refused_joins: int = 0  # graph: edges that would have joined two groups whose faces are not alike on average
    lone_cluster: bool = False  # graph: one cluster found, so its second pass had no other centre to read a cut-off from
    pairs: int = 0  # graph: clusters of two faces, each the other's most similar neighbour
    cohesion: Cohesion | None = None  # k-means: whether each folder's faces are alike on average, as one person's
    names: tuple[str, ...] = ()  # known people: each label's folder (as named now), else ``cluster_name``
    repeats: NDArray[np.bool_] | None = None  # faces repeating an earlier face (copies.py), placed with it
    new_people: int = 0  # known people: how many of the centres, the last ones, are people new since
    # --new-people: the groups found among the outliers that fewer than MIN_GROUP faces reached at the known
    # people's cut-off, so no folder (faces of each, as the sample estimated them)
    groups_left_out: tuple[int, ...] = ()

    @property
    def n_clusters(self) -> int:
        return int(self.centres.shape[0])

    @property
    def copies(self) -> int:
        """How many faces repeat an earlier one (``repeats``): clustered once, with it."""
        return 0 if self.repeats is None else int(self.repeats.sum())

    @property
    def added_people(self) -> list[str]:
        """The folders of the people new since the known ones (``new_people``), as named."""
        return list(self.names[len(self.names) - self.new_people:]) if self.new_people else []

    def name(self, label: int) -> str:
        """The folder of the faces of ``label``: ``person_A``, …, ``outliers``, or a known person's."""
        return self.names[label] if 0 <= label < len(self.names) else cluster_name(label)


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def graph_z(n: int) -> float:
    """Impostor spreads above the centre that a graph edge needs among ``n`` faces.

    Under a normal impostor tail, a face among n others meets about n * P(Z > z) impostors
    above z. GRAPH_Z holds up to GRAPH_Z_FACES faces; for more, z keeps that number as it
    was there (5.3 for 50,000 faces, 5.7 for 500,000). Synthetic 500,000 x 512: 5.0 let
    chance edges chain people together (BCubed F 0.71), 5.7 gives F 0.92.
    """
    if n <= GRAPH_Z_FACES:
        return GRAPH_Z
    return float(-ndtri(ndtr(-GRAPH_Z) * GRAPH_Z_FACES / n))


def attach_z(k: int) -> float:
    """How many impostor spreads (of faces' similarities to other clusters' centres) above their
    centre an outlier's similarity to the nearest of ``k`` cluster centres must be to join it.

    The nearest centre is the best of k candidates, so among k impostor centres one clears z
    about k * P(Z > z) times. ATTACH_Z holds up to ATTACH_Z_CLUSTERS clusters; for more, z keeps
    that number as it was there (4.5 for 2,000 clusters, 5.0 for 20,000).
    """
    if k <= ATTACH_Z_CLUSTERS:
        return ATTACH_Z
    return float(-ndtri(ndtr(-ATTACH_Z) * ATTACH_Z_CLUSTERS / k))


def _normalise(x: NDArray[np.floating]) -> NDArray[np.float32]:
    """Unit rows as contiguous float32; rows already of unit length are not copied
    (embeddings files hold normalised rows, and 500k x 512 is 1 GB)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]  # no (n, d) temporary, unlike np.linalg.norm
    if x.size and np.all(np.abs(norms - 1.0) < 1e-4):
        return x
    return x / np.maximum(norms, 1e-12)


def _relabel_by_size(labels: NDArray[np.int64]) -> NDArray[np.int64]:
    """Renumber clusters so 0 is the largest; ties broken by the smallest member index."""
    kept = labels[labels >= 0]
    if kept.size == 0:
        return labels
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    keep = ids >= 0
    ids, first, counts = ids[keep], first[keep], counts[keep]
    order = ids[np.lexsort((first, -counts))]
    mapping = np.full(int(labels.max()) + 1, OUTLIER, dtype=np.int64)
    mapping[order] = np.arange(len(order))
    return np.where(labels >= 0, mapping[np.maximum(labels, 0)], OUTLIER)


def _cluster_sums(x: NDArray[np.float32], labels: NDArray[np.int64], k: int) -> NDArray[np.float32]:
    """The sum of each cluster's members' rows (k, d), as a sparse (k, n) membership matrix times
    ``x``: no copy of the members' rows (1 GB for 500k x 512)."""
    member = np.nonzero(labels >= 0)[0]
    membership = csr_matrix((np.ones(member.size, np.float32), (labels[member], member)), shape=(k, len(x)))
    return np.asarray(membership @ x, dtype=np.float32)


def _centres(x: NDArray[np.float32], labels: NDArray[np.int64], k: int) -> NDArray[np.float32]:
    """Unit mean direction of each cluster's members."""
    if not k:
        return np.zeros((0, x.shape[1]), np.float32)
    return _normalise(_cluster_sums(x, labels, k))


def _own_centre_similarity(x: NDArray[np.float32], labels: NDArray[np.int64], centres: NDArray[np.float32],
                           default: NDArray[np.float32]) -> NDArray[np.float32]:
    """Each member's similarity to its own cluster's centre (``default`` for outliers), computed
    in blocks: gathering every member's row and centre at once would take two copies of ``x``."""
    similarity = default.astype(np.float32, copy=True)
    for start in range(0, len(x), SEARCH_BLOCK):
        stop = min(len(x), start + SEARCH_BLOCK)
        lab = labels[start:stop]
        member = np.nonzero(lab >= 0)[0]
        similarity[start + member] = np.einsum("ij,ij->i", x[start + member], centres[lab[member]])
    return similarity


def _without_own_row(x: NDArray[np.float32], labels: NDArray[np.int64], k: int, own: NDArray[np.float32],
                     folders: NDArray[np.bool_], kept: NDArray[np.bool_] | None = None) -> NDArray[np.float32]:
    """``own`` (each face's similarity to its cluster's centre), where the members of ``folders`` (a (k,)
    mask) have theirs to the centre of the rest of their cluster instead: their own row left out of it.
    With ``kept`` (n,), that centre is the one of the cluster's kept faces alone, which a face not kept
    is compared with whole.

    A member's own row lifts its similarity to its cluster's centre, the more the smaller the cluster,
    while the cut-off is read from similarities to *other* clusters' centres, which hold no such lift:
    by 0.002-0.008 in a folder of 140 photos of one person, and by 0.11-0.13 for a stranger in a folder
    of 10 photos and 14 strangers. Computed from each cluster's sum of rows, in blocks; a member alone
    in its cluster (or its kept faces) has no rest to compare with and keeps ``own``."""
    sums = _cluster_sums(x, labels if kept is None else np.where(kept, labels, OUTLIER), k)
    squared = np.einsum("ij,ij->i", sums.astype(np.float64), sums.astype(np.float64))
    similarity = own.astype(np.float32, copy=True)
    for start in range(0, len(x), SEARCH_BLOCK):
        lab = labels[start:start + SEARCH_BLOCK]
        rows = np.nonzero(lab >= 0)[0]
        rows = rows[folders[lab[rows]]]
        block = x[start + rows]
        dot = np.einsum("ij,ij->i", block, sums[lab[rows]]).astype(np.float64)
        inside = np.ones(len(rows)) if kept is None else kept[start + rows].astype(np.float64)  # part of the sum
        rest = squared[lab[rows]] - inside * (2.0 * dot - np.einsum("ij,ij->i", block, block).astype(np.float64))
        ok = rest > 1e-6
        similarity[start + rows[ok]] = (dot[ok] - inside[ok]) / np.sqrt(rest[ok])
    return similarity


def _recentred(x: NDArray[np.float32], labels: NDArray[np.int64], k: int, own: NDArray[np.float32], threshold: float,
               folders: NDArray[np.bool_], groups: SampleGroups | None) -> NDArray[np.float32]:
    """``own`` (each face's similarity to its cluster's centre), where the faces of each folder among
    ``folders`` (a (k,) mask: those that hold one person) of which the cut at ``threshold`` took more than
    ``RECENTRE_SHARE`` have theirs to another centre instead (their own row left out): that of the
    folder's faces in its group of alike faces in the sample (``groups``), or without groups, that of
    the faces the cut kept.

    Where a few people are seen among many strangers, k-means gives each of their folders strangers of
    its own, who pull its centre towards them and lift their similarity to it. In 200 draws of 2-9 LFW
    dev people with 15-30 photos among 5-200 one-photo strangers (``eval_clustering.py --k-people``),
    2,449 of 20,596 strangers stayed in a folder against 3,641, and 46 of the people's 19,473 photos
    were in ``outliers/`` against 45; as occluded video crops, 2,328 against 4,246 strangers, and 106
    against 117 photos. The centre of the faces the cut kept, read again twice, left 2,774 and 2,954
    strangers in. With one person so among 5-200 strangers (``--clusters 1``), 797 of 20,950 strangers
    reached the folder against 3,501, and 14 of the person's 3,741 photos went to ``outliers/`` against
    19. Where the cut takes little, as from a person's folder among a few strangers, another centre
    leaves the person's hardest faces farther out: the centre of the faces kept, read again in every
    folder, cost Blair's folder a face in five of the twelve two-person draws, and the group's in every
    folder cost 5 faces more over those draws."""
    kept = own >= threshold
    sizes = np.bincount(labels[labels >= 0], minlength=k)
    pulled = folders & (np.bincount(labels[~kept & (labels >= 0)], minlength=k) > RECENTRE_SHARE * sizes)
    if not pulled.any():
        return own
    one = int(pulled.sum()) == 1
    if groups is not None:
        group = _distinct_members(groups, MIN_SMALL_GROUP)
        folder = labels[groups.sample]
        own_group = group_counts(folder, group, k).argmax(axis=1)  # a folder of one person holds one group
        trusted = np.zeros(len(x), bool)
        trusted[groups.sample] = (group >= 0) & (folder >= 0) & (group == own_group[np.maximum(folder, 0)])
        how = ("its" if one else "each one's") + " group of alike faces"
    else:
        trusted, how = kept, "the faces the first cut kept"
    log.info("%s of one person cut again against the centre of %s, as the first cut took more than %d%% of %s",
             count(int(pulled.sum()), "folder"), how, round(100 * RECENTRE_SHARE), "it" if one else "each")
    return _without_own_row(x, labels, k, own, pulled, trusted)


def _person_folders(labels: NDArray[np.int64], k: int, groups: SampleGroups | None,
                    cohesion: Cohesion | None) -> NDArray[np.bool_]:
    """The clusters among ``k`` that hold one person: one of the sample's groups of alike faces
    (``MIN_SMALL_GROUP`` of its faces or more) and no other, or, without groups, alike on average
    (``cohesion``; none without either) with ``MIN_SMALL_GROUP`` faces or more. A cluster of different
    people, which the summary names as not one person, has no person to leave a face out of."""
    if groups is None:
        if cohesion is None:
            return np.zeros(k, bool)
        return (cohesion.sizes >= MIN_SMALL_GROUP) & ~np.isin(np.arange(k), cohesion.not_alike)
    counts = group_counts(labels[groups.sample], _distinct_members(groups, MIN_SMALL_GROUP), k)
    return (counts >= MIN_SMALL_GROUP).sum(axis=1) == 1


def _nearest_centre(x: NDArray[np.float32], centres: NDArray[np.float32],
                    rows: NDArray[np.intp] | None = None) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The similarity of each face (of ``x[rows]``, all by default) to its most similar centre,
    and that centre's row, by FAISS search in blocks: no faces x centres matrix, and no copy
    of the selected rows all at once."""
    index = faiss.IndexFlatIP(centres.shape[1])
    index.add(np.ascontiguousarray(centres, np.float32))
    n = len(x) if rows is None else len(rows)
    sims = np.empty(n, np.float32)
    nearest = np.empty(n, np.int64)
    for start in range(0, n, SEARCH_BLOCK):
        stop = min(n, start + SEARCH_BLOCK)
        block = x[start:stop] if rows is None else x[rows[start:stop]]
        found_sims, found = index.search(np.ascontiguousarray(block), 1)
        sims[start:stop], nearest[start:stop] = found_sims[:, 0], found[:, 0]
    return sims, nearest


def _attach_outliers(x: NDArray[np.float32], labels: NDArray[np.int64], centres: NDArray[np.float32],
                     seed: int, calibrated: ImpostorModel | None = None) -> tuple[NDArray[np.int64], int, float | None, str]:
    """The graph's second pass: each outlier whose similarity to its nearest centre clears
    ``attach_z`` spreads of the faces' similarities to other clusters' centres joins that
    cluster. Returns the new labels, how many joined, the cut-off and where it came from.
    With a single cluster there are no other centres to read that scale from: ``calibrated``
    (a calibration's faces-to-other-identities'-centres scale) stands in, else the pass does
    not run.

    The graph asks every edge to clear a face-to-face cut-off, which a face with a bar over
    its mouth or in profile often misses for all its neighbours, although it is nearer its
    own person's centre than chance allows (LFW dev as occluded video crops: BCubed recall
    0.88 without this pass, see PROJECT_PLAN.md).
    """
    model = impostor_from_other_centre_pairs(x, labels, centres, seed=seed)
    calibration = False
    if model is None and calibrated is not None and len(centres):
        model, calibration = calibrated, True
    outliers = np.nonzero(labels == OUTLIER)[0]
    if model is None or not outliers.size:
        return labels, 0, None, ""
    z = attach_z(len(centres))
    cut = model.cut(z)
    sims, nearest = _nearest_centre(x, centres, outliers)
    take = sims >= cut
    labels = labels.copy()
    labels[outliers[take]] = nearest[take]
    source = (f"calibration: similarity to other people's centres {model.centre:.3f} + {z:.2f} x {model.spread:.3f}"
              if calibration else model.describe("median similarity to other clusters' centres", round(z, 2)))
    log.info("second pass: %d of %d outliers joined their nearest cluster (similarity to its centre >= %.3f)",
             int(take.sum()), outliers.size, cut)
    return labels, int(take.sum()), cut, source


@dataclass(frozen=True)
class _KMeansResult:
    """What ``_spherical_kmeans`` found: each face's similarity to its most similar centre and that
    centre's number (n,), and for the faces ``rows`` their similarities to every centre and those
    centres' numbers, most similar first (len(rows), k)."""

    own: NDArray[np.float32]
    label: NDArray[np.int64]
    rows: NDArray[np.intp]
    sims: NDArray[np.float32]
    nearest: NDArray[np.int64]


def _spherical_kmeans(x: NDArray[np.float32], k: int, *, restarts: int, seed: int, use_gpu: bool,
                      init: NDArray[np.float32] | None = None) -> _KMeansResult:
    """FAISS spherical k-means (``init`` seeds the centres, one run, instead of random faces). Every
    face's similarities to all k centres are kept up to ``KMEANS_TABLE_LIMIT`` of them; past it, those
    of a seeded sample of faces, which the other centres' impostor scale is read from as well: the
    whole table grew with faces times folders (``--clusters 1000`` over 500,000 faces: 6 GB)."""
    n, d = x.shape
    per_centre = max(256, min(KMEANS_FACES_PER_CENTRE, 100_000 // k))
    km = faiss.Kmeans(d, k, niter=30, nredo=1 if init is not None else restarts, spherical=True, seed=seed,
                      gpu=use_gpu, max_points_per_centroid=per_centre, min_points_per_centroid=1, verbose=False)
    with progress.ticker(f"k-means (FAISS, {count(k, 'centre')})", enabled=log.isEnabledFor(logging.INFO)):
        km.train(x, init_centroids=None if init is None else np.ascontiguousarray(init, np.float32))
        centres = np.asarray(km.centroids, np.float32)  # (k, d), set by ``train``
        if k == 1:
            sims = x @ _normalise(centres).T
            return _KMeansResult(sims[:, 0], np.zeros(n, np.int64), np.arange(n), sims, np.zeros((n, 1), np.int64))
        if n * k <= KMEANS_TABLE_LIMIT:
            sims, found = km.index.search(x, k)
            nearest = found.astype(np.int64)
            return _KMeansResult(sims[:, 0], nearest[:, 0], np.arange(n), sims, nearest)
        own, label = _nearest_centre(x, centres)
        rows = np.sort(np.random.default_rng(seed).choice(n, KMEANS_TABLE_LIMIT // k, replace=False))
        sims, nearest = km.index.search(np.ascontiguousarray(x[rows]), k)
        return _KMeansResult(own, label, rows, sims, nearest.astype(np.int64))


@dataclass(frozen=True)
class SampleGroups:
    """The graph's groups of alike faces in a random sample of the faces (``sample_groups``): ``sample`` the
    rows sampled (sorted), ``labels`` each one's group (``OUTLIER``: none), numbered by size, ``pair_cut`` the
    face-to-face cut-off the graph was built with."""

    sample: NDArray[np.int64]
    labels: NDArray[np.int64]
    centres: NDArray[np.float32]
    sizes: NDArray[np.int64]
    pair_cut: float


def sample_groups(x: NDArray[np.float32], people: NDArray[np.int64], random_pairs: ImpostorModel, *,
                  pair_cut: float | None, seed: int, use_gpu: bool) -> SampleGroups | None:
    """The groups of alike faces in a random sample of ``GROUP_SAMPLE`` faces (None under ``2 * MIN_GROUP``
    faces). The density graph of a sample sees each person as a group of their own. The face-to-face
    cut-off comes from pairs of faces of different people (``people``: each face's person, the k-means
    clusters that look like one person taken as one; with two people dominating, most random pairs are of
    one person), or a calibration; the graph's join rule always from those pairs. ``random_pairs`` (the
    impostor peak of random pairs) stands in when all the faces look like one person."""
    n = len(x)
    if n < 2 * MIN_GROUP:
        return None
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, GROUP_SAMPLE), replace=False))
    model = impostor_from_cross_cluster_pairs(x, people, seed=seed) or random_pairs
    if pair_cut is None:
        pair_cut = model.cut(graph_z(len(sample)))
    groups = graph_clusters(x[sample], min_similarity=pair_cut, seed=seed, use_gpu=use_gpu, impostors=model)
    sizes = np.bincount(groups.labels[groups.labels >= 0], minlength=groups.n_clusters)
    return SampleGroups(sample, groups.labels, groups.centres, sizes, float(pair_cut))


def _group_seeds(groups: SampleGroups, k: int, labels: NDArray[np.int64],
                 people: NDArray[np.int64]) -> NDArray[np.float32] | None:
    """Centres of the groups of alike faces in a random sample (``sample_groups``), when there are more
    than ``k``, or ``k`` while the k-means clusters (``labels``: each face's) hold fewer people than ``k``
    (``people``: each face's), or put two of the groups in one cluster, or ``k`` some of which are under
    ``MIN_GROUP`` faces where the clusters are ``k`` people.

    k-means must put every face in one of its k clusters, so a third person who recurs
    (an interviewer, a partner, a stranger seen a few times) is shared out among the k people's
    folders. It may also split one person who is seen in two looks and put two others together,
    or, where strangers are many, put two people together and give the strangers a cluster.
    Groups need ``MIN_SMALL_GROUP`` faces of the sample; a group whose centre is as similar to a
    larger group's centre as a genuine pair is one person split in two and is dropped.
    """
    kept = _distinct_groups(groups.centres, groups.sizes, MIN_SMALL_GROUP, groups.pair_cut, k + MAX_EXTRA_GROUPS)
    large = int((groups.sizes[kept] >= MIN_GROUP).sum())
    log.info("%d group(s) of alike faces (%d+ faces; %d of them %d+) in a sample of %d; pair cut-off %.3f",
             len(kept), MIN_SMALL_GROUP, large, MIN_GROUP, len(groups.sample), groups.pair_cut)
    if len(kept) > k:
        return groups.centres[kept]
    if len(kept) < k:
        return None
    split = np.unique(people).size < k  # clusters that look like one person
    member = np.where(np.isin(groups.labels, kept), groups.labels, OUTLIER)
    joined = bool(mixed_folders(labels[groups.sample], member, k, MIN_SMALL_GROUP))  # two people in one cluster
    return groups.centres[kept] if split or joined or large < k else None  # k people, some seen only a few times


def _mixed(labels: NDArray[np.int64], k: int, groups: SampleGroups) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """The folders that hold several of the sample's distinct groups of ``MIXED_GROUP`` faces or more
    (``cohesion.mixed_folders``)."""
    return mixed_folders(labels[groups.sample], _distinct_members(groups, MIXED_GROUP), k, MIXED_GROUP)


def _distinct_members(groups: SampleGroups, smallest: int) -> NDArray[np.int64]:
    """Each sampled face's group among the sample's distinct groups of ``smallest`` faces or more
    (``_distinct_groups``; ``OUTLIER``: in none)."""
    distinct = _distinct_groups(groups.centres, groups.sizes, smallest, groups.pair_cut, len(groups.sizes))
    return np.where(np.isin(groups.labels, distinct), groups.labels, OUTLIER)


def _distinct_groups(centres: NDArray[np.float32], sizes: NDArray[np.int64], smallest: int, pair_cut: float,
                     most: int) -> list[int]:
    """Up to ``most`` groups of at least ``smallest`` faces, largest first, leaving out each group
    whose centre is as similar to a larger kept one's as a genuine pair (one person split in two)."""
    kept: list[int] = []
    for g in np.nonzero(sizes >= smallest)[0]:  # largest first
        if not kept or float(np.max(centres[kept] @ centres[g])) < pair_cut:
            kept.append(int(g))
        if len(kept) == most:
            break
    return kept


def kmeans(
    x: NDArray[np.floating],
    k: int,
    *,
    min_similarity: float | None = None,
    restarts: int = 5,
    seed: int = 1234,
    use_gpu: bool = False,
    calibrated: tuple[float, str] | None = None,
    extra_groups: bool = True,
    pair_calibrated: float | None = None,
) -> Clustering:
    """Spherical k-means on unit vectors (n, d) float32, seeded; far faces become outliers.

    With ``extra_groups``, groups of alike faces beyond the k largest (see ``_group_seeds``)
    get centres of their own, so they do not pull faces into the k clusters, and their
    faces go to the outliers. The outlier cut-off is ``min_similarity`` if given, else a
    calibration for the model, else ``OTHER_CENTRE_Z`` spreads above the median
    similarity of faces to the *other* clusters' centres (k >= 2; the faces of a cluster that
    holds one person compared with its other faces' centre, ``_without_own_row``), or
    ``CENTRE_Z`` above the impostor peak of random pairs of faces (k = 1).
    """
    x = _normalise(x)
    n, d = x.shape
    if n == 0:
        return Clustering(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, d), np.float32), 0.0, "empty", "kmeans")
    asked, k = k, max(1, min(k, n))
    found = _spherical_kmeans(x, k, restarts=restarts, seed=seed, use_gpu=use_gpu)
    method = f"kmeans k={k}" + (f" (only {count(n, 'face')} for the {asked:,} people asked for)" if k < asked else "")
    labels = found.label
    random_pairs = impostor_model(x, seed=seed)  # the impostor peak of random pairs of faces, read once
    own_cut = min_similarity is None and calibrated is None
    # Which person each cluster is: with more clusters asked for than there are people, one
    # person fills several, and pairs of their faces across them are no impostor pairs.
    before = (folder_cohesion(x, labels, k, seed=seed, random_pairs=random_pairs)
              if k > 1 and (extra_groups or own_cut) else None)
    person = before.person if before is not None else np.zeros(k, np.int64)
    groups = (sample_groups(x, person[labels], random_pairs, pair_cut=pair_calibrated, seed=seed, use_gpu=use_gpu)
              if extra_groups else None)
    seeds = _group_seeds(groups, k, labels, person[labels]) if groups is not None else None
    if seeds is not None:
        found = _spherical_kmeans(x, len(seeds), restarts=1, seed=seed, use_gpu=use_gpu, init=seeds)
        method = f"kmeans k={k}, seeded with {count(len(seeds), 'group')} of alike faces"
        labels = found.label
        if own_cut:
            before = folder_cohesion(x, labels, len(seeds), seed=seed, random_pairs=random_pairs)
            person = before.person
    own = found.own.astype(np.float32)
    sims, nearest = found.sims, found.nearest
    clusters = sims.shape[1]
    folders = _person_folders(labels, clusters, groups, before)
    if min_similarity is not None:
        threshold, source = float(min_similarity), "--min-similarity"
    elif calibrated is not None:
        threshold, source = calibrated
    else:
        model, z, how = None, CENTRE_Z, "impostor peak of random pairs of faces"
        if k > 1:
            use = np.ones(sims[:, 1:].shape, bool)
            if sims.shape[1] > k:  # only the k folders' faces and centres: the cut is the same with or without extra groups
                kept = np.argsort(-np.bincount(labels, minlength=sims.shape[1]), kind="stable")[:k]
                use &= np.isin(nearest[:, 1:], kept) & np.isin(nearest[:, 0], kept)[:, None]
            # A face's similarity to another centre of its own person is no impostor value either.
            use &= person[nearest[:, 1:]] != person[labels[found.rows]][:, None]
            centre_model = impostor_from_impostors(sims[:, 1:][use], d) if use.sum() >= MIN_VALUES else None
            # Faces as alike to the other centres as to one person's: k clusters of one person (a
            # collection of one person's frames). That is no impostor scale; random pairs' peak is.
            if centre_model is None:
                how += " (the folders look like one person)"
            elif centre_model.centre <= IMPOSTOR_CENTRE_MAX:
                model, z, how = centre_model, OTHER_CENTRE_Z, "median similarity to the other clusters' centres"
                own = _without_own_row(x, labels, clusters, own, folders)
            else:
                how += (f" (faces are as alike to the other clusters' centres, {centre_model.centre:.3f}, as to one "
                        "person's)")
        if model is None:
            model = random_pairs
        threshold = model.cut(z)
        source = model.describe(how, z)
    # Only the k folders kept: the faces of groups beyond them go to outliers/ anyway.
    largest = np.argsort(-np.bincount(labels, minlength=clusters), kind="stable")[:k]
    own = _recentred(x, labels, clusters, own, float(threshold), folders & np.isin(np.arange(clusters), largest),
                     groups)
    labels = _relabel_by_size(np.where(own >= threshold, labels, OUTLIER))
    extra = np.bincount(labels[labels >= k] - k) if (labels >= k).any() else np.zeros(0, np.int64)
    labels[labels >= k] = OUTLIER
    k_kept = int(labels.max()) + 1 if (labels >= 0).any() else 0
    centres = _centres(x, labels, k_kept)
    similarity = _own_centre_similarity(x, labels, centres, own) if k_kept else own.copy()
    if extra.size and k_kept:  # outliers: similarity to the nearest centre that kept its folder
        out = np.nonzero(labels == OUTLIER)[0]
        similarity[out] = _nearest_centre(x, centres, out)[0]
    cohesion = folder_cohesion(x, labels, k_kept, seed=seed, random_pairs=random_pairs)
    if groups is not None:  # folders that hold several groups of alike faces, however alike they are on average
        cohesion = replace(cohesion, mixed=_mixed(labels, k_kept, groups))
    return Clustering(labels, similarity, centres, float(threshold), source, method,
                      tuple(int(v) for v in extra if v), cohesion=cohesion)


def _mutual_pairs(labels: NDArray[np.int64], edge: NDArray[np.bool_], nbrs: NDArray[np.int64]) -> tuple[NDArray[np.int64], int]:
    """Clusters of two: faces still outliers after the second pass that are each other's most
    similar neighbour above the edge cut-off (a person with two photos in a library, a
    stranger seen twice). A core face needs ``min_samples`` edges, so no group of two could
    form otherwise. Returns the labels (new clusters numbered after the others) and how many
    pairs were made."""
    lone = np.nonzero((labels < 0) & edge.any(axis=1))[0]
    if not lone.size:
        return labels, 0
    best = np.full(len(labels), -1, np.int64)
    best[lone] = nbrs[lone, np.argmax(edge[lone], axis=1)]  # neighbours come most similar first
    other = best[lone]
    mutual = (best[other] == lone) & (lone < other)
    first, second = lone[mutual], other[mutual]
    labels = labels.copy()
    new = int(labels.max()) + 1 + np.arange(first.size)
    labels[first], labels[second] = new, new
    return labels, int(first.size)


def _recut_scale(random_pairs: ImpostorModel, across: ImpostorModel | None) -> ImpostorModel | None:
    """The scale of pairs across a first cut's groups when the graph should be cut again on it:
    its spread clearly narrower than random pairs' and its centre where impostors lie."""
    if across is None or across.centre >= IMPOSTOR_CENTRE_MAX:
        return None
    return across if across.spread <= RECUT_SPREAD_SHARE * random_pairs.spread else None


def _graph_groups(x: NDArray[np.float32], sims: NDArray[np.float32], nbrs: NDArray[np.int64], threshold: float,
                  min_mean: float, min_samples: int, min_cluster_size: int
                  ) -> tuple[NDArray[np.int64], NDArray[np.bool_], int]:
    """The groups of a k-NN graph (``sims``, ``nbrs``) for an edge cut-off: an edge joins two faces
    whose similarity passes ``threshold``, a *core* face has at least ``min_samples`` edges, groups
    are the core faces joined through core-to-core edges (see ``cohesion.join_groups`` for
    ``min_mean``), a border face joins the group of its most similar core neighbour, and groups
    under ``min_cluster_size`` are outliers. Returns the labels (numbered by size), the edges and
    how many joins the rule refused."""
    rows = np.arange(len(x))[:, None]
    edge = (sims >= threshold) & (nbrs != rows) & (nbrs >= 0)
    core = edge.sum(axis=1) >= min_samples
    src = np.broadcast_to(rows, nbrs.shape)[edge]
    dst = nbrs[edge]
    both = core[src] & core[dst]
    component, refused = join_groups(x, src[both], dst[both], sims[edge][both], min_mean)
    labels = np.where(core, component, OUTLIER).astype(np.int64)
    # Border faces: first (most similar) core neighbour above the cut-off.
    border = np.nonzero(~core & edge.any(axis=1))[0]
    if border.size:
        cand = edge[border] & core[np.maximum(nbrs[border], 0)]
        has = cand.any(axis=1)
        first = np.argmax(cand, axis=1)
        labels[border[has]] = labels[nbrs[border[has], first[has]]]
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    labels[np.isin(labels, ids[counts < min_cluster_size])] = OUTLIER
    return _relabel_by_size(labels), edge, refused


def graph_clusters(
    x: NDArray[np.floating],
    *,
    min_similarity: float | None = None,
    neighbours: int = 10,
    min_samples: int = 2,
    min_cluster_size: int = 2,
    seed: int = 1234,
    use_gpu: bool = False,
    calibrated: tuple[float, str] | None = None,
    attach: bool = True,
    impostors: ImpostorModel | None = None,
    join_rule: bool = True,
    centre_impostors: ImpostorModel | None = None,
) -> Clustering:
    """Density-based clustering (DBSCAN-like) over a FAISS k-NN graph.

    An edge joins two faces whose similarity passes the cut-off; a *core* face has at
    least ``min_samples`` such edges among its ``neighbours`` nearest; clusters are the
    connected groups of core faces, and a non-core face joins the cluster of its most
    similar core neighbour. Faces reaching no core, and clusters smaller than
    ``min_cluster_size``, are outliers. Requiring core faces on both ends stops one
    stray edge from chaining two people together, and two groups join only when their
    faces are alike on average (see ``join_groups``; ``join_rule=False`` turns this off,
    for comparison), which stops a few look-alike pairs from doing so. With ``attach``, a
    second pass gives outliers close enough to a centre to that cluster (see
    ``_attach_outliers``), unless ``min_similarity`` is given: a cut-off the user chose is
    kept as the only rule. Last, with ``min_cluster_size`` 2, two outliers that are each
    other's most similar neighbour above the cut-off make a cluster of two (``_mutual_pairs``).

    ``impostors``: the scale of different people's face pairs, for the edge cut-off (when
    neither ``min_similarity`` nor ``calibrated`` gives one) and the join rule; by default
    read from random pairs of ``x``, and then, where pairs of faces in different groups of that
    first cut spread clearly narrower (``_recut_scale``), from those, the graph cut again on
    them. ``centre_impostors``: a calibration's scale of faces'
    similarities to other people's centres, for the second pass when the graph finds one
    cluster (with two or more it reads that scale from them).
    """
    x = _normalise(x)
    n, d = x.shape
    if n == 0:
        return Clustering(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, d), np.float32), 0.0, "empty", "graph")
    model: ImpostorModel = impostors or impostor_model(x, seed=seed)
    z = graph_z(n)
    if min_similarity is not None:
        threshold, source = float(min_similarity), "--min-similarity"
    elif calibrated is not None:
        threshold, source = calibrated
    else:
        threshold = model.cut(z)
        source = model.describe("impostor peak of random pairs", round(z, 2))
    sims, nbrs = knn_graph(x, neighbours, seed=seed, use_gpu=use_gpu)
    min_mean = model.cut(MERGE_Z) if join_rule else -np.inf
    labels, edge, refused = _graph_groups(x, sims, nbrs, threshold, min_mean, min_samples, min_cluster_size)
    if impostors is None and min_similarity is None and calibrated is None:
        # Random pairs hold every person's own pairs too. Where a few people fill the collection,
        # those widen the upper side of the impostor peak while a person whom the model places
        # unlike everyone else widens the lower side, and the edge cut-off comes out too high
        # (see ``eval_clustering.py --few``). Pairs of faces in different groups of this first
        # cut are nearly all of different people: where their spread is clearly narrower, it is the
        # scale (unless they centre where impostors never do: groups of one person split by the cut).
        across = _recut_scale(model, impostor_from_cross_cluster_pairs(x, labels, seed=seed))
        if across is not None:
            log.info("graph: the impostor spread of pairs of faces in different groups (%.3f) is narrower than that "
                     "of random pairs (%.3f); edges are cut again on it", across.spread, model.spread)
            model, threshold = across, across.cut(z)
            source = model.describe("impostor peak of pairs of faces in different groups of a first cut of the graph",
                                    round(z, 2))
            min_mean = model.cut(MERGE_Z) if join_rule else -np.inf
            labels, edge, refused = _graph_groups(x, sims, nbrs, threshold, min_mean, min_samples, min_cluster_size)
    if refused:
        log.info("graph: %s left unfollowed: each would have joined two groups whose faces' mean similarity "
                 "is below %.3f", count(refused, "edge"), min_mean)
    k = int(labels.max()) + 1 if (labels >= 0).any() else 0
    centres = _centres(x, labels, k)
    attached, attach_cutoff, attach_source = 0, None, ""
    if attach and min_similarity is None:
        labels, attached, attach_cutoff, attach_source = _attach_outliers(x, labels, centres, seed, centre_impostors)
        if attached:
            labels = _relabel_by_size(labels)
            centres = _centres(x, labels, k)
    lone = attach and min_similarity is None and k == 1 and attach_cutoff is None and bool((labels < 0).any())
    if lone:
        log.info("graph: one cluster found; the second pass reads its cut-off from faces' similarities to other "
                 "clusters' centres (or a calibration's), so it did not run")
    pairs = 0
    if min_cluster_size <= 2:
        labels, pairs = _mutual_pairs(labels, edge, nbrs)
        if pairs:
            log.info("graph: %s of faces, each the other's most similar, made clusters of two", count(pairs, "pair"))
            labels = _relabel_by_size(labels)
            k = int(labels.max()) + 1
            centres = _centres(x, labels, k)
    similarity = np.zeros(n, np.float32)
    outliers = np.nonzero(labels < 0)[0]
    if k:
        similarity = _own_centre_similarity(x, labels, centres, similarity)
        if outliers.size:
            similarity[outliers] = _nearest_centre(x, centres, outliers)[0]
    method = (f"graph k-NN={neighbours} min_samples={min_samples}"
              + (f", groups join at mean similarity >= {min_mean:.3f}" if join_rule else "")
              + (", second pass for outliers" if attach_cutoff is not None else "")
              + (", pairs of mutually most similar faces" if min_cluster_size <= 2 else ""))
    return Clustering(labels, similarity, centres, float(threshold), source, method, attached=attached,
                      attach_cutoff=attach_cutoff, attach_source=attach_source, refused_joins=refused,
                      lone_cluster=lone, pairs=pairs)


def assign_to_people(x: NDArray[np.floating], centres: NDArray[np.float32], threshold: float, source: str,
                     method: str, *, names: Sequence[str] = (), seed: int = 1234, use_gpu: bool = False,
                     new_people: bool = False) -> Clustering:
    """Each face to the most similar of known people's ``centres`` (label = row of ``centres``),
    or to outliers below ``threshold``: the people of an earlier run keep their numbers, so
    their folder names (``names``, one per centre), whatever the new faces' numbers per person.
    Groups of alike faces among the outliers (people new since) are reported in ``extra_groups``,
    or with ``new_people`` become people of their own after the known ones (``new_person_names``),
    each outlier going to the most similar of them at ``threshold`` or above."""
    x = _normalise(x)
    n, k = len(x), len(centres)
    labels = np.full(n, OUTLIER, np.int64)
    similarity = np.zeros(n, np.float32)
    if n and k:
        similarity, nearest = _nearest_centre(x, np.asarray(centres, np.float32))
        labels = np.where(similarity >= threshold, nearest, OUTLIER)
    outliers = np.nonzero(labels == OUTLIER)[0]
    found, sizes = new_groups(x[outliers], seed=seed, use_gpu=use_gpu)
    known = Clustering(labels, similarity, np.asarray(centres, np.float32), float(threshold), source, method,
                       tuple(sizes[:MAX_EXTRA_GROUPS]), known_people=True, names=tuple(names))
    return _with_new_people(x, known, outliers, found) if new_people else known


def _with_new_people(x: NDArray[np.float32], known: Clustering, outliers: NDArray[np.intp],
                     found: NDArray[np.float32]) -> Clustering:
    """``known`` (``assign_to_people``'s) with the groups ``found`` among its ``outliers`` as people of
    their own, largest first after the known ones: each outlier joins the most similar group at the
    known people's cut-off or above, and each group's centre is read again from all its faces (not the
    sample's alone). A group left with fewer than ``MIN_GROUP`` faces stays in outliers."""
    k = known.n_clusters
    group = np.full(len(x), OUTLIER, np.int64)
    if len(found) and outliers.size:
        sims, nearest = _nearest_centre(x, found, outliers)
        take = sims >= known.threshold
        group[outliers[take]] = nearest[take]
    sizes = np.bincount(group[group >= 0], minlength=len(found))
    kept = [int(g) for g in np.argsort(-sizes, kind="stable") if sizes[g] >= MIN_GROUP]  # largest first
    left_out = tuple(known.extra_groups[g] for g in range(min(len(found), len(known.extra_groups))) if g not in kept)
    if left_out:
        log.info("%s of alike faces among those that matched none of the %d known people kept fewer than %d faces "
                 "at their cut-off %.3f: left in outliers/", count(len(left_out), "group"), k, MIN_GROUP,
                 known.threshold)
    if not kept:
        return replace(known, extra_groups=(), groups_left_out=left_out)
    rank = np.full(len(found), OUTLIER, np.int64)
    rank[kept] = np.arange(len(kept))
    members = np.where(group >= 0, rank[np.maximum(group, 0)], OUTLIER)
    added = _centres(x, members, len(kept))
    joined = np.nonzero(members >= 0)[0]
    labels, similarity = known.labels.copy(), known.similarity.copy()
    labels[joined] = k + members[joined]
    similarity[joined] = np.einsum("ij,ij->i", x[joined], added[members[joined]])
    people = "1 new person" if len(kept) == 1 else f"{len(kept)} new people"
    current = known.names or tuple(cluster_name(i) for i in range(k))
    log.info("%s among the %d faces that matched none of the %d known: %s faces", people, outliers.size, k,
             ", ".join(str(int(sizes[g])) for g in kept))
    return replace(known, labels=labels, similarity=similarity, centres=np.vstack([known.centres, added]),
                   extra_groups=(), groups_left_out=left_out, names=current + new_person_names(current, len(kept)),
                   new_people=len(kept), method=f"{known.method}; {people} found among the faces that matched none "
                                                 "of them")


def new_person_names(known: Sequence[str], count: int) -> tuple[str, ...]:
    """Folder names for ``count`` people new since an earlier run whose people are ``known`` (as their
    folders are named now): ``person_C``, … after ``person_A`` and ``person_B``, skipping names in use."""
    names: list[str] = []
    index = len(known)
    while len(names) < count:
        if (name := cluster_name(index)) not in known:
            names.append(name)
        index += 1
    return tuple(names)


def new_groups(x: NDArray[np.float32], *, seed: int = 1234,
               use_gpu: bool = False) -> tuple[NDArray[np.float32], list[int]]:
    """The groups of alike faces among ``x``, largest first: their centres, and their sizes (estimated
    from a sample of at most ``GROUP_SAMPLE``), counting groups of ``MIN_GROUP`` faces of the sample or
    more: among faces that matched none of the known people, people who are new since."""
    n = len(x)
    if n < 2 * MIN_GROUP:
        return np.zeros((0, x.shape[1]), np.float32), []
    sample = np.sort(np.random.default_rng(seed).choice(n, min(n, GROUP_SAMPLE), replace=False))
    groups = graph_clusters(x[sample], min_cluster_size=MIN_GROUP, seed=seed, use_gpu=use_gpu, attach=False)
    sizes = np.bincount(groups.labels[groups.labels >= 0], minlength=groups.n_clusters)
    return groups.centres, [int(round(size * n / len(sample))) for size in sizes]


def with_set_aside(result: Clustering, keep: NDArray[np.intp], x: NDArray[np.floating], reason: str) -> Clustering:
    """``result`` of clustering ``x[keep]`` spread back over all of ``x``: the faces not in ``keep``
    are outliers, with their similarity to the nearest cluster centre (0 without clusters)."""
    n = len(x)
    labels = np.full(n, OUTLIER, np.int64)
    labels[keep] = result.labels
    similarity = np.zeros(n, np.float32)
    similarity[keep] = result.similarity
    aside = np.ones(n, bool)
    aside[keep] = False
    if result.n_clusters and aside.any():
        similarity[aside] = _nearest_centre(_normalise(x[aside]), result.centres)[0]
    repeats = None
    if result.repeats is not None:
        repeats = np.zeros(n, bool)
        repeats[keep] = result.repeats
    return replace(result, labels=labels, similarity=similarity, set_aside=aside, set_aside_reason=reason,
                   repeats=repeats)


def cluster_name(index: int) -> str:
    """0 -> person_A, 25 -> person_Z, 26 -> person_AA, ... (spreadsheet column letters)."""
    if index < 0:
        return "outliers"
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return f"person_{letters}"
