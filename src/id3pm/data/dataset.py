"""Reading a prepared data set: memory-mapped Parquet shards -> tensors.

Small sets (up to a few hundred thousand 64x64 crops) are decoded once into one
uint8 tensor, so that data loading is never the bottleneck of training; larger ones
are decoded on the fly by DataLoader workers.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from id3pm.data.merge import MERGED_FORMAT
from id3pm.files import read_json


def decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def vector_column(table: pa.Table) -> np.ndarray:
    """A table's id_vector column as (N, D) float32."""
    flat = table["id_vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, np.float32).reshape(table.num_rows, -1)


class PreparedDataset:
    """All shards of a prepared folder as one Arrow table (memory-mapped). A merged folder
    (id3pm.data.merge) reads every source's shards, keys prefixed with the source's name
    and a `source` column added."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "manifest.json").exists():
            raise FileNotFoundError(f"{self.path}: not a prepared data set (no manifest.json); run `id3pm prepare`")
        self.manifest = read_json(self.path / "manifest.json")
        if self.manifest.get("format") == MERGED_FORMAT:
            tables = [self._source_table(s["name"], s.get("group", s["name"]), self.path / s["path"])
                      for s in self.manifest["sources"]]
        else:
            tables = self._shard_tables(self.path)
        self.table = pa.concat_tables(tables, promote_options="default").sort_by("key")

    @staticmethod
    def _shard_tables(folder: Path) -> list[pa.Table]:
        shards = sorted((folder / "shards").glob("*.parquet"))
        if not shards:
            raise FileNotFoundError(f"{folder}: no shards")
        return [pq.read_table(p, memory_map=True) for p in shards]

    @classmethod
    def _source_table(cls, name: str, group: str, folder: Path) -> pa.Table:
        table = pa.concat_tables(cls._shard_tables(folder), promote_options="default")
        keys = pa.array([f"{name}/{k}" for k in table["key"].to_pylist()], pa.string())
        table = table.set_column(table.column_names.index("key"), "key", keys)
        return table.append_column("source", pa.array([group] * table.num_rows, pa.string()))

    @property
    def sources(self) -> np.ndarray:
        """Each row's source name (the folder's own name for an unmerged set)."""
        if "source" not in self.table.column_names:
            return np.full(len(self), self.path.name, dtype=object)
        return np.array(self.table["source"].to_pylist(), dtype=object)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def id_dim(self) -> int:
        return int(self.manifest["id_dim"])

    @property
    def attribute_names(self) -> list[str]:
        return list(self.manifest.get("attributes") or [])

    @property
    def keys(self) -> list[str]:
        return self.table["key"].to_pylist()

    def split_indices(self, split: str | None) -> np.ndarray:
        if split is None:
            return np.arange(len(self))
        return np.flatnonzero(np.array(self.table["split"].to_pylist()) == split)

    def sample_indices(self, split: str | None, n: int | None, seed: int = 0) -> np.ndarray:
        """A fixed random sample of n images of a split, for evaluation. Keys are sorted by
        file name, and UTKFace's names begin with the age, so the first n of a split are
        mostly children ("1_", "10_" ... "19_", "100_"): look-alikes whose impostor pairs
        set a far stricter threshold than the whole set's. The sample is the first n of a
        seeded permutation, so smaller samples are nested in larger ones."""
        idx = self.split_indices(split)
        order = np.random.default_rng(seed).permutation(len(idx))
        return idx[order[:n]]

    def vectors(self, indices=None) -> np.ndarray:
        flat = vector_column(self.table)
        return flat if indices is None else flat[indices]

    def attributes(self, indices=None) -> np.ndarray | None:
        if "attributes" not in self.table.column_names:
            return None
        col = self.table["attributes"].combine_chunks()
        flat = col.values.to_numpy(zero_copy_only=False).reshape(len(self), -1)
        return flat if indices is None else flat[indices]

    def metadata(self, name: str, indices=None) -> np.ndarray:
        col = f"meta_{name}"
        if col not in self.table.column_names:
            have = [c[5:] for c in self.table.column_names if c.startswith("meta_")]
            raise KeyError(f"{self.path}: no label {name!r}; labels: {have}")
        values = np.array(self.table[col].to_pylist(), dtype=object)
        return values if indices is None else values[indices]

    def identities(self, indices=None) -> np.ndarray | None:
        """Each image's person (None where unknown), or None for a set without identity
        labels. In a merged set a person is (source, label): CelebA's 2880 is not AAF's."""
        if "meta_identity" not in self.table.column_names:
            return None
        labels = self.metadata("identity", indices)
        sources = self.sources if indices is None else self.sources[indices]
        return np.array([None if v is None else f"{s}:{v}" for s, v in zip(sources, labels)], dtype=object)

    def image_bytes(self, size: int, index: int) -> bytes:
        return self.table[f"image_{size}"][int(index)].as_py()

    def images(self, size: int, indices=None) -> np.ndarray:
        """Decoded crops (N, size, size, 3) uint8."""
        col = f"image_{size}"
        if col not in self.table.column_names:
            raise KeyError(f"{self.path}: no {size}x{size} crops; prepared sizes: {self.manifest['sizes']}")
        idx = list(range(len(self))) if indices is None else [int(i) for i in indices]
        if not idx:
            return np.zeros((0, size, size, 3), np.uint8)
        column = self.table[col]
        blobs = [column[i].as_py() for i in idx]
        if len(blobs) < 2000:
            return np.stack([decode_image(b) for b in blobs])
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Pillow decodes without the GIL
            return np.stack(list(pool.map(decode_image, blobs, chunksize=256)))


class TrainingSet(torch.utils.data.Dataset):
    """(image in [-1, 1], id vector, attributes) for one split. decode_in_memory decodes
    everything once (uint8, 12 KiB per 64x64 image)."""

    def __init__(self, data: PreparedDataset, size: int, split: str | None = "train", decode_in_memory: bool = True,
                 cond_size: int | None = None):
        self.data, self.size, self.cond_size = data, size, cond_size
        self.indices = data.split_indices(split)
        if len(self.indices) == 0:
            raise ValueError(f"{data.path}: the {split!r} split is empty")
        self.vectors = torch.from_numpy(data.vectors(self.indices).copy())
        attrs = data.attributes(self.indices)
        self.attrs = None if attrs is None else torch.from_numpy(attrs.copy())
        self.cache = torch.from_numpy(data.images(size, self.indices)) if decode_in_memory else None
        self.cond_cache = None
        self.prior_cache = None  # uint8 g(y) per image when training with a regression prior (id3pm.prior)
        if cond_size and decode_in_memory:
            self.cond_cache = torch.from_numpy(data.images(cond_size, self.indices))

    def __len__(self) -> int:
        return len(self.indices)

    def _image(self, i: int, size: int, cache) -> torch.Tensor:
        if cache is not None:
            img = cache[i]
        else:
            img = torch.from_numpy(decode_image(self.data.image_bytes(size, self.indices[i])))
        return img.permute(2, 0, 1).float() / 127.5 - 1

    def __getitem__(self, i: int) -> dict:
        item = {"image": self._image(i, self.size, self.cache), "id_vector": self.vectors[i]}
        if self.attrs is not None:
            item["attributes"] = self.attrs[i]
        if self.cond_size:
            item["cond_image"] = self._image(i, self.cond_size, self.cond_cache)
        return item
