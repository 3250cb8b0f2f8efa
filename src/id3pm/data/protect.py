"""A prepared set of protected templates, derived from a prepared set of plain ones.

An attacker who knows a protection scheme trains on protected vectors t(f(x)). Every
transform in id3pm.encoders.protected is a deterministic function of the plain vector
(its randomness comes from the key, and for `noise` also from the vector itself), so
t(f(x)) can be computed from the stored f(x) without running the FR model again:
seconds instead of the 40 minutes that `prepare --encoder protected:...` spends
detecting, aligning and encoding 23.7k faces on 2 cores. The result is the set that
`prepare` would have written (tests/test_protected.py checks this), crops and labels
included, so `train` and `evaluate` take it as they take any prepared set.

    id3pm protect ~/.cache/id3pm/data/utk ~/.cache/id3pm/data/utk-biohash7 --transform biohash:key=7
"""

from __future__ import annotations

from pathlib import Path

from id3pm.data.dataset import vector_column
from id3pm.data.derive import derive_prepared
from id3pm.encoders.protected import TRANSFORMS
from id3pm.files import read_json


def protected_spec(plain: dict, transform: dict) -> dict:
    """The encoder spec of the protected system: {"name": "protected", "encoder": plain, ...}."""
    return {"name": "protected", "encoder": dict(plain), **transform}


def protect_prepared(src: str | Path, dst: str | Path, transform: dict) -> dict:
    """Write DST: SRC with every id_vector replaced by its protected template. transform:
    {"transform": "biohash", "key": 7, ...}. Shard by shard (id3pm.data.derive), so an
    interrupted run continues. Returns the manifest."""
    manifest = read_json(Path(src) / "manifest.json")
    if manifest["encoder"].get("name") == "protected":
        raise ValueError(f"{src}: already protected ({manifest['encoder']}); protect a plain set")
    options = {k: v for k, v in transform.items() if k != "transform"}
    if transform.get("transform") not in TRANSFORMS:
        raise ValueError(f"unknown template transform {transform.get('transform')!r}; choose one of {sorted(TRANSFORMS)}")
    t = TRANSFORMS[transform["transform"]](int(manifest["id_dim"]), **options)
    return derive_prepared(src, dst, protected_spec(manifest["encoder"], t.spec()), t.out_dim,
                           t.distance or manifest["distance"], lambda table: t(vector_column(table)))
