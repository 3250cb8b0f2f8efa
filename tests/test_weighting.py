"""Loss weightings over t (id3pm.diffusion.weighting) against the papers' formulas computed
here by hand, and wired into training: a weighted step's loss is the weighted eps error."""

import numpy as np
import pytest
import torch


def test_the_weights_follow_the_papers_formulas_scaled_to_mean_one():
    from id3pm.diffusion.schedules import make_betas
    from id3pm.diffusion.weighting import loss_weights

    alpha_bar = np.cumprod(1 - make_betas("cosine", 1000))
    ratio = alpha_bar / (1 - alpha_bar)
    p2 = 1 / (1 + ratio)  # Choi et al. 2022, k = 1, gamma = 1
    np.testing.assert_allclose(loss_weights("p2", alpha_bar), p2 / p2.mean())
    min_snr = np.minimum(ratio, 5) / ratio  # Hang et al. 2023, eps prediction, gamma = 5
    np.testing.assert_allclose(loss_weights("min_snr", alpha_bar), min_snr / min_snr.mean())
    assert loss_weights("", alpha_bar) is None
    for name in ("p2", "min_snr"):
        w = loss_weights(name, alpha_bar)
        assert w.mean() == pytest.approx(1.0) and w[900] > 10 * w[20]  # weight moves to the noisy steps
        assert (np.diff(w) >= -1e-12).all()  # never less weight at a noisier step
    with pytest.raises(ValueError, match="unknown loss weighting 'p3'"):
        loss_weights("p3", alpha_bar)


def test_a_weighted_loss_is_the_eps_error_times_the_weight_of_its_t():
    from id3pm.diffusion import GaussianDiffusion, make_betas
    from id3pm.diffusion.weighting import loss_weights

    diffusion = GaussianDiffusion(make_betas("cosine", 1000))
    torch.manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([10, 300, 700, 990])
    model = lambda xt, tt: torch.cat([xt * 0.5, torch.zeros_like(xt)], dim=1)  # noqa: E731  some fixed guess
    weights = torch.as_tensor(loss_weights("p2", diffusion.alphas_cumprod), dtype=torch.float32)
    plain = diffusion.training_losses(model, x0, t, noise, vlb_weight=0.0)
    weighted = diffusion.training_losses(model, x0, t, noise, vlb_weight=0.0, eps_weights=weights)
    torch.testing.assert_close(weighted["mse"], plain["mse"])  # the logged error stays unweighted
    torch.testing.assert_close(weighted["loss"], weights[t] * plain["mse"])


def test_an_unknown_weighting_is_refused_before_the_data_loads(tmp_path):
    from id3pm.train_config import TrainConfig
    from id3pm.training import Trainer

    with pytest.raises(ValueError, match="unknown --loss-weighting 'snr'"):
        Trainer(TrainConfig(data=str(tmp_path / "none"), out=str(tmp_path / "run"), loss_weighting="snr"))


def test_a_run_trains_with_the_weighting_it_was_given(tmp_path, monkeypatch):
    """--loss-weighting p2 reaches the loss of a real training step: the step's loss is the
    p2 weight of each sample's t times its eps error (plus the variance term)."""
    from conftest import TINY_TRAIN, make_tiny_prepared

    from id3pm.diffusion.weighting import loss_weights
    from id3pm.train_config import TrainConfig
    from id3pm.training import Trainer

    prepared = make_tiny_prepared(tmp_path / "data", n=6, size=8)[0]
    trainer = Trainer(TrainConfig(data=str(prepared), out=str(tmp_path / "run"), max_steps=2, loss_weighting="p2",
                                  **{**TINY_TRAIN, "vlb_weight": 0.0}))
    seen = {}
    original = trainer.diffusion.training_losses

    def spy(model_fn, x0, t, noise, **kw):
        out = original(model_fn, x0, t, noise, **kw)
        seen.update(t=t, **out)
        return out

    monkeypatch.setattr(trainer.diffusion, "training_losses", spy)
    trainer.train_step()
    weights = torch.as_tensor(loss_weights("p2", trainer.diffusion.alphas_cumprod), dtype=torch.float32)
    torch.testing.assert_close(seen["loss"].detach(), weights[seen["t"]] * seen["mse"].detach())
