"""The identity vectors of a set of images (with a progress bar, failures as NaN rows)
and the summary of a set of distances: shared by every section of the evaluation."""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from id3pm.encoders import Encoder


def encode_all(encoder: Encoder, images, aligned: bool, desc: str, keys=None, chunk: int = 64) -> np.ndarray:
    """Vectors with a progress bar; failed items are NaN rows."""
    images = list(images)
    rows = []
    for s in tqdm(range(0, len(images), chunk), desc=desc, leave=False):
        part_keys = None if keys is None else keys[s : s + chunk]
        rows.append(encoder.encode(images[s : s + chunk], aligned=aligned, keys=part_keys).vectors)
    return np.concatenate(rows) if rows else np.zeros((0, encoder.dim), np.float32)


def summary(values: np.ndarray) -> dict:
    v = np.asarray(values, float)
    ok = v[np.isfinite(v)]
    if not ok.size:
        return {"mean": None, "std": None, "median": None, "n": 0, "failed": int(v.size)}
    return {"mean": float(ok.mean()), "std": float(ok.std()), "median": float(np.median(ok)), "n": int(ok.size),
            "failed": int(v.size - ok.size)}
