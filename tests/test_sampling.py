"""Samplers against diffusers' schedulers as independent references, and the
classifier-free guidance arithmetic."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from id3pm.diffusion import GaussianDiffusion, make_betas, respace, space_timesteps
from id3pm.sampling import (
    get_sampler,
    guided_denoiser,
    make_generators,
    per_image_noise,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
)

BETAS = make_betas("cosine", 1000)


def fake_network(x, t):
    """A smooth stand-in for the U-Net: eps and v depend on x and t."""
    tt = t.float().view(-1, 1, 1, 1) / 1000
    eps = 0.5 * torch.tanh(x) + 0.2 * tt * torch.sin(3 * x)
    v = 0.8 * torch.cos(x + tt)
    return torch.cat([eps, v], dim=1)


def _start(n=2, seed=0):
    return torch.randn(n, 3, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def test_ddim_matches_diffusers():
    d = respace(GaussianDiffusion(BETAS), space_timesteps(1000, "ddim10"))
    x = _start()
    ours = sample_ddim(fake_network, d, x.clone(), None, clip=False)
    ref = DDIMScheduler(num_train_timesteps=1000, trained_betas=BETAS.tolist(), clip_sample=False, set_alpha_to_one=True)
    ref.set_timesteps(10)
    assert ref.timesteps.tolist() == list(d.timestep_map[::-1])
    y = x.clone()
    for t in ref.timesteps:
        y = ref.step(fake_network(y, t.repeat(2))[:, :3], t, y).prev_sample
    torch.testing.assert_close(ours, y, atol=1e-4, rtol=1e-4)


def test_dpmpp_2m_matches_diffusers():
    d = respace(GaussianDiffusion(BETAS), space_timesteps(1000, 12))
    x = _start()
    ours = sample_dpmpp_2m(fake_network, d, x.clone(), None, clip=False)
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=BETAS.tolist(), algorithm_type="dpmsolver++", solver_order=2,
        final_sigmas_type="zero", lower_order_final=True,
    )
    ref.set_timesteps(timesteps=list(d.timestep_map[::-1]))
    y = x.clone() * ref.init_noise_sigma
    for t in ref.timesteps:
        y = ref.step(fake_network(y, t.repeat(2))[:, :3], t, y).prev_sample
    torch.testing.assert_close(ours, y, atol=1e-4, rtol=1e-4)


def test_respaced_ddpm_with_learned_variance_matches_diffusers():
    d = respace(GaussianDiffusion(BETAS), space_timesteps(1000, 10))
    x = _start(n=1)
    ours = sample_ddpm(fake_network, d, x.clone(), make_generators([7]), clip=True)
    ref = DDPMScheduler(num_train_timesteps=1000, trained_betas=BETAS.tolist(), variance_type="learned_range", clip_sample=True)
    ref.set_timesteps(timesteps=[int(t) for t in d.timestep_map[::-1]])
    g = torch.Generator().manual_seed(7)
    y = x.clone()
    for t in ref.timesteps:
        y = ref.step(fake_network(y, t.repeat(1)), t, y, generator=g).prev_sample
    torch.testing.assert_close(ours, y, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m", "unipc"])
def test_every_sampler_is_batch_invariant_and_seeded(name):
    d = respace(GaussianDiffusion(BETAS), space_timesteps(1000, 8))
    sampler = get_sampler(name)
    seeds = [3, 4, 5]
    gens = make_generators(seeds)
    x = per_image_noise(gens, (3, 4, 4), "cpu")
    together = sampler(fake_network, d, x, gens)
    gens = make_generators(seeds)
    alone = [sampler(fake_network, d, per_image_noise([g], (3, 4, 4), "cpu"), [g]) for g in gens]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=1e-5)
    assert together.abs().max() <= 1.0 + 1e-6


def test_unknown_sampler_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        get_sampler("euler")


class Recorder(torch.nn.Module):
    """Returns cond=+1 / uncond=-1 noise channels and records each call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, id_vector=None, drop_id=None, attributes=None, attr_mask=None):
        self.calls.append(x.shape[0])
        sign = torch.where(drop_id, -1.0, 1.0).view(-1, 1, 1, 1)
        eps = sign * torch.ones_like(x) + id_vector[:, :1].view(-1, 1, 1, 1)
        v = sign * 0.5 * torch.ones_like(x)
        return torch.cat([eps, v], 1)


def test_classifier_free_guidance_arithmetic_in_one_forward():
    rec = Recorder()
    y = torch.tensor([[0.25, 0.0], [1.0, 0.0]])
    denoise = guided_denoiser(rec, y, guidance_scale=2.0)
    out = denoise(torch.zeros(2, 3, 2, 2), torch.tensor([10, 10]))
    assert rec.calls == [4]  # conditional and unconditional batched together
    # eps_u + s (eps_c - eps_u) = -1 + y + 2 ((1 + y) - (-1 + y)) = 3 + y
    np.testing.assert_allclose(out[:, 0, 0, 0].numpy(), [3.25, 4.0])
    np.testing.assert_allclose(out[:, 3:, 0, 0].numpy(), 0.5)  # variance from the conditional pass
    rec.calls.clear()
    guided_denoiser(rec, y, guidance_scale=1.0)(torch.zeros(2, 3, 2, 2), torch.tensor([1, 1]))
    assert rec.calls == [2]  # s = 1 needs no unconditional pass


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m", "unipc"])
def test_a_single_step_returns_the_x0_a_known_eps_implies(name):
    # eps = (x_t - sqrt(a_t) target) / sqrt(1 - a_t) at every t: the denoised image is
    # exactly `target`, so one step from pure noise must return it (no noise is added
    # on the last step; the one-step posterior mean is x0 itself).
    full = GaussianDiffusion(BETAS)
    target = torch.linspace(-0.6, 0.6, 48).view(1, 3, 4, 4)

    def known_eps(x, t):
        a = torch.as_tensor(full.alphas_cumprod, dtype=torch.float64)[t].view(-1, 1, 1, 1)
        eps = (x.double() - a.sqrt() * target.double()) / (1 - a).sqrt()
        return torch.cat([eps.float(), torch.zeros_like(x)], dim=1)

    d = respace(full, space_timesteps(1000, 1))
    gens = make_generators([0])
    out = get_sampler(name)(known_eps, d, per_image_noise(gens, (3, 4, 4), "cpu"), gens)
    # fp32 eps at t = T: its rounding (~6e-8 relative) times 1/sqrt(a_T) ~ 2e4 -> ~5e-3
    torch.testing.assert_close(out, target, atol=1e-2, rtol=0)


def test_the_first_sampling_step_runs_outside_autocast():
    from id3pm.sampling import FirstStepInFP32

    seen = []

    def denoise(x, t):
        seen.append((torch.is_autocast_enabled("cpu"), x.dtype))
        return torch.zeros(x.shape[0], 6, *x.shape[2:])

    wrapped = FirstStepInFP32(denoise)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        for _ in range(3):
            wrapped(torch.zeros(1, 3, 4, 4), torch.zeros(1, dtype=torch.long))
    assert seen == [(False, torch.float32), (True, torch.float32), (True, torch.float32)]


def test_unipc_walks_our_respaced_grid():
    # diffusers' UniPC spaces its own steps unless told otherwise; it must visit exactly
    # the timesteps our respacing keeps (T=1000, N=21 keeps 499, where rounding picks 500).
    d = respace(GaussianDiffusion(BETAS), space_timesteps(1000, 21))
    seen = []

    def network(x, t):
        seen.append(int(t[0]))
        return fake_network(x, t)

    gens = make_generators([0, 1])
    get_sampler("unipc")(network, d, _start(), gens)
    assert seen == sorted(space_timesteps(1000, 21), reverse=True)
    assert 499 in seen


def _x0_from_eps(x, t, eps):
    a = torch.as_tensor(np.cumprod(1 - BETAS), dtype=torch.float64)[t].view(-1, 1, 1, 1)
    return (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt(), a


def test_unipc_clips_the_predicted_x0_at_every_step():
    # Reference: the same solver without clipping, driven by a network whose eps already
    # implies the clipped x0. Per-step clipping must give the same images.
    d = respace(GaussianDiffusion(BETAS), space_timesteps(1000, 8))

    def wild(x, t):  # implies x0 far outside [-1, 1]
        return fake_network(3 * x, t)

    def pre_clipped(x, t):
        out = wild(x, t)
        x0, a = _x0_from_eps(x, t, out[:, :3])
        eps = (x.double() - a.sqrt() * x0.clamp(-1, 1)) / (1 - a).sqrt()
        return torch.cat([eps.float(), out[:, 3:]], dim=1)

    unipc = get_sampler("unipc")
    x = _start(seed=3)
    clipped = unipc(wild, d, x.clone(), None, clip=True)
    reference = unipc(pre_clipped, d, x.clone(), None, clip=False)
    torch.testing.assert_close(clipped, reference, atol=2e-2, rtol=0)
    only_final_clamp = unipc(wild, d, x.clone(), None, clip=False).clamp(-1, 1)
    assert (only_final_clamp - reference).abs().max() > 0.2  # the test can tell the two apart
