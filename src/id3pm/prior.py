"""The regression prior (DiffuseVAE, Pandey et al. 2022, with the paper's Eq. 4 decoder).

A one-to-one decoder g(y) (a model trained with `id3pm train --task regression`)
turns an identity vector into a blurry mean face in one forward. A base model trained
with `--prior DIR` sees g(y) as 3 extra input channels, next to x_t, like the
super-resolution stage sees its low-resolution input: the diffusion model only has to
learn what the mean face lacks, and the identity reaches it through pixels as well as
through the Linear layer on y.

Classifier-free guidance drops the prior image together with y (zeros, i.e. a grey
image): the unconditional branch must know nothing of the identity.

The prior image is quantised to 8 bits in training (a uint8 cache of the whole
training set) and therefore in sampling too, so that both see the same input.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from id3pm.models import IDConditionedUNet

PRIOR_FOLDER = "prior"  # inside a model folder: the regression decoder, itself a model folder

# Sampling starts from g(y) noised to 90% of the schedule (t = 899 of 1000, sigma = 6.4),
# not from pure noise at its end (sigma = 2e4 on the cosine schedule): DiffuseVAE's
# "generator-refiner" start. Why: an eps-predicting model turns its noise error e into
# an x0 error sigma * e, so at sigma = 2e4 the x0 guess of the first step is garbage,
# and its per-channel mean (the colour of the whole face) saturates under clipping and
# stays. Measured on the period-2 reference model (48 holdout ids, docs/results.md):
# colour error of x0's mean 437 at t=999 vs 0.17 at t=900; samples' mean RGB 140/134/139
# with a per-face spread of 67/53/65 from pure noise (yellow and blue faces), 157/124/110
# and 24/20/22 from g(y) (data: 157/124/110).
PRIOR_START = 0.9


@torch.no_grad()
def prior_images(prior: IDConditionedUNet, vectors: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, D) identity vectors -> (N, 3, S, S) uint8 images g(y), on the CPU."""
    device = next(prior.parameters()).device
    out = []
    for start in range(0, len(vectors), batch_size):
        y = vectors[start : start + batch_size].to(device, torch.float32)
        image = prior.regress(y)[:, :3].float().clamp(-1, 1)
        out.append(((image + 1) * 127.5).round().to(torch.uint8).cpu())
    return torch.cat(out)


def cached_prior_images(prior, vectors: torch.Tensor, path: Path) -> torch.Tensor:
    """g(y) for these vectors, from `path` when it holds them for exactly these vectors
    (the run's prior never changes), else computed and written there."""
    import hashlib

    from safetensors.torch import load_file, save_file

    digest = hashlib.sha256(vectors.numpy().tobytes()).hexdigest()
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("vectors_sha256") == digest:
                return load_file(str(path))["images"]
    images = prior_images(prior, vectors)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: DDP ranks may all get here
    save_file({"images": images}, str(tmp), metadata={"vectors_sha256": digest})
    tmp.replace(path)
    return images


def as_input(images: torch.Tensor, device, drop: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float in [-1, 1] on device; rows where drop is True become 0."""
    x = images.to(device).float() / 127.5 - 1
    if drop is not None:
        x = x * (~drop.bool()).to(x.dtype).view(-1, 1, 1, 1)
    return x


def widen_input_channels(model: IDConditionedUNet, state: dict) -> list[str]:
    """Load `state`, a network's weights with FEWER input channels (a model trained
    without the prior), into `model`: the missing input channels of the first
    convolution start at zero, so the widened network computes exactly what the old one
    did until training teaches it to use them. Returns the names of widened tensors."""
    own = model.state_dict()
    if set(own) != set(state):
        raise ValueError(f"the weights do not fit this network: {sorted(set(own) ^ set(state))[:4]} ...")
    widened = []
    for name, value in state.items():
        target = own[name]
        if value.shape != target.shape:
            if value.ndim != 4 or value.shape[0] != target.shape[0] or value.shape[1] > target.shape[1] \
                    or value.shape[2:] != target.shape[2:]:
                raise ValueError(f"{name}: cannot widen {tuple(value.shape)} to {tuple(target.shape)}")
            grown = torch.zeros_like(target)
            grown[:, : value.shape[1]] = value
            value = grown
            widened.append(name)
        own[name] = value
    model.load_state_dict(own)
    return widened


def prior_folder(model_dir: str | Path) -> Path:
    return Path(model_dir) / PRIOR_FOLDER
