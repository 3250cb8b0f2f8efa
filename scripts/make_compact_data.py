"""Make the compact copy of a prepared data set that travels to the GPU machine (the
working tree that travels is limited to 64 MiB): only the columns training needs, at
the sizes asked for, optionally a subset of the training split.

    python scripts/make_compact_data.py data_prepared/utk data_compact/utk64 --sizes 64
    python scripts/make_compact_data.py data_prepared/utk data_compact/utk128 --sizes 64,128 --max-mib 60
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from id3pm.data import PreparedDataset
from id3pm.files import atomic_write_json


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--sizes", default="64")
    p.add_argument("--max-mib", type=float, default=60.0, help="prune training rows (never the holdout) to fit")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    data = PreparedDataset(args.src)
    drop = [c for c in data.table.column_names if c.startswith("image_") and int(c[6:]) not in sizes]
    table = data.table.drop_columns(drop + ["warning"])
    per_row = sum(table.column(c).nbytes for c in table.column_names) / len(table)
    budget = int(args.max_mib * 2**20 / per_row)
    note = None
    if budget < len(table):  # keep every holdout row, the first training rows by key order
        split = table["split"].to_pylist()
        hold = [i for i, s in enumerate(split) if s == "holdout"]
        train = [i for i, s in enumerate(split) if s == "train"][: max(0, budget - len(hold))]
        table = table.take(sorted(hold + train))
        note = f"pruned to {len(train)} of {split.count('train')} training rows to fit {args.max_mib} MiB"
    out = Path(args.dst)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    for i in range(0, len(table), 5000):
        pq.write_table(table.slice(i, 5000), out / "shards" / f"part-{i // 5000:05d}.parquet", compression="zstd")
    manifest = dict(data.manifest)
    manifest.update(sizes=sizes, compact_of=str(Path(args.src).resolve()), pruning=note,
                    counts={"train": table["split"].to_pylist().count("train"),
                            "holdout": table["split"].to_pylist().count("holdout")})
    atomic_write_json(out / "manifest.json", manifest)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(json.dumps({"rows": len(table), "mib": round(size, 1), "pruning": note, "counts": manifest["counts"]}))


if __name__ == "__main__":
    main()
