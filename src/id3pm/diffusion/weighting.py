"""Weights of the noise-prediction loss over timesteps.

The uniform-t eps loss spends most of its magnitude at small t, on fine detail that does
not depend on the person (#24, period 25: knowing y lowers the eps error by 0.2-1% at t = 50
and by 7-11% at t >= 650). These weightings move weight towards the noisier steps, where
coarse content (face shape, layout) is decided:

- "p2": Perception Prioritized training (Choi et al. 2022), w_t = 1 / (k + SNR_t)^gamma, k = 1, gamma = 1.
- "min_snr": Min-SNR-gamma (Hang et al. 2023) for eps prediction, w_t = min(SNR_t, gamma) / SNR_t, gamma = 5.

SNR_t = alpha_bar_t / (1 - alpha_bar_t). Every weighting is scaled to mean 1 over the T
steps, so that the loss keeps its size and a run's learning rate means the same; the L_vlb
term that trains the variance is not weighted.
"""

from __future__ import annotations

import numpy as np

WEIGHTINGS = ("", "p2", "min_snr")


def snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
    return alphas_cumprod / (1.0 - alphas_cumprod)


def loss_weights(name: str, alphas_cumprod: np.ndarray, k: float = 1.0, gamma: float | None = None) -> np.ndarray | None:
    """(T,) weights of the eps MSE at each t, mean 1; None for the uniform loss ("")."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {name!r}; choose one of {list(WEIGHTINGS)}")
    if not name:
        return None
    ratio = snr(alphas_cumprod)
    if name == "p2":
        weights = 1.0 / (k + ratio) ** (1.0 if gamma is None else gamma)
    else:
        weights = np.minimum(ratio, 5.0 if gamma is None else gamma) / ratio
    return weights / weights.mean()
