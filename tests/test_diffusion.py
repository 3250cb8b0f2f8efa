"""The diffusion process against independently computed values."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from id3pm.diffusion import GaussianDiffusion, make_betas, respace, space_timesteps
from id3pm.diffusion.likelihood import discretized_gaussian_log_likelihood, normal_kl


def test_linear_schedule_endpoints_and_rescaling():
    b = make_betas("linear", 1000)
    assert b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02) and len(b) == 1000
    b100 = make_betas("linear", 100)
    assert b100[0] == pytest.approx(1e-3) and b100[-1] == pytest.approx(0.2)


def test_cosine_schedule_matches_alpha_bar_formula():
    T, s = 1000, 0.008
    acp = np.cumprod(1 - make_betas("cosine", T))
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    for t in [0, 10, 250, 500, 900]:
        assert acp[t] == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert make_betas("cosine", T).max() <= 0.999


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        make_betas("quadratic", 10)


def test_normal_kl_hand_values():
    # KL(N(1, 2) || N(0, 1)) = 0.5 (2 + 1 - 1 - ln 2)
    kl = normal_kl(torch.tensor(1.0), torch.tensor(math.log(2.0)), torch.tensor(0.0), torch.tensor(0.0))
    assert kl.item() == pytest.approx(0.5 * (2 - math.log(2)), rel=1e-6)
    same = normal_kl(torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(0.3), torch.tensor(-1.0))
    assert same.item() == pytest.approx(0.0, abs=1e-7)


def test_discretized_gaussian_log_likelihood_against_scipy():
    x = torch.tensor([-1.0, -0.5, 0.0, 127 / 127.5 - 1, 1.0], dtype=torch.float64)
    mean = torch.tensor([-0.9, -0.45, 0.02, 0.1, 0.95], dtype=torch.float64)
    std = torch.tensor([0.1, 0.05, 0.02, 0.3, 0.04], dtype=torch.float64)
    got = discretized_gaussian_log_likelihood(x, mean, torch.log(std)).numpy()
    want = []
    for xi, m, s in zip(x.numpy(), mean.numpy(), std.numpy()):
        if xi <= -1:
            p = stats.norm.cdf(xi + 1 / 255, m, s)
        elif xi >= 1:
            p = stats.norm.sf(xi - 1 / 255, m, s)
        else:
            p = stats.norm.cdf(xi + 1 / 255, m, s) - stats.norm.cdf(xi - 1 / 255, m, s)
        want.append(math.log(p))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _diffusion(T=1000, name="linear"):
    return GaussianDiffusion(make_betas(name, T))


def test_posterior_matches_bayes_rule():
    d = _diffusion()
    t, x0, xt = 300, 0.4, -0.7
    acp_prev = d.alphas_cumprod[t - 1]
    alpha, beta = 1 - d.betas[t], d.betas[t]
    # Gaussian prior x_{t-1} ~ N(sqrt(acp_prev) x0, 1 - acp_prev), likelihood x_t ~ N(sqrt(alpha) x_{t-1}, beta)
    precision = 1 / (1 - acp_prev) + alpha / beta
    var = 1 / precision
    mean = var * (math.sqrt(acp_prev) * x0 / (1 - acp_prev) + math.sqrt(alpha) * xt / beta)
    m, logv = d.q_posterior(torch.full((1, 1, 1, 1), x0), torch.full((1, 1, 1, 1), xt), torch.tensor([t]))
    assert m.item() == pytest.approx(mean, rel=1e-5)
    assert math.exp(logv.item()) == pytest.approx(var, rel=1e-5)


def test_q_sample_and_x0_eps_round_trip():
    d = _diffusion(name="cosine")
    g = torch.Generator().manual_seed(0)
    # not t = 999: there alpha_bar ~ 2e-9 and x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) amplifies float32 rounding 2e4 times
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 900])
    xt = d.q_sample(x0, t, noise)
    torch.testing.assert_close(d.predict_x0(xt, t, noise), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(d.predict_eps(xt, t, x0), noise, atol=1e-4, rtol=1e-4)


def test_learned_range_variance_endpoints():
    d = _diffusion()
    t = torch.tensor([5, 600])
    v = torch.ones(2, 3, 2, 2)
    torch.testing.assert_close(d.model_log_variance(v, t)[:, 0, 0, 0], torch.log(torch.tensor(d.betas[[5, 600]], dtype=torch.float32)))
    low = d.model_log_variance(-v, t)[:, 0, 0, 0]
    torch.testing.assert_close(low, torch.tensor(d.posterior_log_variance_clipped[[5, 600]], dtype=torch.float32))


def test_vb_is_zero_for_the_true_posterior_and_nll_at_t0():
    d = _diffusion()
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([2, 400])
    xt = d.q_sample(x0, t, noise)
    perfect = torch.cat([noise, -torch.ones_like(noise)], dim=1)  # true eps, variance = beta_tilde
    assert d.vb_term(perfect, x0, xt, t).abs().max().item() < 1e-3
    wrong = torch.cat([noise, torch.ones_like(noise)], dim=1)  # variance beta_t > beta_tilde_t
    assert d.vb_term(wrong, x0, xt, t)[0] > 1e-2  # early steps: beta_t and beta_tilde_t differ most
    t0 = torch.tensor([0, 0])
    xt0 = d.q_sample(x0, t0, noise)
    out = torch.cat([noise, torch.zeros_like(noise)], dim=1)
    mv = d.p_mean_variance(out, xt0, t0, clip=False)
    nll = -discretized_gaussian_log_likelihood(x0, mv["mean"], 0.5 * mv["log_variance"]).mean(dim=(1, 2, 3)) / math.log(2)
    torch.testing.assert_close(d.vb_term(out, x0, xt0, t0), nll)


def test_hybrid_loss_formula_and_stop_gradient():
    d = _diffusion(T=500)
    x0 = torch.rand(3, 3, 4, 4) * 2 - 1
    noise, t = torch.randn_like(x0), torch.tensor([0, 7, 400])
    out = torch.randn(3, 6, 4, 4, requires_grad=True)
    losses = d.training_losses(lambda xt, tt: out, x0, t, noise)
    mse = ((out[:, :3] - noise) ** 2).mean(dim=(1, 2, 3))
    vb = d.vb_term(out, x0, d.q_sample(x0, t, noise), t)
    torch.testing.assert_close(losses["loss"], mse + 0.001 * 500 * vb)
    losses["loss"].sum().backward()
    # eps channels get only the L_simple gradient: 2 (eps - noise) / n
    torch.testing.assert_close(out.grad[:, :3], 2 * (out[:, :3] - noise).detach() / 48)
    assert out.grad[:, 3:].abs().sum() > 0


def test_space_timesteps_hand_values():
    assert space_timesteps(100, 10) == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    assert space_timesteps(100, "ddim10") == list(range(0, 100, 10))
    assert space_timesteps(10, "3,2") == [0, 2, 4, 5, 9]
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(1000, 1) == [999]  # one step starts from pure noise
    with pytest.raises(ValueError):
        space_timesteps(10, 11)


def test_respaced_process_keeps_alpha_bar_and_maps_timesteps():
    d = _diffusion(name="cosine")
    keep = space_timesteps(1000, 25)
    r = respace(d, keep)
    np.testing.assert_allclose(r.alphas_cumprod, d.alphas_cumprod[keep], rtol=1e-9)
    assert list(r.timestep_map) == keep and r.num_timesteps == 25
    np.testing.assert_allclose(respace(d, list(range(1000))).betas, d.betas, rtol=1e-10)
    assert r.model_timesteps(torch.tensor([0, 24])).tolist() == [0, 999]


def _improved_diffusion_space_timesteps(num_timesteps, section_counts):
    """improved-diffusion's respace.space_timesteps, re-typed from its description:
    sections of equal size, in each a float running sum of the stride, rounded."""
    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx, all_steps = 0, set()
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.add(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return sorted(all_steps)


def test_space_timesteps_matches_improved_diffusion_at_every_count():
    assert space_timesteps(1000, 21)[10] == 499  # round(49.95 * 10) would give 500
    for T in (50, 100, 250, 1000, 4000):
        for n in range(2, T + 1, max(1, T // 200)):
            assert space_timesteps(T, n) == _improved_diffusion_space_timesteps(T, [n]), (T, n)
    assert space_timesteps(1000, "10,15,20") == _improved_diffusion_space_timesteps(1000, [10, 15, 20])


def test_learned_range_at_zero_is_the_geometric_mean_of_beta_and_beta_tilde():
    # linear interpolation of the variance itself would pass the v = +-1 test, not this one
    d = _diffusion()
    t = torch.tensor([3, 500])
    got = d.model_log_variance(torch.zeros(2, 3, 1, 1), t)[:, 0, 0, 0].double()
    geometric = np.sqrt(d.betas[[3, 500]] * np.exp(d.posterior_log_variance_clipped[[3, 500]]))
    np.testing.assert_allclose(got.numpy(), np.log(geometric), rtol=1e-6)


def test_schedule_tables_are_float64_exact_near_t0():
    d = _diffusion(name="cosine")
    t = torch.tensor([0, 1, 999])
    x0, noise = torch.ones(3, 1, 1, 1), torch.ones(3, 1, 1, 1)
    want = np.sqrt(d.alphas_cumprod[[0, 1, 999]]) + np.sqrt(1 - d.alphas_cumprod[[0, 1, 999]])
    np.testing.assert_allclose(d.q_sample(x0, t, noise).view(-1).double().numpy(), want, rtol=1e-7)
    # sqrt(1 - alpha_bar_0) from float32 alpha_bar would be off by ~5e-4 relative
    got = d._at("sqrt_one_minus_alphas_cumprod", torch.tensor([0]), x0[:1]).item()
    assert abs(got / math.sqrt(1 - d.alphas_cumprod[0]) - 1) < 1e-6


def test_discretized_likelihood_edge_bins_do_not_saturate_in_float32():
    # x at the top edge, mean far below: 1 - Phi(z) underflows to 0 in float32 at z ~ 5.5
    x = torch.tensor([1.0, -1.0])
    mean = torch.tensor([0.9, -0.9])
    log_scale = torch.log(torch.tensor([0.0125, 0.0125]))
    got = discretized_gaussian_log_likelihood(-x, mean, log_scale)  # x=-1 under mean 0.9 and x=1 under -0.9
    want = [stats.norm.logcdf(-1 + 1 / 255, 0.9, 0.0125), stats.norm.logsf(1 - 1 / 255, -0.9, 0.0125)]
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4)
    assert torch.isfinite(got).all() and got.min() < -1000
