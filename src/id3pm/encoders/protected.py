"""Protected templates: a deployed system often stores a transformed vector t(f(x))
instead of f(x). `ProtectedEncoder` wraps any encoder with such a transform, so that
`prepare`, `train` and `evaluate` run against the protected system exactly as against a
plain one (an attacker who knows the transform trains on protected vectors; one who
does not feeds protected vectors to a model trained on plain ones).

    make_encoder({"name": "protected", "encoder": "dlib", "transform": "biohash", "key": 7})
    id3pm prepare ... --encoder protected:encoder=dlib,transform=noise,snr_db=10,key=7

Transforms (each deterministic given its key, so a template can be recomputed):
- `orthonormal`: a secret random rotation Q y. Distances are unchanged, so verification
  is as good as before; the vectors are meaningless without Q.
- `biohash`: BioHashing (Teoh et al. 2004): project on `bits` random orthonormal
  directions drawn from the user key, keep the signs (+-1). Compared by Euclidean
  distance, which for +-1 vectors is 2 sqrt(Hamming distance).
- `noise`: additive Gaussian noise at `snr_db` (signal power = the vector's mean square),
  drawn from the key and the vector itself, so the same face gives the same template.
- `pca`: keep the top `k` principal components of a basis fitted on enrolment vectors
  (`fit_pca`, stored as .npz without pickles), mapped back to the original space.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from id3pm.encoders.base import Encoder, EncodeResult


def random_orthonormal(dim: int, rows: int, key: int) -> np.ndarray:
    """(rows, dim) with orthonormal rows, from the key (QR of a Gaussian matrix, signs fixed)."""
    if rows > dim:
        raise ValueError(f"cannot draw {rows} orthonormal directions in {dim} dimensions")
    g = np.random.default_rng(key).standard_normal((dim, rows))
    q, r = np.linalg.qr(g)
    return (q * np.sign(np.diag(r))).T  # sign fix: the same key always gives the same matrix


class TemplateTransform:
    """y (N, D) -> protected template (N, out_dim). Rows that are NaN stay NaN."""

    name = "identity"
    distance: str | None = None  # None: keep the wrapped encoder's

    def __init__(self, dim: int):
        self.dim = dim
        self.out_dim = dim

    def spec(self) -> dict:
        return {"transform": self.name}

    def __call__(self, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Orthonormal(TemplateTransform):
    name = "orthonormal"

    def __init__(self, dim: int, key: int = 0):
        super().__init__(dim)
        self.key = int(key)
        self.q = random_orthonormal(dim, dim, self.key)

    def spec(self) -> dict:
        return {"transform": self.name, "key": self.key}

    def __call__(self, y):
        return (np.asarray(y, np.float64) @ self.q.T).astype(np.float32)


class BioHash(TemplateTransform):
    name = "biohash"
    distance = "euclidean"

    def __init__(self, dim: int, key: int = 0, bits: int | None = None):
        super().__init__(dim)
        self.key, self.bits = int(key), int(bits or dim)
        self.w = random_orthonormal(dim, self.bits, self.key)
        self.out_dim = self.bits

    def spec(self) -> dict:
        return {"transform": self.name, "key": self.key, "bits": self.bits}

    def __call__(self, y):
        projected = np.asarray(y, np.float64) @ self.w.T
        out = np.where(projected >= 0, 1.0, -1.0)
        out[~np.isfinite(projected)] = np.nan
        return out.astype(np.float32)


class AdditiveNoise(TemplateTransform):
    name = "noise"

    def __init__(self, dim: int, snr_db: float = 10.0, key: int = 0):
        super().__init__(dim)
        self.snr_db, self.key = float(snr_db), int(key)

    def spec(self) -> dict:
        return {"transform": self.name, "snr_db": self.snr_db, "key": self.key}

    def __call__(self, y):
        y = np.asarray(y, np.float64)
        out = np.full_like(y, np.nan)
        for i, row in enumerate(y):
            if not np.isfinite(row).all():
                continue
            seed = int.from_bytes(hashlib.sha256(row.astype(np.float32).tobytes()).digest()[:8], "little")
            noise = np.random.default_rng([self.key, seed]).standard_normal(len(row))
            power = np.mean(row**2) / 10 ** (self.snr_db / 10)
            out[i] = row + np.sqrt(power) * noise
        return out.astype(np.float32)


class PCATruncation(TemplateTransform):
    name = "pca"

    def __init__(self, dim: int, path: str = "", k: int | None = None):
        super().__init__(dim)
        if not path:
            raise ValueError("the pca transform needs path= a basis written by id3pm.encoders.protected.fit_pca")
        self.path = str(path)
        with np.load(self.path, allow_pickle=False) as z:
            self.mean, components = z["mean"].astype(np.float64), z["components"].astype(np.float64)
        if self.mean.shape != (dim,) or components.shape[1] != dim:
            raise ValueError(f"{path}: a basis for {components.shape[1]}-d vectors, the encoder gives {dim}-d")
        self.k = int(k or len(components))
        if not 1 <= self.k <= len(components):
            raise ValueError(f"{path}: k must be in 1..{len(components)}, got {self.k}")
        self.components = components[: self.k]

    def spec(self) -> dict:
        return {"transform": self.name, "path": self.path, "k": self.k}

    def __call__(self, y):
        centred = np.asarray(y, np.float64) - self.mean
        return (self.mean + centred @ self.components.T @ self.components).astype(np.float32)


def fit_pca(vectors: np.ndarray, path: str | Path) -> Path:
    """Principal axes of enrolment vectors (rows), strongest first, saved as .npz."""
    v = np.asarray(vectors, np.float64)
    v = v[np.isfinite(v).all(axis=1)]
    mean = v.mean(axis=0)
    _, _, vt = np.linalg.svd(v - mean, full_matrices=False)
    path = Path(path)
    np.savez(path, mean=mean.astype(np.float32), components=vt.astype(np.float32))
    return path


TRANSFORMS = {cls.name: cls for cls in (Orthonormal, BioHash, AdditiveNoise, PCATruncation)}


def parse_protection(text: str) -> dict:
    """"biohash:key=7,bits=64" -> {"transform": "biohash", "key": 7, "bits": 64}."""
    from id3pm.encoders import parse_encoder_spec

    spec = parse_encoder_spec(text)
    return {"transform": spec.pop("name"), **spec}


class ProtectedEncoder(Encoder):
    """Any encoder, followed by a template transform."""

    name = "protected"

    def __init__(self, encoder: str | dict = "dlib", transform: str = "orthonormal", **options):
        from id3pm.encoders import make_encoder

        if transform not in TRANSFORMS:
            raise ValueError(f"unknown template transform {transform!r}; choose one of {sorted(TRANSFORMS)}")
        passed = {k: options.pop(k) for k in ("aligner", "multiple_faces") if k in options}
        self.inner = make_encoder(encoder, **passed)
        self.transform = TRANSFORMS[transform](self.inner.dim, **options)
        self.dim = self.transform.out_dim
        self.crop, self.encodes_pixels = self.inner.crop, self.inner.encodes_pixels
        self.distance = self.transform.distance or self.inner.distance
        self.aligner, self.multiple_faces = self.inner.aligner, self.inner.multiple_faces

    def spec(self) -> dict:
        return {"name": self.name, "encoder": self.inner.spec(), **self.transform.spec()}

    def encode_crops(self, crops):
        return self.transform(self.inner.encode_crops(crops))

    def encode(self, images, aligned=False, keys=None) -> EncodeResult:
        result = self.inner.encode(images, aligned=aligned, keys=keys)
        vectors = np.full((len(result.vectors), self.dim), np.nan, dtype=np.float32)
        ok = result.ok
        if ok.any():
            vectors[ok] = self.transform(result.vectors[ok])
        return EncodeResult(vectors, result.errors, result.warnings)
