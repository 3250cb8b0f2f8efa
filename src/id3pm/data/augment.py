"""`id3pm augment`: training copies of a prepared set whose identity vectors stay true.

Each copy is a stored crop changed by a few transforms (mirror, photometric, geometric
jitter, blur, JPEG) and then **encoded again by the black box**, so that y = f(x') is
exact for the copy, as the method allows: queries, no gradients. Training on x' with
the original y would teach the model that the change costs no identity, which the
black box may not agree with.

- The copies form a prepared set of their own (keys `aug<k>/<key>`, all in the train
  split, labels copied, pose and expression estimated again), to merge beside their
  source: `id3pm merge OUT celeba=... celeba-aug@celeba=...` draws them in the source's
  share (id3pm.data.merge).
- `--measure N` changes N crops by each transform alone and reports how far each moves
  y (and how far encoding the stored crop again moves it: the floor), without writing.
- Resumable like prepare: shards are written atomically and a rerun skips done keys.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from id3pm.data.dataset import PreparedDataset, decode_image
from id3pm.data.prepare import PrepareConfig, ShardWriter, done_keys, encode_image, summarize
from id3pm.encoders import identity_distance, make_encoder
from id3pm.files import atomic_write_json
from id3pm.images import resize


class Mirror:
    name = "mirror"

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.ascontiguousarray(img[:, ::-1])


class Photometric:
    """Brightness, contrast and colour temperature, each a random factor."""

    name = "photometric"

    def __init__(self,
                 brightness: float = 0.25,  # gain in [1 - b, 1 + b]
                 contrast: float = 0.25,  # spread about the mean grey in [1 - c, 1 + c]
                 temperature: float = 0.1):  # red up and blue down by t (warmer), or the reverse
        self.brightness, self.contrast, self.temperature = brightness, contrast, temperature

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = img.astype(np.float32)
        x *= rng.uniform(1 - self.brightness, 1 + self.brightness)
        mean = x.mean()
        x = mean + (x - mean) * rng.uniform(1 - self.contrast, 1 + self.contrast)
        t = rng.uniform(-self.temperature, self.temperature)
        x *= np.array([1 + t, 1.0, 1 - t], np.float32)
        return np.clip(x, 0, 255).round().astype(np.uint8)


class Greyscale:
    name = "grey"

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        grey = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.repeat(grey.round().astype(np.uint8)[..., None], 3, axis=2)


class Geometric:
    """A small similarity jitter about the centre: what a detector's landmarks vary by,
    well inside the canonical crop's padding (reflected at the border)."""

    name = "geometric"

    def __init__(self,
                 scale: float = 0.05,  # zoom in [1 - s, 1 + s]
                 rotation_deg: float = 5.0,  # in [-r, r]
                 shift: float = 0.03):  # in [-s, s] of the side, each axis
        self.scale, self.rotation_deg, self.shift = scale, rotation_deg, shift

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        side = img.shape[0]
        m = cv2.getRotationMatrix2D((side / 2, side / 2), rng.uniform(-self.rotation_deg, self.rotation_deg),
                                    rng.uniform(1 - self.scale, 1 + self.scale))
        m[:, 2] += rng.uniform(-self.shift, self.shift, 2) * side
        return cv2.warpAffine(img, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


class Blur:
    name = "blur"

    def __init__(self,
                 sigma: tuple[float, float] = (0.5, 1.5)):  # Gaussian sigma in pixels of a 128 px crop
        self.sigma = sigma

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        sigma = rng.uniform(*self.sigma) * img.shape[0] / 128
        return cv2.GaussianBlur(img, (0, 0), sigma)


class Jpeg:
    name = "jpeg"

    def __init__(self,
                 quality: tuple[int, int] = (30, 70)):  # JPEG quality, uniform
        self.quality = quality

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(rng.integers(*self.quality, endpoint=True)))
        return decode_image(buf.getvalue())


TRANSFORMS = {t.name: t for t in (Mirror, Photometric, Greyscale, Geometric, Blur, Jpeg)}


def parse_transforms(spec: str) -> list:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in TRANSFORMS]
    if unknown or not names:
        raise ValueError(f"--transforms {spec!r}: unknown {unknown}; use some of {sorted(TRANSFORMS)}")
    return [TRANSFORMS[n]() for n in names]


def augment_copy(img: np.ndarray, transforms: list, rng: np.random.Generator, p: float) -> tuple[np.ndarray, str]:
    """Each transform with probability p (at least one); returns the copy and what it went through."""
    chosen = [t for t in transforms if rng.random() < p] or [transforms[int(rng.integers(len(transforms)))]]
    for t in chosen:
        img = t(img, rng)
    return img, "+".join(t.name for t in chosen)


@dataclass
class AugmentConfig:
    src: str  # prepared set (id3pm prepare)
    out: str  # output prepared set of copies
    transforms: str = "mirror,photometric,grey,geometric,blur,jpeg"  # which, by name
    p: float = 0.5  # probability of each transform in a copy (at least one is applied)
    copies: int = 1  # copies per training image
    seed: int = 0
    workers: int = 0  # processes (0: all cores)
    chunk: int = 1000  # images per shard
    limit: int | None = None  # only the first N training images (of a seeded sample)


# -- worker side -------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(src: str, transforms: str) -> None:
    data = PreparedDataset(src)
    _WORKER["data"] = data
    _WORKER["encoder"] = make_encoder(dict(data.manifest["encoder"]))
    _WORKER["transforms"] = parse_transforms(transforms)
    groups = [g for g in ("pose", "expression") if set(data.attribute_names) & set(_group(g))]
    if groups:
        from id3pm.attributes import AttributeEstimator

        _WORKER["attrs"] = AttributeEstimator(groups, aligner=_WORKER["encoder"].aligner)


def _group(name: str) -> list[str]:
    from id3pm.attributes import ATTRIBUTE_GROUPS

    return list(ATTRIBUTE_GROUPS[name])


def _copies(job: tuple[int, int, float, int]) -> list[dict]:
    """Copies k of image `index` (seeded by (seed, index, k)), encoded by the black box."""
    index, copies, p, seed = job
    data = _WORKER["data"]
    key = data.keys[index]
    sizes = data.manifest["sizes"]
    crop = decode_image(data.image_bytes(max(sizes), index))
    images, chains, keys = [], [], []
    for k in range(copies):
        img, chain = augment_copy(crop, _WORKER["transforms"], np.random.default_rng([seed, index, k]), p)
        images.append(img)
        chains.append(chain)
        keys.append(f"aug{k}/{key}")
    enc = _WORKER["encoder"].encode(images, aligned=True, keys=keys)
    meta = {c[5:]: data.table[c][index].as_py() for c in data.table.column_names if c.startswith("meta_")}
    rows = []
    for img, chain, k, vec, err in zip(images, chains, keys, enc.vectors, enc.errors):
        if err:
            rows.append({"key": k, "skip": err})
            continue
        row = {"key": k, "split": "train", "id_vector": vec.tolist(), "meta": {**meta, "augment": chain},
               "warning": None, **{f"image_{s}": encode_image(resize(img, s), data.manifest["image_format"], 95)
                                   for s in sizes}}
        if data.attribute_names:
            try:
                row["attributes"] = _WORKER["attrs"].estimate_aligned(img).tolist()
            except Exception as e:  # landmarks lost on a strong change: skip the copy, say why
                rows.append({"key": k, "skip": f"{k}: no landmarks after {chain} ({type(e).__name__})"})
                continue
        rows.append(row)
    return rows


# -- main side -------------------------------------------------------------------------
def augment_prepared(cfg: AugmentConfig, progress: bool = True) -> dict:
    data = PreparedDataset(cfg.src)
    parse_transforms(cfg.transforms)  # a bad name fails here, not in a worker
    out = Path(cfg.out)
    train = data.sample_indices("train", cfg.limit, seed=cfg.seed)
    done = done_keys(out)
    todo = [int(i) for i in train if any(f"aug{k}/{data.keys[i]}" not in done for k in range(cfg.copies))]
    writer_cfg = PrepareConfig(src=cfg.src, out=cfg.out, sizes=tuple(data.manifest["sizes"]), chunk=cfg.chunk,
                               image_format=data.manifest["image_format"])
    writer = ShardWriter(out, writer_cfg, "aug", data.id_dim, data.attribute_names)
    workers = cfg.workers or mp.cpu_count()
    jobs = [(i, cfg.copies, cfg.p, cfg.seed) for i in todo]
    start = time.time()
    pool = None
    try:
        if workers == 1:
            _init_worker(cfg.src, cfg.transforms)
            results = map(_copies, jobs)
        else:
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(cfg.src, cfg.transforms))
            results = pool.imap_unordered(_copies, jobs, chunksize=8)
        for rows in tqdm(results, total=len(jobs), desc="augment", unit="img", disable=not progress):
            for row in rows:
                if row["key"] not in done:  # a crash between two shards left some copies of an image
                    writer.add(row)
    finally:
        writer.flush()
        if pool is not None:
            pool.terminate()
    manifest = {**{k: data.manifest[k] for k in ("encoder", "id_dim", "distance", "sizes", "alignment",
                                                 "image_format", "attributes")},
                "format": "id3pm-prepared/1", "holdout_fraction": 0.0, "split_by": "key",
                "augmented_from": str(Path(cfg.src).resolve()), "augment": cfg.__dict__, **summarize(out),
                "last_run": {"processed": len(todo), "seconds": round(time.time() - start, 1)}}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def measure_shifts(src: str, n: int = 200, seed: int = 0) -> dict:
    """How far each transform alone moves the black box's vector, over n training crops
    (mean, median, 90th percentile of the distance to the stored vector). `reencode` is
    the stored crop encoded again: what the crop's resolution alone moves it."""
    data = PreparedDataset(src)
    encoder = make_encoder(dict(data.manifest["encoder"]))
    idx = data.sample_indices("train", n, seed=seed)
    crops = data.images(max(data.manifest["sizes"]), idx)
    stored = data.vectors(idx)
    out = {}
    for name, transform in [("reencode", None)] + [(t.name, t) for t in parse_transforms(",".join(TRANSFORMS))]:
        changed = crops if transform is None else [transform(c, np.random.default_rng([seed, i])) for i, c in enumerate(crops)]
        v = encoder.encode(list(changed), aligned=True).vectors
        d = identity_distance(v, stored, encoder.distance)
        d = d[np.isfinite(d)]
        out[name] = {"mean": float(d.mean()), "median": float(np.median(d)), "p90": float(np.percentile(d, 90)),
                     "n": int(len(d))}
    return out
