"""Controls in identity space (ID3PM Sec. 4.3): interpolation between identities,
custom directions from labelled data, PCA directions, and walking along them.

Directions are differences of group means of black-box vectors:
- binary feature (e.g. gender): mean(label == 1) - mean(label == 0);
- continuous feature (e.g. age): mean(above the 90th percentile) - mean(below the 10th).
Adding s * direction to an identity vector and sampling shows what the model
associates with the feature.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from id3pm.files import atomic_write_json, read_json


def is_normalized(vectors: np.ndarray, tol: float = 1e-3) -> bool:
    """True when the encoder's vectors lie on the unit sphere (ArcFace-style)."""
    norms = np.linalg.norm(np.atleast_2d(vectors), axis=1)
    return bool(np.all(np.abs(norms - 1) < tol))


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation between unit vectors a and b."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    omega = np.arccos(np.clip(np.dot(a, b), -1.0, 1.0))
    if omega < 1e-6:
        return a.copy()
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def interpolate(a: np.ndarray, b: np.ndarray, frames: int) -> np.ndarray:
    """(frames, D) vectors from a to b: along the great circle for normalised
    embeddings; otherwise linearly, each frame rescaled to the interpolated norm
    (a straight line between two vectors passes closer to the origin than any real
    embedding, where the model has seen no data)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ts = np.linspace(0.0, 1.0, frames)
    if is_normalized(np.stack([a, b])):
        return np.stack([slerp(a, b, t) for t in ts]).astype(np.float32)
    out = []
    for t in ts:
        v = (1 - t) * a + t * b
        target = (1 - t) * np.linalg.norm(a) + t * np.linalg.norm(b)
        out.append(v * target / max(np.linalg.norm(v), 1e-12))
    return np.stack(out).astype(np.float32)


def walk(vector: np.ndarray, direction: np.ndarray, strengths) -> np.ndarray:
    """(len(strengths), D): vector + s * direction, back on the sphere for normalised
    embeddings."""
    v = np.asarray(vector, np.float64)
    out = np.stack([v + s * np.asarray(direction, np.float64) for s in strengths])
    if is_normalized(v):
        out = out / np.linalg.norm(out, axis=1, keepdims=True)
    return out.astype(np.float32)


@dataclass
class Direction:
    name: str
    vector: np.ndarray  # (D,)
    provenance: dict = field(default_factory=dict)


def binary_direction(vectors: np.ndarray, labels) -> tuple[np.ndarray, dict]:
    labels = np.asarray(labels, dtype=object)
    valid = np.array([lab is not None and not (isinstance(lab, float) and np.isnan(lab)) for lab in labels])
    values = sorted({lab for lab in labels[valid]})
    if len(values) != 2:
        raise ValueError(f"a binary feature needs exactly 2 values, found {values[:10]}")
    group0, group1 = labels == values[0], labels == values[1]
    direction = vectors[group1].mean(0) - vectors[group0].mean(0)
    return direction, {"kind": "binary", "group0": str(values[0]), "group1": str(values[1]),
                       "n0": int(group0.sum()), "n1": int(group1.sum())}


def continuous_direction(vectors: np.ndarray, values, low: float = 10, high: float = 90) -> tuple[np.ndarray, dict]:
    values = np.array([np.nan if v is None else float(v) for v in values])
    ok = np.isfinite(values)
    lo, hi = np.percentile(values[ok], [low, high])
    below, above = ok & (values < lo), ok & (values > hi)
    if below.sum() == 0 or above.sum() == 0:  # many ties at a percentile: include the boundary
        below, above = ok & (values <= lo), ok & (values >= hi)
    direction = vectors[above].mean(0) - vectors[below].mean(0)
    return direction, {"kind": "continuous", "percentiles": [low, high], "thresholds": [float(lo), float(hi)],
                       "n_below": int(below.sum()), "n_above": int(above.sum())}


def pca_directions(vectors: np.ndarray, k: int) -> list[tuple[np.ndarray, dict]]:
    """Principal axes of the vectors, each scaled to one standard deviation along it."""
    centred = vectors - vectors.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    std = s / np.sqrt(max(len(vectors) - 1, 1))
    total = (std**2).sum()
    return [(vt[i] * std[i], {"kind": "pca", "component": i, "explained_variance": float(std[i] ** 2 / total)})
            for i in range(min(k, len(std)))]


def directions_from_dataset(data, labels: list[str], kinds: dict[str, str] | None = None, pca: int = 0,
                            split: str | None = "train", label_table: dict | None = None) -> list[Direction]:
    """Directions for labels of a prepared data set (its meta_* columns) or of an extra
    {key: {label: value}} table (any CSV). kinds[label] = "binary" | "continuous"
    (default: binary when the label has two values)."""
    idx = data.split_indices(split)
    vectors = data.vectors(idx).astype(np.float64)
    keys = np.array(data.keys)[idx]
    base = {"data": str(data.path), "encoder": data.manifest["encoder"], "split": split, "n": int(len(idx)),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    out = []
    for label in labels:
        if label_table is not None:
            from id3pm.encoders.table import key_variants

            def find(k):
                for variant in key_variants(k):
                    if variant in label_table:
                        return label_table[variant].get(label)
                return None

            values = np.array([find(k) for k in keys], dtype=object)
        else:
            values = data.metadata(label, idx)
        distinct = {v for v in values if v is not None}
        kind = (kinds or {}).get(label) or ("binary" if len(distinct) == 2 else "continuous")
        vec, prov = binary_direction(vectors, values) if kind == "binary" else continuous_direction(vectors, values)
        out.append(Direction(label, vec.astype(np.float32), {**base, "label": label, **prov}))
    for vec, prov in pca_directions(vectors, pca):
        out.append(Direction(f"pca{prov['component']}", vec.astype(np.float32), {**base, **prov}))
    return out


def save_directions(path: str | Path, directions: list[Direction]) -> None:
    atomic_write_json(path, {"format": "id3pm-directions/1",
                             "directions": {d.name: {"vector": d.vector.tolist(), "provenance": d.provenance}
                                            for d in directions}})


def load_directions(path: str | Path) -> dict[str, Direction]:
    obj = read_json(path)
    if obj.get("format") != "id3pm-directions/1":
        raise ValueError(f"{path}: not an id3pm directions file")
    return {name: Direction(name, np.array(d["vector"], np.float32), d["provenance"])
            for name, d in obj["directions"].items()}
