"""Noise schedules: the betas of the forward process q(x_t | x_{t-1})."""

from __future__ import annotations

import math

import numpy as np


def linear_betas(num_timesteps: int) -> np.ndarray:
    """Ho et al. (2020): betas from 1e-4 to 0.02 over 1000 steps, rescaled so that
    other step counts cover the same total noise."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2),
    betas clipped at max_beta to avoid a singularity at t = T."""

    def alpha_bar(t: float) -> float:
        return math.cos((t / num_timesteps + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar(i + 1) / alpha_bar(i), max_beta) for i in range(num_timesteps)]
    return np.array(betas, dtype=np.float64)


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}


def make_betas(name: str, num_timesteps: int) -> np.ndarray:
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](num_timesteps)
