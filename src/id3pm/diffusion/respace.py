"""Respacing: run the reverse process on a subset of the training timesteps
(improved DDPM, Sec. 4). A respaced process is an ordinary GaussianDiffusion whose
betas are recomputed from alpha_bar at the kept steps, plus a map back to the
network's timesteps."""

from __future__ import annotations

import numpy as np

from id3pm.diffusion.gaussian import GaussianDiffusion


def space_timesteps(num_timesteps: int, spec: int | str) -> list[int]:
    """Which timesteps to keep.

    spec = N or "N": N steps, evenly spaced, first (0) and last (T-1) included
                     (N = 1: only T-1, one step from pure noise).
    spec = "ddimN": a fixed stride T // N starting at 0 (the DDIM paper's spacing).
    spec = "a,b,c": split [0, T) into equal sections with a, b, c steps each.
    """
    spec = str(spec)
    if spec.startswith("ddim"):
        count = int(spec[4:])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == count:
                return list(range(0, num_timesteps, stride))
        raise ValueError(f"cannot take exactly {count} steps with an integer stride from {num_timesteps}")
    counts = [int(c) for c in spec.split(",")]
    if counts == [1]:
        return [num_timesteps - 1]
    size_per, extra = divmod(num_timesteps, len(counts))
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"cannot take {count} steps from a section of {size} timesteps")
        # improved-diffusion's running sum, not round(stride * j): the two differ at .5 ties
        stride = (size - 1) / (count - 1) if count > 1 else 1
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return sorted(set(kept))


def respace(diffusion: GaussianDiffusion, use_timesteps: list[int]) -> GaussianDiffusion:
    """A process over `use_timesteps` with the same alpha_bar at each kept step."""
    use_timesteps = sorted(use_timesteps)
    last = 1.0
    betas = []
    for t in use_timesteps:
        acp = diffusion.alphas_cumprod[t]
        betas.append(1.0 - acp / last)
        last = acp
    return GaussianDiffusion(
        np.array(betas), timestep_map=diffusion.timestep_map[use_timesteps], full_betas=diffusion.full_betas
    )
