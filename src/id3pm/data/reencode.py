"""A prepared set's crops encoded again by another black box.

The prepared set already holds each photo's vector under the encoder it was prepared
with; an adapter (`id3pm adapt`) also needs the same photos' vectors under a new FR
model, and a model of that FR model (`id3pm reencode`, then `train` or `evaluate`) a
whole set of them. They are computed from the stored canonical crops (no detection
again), in pieces written as they finish, so a crash or a stop loses at most one piece.
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


def reencode_prepared(src: str | Path, dst: str | Path, encoder, progress: bool = True) -> dict:
    """Write DST: SRC's crops, labels and split with the vectors `encoder` gives for SRC's
    largest stored crops. Photos it finds no usable face in are left out (counted in the
    manifest's `skipped`). Returns DST's manifest."""
    from id3pm.data.dataset import decode_image
    from id3pm.data.derive import derive_prepared
    from id3pm.files import read_json

    manifest = read_json(Path(src) / "manifest.json")
    if encoder.spec() == manifest["encoder"]:
        raise ValueError(f"{src}: already holds {encoder.name} vectors")
    size = max(manifest["sizes"])

    def vectors_of(table) -> np.ndarray:
        images = [decode_image(b) for b in table[f"image_{size}"].to_pylist()]
        return encoder.encode(images, aligned=True, keys=table["key"].to_pylist()).vectors

    return derive_prepared(src, dst, encoder.spec(), encoder.dim, encoder.distance, vectors_of,
                           f"{encoder.name}: no usable face", progress=progress)


def chunk_digest(encoder, size: int, names: list[str]) -> str:
    text = repr((encoder.spec(), encoder.dim, size, names))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, np.asarray(array, np.float32))
    return buf.getvalue()
