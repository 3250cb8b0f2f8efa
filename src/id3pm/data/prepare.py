"""`id3pm prepare`: a folder of face photos -> a sharded Parquet data set of
(canonical crop, identity vector, attributes, labels) pairs.

- Every face is detected and cut into the canonical crop (id3pm.alignment), then
  encoded by the black box from that crop (aligned=True), exactly as generated
  images will be encoded later.
- Resumable: results land in shards written atomically; a rerun reads which keys
  are done (or were skipped) and only does the rest.
- `--shard i/n` lets n machines split one folder by a hash of each file's key.
- The train/holdout split is a hash of the key: the same image always lands on the
  same side, whatever the order, sharding or number of workers. With identity labels
  (`--split-by identity`) it is a hash of the identity instead, so that all photos of one
  person land on one side: a holdout that a model cannot have memorised.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from id3pm.alignment import CANONICAL_PADDING, CANONICAL_SIZE, FaceAligner
from id3pm.data.metadata import MetadataError, metadata_parser
from id3pm.encoders import make_encoder
from id3pm.files import atomic_write_bytes, atomic_write_json, read_json
from id3pm.images import ImageError, load_image, resize

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass
class PrepareConfig:
    src: str  # folder of photos (searched recursively)
    out: str  # output folder
    encoder: dict = field(default_factory=lambda: {"name": "dlib"})  # encoder spec
    sizes: tuple[int, ...] = (64,)  # square crop sides to store (e.g. 64,128 for super-resolution)
    holdout: float = 0.05  # fraction of keys (or identities) held out of training, by hash
    split_by: str = "key"  # "key" (file), or "identity": a hash of the label `identity` from --metadata
    workers: int = 0  # processes (0: all cores)
    metadata: str | None = None  # "utkface" or "csv:PATH"
    attributes: tuple[str, ...] = ()  # attributes to store: "pose", "expression" (estimated), "meta:NAME" (a label)
    shard: tuple[int, int] = (0, 1)  # this machine's part i of n
    chunk: int = 1000  # images per Parquet shard
    image_format: str = "webp"  # storage format of crops: webp, png or jpeg
    quality: int = 95  # webp/jpeg quality
    multiple_faces: str = "error"  # photos with several faces: "error" (skip) or "largest"
    aligned: bool = False  # inputs are already canonical crops: no detection, only a centre square resize
    limit: int | None = None  # only the first N files (for tries)


def list_images(src: str | Path) -> list[str]:
    """Relative posix paths of image files under src, sorted."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such folder")
    keys = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(keys)


def key_hash(key: str, salt: str = "") -> float:
    """A stable number in [0, 1) for a key."""
    return int(hashlib.sha1((salt + key).encode()).hexdigest()[:12], 16) / 16**12


def split_of(key: str, holdout: float) -> str:
    return "holdout" if key_hash(key, "split:") < holdout else "train"


def split_key(cfg: PrepareConfig, key: str, meta: dict) -> str:
    """What the split hashes: the file, or the person in it."""
    if cfg.split_by == "key":
        return key
    if cfg.split_by == "identity":
        if meta.get("identity") is None:
            raise MetadataError(f"{key}: --split-by identity needs an identity label (--metadata celeba:FILE, aaf or csv)")
        return f"identity:{meta['identity']}"
    raise ValueError(f"--split-by {cfg.split_by!r}: use 'key' or 'identity'")


def encode_image(img: np.ndarray, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    params = {"png": {"optimize": True}, "webp": {"quality": quality, "method": 6}, "jpeg": {"quality": quality}}
    Image.fromarray(img).save(buf, format=fmt.upper(), **params[fmt])
    return buf.getvalue()


def centre_square(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    s = min(h, w)
    return img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]


# -- worker side -------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(cfg: PrepareConfig) -> None:
    aligner = FaceAligner()
    _WORKER["cfg"] = cfg
    _WORKER["aligner"] = aligner
    _WORKER["encoder"] = make_encoder(dict(cfg.encoder), aligner=aligner)
    _WORKER["meta"] = metadata_parser(cfg.metadata)
    groups = [a for a in cfg.attributes if not a.startswith("meta:")]
    if groups:
        from id3pm.attributes import AttributeEstimator

        _WORKER["attrs"] = AttributeEstimator(groups, aligner=aligner)


def process_one(key: str) -> dict:
    """One photo -> a row, or {"key", "skip": reason}. Never raises."""
    cfg: PrepareConfig = _WORKER["cfg"]
    try:
        meta = _WORKER["meta"](key) if _WORKER["meta"] else {}
        photo = load_image(os.path.join(cfg.src, key), name=key)
        if cfg.aligned:  # already canonical: keep the source resolution, no detour through 256 px
            crop, num_faces = centre_square(photo), 1
        else:
            face = _WORKER["aligner"].align(photo, CANONICAL_SIZE, multiple=cfg.multiple_faces, name=key)
            crop, num_faces = face.crop, face.num_faces
        enc = _WORKER["encoder"].encode([crop], aligned=True, keys=[key])
        if enc.errors[0]:
            return {"key": key, "skip": enc.errors[0]}
        row = {
            "key": key,
            "split": split_of(split_key(cfg, key, meta), cfg.holdout),
            "id_vector": enc.vectors[0].tolist(),
            "meta": meta,
            "warning": f"{num_faces} faces found, used the largest" if num_faces > 1 else None,
        }
        for size in cfg.sizes:
            row[f"image_{size}"] = encode_image(resize(crop, size), cfg.image_format, cfg.quality)
        if cfg.attributes:
            row["attributes"] = attribute_values(cfg, crop, meta, key)
        return row
    except (ImageError, MetadataError) as e:
        return {"key": key, "skip": str(e)}
    except Exception as e:  # a bug or a broken file must not stop the batch
        return {"key": key, "skip": f"{key}: unexpected {type(e).__name__}: {e}"}


def attribute_values(cfg: PrepareConfig, crop: np.ndarray, meta: dict, key: str) -> list[float]:
    estimated = iter(_WORKER["attrs"].estimate_aligned(crop).tolist()) if "attrs" in _WORKER else iter(())
    values = []
    for a in cfg.attributes:
        if a.startswith("meta:"):
            value = meta.get(a[5:])
            if value is None:
                raise MetadataError(f"{key}: no value for attribute label {a[5:]!r}")
            values.append(float(value))
        else:
            from id3pm.attributes import ATTRIBUTE_GROUPS

            values += [next(estimated) for _ in ATTRIBUTE_GROUPS[a]]
    return values


def stored_attribute_names(attributes) -> list[str]:
    from id3pm.attributes import attribute_names

    names = []
    for a in attributes:
        names += [a[5:]] if a.startswith("meta:") else attribute_names([a])
    return names


# -- main side -------------------------------------------------------------------------
def done_keys(out: Path) -> set[str]:
    """Keys already written to shards or recorded as skipped."""
    done: set[str] = set()
    for path in sorted((out / "shards").glob("*.parquet")):
        done.update(pq.read_table(path, columns=["key"])["key"].to_pylist())
    for path in sorted((out / "skipped").glob("*.jsonl")):
        done.update(json.loads(line)["key"] for line in path.read_text().splitlines() if line)
    return done


def rows_to_table(rows: list[dict], cfg: PrepareConfig, dim: int, attr_names: list[str], meta_cols: list[str]) -> pa.Table:
    columns = {
        "key": pa.array([r["key"] for r in rows], pa.string()),
        "split": pa.array([r["split"] for r in rows], pa.string()),
        "id_vector": pa.array([r["id_vector"] for r in rows], pa.list_(pa.float32(), dim)),
        "warning": pa.array([r["warning"] for r in rows], pa.string()),
    }
    for size in cfg.sizes:
        columns[f"image_{size}"] = pa.array([r[f"image_{size}"] for r in rows], pa.binary())
    if attr_names:
        columns["attributes"] = pa.array([r["attributes"] for r in rows], pa.list_(pa.float32(), len(attr_names)))
    for col in meta_cols:
        columns[f"meta_{col}"] = pa.array([r["meta"].get(col) for r in rows])
    return pa.table(columns)


class ShardWriter:
    """Buffers rows and skips; flushes them as one Parquet shard + one skip log, atomically."""

    def __init__(self, out: Path, cfg: PrepareConfig, tag: str, dim: int, attr_names: list[str]):
        self.out, self.cfg, self.tag, self.dim, self.attr_names = out, cfg, tag, dim, attr_names
        (out / "shards").mkdir(parents=True, exist_ok=True)
        (out / "skipped").mkdir(parents=True, exist_ok=True)
        existing = list((out / "shards").glob(f"part-{tag}-*.parquet")) + list((out / "skipped").glob(f"part-{tag}-*.jsonl"))
        self.seq = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in existing), default=-1)
        self.rows: list[dict] = []
        self.skips: list[dict] = []

    def add(self, result: dict) -> None:
        (self.skips if "skip" in result else self.rows).append(result)
        if len(self.rows) + len(self.skips) >= self.cfg.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.rows and not self.skips:
            return
        name = f"part-{self.tag}-{self.seq:05d}"
        if self.skips:  # skip log first: a crash in between only redoes the good rows
            text = "".join(json.dumps({"key": s["key"], "reason": s["skip"]}) + "\n" for s in self.skips)
            atomic_write_bytes(self.out / "skipped" / f"{name}.jsonl", text.encode())
        if self.rows:
            meta_cols = sorted({k for r in self.rows for k in r["meta"]})
            table = rows_to_table(self.rows, self.cfg, self.dim, self.attr_names, meta_cols)
            buf = pa.BufferOutputStream()
            pq.write_table(table, buf, compression="zstd")
            atomic_write_bytes(self.out / "shards" / f"{name}.parquet", buf.getvalue().to_pybytes())
        self.seq += 1
        self.rows, self.skips = [], []


def skip_category(reason: str) -> str:
    for text, category in [
        ("no face", "no face found"),
        ("faces found", "several faces"),
        ("cannot read", "unreadable file"),
        ("too large", "image too large"),
        ("no such file", "missing file"),
        ("malformed UTKFace", "malformed UTKFace name"),
        ("no labels", "no labels"),
        ("no vector", "no vector in table"),
        ("non-finite", "non-finite vector"),
    ]:
        if text in reason:
            return category
    return "other"


def summarize(out: Path) -> dict:
    """Counts over ALL shards and skip logs in `out` (every machine's part)."""
    counts: Counter = Counter()
    for path in sorted((out / "shards").glob("*.parquet")):
        counts.update(pq.read_table(path, columns=["split"])["split"].to_pylist())
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    for path in sorted((out / "skipped").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            item = json.loads(line)
            cat = skip_category(item["reason"])
            skipped[cat] += 1
            examples.setdefault(cat, [])
            if len(examples[cat]) < 5:
                examples[cat].append(item["reason"])
    return {
        "counts": {"train": counts["train"], "holdout": counts["holdout"]},
        "skipped": dict(skipped),
        "skip_examples": examples,
    }


def prepare(cfg: PrepareConfig, progress: bool = True) -> dict:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    i, n = cfg.shard
    keys = [k for k in list_images(cfg.src) if n == 1 or int(key_hash(k, "shard:") * 1e9) % n == i]
    if cfg.limit:
        keys = keys[: cfg.limit]
    done = done_keys(out)
    todo = [k for k in keys if k not in done]

    probe = make_encoder(dict(cfg.encoder))
    attr_names = stored_attribute_names(cfg.attributes)
    dataset_info = {
        "format": "id3pm-prepared/1",
        "encoder": probe.spec(),
        "id_dim": probe.dim,
        "distance": probe.distance,
        "sizes": list(cfg.sizes),
        "alignment": {"kind": "given" if cfg.aligned else "dlib-5-point-chip", "padding": CANONICAL_PADDING},
        "image_format": cfg.image_format,
        "holdout_fraction": cfg.holdout,
        "split_by": cfg.split_by,
        "attributes": attr_names,
        "metadata": cfg.metadata,
        "source": str(Path(cfg.src).resolve()),
    }
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = read_json(manifest_path)
        for k in ("encoder", "id_dim", "sizes", "attributes", "holdout_fraction", "split_by"):
            if old.get(k, "key" if k == "split_by" else None) != dataset_info[k] and not (k == "encoder" and old[k]["name"] == dataset_info[k]["name"]):
                raise ValueError(f"{out}: prepared with {k}={old.get(k)!r}, now {dataset_info[k]!r}; use a new folder")

    workers = cfg.workers or os.cpu_count() or 1
    writer = ShardWriter(out, cfg, f"{i}of{n}", probe.dim, attr_names)
    start, made, skipped = time.time(), 0, 0
    bar = tqdm(total=len(todo), desc="prepare", unit="img", disable=not progress)
    try:
        if workers == 1:
            _init_worker(cfg)
            results = map(process_one, todo)
            pool = None
        else:
            # spawn, not fork: forking a process that already runs torch/OpenMP threads can deadlock
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(cfg,))
            results = pool.imap_unordered(process_one, todo, chunksize=4)
        for result in results:
            writer.add(result)
            made += "skip" not in result
            skipped += "skip" in result
            bar.update()
        writer.flush()
    finally:
        bar.close()
        writer.flush()
        if workers > 1 and pool is not None:
            pool.terminate()
    elapsed = time.time() - start
    summary = summarize(out)
    run = {
        "files_in_part": len(keys),
        "already_done": len(keys) - len(todo),
        "processed": len(todo),
        "written": made,
        "skipped": skipped,
        "seconds": round(elapsed, 2),
        "images_per_second": round(len(todo) / elapsed, 2) if elapsed > 0 and todo else None,
        "workers": workers,
        "shard": f"{i}/{n}",
    }
    manifest = {**dataset_info, **summary, "last_run": run}
    atomic_write_json(manifest_path, manifest)
    return manifest
