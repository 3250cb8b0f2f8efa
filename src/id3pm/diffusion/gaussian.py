"""The Gaussian diffusion process. It takes the network's output as an argument and
knows nothing about the network (as in openai/guided-diffusion).

The network predicts the noise eps and, in 3 more channels, v in [-1, 1] that
interpolates the reverse-step log-variance between beta_tilde_t and beta_t
("learned range", improved DDPM). Training uses the hybrid loss
L_simple + lambda * L_vlb with lambda = 0.001 and a stop-gradient on the mean in
L_vlb, so that L_vlb only trains the variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from id3pm.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl


class GaussianDiffusion:
    def __init__(self, betas: np.ndarray, timestep_map: np.ndarray | None = None, full_betas: np.ndarray | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array in (0, 1]")
        self.betas = betas
        self.num_timesteps = len(betas)
        # Index i of this (possibly respaced) process -> timestep the network was trained with.
        self.timestep_map = np.arange(self.num_timesteps) if timestep_map is None else np.asarray(timestep_map)
        # The betas of the process the network was trained on (differs from `betas` once respaced).
        self.full_betas = betas if full_betas is None else np.asarray(full_betas, dtype=np.float64)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        # q(x_{t-1} | x_t, x_0) = N(coef1 * x_0 + coef2 * x_t, beta_tilde_t)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # beta_tilde_0 = 0: take beta_tilde_1 for the log so that it stays finite (a
        # one-step process has no beta_tilde_1: beta_0 then).
        first = self.posterior_variance[1] if self.num_timesteps > 1 else betas[0]
        self.posterior_log_variance_clipped = np.log(np.append(first, self.posterior_variance[1:]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

        # Every table in float64 here, cast to float32 once on use (as guided-diffusion):
        # 1 - alpha_bar computed in float32 at run time carries ~5e-4 relative error at t=0.
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.log_betas = np.log(betas)
        self._tables: dict = {}  # (table name, device) -> tensor copy

    # -- helpers --------------------------------------------------------------
    def _table(self, name: str, device: torch.device) -> torch.Tensor:
        """The schedule array `name` on the device, copied once: a copy from host memory on
        every sampling step would make the host wait for the GPU each step."""
        key = (name, str(device))
        if key not in self._tables:
            self._tables[key] = torch.as_tensor(getattr(self, name), device=device)
        return self._tables[key]

    def _at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Table `name` at t, as a float32 tensor broadcastable against `like` (B, ...)."""
        values = self._table(name, t.device)[t].to(torch.float32)
        return values.view(-1, *([1] * (like.ndim - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps to feed the network for process indices t."""
        return self._table("timestep_map", t.device)[t]

    # -- forward process -------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._at("sqrt_alphas_cumprod", t, x0) * x0 + self._at("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        mean = self._at("posterior_mean_coef1", t, xt) * x0 + self._at("posterior_mean_coef2", t, xt) * xt
        return mean, self._at("posterior_log_variance_clipped", t, xt)

    # -- reverse process ---------------------------------------------------------
    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._at("sqrt_recip_alphas_cumprod", t, xt) * xt - self._at("sqrt_recipm1_alphas_cumprod", t, xt) * eps

    def predict_eps(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self._at("sqrt_recip_alphas_cumprod", t, xt) * xt - x0) / self._at("sqrt_recipm1_alphas_cumprod", t, xt)

    def model_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Learned range: log sigma^2 = f log beta_t + (1 - f) log beta_tilde_t, f = (v + 1) / 2."""
        frac = (v + 1) / 2
        max_log = self._at("log_betas", t, v)
        min_log = self._at("posterior_log_variance_clipped", t, v)
        return frac * max_log + (1 - frac) * min_log

    def p_mean_variance(self, model_output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, clip: bool = True) -> dict:
        """Mean and log-variance of p(x_{t-1} | x_t) from the network output (B, 6, H, W)."""
        eps, v = model_output[:, :3], model_output[:, 3:6]
        x0 = self.predict_x0(xt, t, eps)
        if clip:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, xt, t)
        return {"mean": mean, "log_variance": self.model_log_variance(v, t), "pred_x0": x0, "eps": eps}

    # -- training ------------------------------------------------------------------
    def vb_term(self, model_output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """L_{t-1} of the variational bound per sample, in bits per dimension:
        KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0, the decoder NLL -log p(x_0|x_1) at t = 0."""
        true_mean, true_logvar = self.q_posterior(x0, xt, t)
        out = self.p_mean_variance(model_output, xt, t, clip=False)
        kl = normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"])
        kl = kl.mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        nll = nll.mean(dim=(1, 2, 3)) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(
        self,
        model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        vlb_weight: float = 0.001,
        eps_weights: torch.Tensor | None = None,
    ) -> dict:
        """Hybrid loss per sample: mean squared eps error + vlb_weight * T * L_{t-1}
        (L_vlb sums T terms; sampling one t uniformly estimates it as T * L_{t-1}).
        eps_weights: (T,) weights of the eps error at each t (id3pm.diffusion.weighting);
        "mse" stays the unweighted error, for logs that compare runs."""
        xt = self.q_sample(x0, t, noise)
        output = model_fn(xt, self.model_timesteps(t)).float()
        eps, v = output[:, :3], output[:, 3:6]
        mse = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
        # Stop-gradient on eps: L_vlb trains only the variance (improved DDPM, Sec. 3.1).
        vb = self.vb_term(torch.cat([eps.detach(), v], dim=1), x0, xt, t)
        weighted = mse if eps_weights is None else eps_weights.to(mse.device)[t] * mse
        return {"loss": weighted + vlb_weight * self.num_timesteps * vb, "mse": mse, "vb": vb}
