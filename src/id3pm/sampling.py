"""Samplers: short plain functions with one signature (as in k-diffusion).

    sampler(denoise, diffusion, x, generators, clip=True, progress=False) -> x_0

- denoise(x_t, t) returns the network output (B, 6, H, W) for ORIGINAL timesteps t,
  classifier-free guidance already applied (see `guided_denoiser`);
- diffusion is the (respaced) GaussianDiffusion whose steps the sampler walks;
- x is the initial noise x_T; generators holds one torch.Generator per image, so
  image i draws the same noise whatever batch it is in.
"""

from __future__ import annotations

import inspect

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from id3pm.diffusion import GaussianDiffusion, respace, space_timesteps

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DEFAULT_SAMPLER = "dpmpp_2m"  # DPM-Solver++(2M): what the pipeline, the CLI and the server use unless told


def per_image_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    """Standard normal noise of shape (len(generators), *shape), row i from generators[i]."""
    rows = torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators])
    if torch.device(device).type == "cuda":  # pinned + non_blocking: the copy does not stall the host
        return rows.pin_memory().to(device, non_blocking=True)
    return rows.to(device)


def make_generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    # Generators live on the CPU so that a seed means the same picture on every device.
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def guided_denoiser(
    model: torch.nn.Module,
    id_vectors: torch.Tensor,
    guidance_scale: float,
    attributes: torch.Tensor | None = None,
    attr_mask: torch.Tensor | None = None,
    prior_image: torch.Tensor | None = None,
    shared: dict[str, torch.Tensor] | None = None,
) -> Denoiser:
    """Classifier-free guidance: eps = eps_u + s (eps_c - eps_u) on the noise channels;
    the variance channels come from the conditional pass (as in GLIDE). The conditional
    and unconditional passes go through the network in ONE batched forward.
    prior_image: g(y) of a model trained with a regression prior (`id3pm.prior`); the
    unconditional pass gets zeros in its place, as in training. shared: further inputs
    that both passes see unchanged (an upsampler's low-resolution image and its level)."""
    batch = id_vectors.shape[0]

    def cond_args(n_copies: int, drop: list[bool]):
        drop_id = torch.tensor(sum([[d] * batch for d in drop], []), device=id_vectors.device)
        rep = lambda a: None if a is None else a.repeat(n_copies, *([1] * (a.ndim - 1)))  # noqa: E731
        args = dict(id_vector=rep(id_vectors), drop_id=drop_id, attributes=rep(attributes), attr_mask=rep(attr_mask))
        if prior_image is not None:
            args["cond_image"] = torch.cat([torch.zeros_like(prior_image) if d else prior_image for d in drop])
        args.update({k: rep(v) for k, v in (shared or {}).items()})
        return args

    if guidance_scale == 1.0:  # conditional only: half the work
        args = cond_args(1, [False])
        return lambda x, t: model(x, t, **args)
    if guidance_scale == 0.0:  # unconditional only
        args = cond_args(1, [True])
        return lambda x, t: model(x, t, **args)
    args = cond_args(2, [False, True])

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(torch.cat([x, x]), torch.cat([t, t]), **args)
        cond, uncond = out[:batch], out[batch:]
        eps = uncond[:, :3] + guidance_scale * (cond[:, :3] - uncond[:, :3])
        return torch.cat([eps, cond[:, 3:]], dim=1)

    return denoise


def sampling_grid(num_timesteps: int, num_steps: int, strength: float = 1.0) -> list[int]:
    """The original timesteps a sampler visits: num_steps evenly spaced ones (respacing),
    of which those at or below the fraction `strength` of the schedule (at least one)."""
    kept = space_timesteps(num_timesteps, num_steps)
    return [t for t in kept if t <= (num_timesteps - 1) * strength] or kept[:1]


def start_of_sampling(diffusion: GaussianDiffusion, num_steps: int, noise: torch.Tensor,
                      start: torch.Tensor | None = None, strength: float = 1.0):
    """The respaced process to walk and the x to start from. start=None: pure noise at the
    end of the schedule. start (B, 3, H, W) in [-1, 1]: those images noised to the fraction
    `strength` of the schedule, and only the grid's steps at or below that level (SDEdit,
    Meng et al. 2022; DiffuseVAE's start from g(y))."""
    if start is None:
        return respace(diffusion, sampling_grid(diffusion.num_timesteps, num_steps)), noise
    kept = sampling_grid(diffusion.num_timesteps, num_steps, strength)
    t_top = torch.full((len(noise),), kept[-1], dtype=torch.long, device=noise.device)
    return respace(diffusion, kept), diffusion.q_sample(start.float(), t_top, noise.float())


class FirstStepInFP32:
    """A denoiser whose first call runs outside autocast. The first step of a
    deterministic sampler from t = T turns eps into x0 = (x - sqrt(1 - a) eps) / sqrt(a)
    with sqrt(a) ~ 5e-5 on the cosine schedule: bf16 rounding of eps (~4e-3) would be
    amplified ~2e4 times there. Later steps amplify far less and keep bf16's speed."""

    def __init__(self, denoise: Denoiser):
        self.denoise, self.calls = denoise, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1 and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.denoise(x.float(), t)
        return self.denoise(x, t)


def _steps(diffusion: GaussianDiffusion, progress: bool):
    indices = list(range(diffusion.num_timesteps))[::-1]
    return tqdm(indices, desc="sampling", leave=False) if progress else indices


def _t(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)


@torch.no_grad()
def sample_ddpm(denoise: Denoiser, diffusion: GaussianDiffusion, x, generators, clip=True, progress=False):
    """Ancestral sampling with the learned variance; on a respaced process this is the
    paper's fast mode ("respaced DDPM")."""
    for i in _steps(diffusion, progress):
        t = _t(i, x)
        out = diffusion.p_mean_variance(denoise(x, diffusion.model_timesteps(t)).float(), x, t, clip=clip)
        x = out["mean"]
        if i > 0:
            x = x + torch.exp(0.5 * out["log_variance"]) * per_image_noise(generators, x.shape[1:], x.device)
    return x


@torch.no_grad()
def sample_ddim(denoise: Denoiser, diffusion: GaussianDiffusion, x, generators, clip=True, progress=False, eta=0.0):
    """DDIM (Song et al. 2021); eta = 0 is deterministic given x_T."""
    for i in _steps(diffusion, progress):
        t = _t(i, x)
        eps = denoise(x, diffusion.model_timesteps(t)).float()[:, :3]
        x0 = diffusion.predict_x0(x, t, eps)
        if clip:
            x0 = x0.clamp(-1, 1)
            eps = diffusion.predict_eps(x, t, x0)
        acp = diffusion.alphas_cumprod[i]
        acp_prev = diffusion.alphas_cumprod_prev[i]
        sigma = eta * np.sqrt((1 - acp_prev) / (1 - acp) * (1 - acp / acp_prev))
        x = np.sqrt(acp_prev) * x0 + np.sqrt(max(1 - acp_prev - sigma**2, 0.0)) * eps  # rounding can go below 0
        if sigma > 0 and i > 0:
            x = x + sigma * per_image_noise(generators, x.shape[1:], x.device)
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoiser, diffusion: GaussianDiffusion, x, generators, clip=True, progress=False):
    """DPM-Solver++(2M) (Lu et al. 2022), data prediction, multistep; the last step
    goes to sigma = 0 with the first-order update, i.e. returns the final x_0 estimate."""
    acp = diffusion.alphas_cumprod
    alpha, sigma = np.sqrt(acp), np.sqrt(1 - acp)
    lam = np.log(alpha) - np.log(sigma)
    prev_x0, prev_h = None, None
    for i in _steps(diffusion, progress):
        t = _t(i, x)
        x0 = diffusion.predict_x0(x, t, denoise(x, diffusion.model_timesteps(t)).float()[:, :3])
        if clip:
            x0 = x0.clamp(-1, 1)
        if i == 0:
            return x0
        h = lam[i - 1] - lam[i]
        d = x0
        if prev_x0 is not None:
            r = prev_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
        x = (sigma[i - 1] / sigma[i]) * x - alpha[i - 1] * np.expm1(-h) * d
        prev_x0, prev_h = x0, h
    return x


def use_our_grid(scheduler, diffusion: GaussianDiffusion) -> None:
    """Make a diffusers multistep scheduler walk OUR kept timesteps. Schedulers that take
    custom timesteps get them; the others (UniPC's `set_timesteps` ignores a grid and
    spaces its own) get their timesteps and sigmas replaced after `set_timesteps`: their
    `step` reads the noise level from `sigmas[step_index]` and counts steps from 0."""
    kept = np.asarray(diffusion.timestep_map, dtype=np.int64)[::-1].copy()
    if "timesteps" in inspect.signature(scheduler.set_timesteps).parameters:
        scheduler.set_timesteps(timesteps=kept.tolist())
        return
    scheduler.set_timesteps(num_inference_steps=len(kept))
    abar = np.cumprod(1.0 - np.asarray(diffusion.full_betas, dtype=np.float64))[kept]
    sigmas = np.append(np.sqrt((1 - abar) / abar), 0.0)  # ends at sigma 0 (final_sigmas_type="zero")
    scheduler.timesteps = torch.from_numpy(kept)
    scheduler.sigmas = torch.from_numpy(sigmas.astype(np.float32))


def diffusers_sampler(scheduler_cls_name: str, **scheduler_kwargs):
    """Any deterministic multistep scheduler of diffusers (UniPC, DEIS, ...) as a sampler
    of our signature, driven by our betas and our kept timesteps."""

    @torch.no_grad()
    def sample(denoise: Denoiser, diffusion: GaussianDiffusion, x, generators, clip=True, progress=False):
        import diffusers

        full_betas = diffusion.full_betas
        scheduler = getattr(diffusers, scheduler_cls_name)(
            num_train_timesteps=len(full_betas),
            trained_betas=full_betas.tolist(),
            prediction_type="epsilon",
            # "Dynamic" thresholding with its threshold capped at 1 is plain clipping of
            # the predicted x0 to [-1, 1] at every step, as our own samplers do.
            thresholding=clip,
            sample_max_value=1.0,
            **scheduler_kwargs,
        )
        use_our_grid(scheduler, diffusion)
        steps = tqdm(scheduler.timesteps, desc="sampling", leave=False) if progress else scheduler.timesteps
        for t in steps:
            tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            eps = denoise(x, tt).float()[:, :3]
            x = scheduler.step(eps, t, x).prev_sample
        return x.clamp(-1, 1) if clip else x

    return sample


SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
    "unipc": diffusers_sampler("UniPCMultistepScheduler", final_sigmas_type="zero"),
}


def get_sampler(name: str) -> Callable:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]
