"""Success attack rate (SAR), the template-inversion literature's metric
(Otroshi Shahreza & Marcel): the system threshold is set on real impostor pairs at a
fixed false-match rate (FMR), and SAR is the fraction of reconstructions that the FR
model then accepts as the person.

- type-I: the reconstruction against the very image whose vector was inverted;
- type-II: against another image of the same person.
"""

from __future__ import annotations

import math

import numpy as np

from id3pm.encoders import identity_distance

FMRS = (0.01, 0.001)


def impostor_distances(vectors: np.ndarray, distance: str, max_pairs: int = 500_000, seed: int = 0,
                       identities=None) -> np.ndarray:
    """Distances between all pairs of different rows (different people: with identity
    labels, pairs of one person's photos are left out; without, every pair is assumed an
    impostor pair), or a random subset of max_pairs of them; rows with NaN (no face) are
    left out."""
    finite = np.isfinite(vectors).all(axis=1)
    vectors = vectors[finite]
    i, j = np.triu_indices(len(vectors), 1)
    if identities is not None:
        labels = np.asarray(identities, dtype=object)[finite]
        known = np.array([x is not None for x in labels])
        keep = ~(known[i] & known[j] & (labels[i] == labels[j]))
        i, j = i[keep], j[keep]
    if len(i) > max_pairs:
        pick = np.random.default_rng(seed).choice(len(i), max_pairs, replace=False)
        i, j = i[pick], j[pick]
    # in blocks: all pairs at once held (pairs, dim) float64 copies, 10 GB for 500k pairs of 512-d vectors
    block = 20_000
    return np.concatenate([np.asarray(identity_distance(vectors[i[k:k + block]], vectors[j[k:k + block]], distance),
                                      dtype=np.float64) for k in range(0, len(i), block)] or [np.empty(0)])


def threshold_at_fmr(impostors: np.ndarray, fmr: float) -> float:
    """Accept d < threshold: at most floor(fmr * n) of the n impostor pairs are accepted."""
    d = np.sort(np.asarray(impostors, dtype=np.float64)[np.isfinite(impostors)])
    if len(d) == 0:
        raise ValueError("no impostor distances to set a threshold on")
    k = int(math.floor(fmr * len(d)))
    return float(d[k]) if k < len(d) else math.inf


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial rate (sound at 0% and 100%, unlike p +- 2 se)."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # the interval holds p; rounding can put an end a hair inside it at 0% and 100% (4 of 4 gave 0.9999...)
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def success_rate(distances: np.ndarray, threshold: float) -> dict:
    """SAR of reconstructions at a threshold. A reconstruction the encoder cannot read
    (NaN: no face found) counts as a failed attack, not as a missing value."""
    distances = np.asarray(distances, dtype=np.float64)
    n = len(distances)
    accepted = int((np.nan_to_num(distances, nan=np.inf) < threshold).sum())
    low, high = wilson_interval(accepted, n)
    return {"sar": accepted / n if n else math.nan, "ci95": [low, high], "accepted": accepted, "n": n}


def sar_table(distances: np.ndarray, impostors: np.ndarray, fmrs=FMRS) -> dict:
    """{"fmr=0.01": {"threshold", "sar", "ci95", ...}, ...} for one method under one encoder."""
    out = {}
    for fmr in fmrs:
        thr = threshold_at_fmr(impostors, fmr)
        out[f"fmr={fmr:g}"] = {"threshold": thr, "impostor_pairs": int(np.isfinite(impostors).sum()),
                               **success_rate(distances, thr)}
    return out
