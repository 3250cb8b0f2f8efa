"""Writing what generating commands produce: sample PNGs marked as synthetic, a
contact sheet per identity and for the whole job, and results.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from id3pm.encoders.table import read_vector_table
from id3pm.files import atomic_write_json
from id3pm.images import contact_sheet, save_png


def safe_name(key: str) -> str:
    """A folder name from an image key or path."""
    stem = Path(str(key)).stem or "item"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:80]


def write_identity(out: Path, name: str, images: np.ndarray, seeds, params: dict,
                   distances: np.ndarray | None = None, reference: np.ndarray | None = None) -> dict:
    """K samples of one identity: out/name/seed_XXXX.png + out/name/sheet.png."""
    folder = out / name
    files = []
    for img, seed in zip(images, seeds):
        path = save_png(img, folder / f"seed_{seed:04d}.png", {**params, "seed": int(seed), "identity": name})
        files.append(str(path.relative_to(out)))
    captions = [[""] + [f"d={d:.3f}" if np.isfinite(d) else "d=n/a" for d in distances]] if distances is not None else None
    row = [reference] + list(images) if reference is not None else list(images)
    if captions and reference is None:
        captions = [captions[0][1:]]
    sheet = contact_sheet([row], captions=captions, cell=128)
    save_png(sheet, folder / "sheet.png", params)
    return {
        "identity": name,
        "files": files,
        "seeds": [int(s) for s in seeds],
        "identity_distance": None if distances is None else [None if not np.isfinite(d) else round(float(d), 5) for d in distances],
    }


def write_job_sheet(out: Path, rows: list[list[np.ndarray | None]], labels: list[str], params: dict, header: list[str]) -> None:
    if rows:
        save_png(contact_sheet(rows, row_labels=labels, col_labels=header, cell=96), out / "sheet.png", params)


def write_results(out: Path, payload: dict) -> None:
    atomic_write_json(out / "results.json", payload)


def read_vectors(path: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """Identity vectors from .npy ((N, D) or (D,)), .json (list of lists, or {key: list}),
    or a keyed table (.npz, .csv, .parquet). Rows are checked by the caller, one by one,
    so a single bad row does not sink the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such vector file")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        arr = arr[None] if arr.ndim == 1 else arr
        return [f"vector_{i}" for i in range(len(arr))], list(arr.astype(np.float32))
    if path.suffix == ".json":
        obj = json.loads(path.read_text())
        if isinstance(obj, list) and obj and not isinstance(obj[0], list):
            obj = [obj]  # a single vector
        items = obj.items() if isinstance(obj, dict) else ((f"vector_{i}", v) for i, v in enumerate(obj))
        keys, rows = [], []
        for key, value in items:
            keys.append(str(key))
            try:
                rows.append(np.asarray(value, dtype=np.float32))
            except (TypeError, ValueError):
                rows.append(np.array([np.nan], dtype=np.float32))  # rejected by the row check with its key
        return keys, rows
    keys, table = read_vector_table(path)
    return keys, list(table)
