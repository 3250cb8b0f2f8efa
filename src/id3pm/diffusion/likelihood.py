"""Gaussian KL divergence and the discretised Gaussian log-likelihood of 8-bit images:
the two terms of the variational bound L_vlb (Ho et al. 2020, Nichol & Dhariwal 2021)."""

from __future__ import annotations


import torch


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) for x in [-1, 1] quantised to 256 levels (bin width 2/255) under
    N(mean, exp(log_scale)^2); the first and last bins extend to -inf and +inf.
    The edge bins use log_ndtr, which stays accurate where the CDF saturates in fp32."""
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    plus = inv_std * (centered + 1.0 / 255.0)
    minus = inv_std * (centered - 1.0 / 255.0)
    log_cdf_plus = torch.special.log_ndtr(plus)
    log_one_minus_cdf_min = torch.special.log_ndtr(-minus)  # 1 - Phi(m) = Phi(-m)
    log_bin = torch.log((torch.special.ndtr(plus) - torch.special.ndtr(minus)).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_bin))
