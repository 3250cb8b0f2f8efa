"""Held-out denoising error: the validation loss a diffusion run does not log.

The training loss of one batch is noisy (one random t and noise per image) and seen with
dropout on, so two runs cannot be compared by it. Here a base model is scored in eval mode
on fixed images, at a fixed grid of timesteps with fixed noise (the same for every model
given the same seed), so that two models' errors are paired image by image:

    error_cond(x) = mean over t of || eps - eps_theta(x_t, t, y, g(y)) ||^2
    error_null(x) = the same with y (and g(y)) dropped, as classifier-free guidance drops them
    identity_gain = error_null - error_cond    how much knowing y helps denoise x

On the training split and on people never seen, these tell under-fitting (both errors
alike and high) from memorising (the training split's error far below the held-out one),
and identity_gain shows how much of the picture the model reads from y (#24's diagnosis).
The error is the training loss's (on the noise eps), so it weighs small t most: near pure
noise x_t is nearly eps itself and every model predicts it well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from id3pm.prior import as_input as prior_as_input, prior_images
from id3pm.sampling import guided_denoiser

# t on the full schedule (T = 1000): from nearly clean to nearly pure noise, evenly spaced,
# as the training objective weighs every t alike
DEFAULT_TIMESTEPS = tuple(range(50, 1000, 100))


@dataclass
class DenoisingErrors:
    """Per image (N,), averaged over the timesteps, and per timestep (K,), averaged over images."""

    timesteps: np.ndarray  # (K,) on the full schedule
    cond: np.ndarray  # (N,) eps MSE knowing y
    null: np.ndarray  # (N,) eps MSE with y dropped
    cond_by_t: np.ndarray  # (K,)
    null_by_t: np.ndarray  # (K,)

    @property
    def identity_gain(self) -> np.ndarray:
        return self.null - self.cond

    def summary(self) -> dict:
        return {
            "images": len(self.cond),
            "timesteps": self.timesteps.tolist(),
            "error_cond": float(self.cond.mean()),
            "error_null": float(self.null.mean()),
            "identity_gain": float(self.identity_gain.mean()),
            "error_cond_by_t": self.cond_by_t.tolist(),
            "error_null_by_t": self.null_by_t.tolist(),
        }


def fixed_noise(n: int, size: int, timesteps, seed: int) -> torch.Tensor:
    """(K, N, 3, S, S) standard normal noise, one draw per (timestep, image): the same for
    every model scored with the same seed, so that their errors pair up."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((len(timesteps), n, 3, size, size), generator=gen)


@torch.inference_mode()
def denoising_errors(pipe, images: np.ndarray, vectors: np.ndarray, timesteps=DEFAULT_TIMESTEPS, seed: int = 0,
                     batch_size: int = 64) -> DenoisingErrors:
    """images (N, S, S, 3) uint8 at the model's size, vectors (N, D) their y: the errors of an
    id3pm.pipeline.ID3PMPipeline's base model (attributes dropped, as sampling does by default)."""
    if pipe.info.get("task") != "base":
        raise ValueError(f"a denoising error needs a diffusion model, not a {pipe.info.get('task')!r} one")
    size = pipe.image_size
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise ValueError(f"images must be (N, {size}, {size}, 3) at the model's size, got {images.shape}")
    if len(images) != len(vectors):
        raise ValueError(f"{len(images)} images but {len(vectors)} vectors")
    pipe.model.eval()
    diffusion, device = pipe.diffusion, pipe.device
    timesteps = np.asarray(timesteps, dtype=np.int64)
    noise = fixed_noise(len(images), size, timesteps, seed)
    cond = np.zeros((len(timesteps), len(images)))
    null = np.zeros_like(cond)
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        x0 = torch.as_tensor(images[part], device=device).permute(0, 3, 1, 2).float() / 127.5 - 1
        y = torch.as_tensor(np.asarray(vectors[part], dtype=np.float32), device=device)
        prior = None if pipe.prior is None else prior_as_input(prior_images(pipe.prior, y), device)
        knowing = guided_denoiser(pipe.model, y, 1.0, prior_image=prior)
        dropped = guided_denoiser(pipe.model, y, 0.0, prior_image=prior)
        for k, t in enumerate(timesteps):
            eps = noise[k, part].to(device)
            tt = torch.full((len(x0),), int(t), device=device, dtype=torch.long)
            xt = diffusion.q_sample(x0, tt, eps)
            model_t = diffusion.model_timesteps(tt)
            cond[k, part] = ((knowing(xt, model_t)[:, :3].float() - eps) ** 2).mean(dim=(1, 2, 3)).cpu().numpy()
            null[k, part] = ((dropped(xt, model_t)[:, :3].float() - eps) ** 2).mean(dim=(1, 2, 3)).cpu().numpy()
    return DenoisingErrors(timesteps, cond.mean(0), null.mean(0), cond.mean(1), null.mean(1))
