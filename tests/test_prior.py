"""The regression prior (DiffuseVAE): widening a trained network to take g(y), guidance
and condition dropout hiding g(y) from the unconditional model, and the whole path
(train the decoder, train the base model with it, ship, sample)."""

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN, distinct_images, make_tiny_prepared, pooled

from id3pm.models import IDConditionedUNet
from id3pm.prior import PRIOR_START, widen_input_channels
from id3pm.sampling import guided_denoiser
from id3pm.training import StepRandom, TrainConfig, step_loss, train

NET = dict(sample_size=8, id_dim=4, block_out_channels=(32, 64), attention_resolutions=(4,), layers_per_block=1,
           norm_num_groups=8, attention_head_dim=32, dropout=0.0)


def _randomised(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_the_widened_network_computes_what_the_narrow_one_did():
    narrow = _randomised(IDConditionedUNet(**NET))
    wide = IDConditionedUNet(**NET, extra_cond_channels=3)
    assert widen_input_channels(wide, narrow.state_dict()) == ["unet.conv_in.weight"]
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([5, 700]), torch.randn(2, 4)
    with torch.no_grad():
        expected = narrow(x, t, id_vector=y)
        got = wide.eval()(x, t, id_vector=y, cond_image=torch.randn(2, 3, 8, 8))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_widening_refuses_weights_of_another_network():
    other = IDConditionedUNet(**{**NET, "attr_dim": 2})  # an extra Linear the wide model lacks
    with pytest.raises(ValueError, match="do not fit"):
        widen_input_channels(IDConditionedUNet(**NET, extra_cond_channels=3), other.state_dict())


class Spy(torch.nn.Module):
    """Records what reaches the network."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, **kwargs):
        self.calls.append({k: v for k, v in kwargs.items() if v is not None})
        return torch.zeros(x.shape[0], 6, *x.shape[2:])


def test_guidance_hides_the_prior_image_from_the_unconditional_pass():
    spy, prior = Spy(), torch.rand(2, 3, 4, 4) + 0.5
    guided_denoiser(spy, torch.ones(2, 4), 2.0, prior_image=prior)(torch.zeros(2, 3, 4, 4), torch.tensor([3, 3]))
    call = spy.calls[0]
    assert call["drop_id"].tolist() == [False, False, True, True]
    torch.testing.assert_close(call["cond_image"][:2], prior)
    assert (call["cond_image"][2:] == 0).all()


def test_training_drops_the_prior_image_together_with_the_identity():
    from id3pm.diffusion import GaussianDiffusion, make_betas

    spy = Spy()
    prior = torch.full((64, 3, 8, 8), 200, dtype=torch.uint8)
    batch = {"image": torch.zeros(64, 3, 8, 8), "id_vector": torch.ones(64, 4), "prior_image": prior}
    diffusion = GaussianDiffusion(make_betas("linear", 50))
    with torch.no_grad():
        for step in range(5):
            step_loss(TrainConfig(data="", out=""), spy, diffusion, batch, StepRandom(0, step, 0, "cpu"), {})
    for call in spy.calls:
        dropped = call["drop_id"]
        assert dropped.any() and not dropped.all()
        assert (call["cond_image"][dropped] == 0).all()
        torch.testing.assert_close(call["cond_image"][~dropped], torch.full_like(call["cond_image"][~dropped], 200 / 127.5 - 1))


def test_a_base_model_with_a_prior_trains_ships_and_samples(trained_tiny, tmp_path):
    """Decoder first, then the base model warm-started from one trained without a prior
    (widened) and taught to use g(y); the exported folder carries its prior."""
    from id3pm.pipeline import ID3PMPipeline

    model_dir, _, vectors = trained_tiny
    prepared = make_tiny_prepared(tmp_path / "d", size=8)[0]  # the same images and vectors as trained_tiny
    train(TrainConfig(out=str(tmp_path / "reg"), data=str(prepared), task="regression", max_steps=300, save_every=300,
                      **TINY_TRAIN))
    train(TrainConfig(out=str(tmp_path / "run"), data=str(prepared), prior=str(tmp_path / "reg" / "model"),
                      init_from=str(model_dir), max_steps=100, save_every=100, **TINY_TRAIN))
    assert (tmp_path / "run" / "model" / "prior" / "id3pm.json").exists()
    pipe = ID3PMPipeline.from_pretrained(tmp_path / "run" / "model", device="cpu")
    assert pipe.prior is not None and pipe.model.config.extra_cond_channels == 3
    result = pipe(vectors, num_images_per_id=2, seed=0, num_inference_steps=20)
    out = result.images
    assert result.params["prior_start"] == PRIOR_START and max(result.params["timesteps"]) <= 999 * PRIOR_START
    targets = pooled(np.stack(distinct_images(4, 8)))
    for i in range(4):
        for j in range(2):
            assert ((targets - pooled(out[i, j])) ** 2).mean(axis=(1, 2, 3)).argmin() == i
    # an evaluation row that starts elsewhere (evaluate --prior-start) leaves the pipeline as it was
    from id3pm.evaluation.baselines import GenerativeMethod

    row = GenerativeMethod("m", pipe, 2.0, 20, prior_start=1.0).reconstruct(vectors, 1, 0)
    assert pipe.prior_start == PRIOR_START
    pipe.prior_start = 1.0
    from_noise = pipe(vectors, num_images_per_id=1, seed=0, num_inference_steps=20, guidance_scale=2.0)
    pipe.prior_start = PRIOR_START
    assert max(from_noise.params["timesteps"]) > 999 * PRIOR_START
    np.testing.assert_array_equal(row, from_noise.images)
    assert GenerativeMethod("m", pipe, prior_start=0.95).settings()["prior_start"] == 0.95
    assert "prior_start" not in GenerativeMethod("m", pipe).settings()  # rows kept before stay valid


def test_prior_images_are_cached_for_exactly_the_same_vectors(tmp_path):
    from id3pm.prior import cached_prior_images

    prior = _randomised(IDConditionedUNet(**{**NET, "out_channels": 3}))
    vectors = torch.randn(5, 4)
    path = tmp_path / "cache_train.safetensors"
    first = cached_prior_images(prior, vectors, path)
    assert first.dtype == torch.uint8 and first.shape == (5, 3, 8, 8) and path.exists()

    class Refuses(torch.nn.Module):
        def regress(self, y):
            raise AssertionError("the cache should have answered")

    torch.testing.assert_close(cached_prior_images(Refuses(), vectors, path), first)
    other = cached_prior_images(prior, vectors + 1, path)  # new vectors: computed again
    assert not torch.equal(other, first)


def test_sampling_from_the_prior_starts_at_its_level_with_its_noise():
    """x_t = sqrt(abar_t) g(y) + sqrt(1 - abar_t) noise at the grid's highest step at or
    below the start level; the walk then covers only the steps from there down."""
    from id3pm.diffusion import GaussianDiffusion, make_betas
    from id3pm.sampling import sampling_grid, start_of_sampling

    betas = make_betas("cosine", 1000)
    diffusion = GaussianDiffusion(betas)
    start, noise = torch.rand(2, 3, 4, 4) * 2 - 1, torch.randn(2, 3, 4, 4)
    respaced, x = start_of_sampling(diffusion, 25, noise, start, 0.9)
    grid = sampling_grid(1000, 25, 0.9)
    assert list(respaced.timestep_map) == grid and max(grid) <= 899 < max(sampling_grid(1000, 25))
    abar = np.cumprod(1 - np.asarray(betas, dtype=np.float64))[max(grid)]
    torch.testing.assert_close(x, (np.sqrt(abar) * start + np.sqrt(1 - abar) * noise).float())
    untouched, x_pure = start_of_sampling(diffusion, 25, noise)  # no start: pure noise, the full grid
    assert x_pure is noise and list(untouched.timestep_map) == sampling_grid(1000, 25)
