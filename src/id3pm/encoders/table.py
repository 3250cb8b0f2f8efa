"""Precomputed vectors: the "lookup table of (x, y) pairs" case, where the black box
was queried once and only its answers are kept. Vectors are found by image key."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from id3pm.encoders.base import EncodeResult, Encoder


def read_vector_table(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Keys and vectors from .npz (arrays `keys`, `vectors`), .parquet (columns `key`,
    `vector`) or .csv (first column the key, the rest the vector)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such vector table")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return [str(k) for k in z["keys"]], np.asarray(z["vectors"], dtype=np.float32)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["key", "vector"])
        return [str(k) for k in t["key"].to_pylist()], np.array(t["vector"].to_pylist(), dtype=np.float32)
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        if rows and not _is_number(rows[0][1]):
            rows = rows[1:]  # header
        return [r[0] for r in rows], np.array([[float(x) for x in r[1:]] for r in rows], dtype=np.float32)
    raise ValueError(f"{path}: vector tables are .npz, .parquet or .csv")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def key_variants(key: str) -> list[str]:
    """A key as given, its file name, and its stem, so that 'a/b/x.jpg' finds 'x.jpg' or 'x'."""
    p = PurePosixPath(str(key).replace("\\", "/"))
    return list(dict.fromkeys([str(p), p.name, p.name.split(".")[0]]))


class TableEncoder(Encoder):
    name = "table"
    crop = None
    encodes_pixels = False

    def __init__(self, path: str, distance: str = "euclidean", **kwargs):
        super().__init__(**kwargs)
        self.path, self.distance = str(path), distance
        keys, vectors = read_vector_table(path)
        if vectors.ndim != 2 or len(keys) != len(vectors):
            raise ValueError(f"{path}: expected one vector per key")
        self.dim = vectors.shape[1]
        self.lookup = {}
        for k, v in zip(keys, vectors):
            for variant in key_variants(k):
                self.lookup.setdefault(variant, v)

    def spec(self) -> dict:
        return {"name": self.name, "path": self.path, "distance": self.distance}

    def encode_crops(self, crops):  # pragma: no cover - encode() is overridden
        raise NotImplementedError

    def encode(self, images: Sequence[np.ndarray], aligned: bool = False, keys: Sequence[str] | None = None):
        if keys is None:
            raise ValueError("the table encoder finds vectors by image key: pass keys=")
        out = np.full((len(keys), self.dim), np.nan, dtype=np.float32)
        errors: list = [None] * len(keys)
        for i, key in enumerate(keys):
            found = next((self.lookup[v] for v in key_variants(key) if v in self.lookup), None)
            if found is None:
                errors[i] = f"{key}: no vector for this key in {self.path}"
            elif not np.isfinite(found).all():
                errors[i] = f"{key}: the table's vector is not finite"
            else:
                out[i] = found
        return EncodeResult(out, errors, [None] * len(keys))
