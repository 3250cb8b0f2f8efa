"""Shared fixtures: tiny data sets the tests make themselves, and the real faces of
../shared/data (tests that need them skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

if "PYTEST_XDIST_WORKER" in os.environ:  # two workers on two cores: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


STRICT = os.environ.get("ID3PM_NO_ASSET_SKIPS") == "1"  # set by .ci/run: a missing asset fails, never skips


def load_script(name: str):
    """A script of scripts/ (not a package) as a module, for tests of its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def missing_asset(reason: str):
    """A test that needs an optional asset (../shared data, faceres models, node, Chromium)
    skips with the reason on a developer's machine, and FAILS under ID3PM_NO_ASSET_SKIPS=1,
    so that CI cannot go green while skipping it unseen."""
    if STRICT:
        pytest.fail(f"missing asset (ID3PM_NO_ASSET_SKIPS=1): {reason}")
    pytest.skip(reason)


def shared_data(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        missing_asset(f"needs the real faces in {path} (../shared/data is not present here)")
    return path


PALETTE = np.array(
    [[230, 30, 30], [30, 200, 40], [40, 60, 230], [240, 220, 30], [200, 40, 200], [30, 210, 210], [250, 250, 250], [10, 10, 10]],
    np.uint8,
)


def distinct_images(n: int, size: int) -> list[np.ndarray]:
    """n clearly different pictures: a background colour with a block of another colour
    in a different quadrant."""
    images = []
    for i in range(n):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = PALETTE[i % len(PALETTE)]
        half = size // 2
        y, x = divmod(i % 4, 2)
        img[y * half : (y + 1) * half, x * half : (x + 1) * half] = PALETTE[(i + 3) % len(PALETTE)]
        images.append(img)
    return images


def pooled(images: np.ndarray, cells: int = 2) -> np.ndarray:
    """Average colour in a cells x cells grid: what a picture looks like from afar."""
    images = np.asarray(images, dtype=np.float32)
    *lead, h, w, c = images.shape
    return images.reshape(*lead, cells, h // cells, cells, w // cells, c).mean(axis=(-4, -2))


def make_tiny_prepared(root: Path, n: int = 4, size: int = 16, dim: int = 8, holdout: float = 0.0):
    """Distinct images + a table of random ID vectors, run through `prepare` (aligned, table
    encoder). Returns (prepared folder, images, vectors)."""
    from id3pm.data import PrepareConfig, prepare

    src = root / "src"
    src.mkdir(parents=True)
    images = distinct_images(n, size)
    keys = [f"img{i}.png" for i in range(n)]
    for k, img in zip(keys, images):
        Image.fromarray(img).save(src / k)
    vectors = np.random.default_rng(1).normal(size=(n, dim)).astype(np.float32)
    np.savez(root / "vectors.npz", keys=np.array(keys), vectors=vectors)
    prepare(
        PrepareConfig(src=str(src), out=str(root / "prepared"), encoder={"name": "table", "path": str(root / "vectors.npz")},
                      sizes=(size,), holdout=holdout, workers=1, aligned=True, image_format="png"),
        progress=False,
    )
    return root / "prepared", images, vectors


def untrained_dlib_model(path: Path, seed: int = 0) -> tuple[Path, object, dict]:
    """A random 32 px base model conditioned on 128-d dlib vectors: (folder, network, info).
    It draws no faces, but every stage around it runs for real (dlib, upsampler, reports)."""
    import torch

    from id3pm.modeldir import save_model_dir
    from id3pm.models import IDConditionedUNet

    torch.manual_seed(seed)
    net = IDConditionedUNet(sample_size=32, block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=32,
                            norm_num_groups=8, attention_resolutions=(16,), id_dim=128, dropout=0.0)
    info = {"task": "base", "image_size": 32, "diffusion": {"schedule": "cosine", "num_timesteps": 1000},
            "encoder": {"name": "dlib"}, "distance": "euclidean", "id_dim": 128}
    return save_model_dir(path, net, info), net, info


TINY_TRAIN = dict(
    size=8, preset="tiny", model={"block_out_channels": [32, 64], "attention_resolutions": [4]}, schedule="linear",
    batch_size=8, lr=1e-3, warmup_steps=20, sample_every=0, log_every=100, ema_decay=0.99, progress=False,
)


@pytest.fixture(scope="session")
def trained_tiny(tmp_path_factory):
    """A tiny model trained (~30 s) on 4 distinct 8x8 images, each with its own ID vector."""
    from id3pm.training import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny")
    prepared, images, vectors = make_tiny_prepared(root, size=8)
    train(TrainConfig(data=str(prepared), out=str(root / "run"), max_steps=1500, save_every=1500, **TINY_TRAIN))
    return root / "run" / "model", images, vectors
