"""A prepared set's crops encoded again by another black box (`id3pm adapt`).

The prepared set already holds each photo's vector under the encoder it was prepared
with; an adapter also needs the same photos' vectors under a new FR model. They are
computed from the stored canonical crops (no detection again), in chunks written to a
cache folder as they finish, so a crash or a stop loses at most one chunk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from id3pm.files import atomic_write_bytes

CHUNK = 256  # crops per cached file


def reencode(data, indices: np.ndarray, encoder, cache: str | Path, progress: bool = True) -> np.ndarray:
    """(len(indices), encoder.dim) float32 vectors of the prepared set's largest crops
    (NaN rows where the encoder failed on a crop). Chunks already in `cache` are reused
    when they were made by the same encoder from the same crops."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    size = max(data.manifest["sizes"])
    keys = data.keys
    out = np.full((len(indices), encoder.dim), np.nan, np.float32)
    starts = range(0, len(indices), CHUNK)
    for start in tqdm(starts, desc=f"encoding with {encoder.name}", disable=not progress, unit="chunk"):
        chunk = indices[start : start + CHUNK]
        names = [keys[i] for i in chunk]
        path = cache / f"{chunk_digest(encoder, size, names)}.npy"
        if path.exists():
            out[start : start + len(chunk)] = np.load(path)
            continue
        vectors = encoder.encode(list(data.images(size, chunk)), aligned=True, keys=names).vectors
        atomic_write_bytes(path, npy_bytes(vectors))
        out[start : start + len(chunk)] = vectors
    return out


def chunk_digest(encoder, size: int, names: list[str]) -> str:
    text = repr((encoder.spec(), encoder.dim, size, names))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array, np.float32))
    return buf.getvalue()
