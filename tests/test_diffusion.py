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
