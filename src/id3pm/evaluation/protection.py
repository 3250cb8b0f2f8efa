"""Inverting protected templates (id3pm.encoders.protected): the deployed system stores
t(f(x)) and the attacker holds such a template. Two attackers:

- unaware: does not know t and feeds the template to a method built on plain vectors
  f(x) (a model trained on them, or retrieval over a plain training pool); possible
  only where t keeps the vector's length;
- aware: knows t (Kerckhoffs: the scheme is public; with its key, the attacker can
  apply it), and uses a model trained on protected vectors (`id3pm prepare --encoder
  protected:...`, then `train`), or retrieval over a pool it protected itself.

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


def input_dim(method) -> int | None:
    """The vector length a method takes (None: any)."""
    if hasattr(method, "pipe"):
        return int(method.pipe.id_dim)
    if isinstance(method, NearestNeighbour):
        return int(method.vectors.shape[1])
    return None


def attack_protected(system: ProtectedSystem, attackers: list[tuple[str, object]], vectors: np.ndarray,
                     independent: Encoder | None, ind_orig: np.ndarray | None, seed: int = 0) -> tuple[dict, list[str]]:
    """Rows "<protection> · <unaware|aware>: <method>" -> identity distances, type-I SAR
    under the protected system and the independent encoder, seconds per identity.
    attackers: (kind, method) with kind "unaware" or "aware". Returns (rows, notes)."""
    templates = system.templates(vectors)
    impostors = {"conditioning": impostor_distances(templates, system.encoder.distance)}
    if independent is not None:
        impostors["independent"] = impostor_distances(ind_orig, independent.distance)
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
