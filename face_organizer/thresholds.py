"""Similarity cut-offs that suit whatever model made the embeddings.

ArcFace-family models put two faces of different people near cosine 0, but how
widely those impostor similarities spread depends on the model (a 128-d
MobileFaceNet spreads about twice as wide as buffalo_l's 512-d ResNet), so one
hard-coded threshold cannot fit both. Without a calibration for the model, the
impostor spread is read off the data itself: among random pairs of faces (or
faces and the centres of clusters not their own) the impostor peak is the tallest
even when a few people dominate the collection, its spread is read from the side
of it that is least disturbed, and the cut-off is set a fixed number of standard
deviations above it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .errors import SetupError

log = logging.getLogger(__name__)

# Standard deviations above the impostor centre for a face-to-cluster-centre match (k-means
# outliers): from random pairs of faces (k = 1), chosen on LFW dev; from the similarities to
# the other clusters' centres (k >= 2), chosen on the two-person collections of
# benchmarks/eval_clustering.py (see PROJECT_PLAN.md): 2.4 with the faces of a folder that holds one
# person compared without their own rows (clustering._without_own_row), which gives those twelve draws the
# folders that 2.5 gave with them. Search and graph edges set their own.
CENTRE_Z = 2.0
OTHER_CENTRE_Z = 2.4
# Faces are alike on average, as one person's are, when the mean similarity of their pairs is this
# many spreads above the impostor centre: the graph's rule for joining two groups (chosen on LFW dev
# as shots of five occluded crops) and the test of whether a k-means folder holds one person.
ALIKE_Z = 2.5
# A single pair of faces is one person's when it is this many spreads up: the edges of the graph of
# --clusters auto (up to clustering.GRAPH_Z_FACES faces, chosen on LFW dev). A mean over m pairs of
# impostors spreads about sqrt(m) times less, so it needs PAIR_Z / sqrt(m) spreads, never fewer than
# ALIKE_Z: the mean across two folders of one face each is judged as one pair is (see
# cohesion.one_person_groups).
PAIR_Z = 5.0
SAMPLE_PAIRS = 200_000
IMPOSTOR_CENTRE_MAX = 0.2  # impostor peaks lie below this; genuine ones well above (0.5-0.7)
FIT_MIN_VALUES = 20_000  # enough similarities around the peak to fit its shape (see _fit_peak)
CALIBRATION_ENV = "FACE_ORGANIZER_CALIBRATION"


@dataclass(frozen=True)
class ImpostorModel:
    centre: float
    spread: float
    assumed: bool = False  # too few values to read it from: the defaults below

    def cut(self, z: float) -> float:
        return float(self.centre + z * self.spread)

    def describe(self, what: str, z: float) -> str:
        """How a cut-off ``z`` spreads above this model came about, for logs and summaries."""
        if self.assumed:
            return f"assumed, too little data to measure the {what}: {self.centre:.3f} + {z:g} x {self.spread:.3f}"
        return f"data: {what} {self.centre:.3f} + {z:g} x {self.spread:.3f}"


# Where there are too few values to read a scale from: impostor similarities near 0 spread
# about 0.1 for the 128-d testpack model and less for larger ones, so this is on the safe side.
ASSUMED = ImpostorModel(0.0, 0.1, assumed=True)
MIN_VALUES = 10  # similarities (or distinct pairs of faces) needed to measure a scale at all


def impostor_from_similarities(sims: NDArray[np.floating], dim: int | None = None) -> ImpostorModel:
    """Centre and spread of the impostor peak in a sample of similarities.

    The centre is the mode of the histogram (impostor pairs form the tallest peak
    even when a few people dominate a collection); the spread is read from each side
    of the mode and the narrower taken (see ``_centred``). With enough values, a
    normal curve fitted to the peak refines both (``_fit_peak``).
    """
    sims = np.asarray(sims, dtype=np.float64)
    if sims.size < MIN_VALUES:
        return ASSUMED
    hist, edges = np.histogram(sims, bins=200, range=(-1.0, 1.0))
    smooth = np.convolve(hist, np.ones(5) / 5, mode="same")
    peak = int(np.argmax(smooth))
    centre = float((edges[peak] + edges[peak + 1]) / 2)
    # One person can dominate so much that genuine pairs form the tallest peak (a collection
    # of one person's frames with a few others). Impostor peaks of ArcFace-family models sit
    # near 0, never above IMPOSTOR_CENTRE_MAX: a taller peak there is genuine, and the impostor
    # centre is taken as 0, its spread read from the similarities below 0. (A local maximum
    # below the bound is no better: a broad genuine tail makes bumps there.)
    if centre >= IMPOSTOR_CENTRE_MAX:
        return _centred(sims, 0.0, dim)
    return _fit_peak(sims, _centred(sims, centre, dim), dim)


def _fit_peak(sims: NDArray[np.floating], rough: ImpostorModel, dim: int | None) -> ImpostorModel:
    """The impostor peak refined by a normal curve fitted to it, when the sample is large.

    A histogram mode jumps between neighbouring bins with the sample where the peak is
    flat (LFW dev, auto: graph cut-off 0.485-0.521 over sixteen samples of 200,000 pairs).
    A parabola fitted to the log-counts from 3 spreads below the rough centre to 1 above
    uses the whole peak instead of its tallest bin (0.510-0.517 on the same samples). The
    fit is kept only when it is a plausible peak near the rough one.
    """
    lo, hi = rough.centre - 3.0 * rough.spread, rough.centre + rough.spread
    hist, edges = np.histogram(sims, bins=40, range=(lo, hi))
    if hist.sum() < FIT_MIN_VALUES or np.count_nonzero(hist) < 10:
        return rough
    mid, used = (edges[:-1] + edges[1:]) / 2, hist > 0
    a, b, _ = np.polyfit(mid[used], np.log(hist[used]), 2, w=np.sqrt(hist[used]))
    if a >= 0:
        return rough
    centre, spread = -b / (2 * a), float(np.sqrt(-1 / (2 * a)))
    if abs(centre - rough.centre) > 0.5 * rough.spread or not 0.67 < spread / rough.spread < 1.5:
        return rough
    return ImpostorModel(max(float(centre), 0.0), max(spread, _spread_floor(dim)))


def impostor_from_impostors(sims: NDArray[np.floating], dim: int | None = None) -> ImpostorModel:
    """Centre and spread of similarities that are nearly all impostor values: faces' similarities
    to cluster centres not their own, pairs of faces in different clusters, labelled pairs of
    different people (a calibration).

    No genuine peak needs avoiding, so the median is the centre: with two clusters there are
    only a few hundred values in a small collection, where a histogram mode moves by several
    bins between draws of the same two people (measured 0.045-0.085; the median 0.043-0.052).
    """
    sims = np.asarray(sims, dtype=np.float64)
    if sims.size < MIN_VALUES:
        return ASSUMED
    return _centred(sims, float(np.median(sims)), dim)


def _centred(sims: NDArray[np.floating], centre: float, dim: int | None) -> ImpostorModel:
    """The model centred at ``centre``, with the spread of the narrower side of it.

    For a normal distribution the point below which 31.73% of the lower side lies is one
    standard deviation down, and the point above which 31.73% of the upper side lies one
    up. Each side can be widened by values that are not the impostor noise: the upper by
    genuine pairs (a few people dominate the collection, or one person fills two clusters),
    the lower by people whom the model places systematically unlike the others (among a few
    people, one whose faces are at -0.2 to everyone else's: LFW dev photos of two people
    and three with 7-19 photos, where the lower side read 0.24 and the upper 0.10, see
    ``eval_clustering.py --few``). Impostor noise alone widens both alike, so the narrower
    side is the scale."""
    below = sims[sims <= centre]
    if below.size < 5:
        return ImpostorModel(max(centre, 0.0), max(ASSUMED.spread, _spread_floor(dim)), assumed=True)
    spread = centre - float(np.percentile(below, 31.73))
    above = sims[sims >= centre]
    if above.size >= 5:
        spread = min(spread, float(np.percentile(above, 68.27)) - centre)
    # Different people are never systematically opposite: the centre is at least 0.
    return ImpostorModel(max(centre, 0.0), max(spread, _spread_floor(dim)))


def _spread_floor(dim: int | None) -> float:
    """Random directions in d dimensions spread by 1/sqrt(d); impostor faces never spread
    less. The floor matters when tight clusters make the sample nearly constant."""
    return 1.0 / np.sqrt(dim) if dim else 1e-3


def impostor_model(embeddings: NDArray[np.float32], seed: int = 0, pairs: int = SAMPLE_PAIRS) -> ImpostorModel:
    """The impostor peak of random pairs of faces (see ``impostor_from_similarities``)."""
    n = len(embeddings)
    if n * (n - 1) // 2 < MIN_VALUES:  # sampling many pairs of a few faces repeats the same few
        return ASSUMED
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, pairs)
    b = rng.integers(0, n, pairs)
    a, b = a[a != b], b[a != b]
    return impostor_from_similarities(_pair_similarities(embeddings, a, b), embeddings.shape[1])


def _pair_similarities(embeddings: NDArray[np.float32], a: NDArray[np.int64], b: NDArray[np.int64],
                       others: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """Similarity of each pair (embeddings[a[i]], others[b[i]]) (``others``: ``embeddings``
    itself by default), in blocks: memory stays flat."""
    right = embeddings if others is None else others
    return np.concatenate([np.einsum("ij,ij->i", embeddings[a[i : i + 20_000]], right[b[i : i + 20_000]])
                           for i in range(0, len(a), 20_000)] or [np.zeros(0, np.float32)])


def impostor_from_cross_cluster_pairs(embeddings: NDArray[np.float32], labels: NDArray[np.int64], seed: int = 0,
                                      pairs: int = SAMPLE_PAIRS) -> ImpostorModel | None:
    """The impostor peak of random pairs of faces that k-means put in different clusters.

    Such pairs are almost all of different people, also when two people dominate a collection
    and random pairs are mostly of one person (there the tallest peak of random pairs is the
    genuine one). Like the similarities to other clusters' centres, the median is the centre.
    None when fewer than two clusters have members.
    """
    clustered = np.nonzero(labels >= 0)[0]
    if clustered.size < 3 or np.unique(labels[clustered]).size < 2:
        return None
    rng = np.random.default_rng(seed)
    a = clustered[rng.integers(0, clustered.size, pairs)]
    b = clustered[rng.integers(0, clustered.size, pairs)]
    cross = labels[a] != labels[b]
    return impostor_from_impostors(_pair_similarities(embeddings, a[cross], b[cross]), embeddings.shape[1])


def impostor_from_other_centre_pairs(embeddings: NDArray[np.float32], labels: NDArray[np.int64],
                                     centres: NDArray[np.float32], seed: int = 0,
                                     pairs: int = SAMPLE_PAIRS) -> ImpostorModel | None:
    """The impostor scale of face-to-centre similarities, from random (member, other centre) pairs.

    Each sampled member of a cluster is paired with a random centre that is not its own
    (label = row of ``centres``), so with thousands of clusters no faces x centres matrix is
    built. With two clusters these are the similarities k-means' own cut-off reads. None
    when there are fewer than two centres or hardly any members.
    """
    k = len(centres)
    clustered = np.nonzero(labels >= 0)[0]
    if k < 2 or clustered.size < 10:
        return None
    rng = np.random.default_rng(seed)
    a = clustered[rng.integers(0, clustered.size, pairs)]
    other = (labels[a] + rng.integers(1, k, pairs)) % k
    return impostor_from_impostors(_pair_similarities(embeddings, a, other, centres), embeddings.shape[1])


def calibration_path() -> Path:
    env = os.environ.get(CALIBRATION_ENV)
    if env:
        return Path(env).expanduser()
    return Path("~/.config/face-organizer/calibration.json").expanduser()


def read_calibrations(path: Path) -> dict[str, Any]:
    """The calibration file's entries by recogniser file name; none where there is no such file. ``SetupError``
    where the file is there but cannot be read, or is not one (a hand edit gone wrong)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise SetupError(f"cannot read the calibration file {path}: {getattr(err, 'strerror', None) or err}") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise SetupError(f"the calibration file {path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise SetupError(f"the calibration file {path} is not one: it holds no entries by recogniser (a JSON object)")
    return data


def load_calibration(recognizer: str, path: Path | None = None) -> dict[str, Any] | None:
    """The stored calibration for a recogniser file name (written by ``search_faces.py --calibrate``); None where
    there is none, and, with a warning, where the file cannot be read."""
    try:
        entry = read_calibrations(path or calibration_path()).get(recognizer)
    except SetupError as err:
        log.warning("%s; cut-offs are derived from the data instead", err)
        return None
    return entry if isinstance(entry, dict) else None


def calibrate_from_embeddings(x: NDArray[np.float32], identities: list[str], target_fmr: float = 1e-3,
                              seed: int = 0, max_pairs: int = 2_000_000) -> dict[str, Any]:
    """Cut-offs at a target false-match rate from labelled embeddings.

    ``pair_threshold``: face-to-face similarity exceeded by ``target_fmr`` of impostor
    pairs (search). ``centre_threshold``: face-to-identity-centre similarity exceeded by
    that share of faces of *other* identities (k-means outliers). Also reports the genuine
    match rate at each, and the impostor pairs' centre and spread (``pair_impostor_centre``,
    ``pair_impostor_spread``): graph edges need far rarer false matches than a quantile of a
    few million pairs can give, so their cut-off is set from these (see ``calibrated_pair_cut``).
    Likewise the centre and spread of faces' similarities to other identities' centres
    (``centre_impostor_centre``, ``centre_impostor_spread``), for the graph's second pass when
    a collection has no second cluster to read them from (see ``calibrated_centre_impostors``).
    """
    ids = np.asarray(identities)
    codes = np.unique(ids, return_inverse=True)[1]
    n = len(x)
    rng = np.random.default_rng(seed)
    if n * (n - 1) // 2 <= max_pairs:
        a, b = np.triu_indices(n, 1)
    else:
        a, b = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
        a, b = a[a != b], b[a != b]
    sims = np.concatenate([np.einsum("ij,ij->i", x[a[i : i + 100_000]], x[b[i : i + 100_000]]) for i in range(0, len(a), 100_000)])
    same = codes[a] == codes[b]
    if not same.any() or same.all():
        raise ValueError("calibration needs several identities with two or more images each")
    pair = float(np.quantile(sims[~same], 1.0 - target_fmr))
    impostors = impostor_from_impostors(sims[~same], x.shape[1])
    counts = np.bincount(codes)
    centres = np.zeros((counts.size, x.shape[1]), np.float32)
    np.add.at(centres, codes, x)
    big = counts >= 3
    # Genuine: leave-one-out centre of the face's own identity; impostor: other identities' centres.
    own = centres[codes] - x
    own /= np.maximum(np.linalg.norm(own, axis=1, keepdims=True), 1e-12)
    genuine_centre = np.einsum("ij,ij->i", x, own)[big[codes]]
    unit = centres[big] / np.linalg.norm(centres[big], axis=1, keepdims=True)
    other = (x @ unit.T)[codes[:, None] != np.nonzero(big)[0][None, :]]
    centre = float(np.quantile(other, 1.0 - target_fmr))
    centre_impostors = impostor_from_impostors(other, x.shape[1])
    return {
        "pair_threshold": round(pair, 4),
        "pair_true_match_rate": round(float((sims[same] >= pair).mean()), 4),
        "pair_impostor_centre": round(impostors.centre, 4),
        "pair_impostor_spread": round(impostors.spread, 4),
        "centre_threshold": round(centre, 4),
        "centre_true_match_rate": round(float((genuine_centre >= centre).mean()), 4),
        "centre_impostor_centre": round(centre_impostors.centre, 4),
        "centre_impostor_spread": round(centre_impostors.spread, 4),
        "target_false_match_rate": target_fmr,
        "images": int(n),
        "identities": int(counts.size),
    }


def _calibrated_model(entry: dict[str, Any] | None, prefix: str) -> ImpostorModel | None:
    keys = (f"{prefix}_impostor_centre", f"{prefix}_impostor_spread")
    if not entry or not all(isinstance(entry.get(k), (int, float)) for k in keys):
        return None
    return ImpostorModel(float(entry[keys[0]]), float(entry[keys[1]]))


def calibrated_impostors(entry: dict[str, Any] | None) -> ImpostorModel | None:
    """A calibration's impostor pairs as a model; None for no calibration, or one made before
    it recorded their centre and spread."""
    return _calibrated_model(entry, "pair")


def calibrated_centre_impostors(entry: dict[str, Any] | None) -> ImpostorModel | None:
    """A calibration's faces-to-other-identities'-centres similarities as a model; None for no
    calibration, or one made before it recorded their centre and spread."""
    return _calibrated_model(entry, "centre")


def calibrated_pair_cut(entry: dict[str, Any] | None, z: float) -> tuple[float, str] | None:
    """A face-to-face cut-off ``z`` spreads above a calibration's impostor pairs, with where it
    came from; None for no calibration, or one made before it recorded their scale."""
    model = calibrated_impostors(entry)
    if model is None:
        return None
    return model.cut(z), f"calibration: impostor pairs at {model.centre:.3f} + {z:.2f} x {model.spread:.3f}"


def calibrations_to_keep(path: Path) -> dict[str, Any]:
    """``read_calibrations`` for a file about to be written: one that cannot be read is refused, as replacing it
    would lose the other models' entries (``SetupError``)."""
    try:
        return read_calibrations(path)
    except SetupError as err:
        raise SetupError(f"{err}; it is left as it is: mend it or move it away (or set ${CALIBRATION_ENV} to "
                         "another file)") from None


def save_calibration(recognizer: str, entry: dict[str, Any], path: Path | None = None) -> Path:
    """Store ``entry`` for a recogniser file name, keeping other models' entries."""
    from .fsutil import atomic_write_text

    path = path or calibration_path()
    data = calibrations_to_keep(path)
    data[recognizer] = entry
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))
    return path
