"""Finished rows of an evaluation, kept in its output folder, so that a rerun into the
same --out (after a crash, or with more --queries) samples only the rows it lacks.

A query-refined row at N = 256 is an hour or two of CPU: losing it to a crash, or
sampling it again to add a row at another N, is the work the quality bar says a long job
must not lose. A row is found again only when everything that made it is the same: the
method's settings, the model's files (their bytes, not their path: a folder overwritten by
a newer period is another model), the originals and the seed. A row still being made is
kept identity by identity in a partial file beside it, so a crash inside the row loses one
identity, not the row.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np


def folder_digest(folder: str | Path) -> str:
    """sha256 over the names and bytes of every file under `folder` (a model folder, its
    prior included)."""
    h = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()


class RowCache:
    """One .npz per row: its reconstructions, the queries each identity spent, and the
    key it was made under (checked on load, so a hash collision cannot mix rows)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def _path(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.folder / f"{digest}.npz"

    def _partial_path(self, key: dict) -> Path:
        return self._path(key).with_suffix(".part.npz")

    def get(self, key: dict) -> tuple[np.ndarray, list[int], float] | None:
        return self._load(self._path(key), key)

    def get_partial(self, key: dict) -> tuple[np.ndarray, list[int], float] | None:
        """The first identities of an unfinished row, in order, with their queries and seconds."""
        return self._load(self._partial_path(key), key)

    def _load(self, path: Path, key: dict) -> tuple[np.ndarray, list[int], float] | None:
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["key"])) != json.loads(json.dumps(key)):
                    return None
                return z["images"], z["spent"].tolist(), float(z["seconds"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # torn or foreign: make it again
            return None

    def put(self, key: dict, images: np.ndarray, spent: list[int], seconds: float) -> None:
        """seconds: the row's wall time, so the report's cost column survives a rerun."""
        self._save(self._path(key), key, images, spent, seconds)
        self._partial_path(key).unlink(missing_ok=True)

    def put_partial(self, key: dict, images: np.ndarray, spent: list[int], seconds: float) -> None:
        self._save(self._partial_path(key), key, images, spent, seconds)

    def _save(self, path: Path, key: dict, images: np.ndarray, spent: list[int], seconds: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name.removesuffix(".npz") + ".tmp.npz")  # written whole, then renamed
        np.savez(tmp, key=json.dumps(key, sort_keys=True), images=images, spent=np.asarray(spent, np.int64),
                 seconds=np.float64(seconds))
        tmp.replace(path)
