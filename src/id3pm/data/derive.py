"""A prepared set derived from another: the same crops, labels and split, new vectors.

`id3pm protect` (templates t(f(x)) of a protection scheme, computed from the stored
vectors) and `id3pm reencode` (the stored crops encoded by another FR model) both write
the set that `prepare` would have written with their encoder, without detecting and
aligning the photos again. The work goes shard by shard, each shard written atomically
and skipped when already there, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from id3pm.data.dataset import PreparedDataset
from id3pm.data.merge import MERGED_FORMAT
from id3pm.files import atomic_write_bytes, atomic_write_json, read_json

# (shard table) -> (N, out_dim) float32 vectors; a NaN row drops that photo from the new set
ShardVectors = Callable[[pa.Table], np.ndarray]


def derive_prepared(src: str | Path, dst: str | Path, spec: dict, out_dim: int, distance: str,
                    vectors_of: ShardVectors, dropped_reason: str = "no vector", progress: bool = False) -> dict:
    """Write DST: SRC's shards with every id_vector replaced by vectors_of(shard), under
    the encoder `spec`. Returns DST's manifest (counts of what the new set holds)."""
    src, dst = Path(src), Path(dst)
    manifest = read_json(src / "manifest.json")
    if manifest.get("format") == MERGED_FORMAT:
        raise ValueError(f"{src}: a merged set; derive each of its sources, then merge the results")
    existing = read_json(dst / "manifest.json")["encoder"] if (dst / "manifest.json").exists() else spec
    if existing != spec:
        raise ValueError(f"{dst}: holds vectors of {existing}, not {spec}; use a new folder")
    (dst / "shards").mkdir(parents=True, exist_ok=True)
    for shard in tqdm(sorted((src / "shards").glob("*.parquet")), desc=f"{dst.name}: shards", disable=not progress):
        target = dst / "shards" / shard.name
        if not target.exists():
            atomic_write_bytes(target, _shard_bytes(pq.read_table(shard), vectors_of, out_dim))
    if (src / "skipped").exists():
        shutil.copytree(src / "skipped", dst / "skipped", dirs_exist_ok=True)
    counts: Counter = Counter()
    for path in sorted((dst / "shards").glob("*.parquet")):
        counts.update(pq.read_table(path, columns=["split"])["split"].to_pylist())
    lost = sum(manifest["counts"].values()) - sum(counts.values())
    skipped = {**manifest.get("skipped", {}), **({dropped_reason: lost} if lost else {})}
    out = {**manifest, "encoder": spec, "id_dim": int(out_dim), "distance": distance,
           "counts": {split: counts[split] for split in manifest["counts"]}, "skipped": skipped,
           "derived_from": {"path": str(src.resolve()), "encoder": manifest["encoder"]}}
    atomic_write_json(dst / "manifest.json", out)
    PreparedDataset(dst)  # reads back: a shard that does not load fails here, not in training
    return out


def _shard_bytes(table: pa.Table, vectors_of: ShardVectors, out_dim: int) -> bytes:
    vectors = np.asarray(vectors_of(table), np.float32)
    keep = np.isfinite(vectors).all(axis=1)
    table, vectors = table.filter(pa.array(keep)), vectors[keep]
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), out_dim)
    table = table.set_column(table.column_names.index("id_vector"), "id_vector", column)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue().to_pybytes()

