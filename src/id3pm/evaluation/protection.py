"""Inverting protected templates (id3pm.encoders.protected): the deployed system stores
t(f(x)) and the attacker holds such a template. Two attackers:

- unaware: does not know t and feeds the template to a method built on plain vectors
  f(x) (a model trained on them, or retrieval over a plain training pool); possible
  only where t keeps the vector's length;
- aware: knows t (Kerckhoffs: the scheme is public; with its key, the attacker can
  apply it), and uses a model trained on protected vectors (`id3pm prepare --encoder
  protected:...`, then `train`), or retrieval over a pool it protected itself, or a
  model trained on PLAIN vectors fed a preimage of the template (`Preimage`): no
  training at all, so it is the first aware attack to measure on any scheme.

Success is judged twice: by the protected system itself (t(f(x')) against the stored
template, at the thresholds where the system's own impostor pairs reach an FMR), and
by the independent encoder, unprotected (is the face still that person's?).
"""

from __future__ import annotations

import time

import numpy as np

from id3pm.encoders import Encoder, identity_distance
from id3pm.encoders.protected import TRANSFORMS, ProtectedEncoder
from id3pm.evaluation.baselines import NearestNeighbour
from id3pm.evaluation.sar import impostor_distances, sar_table
from id3pm.evaluation.scoring import encode_all, summary

SPEC_KEYS_OF_THE_SYSTEM = ("name", "encoder")  # the rest of a protected encoder's spec is its transform


def transform_spec(spec: dict) -> dict:
    """The transform part of a protected encoder's spec: {"transform": "biohash", "key": 7, ...}."""
    return {k: v for k, v in spec.items() if k not in SPEC_KEYS_OF_THE_SYSTEM}


def protection_label(spec: dict) -> str:
    """{"transform": "biohash", "key": 7, "bits": 128} -> "biohash bits=128 key=7"."""
    options = transform_spec(spec)
    return " ".join([str(options["transform"])] + [f"{k}={v}" for k, v in sorted(options.items()) if k != "transform"])


class ProtectedSystem:
    """The FR system with a template transform: its encoder (the conditioning encoder,
    then t) and the templates it stores for the originals."""

    def __init__(self, inner: Encoder, spec: dict):
        self.encoder = ProtectedEncoder(encoder=inner, **transform_spec(spec))
        self.spec = self.encoder.transform.spec()  # with its defaults filled in, e.g. biohash's bits
        self.label = protection_label(self.spec)

    def templates(self, vectors: np.ndarray) -> np.ndarray:
        return self.encoder.transform(vectors)

    def matches(self, model_encoder_spec: dict) -> bool:
        """Was a model trained on vectors of THIS system (same transform, same key)?"""
        if model_encoder_spec.get("name") != "protected":
            return False
        options = transform_spec(model_encoder_spec)
        transform = TRANSFORMS[options.pop("transform")](self.encoder.inner.dim, **options)
        return transform.spec() == self.spec


def aware_retrieval(system: ProtectedSystem, pool_vectors: np.ndarray, pool_images: np.ndarray) -> NearestNeighbour:
    """Retrieval by an attacker who protects its own training pool with the scheme."""
    return NearestNeighbour(system.templates(pool_vectors), pool_images, system.encoder.distance, name="nearest neighbour")


class Preimage:
    """An aware attacker's use of a method built on plain vectors: map the template back
    to an estimate of the plain vector, then run the method on it.

    A rotation is undone exactly (Q is orthonormal: y = Q^T t). Any other scheme gets a
    linear least-squares map t -> y (ridge, with an intercept) fitted on the attacker's
    own pool of plain vectors, protected with the scheme: the best linear estimate of y
    from t, e.g. the shrinkage that removes part of added noise, or the direction that
    BioHashing's sign bits still carry."""

    generative = False
    ridge = 1e-4  # relative to the mean diagonal of the templates' Gram matrix: keeps the solve well posed

    def __init__(self, system: ProtectedSystem, pool_vectors: np.ndarray | None, method):
        self.method = method
        self.name = f"{method.name} via preimage"
        transform = system.encoder.transform
        if isinstance(transform, TRANSFORMS["orthonormal"]):
            self.weights, self.bias = transform.q, np.zeros(transform.dim)  # t @ Q = y
            return
        pool = np.asarray(pool_vectors if pool_vectors is not None else np.empty((0, transform.dim)), np.float64)
        pool = pool[np.isfinite(pool).all(axis=1)]
        if len(pool) < 2 * (transform.out_dim + 1):
            raise ValueError(f"{self.name}: a pool of {len(pool)} plain vectors cannot fit a "
                             f"{transform.out_dim}-d preimage (needs {2 * (transform.out_dim + 1)})")
        templates = system.templates(pool).astype(np.float64)
        t_mean, y_mean = templates.mean(axis=0), pool.mean(axis=0)
        tc = templates - t_mean
        gram = tc.T @ tc
        gram += self.ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
        self.weights = np.linalg.solve(gram, tc.T @ (pool - y_mean))
        self.bias = y_mean - t_mean @ self.weights

    def __call__(self, templates: np.ndarray) -> np.ndarray:
        return (np.asarray(templates, np.float64) @ self.weights + self.bias).astype(np.float32)

    def reconstruct(self, templates: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
        return self.method.reconstruct(self(templates), num_samples, seed)


def input_dim(method) -> int | None:
    """The vector length a method takes (None: any)."""
    if hasattr(method, "pipe"):
        return int(method.pipe.id_dim)
    if isinstance(method, NearestNeighbour):
        return int(method.vectors.shape[1])
    return None


def attack_protected(system: ProtectedSystem, attackers: list[tuple[str, object]], vectors: np.ndarray,
                     independent: Encoder | None, ind_orig: np.ndarray | None, seed: int = 0,
                     population: tuple[np.ndarray, np.ndarray | None] | None = None,
                     independent_impostors: np.ndarray | None = None) -> tuple[dict, list[str]]:
    """Rows "<protection> · <unaware|aware>: <method>" -> identity distances, type-I SAR
    under the protected system and the independent encoder, seconds per identity.
    attackers: (kind, method) with kind "unaware" or "aware". population: plain vectors
    under (conditioning, independent) of the images whose impostor pairs set the
    thresholds, as for the unprotected rows (default: the attacked originals alone, whose
    thresholds move with their number). independent_impostors: that population's impostor
    distances under the independent encoder when already computed (no protection changes
    them, so an evaluation computes them once for all schemes). Returns (rows, notes)."""
    templates = system.templates(vectors)
    plain, ind_population = population if population is not None else (vectors, ind_orig)
    impostors = {"conditioning": impostor_distances(system.templates(plain), system.encoder.distance)}
    if independent is not None:
        impostors["independent"] = (independent_impostors if independent_impostors is not None
                                    else impostor_distances(ind_population, independent.distance))
    rows, notes = {}, []
    for kind, method in attackers:
        name = f"{system.label} · {kind}: {method.name}"
        want = input_dim(method)
        if want is not None and want != templates.shape[1]:
            notes.append(f"{name}: skipped, the method takes {want}-d vectors and the templates are "
                         f"{templates.shape[1]}-d")
            continue
        start = time.time()
        images = method.reconstruct(templates, 1, seed)[:, 0]
        seconds = (time.time() - start) / len(templates)
        found = encode_all(system.encoder, images, True, f"{name}: protected system")
        distances = {"conditioning": identity_distance(found, templates, system.encoder.distance)}
        if independent is not None:
            found = encode_all(independent, images, True, f"{name}: independent")
            distances["independent"] = identity_distance(found, ind_orig, independent.distance)
        rows[name] = {"protection": system.label, "attacker": kind, "method": method.name,
                      "seconds_per_identity": seconds,
                      "identity": {enc: summary(d) for enc, d in distances.items()},
                      "sar_type1": {enc: sar_table(d, impostors[enc]) for enc, d in distances.items()}}
    return rows, notes
