"""Balanced training draws: each image's probability of being drawn, so that a large
source (UTKFace's 22k) or an over-represented age group (its many toddlers) does not
decide what the model mostly sees.

`--balance source` gives every source an equal share of the draws; `--balance
source,age` also gives every age band within a source an equal share of that source's
draws (images without an age label form one band of their own). An empty spec draws
every image equally often, as plain epochs do.
"""

from __future__ import annotations

import numpy as np

# bands of the balance: children and teenagers apart, so that they cannot fill a batch
AGE_BAND_EDGES = (13, 20, 40, 60)  # 0-12, 13-19, 20-39, 40-59, 60+
BALANCE_KEYS = ("source", "age")


def parse_balance(spec: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in spec.split(",") if k.strip())
    unknown = [k for k in keys if k not in BALANCE_KEYS]
    if unknown:
        raise ValueError(f"--balance {spec!r}: unknown {unknown}; use any of {list(BALANCE_KEYS)}")
    return keys


def age_bands(ages) -> np.ndarray:
    """Band number of each age (-1: no age label)."""
    out = np.full(len(ages), -1, dtype=np.int64)
    for i, age in enumerate(ages):
        if age is not None and age == age:  # not None, not NaN
            out[i] = int(np.searchsorted(AGE_BAND_EDGES, float(age), side="right"))
    return out


def group_weights(levels: list[np.ndarray]) -> np.ndarray:
    """Probabilities that give each group of levels[0] an equal share, each group of
    levels[1] an equal share within its levels[0] group, and so on; equal within the last."""
    n = len(levels[0]) if levels else 0
    if not levels:
        return np.full(n, 1.0 / max(n, 1))
    w = np.zeros(n)
    top = levels[0]
    groups = np.unique(top)
    for g in groups:
        members = np.flatnonzero(top == g)
        inner = group_weights([lv[members] for lv in levels[1:]]) if len(levels) > 1 else np.full(len(members), 1 / len(members))
        w[members] = inner / len(groups)
    return w


def balance_weights(sources: np.ndarray, ages, spec: str) -> np.ndarray | None:
    """Draw probabilities for the images (None: no balance, plain epochs)."""
    keys = parse_balance(spec)
    if not keys:
        return None
    levels = []
    if "source" in keys:
        levels.append(np.asarray(sources, dtype=object).astype(str))
    if "age" in keys:
        levels.append(age_bands(ages if ages is not None else [None] * len(sources)))
    return group_weights(levels)


def shares(weights: np.ndarray, labels) -> dict[str, float]:
    """The share of the draws that each label gets (for the run's log)."""
    labels = np.asarray(labels, dtype=object).astype(str)
    return {str(g): float(weights[labels == g].sum()) for g in np.unique(labels)}
