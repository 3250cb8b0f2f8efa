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

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from id3pm.data.dataset import PreparedDataset
from id3pm.encoders.protected import TRANSFORMS
from id3pm.files import atomic_write_bytes, atomic_write_json, read_json


def protected_spec(plain: dict, transform: dict) -> dict:
    """The encoder spec of the protected system: {"name": "protected", "encoder": plain, ...}."""
    return {"name": "protected", "encoder": dict(plain), **transform}


def protect_prepared(src: str | Path, dst: str | Path, transform: dict) -> dict:
    """Write DST: SRC with every id_vector replaced by its protected template. transform:
    {"transform": "biohash", "key": 7, ...}. Shard by shard, each written atomically and
    skipped when already there, so an interrupted run continues. Returns the manifest."""
    src, dst = Path(src), Path(dst)
    manifest = read_json(src / "manifest.json")
    if manifest["encoder"].get("name") == "protected":
        raise ValueError(f"{src}: already protected ({manifest['encoder']}); protect a plain set")
    options = {k: v for k, v in transform.items() if k != "transform"}
    if transform.get("transform") not in TRANSFORMS:
        raise ValueError(f"unknown template transform {transform.get('transform')!r}; choose one of {sorted(TRANSFORMS)}")
    t = TRANSFORMS[transform["transform"]](int(manifest["id_dim"]), **options)
    spec = protected_spec(manifest["encoder"], t.spec())
    existing = read_json(dst / "manifest.json")["encoder"] if (dst / "manifest.json").exists() else spec
    if existing != spec:
        raise ValueError(f"{dst}: holds templates of {existing}, not {spec}; use a new folder")
    (dst / "shards").mkdir(parents=True, exist_ok=True)
    for shard in sorted((src / "shards").glob("*.parquet")):
        target = dst / "shards" / shard.name
        if not target.exists():
            atomic_write_bytes(target, _protected_shard(pq.read_table(shard), t))
    if (src / "skipped").exists():
        shutil.copytree(src / "skipped", dst / "skipped", dirs_exist_ok=True)
    out = {**manifest, "encoder": spec, "id_dim": t.out_dim, "distance": t.distance or manifest["distance"],
           "derived_from": {"path": str(src.resolve()), "encoder": manifest["encoder"]}}
    atomic_write_json(dst / "manifest.json", out)
    PreparedDataset(dst)  # reads back: a shard that does not load fails here, not in training
    return out


def _protected_shard(table: pa.Table, transform) -> bytes:
    plain = np.asarray(table["id_vector"].combine_chunks().flatten(), np.float32).reshape(table.num_rows, -1)
    protected = transform(plain)
    column = pa.FixedSizeListArray.from_arrays(pa.array(protected.reshape(-1), pa.float32()), transform.out_dim)
    table = table.set_column(table.column_names.index("id_vector"), "id_vector", column)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue().to_pybytes()
