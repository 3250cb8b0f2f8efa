"""Super-resolution stage: a tiny SR model must beat bicubic on its training images;
seeds fix the whole chain; the Lanczos fallback says what it is."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from id3pm.superres import DiffusionUpscaler, LanczosUpscaler, make_upscaler


def psnr(a, b):
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean()
    return 10 * np.log10(255**2 / mse)


def train_astronaut_sr(root, **overrides):
    """A tiny upsampler 8 -> 16 px trained on four detailed astronaut crops, each with its
    own vector; returns its model folder and the crops at 8 and 16 px. Called again on the
    same root, it resumes the run on the data already prepared."""
    from conftest import TINY_TRAIN

    from id3pm.data import PrepareConfig, PreparedDataset, prepare
    from id3pm.training import TrainConfig, train

    if not (root / "p").exists():
        src = root / "src"
        src.mkdir(parents=True)
        astro = skdata.astronaut()
        keys = []
        for i, (y, x) in enumerate([(80, 160), (200, 200), (300, 60), (20, 20)]):
            Image.fromarray(astro[y : y + 64, x : x + 64]).save(src / f"p{i}.png")  # detailed 16x16 targets after resize
            keys.append(f"p{i}.png")
        np.savez(root / "v.npz", keys=np.array(keys), vectors=np.eye(4, 2, dtype=np.float32))
        prepare(PrepareConfig(src=str(src), out=str(root / "p"), encoder={"name": "table", "path": str(root / "v.npz")},
                              sizes=(16, 8), holdout=0.0, workers=1, aligned=True, image_format="png"), progress=False)
    cfg = {**TINY_TRAIN, "size": 16, "model": {"block_out_channels": [32, 64], "attention_resolutions": [8]}}
    train(TrainConfig(data=str(root / "p"), out=str(root / "run"), task="superres", cond_size=8,
                      augment_level_max=0.2, **{**cfg, **overrides}))
    ds = PreparedDataset(root / "p")
    return root / "run" / "model", ds.images(8), ds.images(16)


def bicubic_psnr(low, high) -> float:
    bicubic = np.stack([np.asarray(Image.fromarray(im).resize(high.shape[1:3], Image.BICUBIC)) for im in low])
    return float(np.mean([psnr(b, h) for b, h in zip(bicubic, high)]))


@pytest.fixture(scope="module")
def tiny_sr(tmp_path_factory):
    return train_astronaut_sr(tmp_path_factory.mktemp("sr"), max_steps=2000, save_every=2000)


def test_tiny_sr_model_beats_bicubic_on_its_training_images(tiny_sr):
    model, low, high = tiny_sr
    up = DiffusionUpscaler.from_pretrained(model, device="cpu")
    assert up.info["task"] == "superres" and up.size == 16
    out = up(low, seeds=[0, 1, 2, 3], num_inference_steps=50)
    ours = np.mean([psnr(o, h) for o, h in zip(out, high)])
    assert ours > bicubic_psnr(low, high) + 1.0, (ours, bicubic_psnr(low, high))
    with pytest.raises(ValueError, match="residual"):  # it diffuses whole images: there is no detail to scale
        up(low, seeds=[0, 1, 2, 3], detail_strength=0.5)


def test_a_regression_upsampler_beats_bicubic_in_one_pass_with_y(tmp_path):
    """--sr-regression: L1 on the residual detail, one forward pass; it reads y (here each
    crop's own vector) and ignores seeds and step counts."""
    model, low, high = train_astronaut_sr(tmp_path, max_steps=600, save_every=600, sr_regression=True,
                                          sr_identity=True, sr_residual=3.0, patch_size=12)
    up = DiffusionUpscaler.from_pretrained(model, device="cpu")
    assert up.regression and up.uses_identity and up.label.startswith("regression super-resolution 8->16")
    y = np.eye(4, 2, dtype=np.float32)
    out = up(low, seeds=[0, 1, 2, 3], id_vectors=y)
    ours = np.mean([psnr(o, h) for o, h in zip(out, high)])
    assert ours > bicubic_psnr(low, high) + 1.0, (ours, bicubic_psnr(low, high))
    np.testing.assert_array_equal(out, up(low, seeds=[9, 8, 7, 6], num_inference_steps=3, id_vectors=y))
    swapped = up(low, seeds=[0, 1, 2, 3], id_vectors=y[::-1].copy())  # each crop given another's vector
    assert ours > np.mean([psnr(o, h) for o, h in zip(swapped, high)]) + 1.0  # it uses y (seen: 35.3 / 32.8 dB; bicubic 26.2)

    # detail strength: 0 is the bicubic input itself, 0.5 lands between it and the whole detail
    low_t = torch.as_tensor(low).permute(0, 3, 1, 2).float() / 127.5 - 1
    bicubic = torch.nn.functional.interpolate(low_t, size=(16, 16), mode="bicubic", align_corners=False).clamp(-1, 1)
    bicubic = ((bicubic + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(up(low, seeds=[0] * 4, id_vectors=y, detail_strength=0.0), bicubic, atol=1)
    half = np.mean([psnr(o, h) for o, h in zip(up(low, seeds=[0] * 4, id_vectors=y, detail_strength=0.5), high)])
    assert bicubic_psnr(low, high) < half < ours, (bicubic_psnr(low, high), half, ours)
    # a folder's upscale_defaults are what an argument-less call uses
    info = json.loads((model / "id3pm.json").read_text())
    (model / "id3pm.json").write_text(json.dumps({**info, "upscale_defaults": {"detail_strength": 0.5}}))
    np.testing.assert_array_equal(DiffusionUpscaler.from_pretrained(model, device="cpu")(low, seeds=[0] * 4, id_vectors=y),
                                  up(low, seeds=[0] * 4, id_vectors=y, detail_strength=0.5))


def test_back_projection_pulls_the_outputs_means_onto_the_input_and_keeps_its_detail():
    from id3pm.superres import back_project

    gen = torch.Generator().manual_seed(0)
    low = torch.rand(2, 3, 8, 8, generator=gen) * 2 - 1
    high = torch.nn.functional.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False)
    high = high + 0.3 * torch.randn(2, 3, 32, 32, generator=gen) + 0.2  # detail and a colour shift

    def error(x):
        return (torch.nn.functional.interpolate(x, size=(8, 8), mode="area") - low).abs().mean().item()

    errors = [error(back_project(high, low, rounds)) for rounds in range(4)]
    assert errors[0] > 0.19 and all(b < 0.6 * a for a, b in zip(errors, errors[1:])), errors
    assert torch.equal(back_project(high, low, 0), high)
    detail = high - torch.nn.functional.avg_pool2d(high, 3, 1, 1)  # what varies from pixel to pixel
    moved = back_project(high, low, 3)
    kept = torch.nn.functional.cosine_similarity((moved - torch.nn.functional.avg_pool2d(moved, 3, 1, 1)).flatten(),
                                                 detail.flatten(), dim=0)
    assert kept > 0.9, kept


def test_seed_fixes_the_sr_noise_and_chain_through_the_pipeline(tiny_sr, trained_tiny):
    model, low, _ = tiny_sr
    up = DiffusionUpscaler.from_pretrained(model, device="cpu")
    a = up(low[:2], seeds=[5, 6], num_inference_steps=5, sampler="ddpm")
    b = up(low[1:2], seeds=[6], num_inference_steps=5, sampler="ddpm")
    assert np.abs(a[1].astype(int) - b[0].astype(int)).max() <= 1
    c = up(low[1:2], seeds=[7], num_inference_steps=5, sampler="ddpm")
    assert np.abs(c[0].astype(int) - b[0].astype(int)).max() > 0
    # chained after the 8x8 base model of conftest
    from id3pm.pipeline import ID3PMPipeline

    pipe = ID3PMPipeline.from_pretrained(trained_tiny[0], device="cpu")
    pipe.upscaler = up
    vecs = trained_tiny[2][:2]
    one = pipe(vecs, num_images_per_id=2, num_inference_steps=5, seed=3, upscale=True, upscale_steps=4)
    two = pipe(vecs, num_images_per_id=2, num_inference_steps=5, seed=3, upscale=True, upscale_steps=4, batch_size=1)
    assert one.upscaled.shape == (2, 2, 16, 16, 3) and "diffusion super-resolution 8->16" in one.params["upscale"]
    assert np.abs(one.upscaled.astype(int) - two.upscaled.astype(int)).max() <= 2


def test_lanczos_fallback_is_labelled(trained_tiny, tmp_path, monkeypatch):
    import id3pm.superres as superres
    from id3pm.cli import main
    from id3pm.modeldir import read_info

    up = make_upscaler("lanczos", size=32)
    assert isinstance(up, LanczosUpscaler) and "lanczos" in up.label and "no super-resolution model" in up.label
    assert up(np.zeros((2, 8, 8, 3), np.uint8)).shape == (2, 32, 32, 3)
    # "auto": the shipped upsampler only where it fits the model (this 8 px one it does not)
    assert isinstance(make_upscaler("auto", size=32, base_info=read_info(trained_tiny[0])), LanczosUpscaler)
    with monkeypatch.context() as m:
        m.setattr(superres, "shipped_path", lambda task="base": None)
        assert isinstance(make_upscaler("auto", size=32), LanczosUpscaler)  # nothing shipped
    vec = tmp_path / "v.npy"
    np.save(vec, trained_tiny[2][0])
    assert main(["sample", "--vectors", str(vec), "--model", str(trained_tiny[0]), "-n", "1", "--steps", "3",
                 "--upscale", "--upscale-size", "32", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    result = json.loads((tmp_path / "o" / "results.json").read_text())
    assert result["upscale"] == "lanczos (no super-resolution model)"
    assert Image.open(tmp_path / "o" / "upscaled" / "vector_0" / "seed_0000.png").size == (32, 32)
    assert "lanczos" in Image.open(tmp_path / "o" / "upscaled" / "vector_0" / "seed_0000.png").text["id3pm"]
    with pytest.raises(ValueError, match="not a super-resolution model"):
        DiffusionUpscaler.from_pretrained(trained_tiny[0])
    torch.set_num_threads(torch.get_num_threads())


def test_sampling_with_an_augmentation_level_corrupts_the_input_as_training_did():
    # A spy network records what the upsampler feeds it. At level a the low-resolution
    # input must be q_sample(bicubic(low), t = a (T - 1)) with the image's own first
    # noise draw, and the network must be told the level (x1000, as in training).
    from id3pm.diffusion import GaussianDiffusion, make_betas
    from id3pm.images import uint8_to_tensor
    from id3pm.sampling import make_generators, per_image_noise
    from id3pm.superres import SR_SEED_OFFSET

    seen = []

    def spy(xt, t, cond_image, level):
        seen.append((cond_image.clone(), level.clone()))
        return torch.zeros(xt.shape[0], 6, *xt.shape[2:])

    info = {"image_size": 16, "cond_size": 8, "diffusion": {"schedule": "cosine", "num_timesteps": 1000}}
    up = DiffusionUpscaler(spy, info)
    low = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    up(low, seeds=[3, 4], num_inference_steps=2, aug_level=0.3)
    cond, level = seen[0]
    torch.testing.assert_close(level, torch.full((2,), 300.0))
    bicubic = torch.nn.functional.interpolate(uint8_to_tensor(low), size=(16, 16), mode="bicubic",
                                              align_corners=False).clamp(-1, 1)
    abar = GaussianDiffusion(make_betas("cosine", 1000)).alphas_cumprod[int(0.3 * 999)]
    noise = per_image_noise(make_generators([3 + SR_SEED_OFFSET, 4 + SR_SEED_OFFSET]), (3, 16, 16), "cpu")
    torch.testing.assert_close(cond, float(np.sqrt(abar)) * bicubic + float(np.sqrt(1 - abar)) * noise, atol=1e-5, rtol=0)
    assert all(torch.equal(c, cond) for c, _ in seen)  # the same corrupted input at every step
    seen.clear()
    up(low, seeds=[3, 4], num_inference_steps=2, aug_level=0.0)
    torch.testing.assert_close(seen[0][0], bicubic)  # level 0: the clean input
    assert (seen[0][1] == 0).all()


def checkerboard(a, b, side=16):
    """A 1-pixel checkerboard of colours a and b: at half the side it is their mean, grey."""
    yy, xx = np.mgrid[:side, :side]
    return np.where(((yy + xx) % 2 == 0)[..., None], np.array(a, np.uint8), np.array(b, np.uint8))


@pytest.fixture(scope="module")
def identity_sr(tmp_path_factory):
    """A tiny residual upsampler trained with y on 8 px windows of 16 px checkerboards whose 8 px
    versions are all the same grey: red/cyan for y = (1, 0), green/magenta for (0, 1).
    Only y can tell it which colours to draw, and no window shows where it was cut.
    The residual is the whole checkerboard (+-1), so it is diffused at scale 1: at a larger
    scale the sampler's clip to [-1, 1] would cut it (real faces' residuals are ~0.05)."""
    from conftest import TINY_TRAIN

    from id3pm.data import PrepareConfig, PreparedDataset, prepare
    from id3pm.training import TrainConfig, train

    root = tmp_path_factory.mktemp("idsr")
    (root / "src").mkdir()
    pairs = {"rc": ((255, 0, 0), (0, 255, 255)), "gm": ((0, 255, 0), (255, 0, 255))}
    keys, vectors = [], []
    for name, (a, b) in pairs.items():
        for phase, (c0, c1) in enumerate([(a, b), (b, a)]):
            Image.fromarray(checkerboard(c0, c1)).save(root / "src" / f"{name}{phase}.png")
            keys.append(f"{name}{phase}.png")
            vectors.append([1.0, 0.0] if name == "rc" else [0.0, 1.0])
    np.savez(root / "v.npz", keys=np.array(keys), vectors=np.array(vectors, np.float32))
    prepare(PrepareConfig(src=str(root / "src"), out=str(root / "p"), encoder={"name": "table", "path": str(root / "v.npz")},
                          sizes=(16, 8), holdout=0.0, workers=1, aligned=True, image_format="png"), progress=False)
    model = {"block_out_channels": [32, 64], "attention_resolutions": [], "mid_attention": False}
    train(TrainConfig(data=str(root / "p"), out=str(root / "run"), task="superres", cond_size=8, patch_size=8,
                      sr_identity=True, sr_residual=1.0, max_steps=800, save_every=800, augment_level_max=0.2,
                      **{**TINY_TRAIN, "size": 16, "model": model}))
    return root / "run" / "model", PreparedDataset(root / "p").images(8)


def colour_pair_error(images: np.ndarray, a, b) -> float:
    """Mean distance (0..255) of each pixel to the nearer of colours a and b."""
    px = images.reshape(-1, 3).astype(float)
    return float(np.minimum(np.abs(px - a).mean(1), np.abs(px - b).mean(1)).mean())


def test_same_windows_cuts_one_window_per_sample_from_every_tensor():
    from id3pm.training import StepRandom, same_windows

    high = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    low = high * 10
    a, b = same_windows((high, low), 6, StepRandom(0, 0, 0, "cpu"))
    assert a.shape == b.shape == (2, 3, 6, 6)
    torch.testing.assert_close(b, a * 10)  # the same window in both
    for i in range(2):  # a true window of sample i: its top-left element says where it was cut
        r, c = divmod(int(a[i, 0, 0, 0].item()) - i * 3 * 256, 16)
        assert r + 6 <= 16 and c + 6 <= 16
        torch.testing.assert_close(a[i], high[i, :, r : r + 6, c : c + 6])
    assert same_windows((high, low), 0, StepRandom(0, 0, 0, "cpu"))[0] is high  # 0: whole images


def test_an_upsampler_trained_with_y_draws_what_y_says(identity_sr):
    model, low = identity_sr
    up = DiffusionUpscaler.from_pretrained(model, device="cpu")
    assert up.uses_identity and "with identity" in up.label and up.info["patch_size"] == 8 and up.info["residual"]
    grey = np.repeat(low[:1], 4, axis=0)  # every 8 px input is the same grey
    assert np.abs(low.astype(int) - low[:1].astype(int)).max() <= 2
    rc, gm = ((255, 0, 0), (0, 255, 255)), ((0, 255, 0), (255, 0, 255))
    as_rc = up(grey, seeds=range(4), num_inference_steps=25, id_vectors=np.tile([[1.0, 0.0]], (4, 1)))
    as_gm = up(grey, seeds=range(4), num_inference_steps=25, id_vectors=np.tile([[0.0, 1.0]], (4, 1)))
    assert as_rc.shape == (4, 16, 16, 3)  # trained on 8 px windows, it samples the whole 16 px image
    assert colour_pair_error(as_rc, *rc) + 40 < colour_pair_error(as_rc, *gm), (colour_pair_error(as_rc, *rc),
                                                                                 colour_pair_error(as_rc, *gm))
    assert colour_pair_error(as_gm, *gm) + 40 < colour_pair_error(as_gm, *rc)


def test_the_pipeline_hands_each_image_its_vector_and_refuses_another_encoders_upsampler(trained_tiny):
    from id3pm.pipeline import ID3PMPipeline

    class SpyUpscaler:  # records what the pipeline passes; returns the images enlarged 2x
        uses_identity = True
        label = "spy"
        takes_templates_of = DiffusionUpscaler.takes_templates_of  # the real check, on the spy's info

        def __init__(self, encoder):
            self.info, self.calls = {"encoder": {"name": encoder}}, []

        def __call__(self, images, seeds, num_inference_steps=25, id_vectors=None):
            self.calls.append((np.array(seeds), id_vectors))
            return images.repeat(2, axis=1).repeat(2, axis=2)

    pipe = ID3PMPipeline.from_pretrained(trained_tiny[0], device="cpu")
    vecs = trained_tiny[2][:2]
    pipe.upscaler = SpyUpscaler(pipe.info["encoder"]["name"])
    out = pipe(vecs, num_images_per_id=3, num_inference_steps=2, seed=5, upscale=True)
    seeds, y = pipe.upscaler.calls[0]
    np.testing.assert_array_equal(seeds, [5, 6, 7, 5, 6, 7])
    np.testing.assert_allclose(y, np.repeat(vecs, 3, axis=0))  # image (i, j) gets vector i
    assert out.upscaled.shape[:2] == (2, 3)
    pipe.upscaler = SpyUpscaler("someone-else")
    with pytest.raises(ValueError, match="conditioned on someone-else vectors"):
        pipe(vecs, num_images_per_id=1, num_inference_steps=2, upscale=True)


def test_a_discriminator_learns_to_tell_detailed_windows_from_blurred_ones():
    """The hinge discriminator of --sr-adversarial on real computation: astronaut windows
    against their own bicubic-blurred copies, each beside the same low-res input."""
    from id3pm.adversarial import AdversarialTerm, discriminator_hinge

    astro = torch.from_numpy(skdata.astronaut()[:384, :384]).permute(2, 0, 1).float() / 127.5 - 1
    windows = astro.unfold(1, 24, 24).unfold(2, 24, 24).permute(1, 2, 0, 3, 4).reshape(-1, 3, 24, 24)  # 256 windows
    low = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(windows, 4), size=24, mode="bicubic")
    term = AdversarialTerm(weight=1.0, lr=2.5e-4, device="cpu")
    with torch.no_grad():
        first = float(discriminator_hinge(term.discriminator(windows, low), term.discriminator(low, low)))
    for step in range(200):
        batch = slice(32 * (step % 8), 32 * (step % 8 + 1))
        term.discriminator_step(windows[batch], low[batch], low[batch], lr=2.5e-4)  # x4: 1e-3
    with torch.no_grad():
        real, blurred = term.discriminator(windows, low), term.discriminator(low, low)
    last = float(discriminator_hinge(real, blurred))
    assert first > 1.9 and last < 0.85 * first, (first, last)  # chance is 2 (both logits near 0); seen 1.55 on 2 threads
    assert (real.mean(dim=(1, 2, 3)) > blurred.mean(dim=(1, 2, 3))).float().mean() > 0.9


def test_the_upsamplers_adversarial_term_moves_only_the_upsampler():
    """generator_loss is differentiable in the upsampled window and leaves the discriminator's
    weights without gradient; raising its logits lowers the term."""
    from id3pm.adversarial import AdversarialTerm

    term = AdversarialTerm(weight=0.5, lr=1e-3, device="cpu")
    term.discriminator.eval()  # no power-iteration update of the spectral norm between the two calls
    fake = torch.zeros(2, 3, 16, 16, requires_grad=True)
    loss = term.generator_loss(fake, torch.zeros(2, 3, 16, 16))
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in term.discriminator.parameters())
    assert all(p.requires_grad for p in term.discriminator.parameters())  # restored for its own step
    with torch.no_grad():
        expected = -0.5 * term.discriminator(fake, torch.zeros(2, 3, 16, 16)).mean()
    assert torch.allclose(loss, expected, atol=1e-6)


def test_an_adversarial_upsampler_resumes_exactly_and_exports_without_its_discriminator(tmp_path):
    """--sr-adversarial: the discriminator and its optimizer go into the checkpoint, so a run
    stopped and resumed ends where a straight one does; the export is the upsampler alone."""
    from safetensors.torch import load_file

    kw = dict(save_every=4, sr_regression=True, sr_identity=True, sr_residual=3.0, patch_size=12,
              sr_adversarial=0.1, log_every=2)
    straight = train_astronaut_sr(tmp_path / "a", max_steps=8, **kw)[0].parent
    train_astronaut_sr(tmp_path / "b", max_steps=4, **kw)  # "killed" after its checkpoint at 4
    resumed = train_astronaut_sr(tmp_path / "b", max_steps=8, **kw)[0].parent
    for name in ("model", "ema", "discriminator"):
        a, b = load_file(straight / "checkpoint" / f"{name}.safetensors"), load_file(resumed / "checkpoint" / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    log = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6, 8] and all(r["disc"] > 0 and {"adv", "l1"} <= set(r) for r in log)
    info = json.loads((straight / "model" / "id3pm.json").read_text())
    assert info["adversarial"] == {"weight": 0.1} and info["objective"] == "regression"
    exported = {f.relative_to(straight / "model").as_posix() for f in (straight / "model").rglob("*.safetensors")}
    assert exported == {"unet/diffusion_pytorch_model.safetensors"}  # the upsampler alone
    assert not any("parametrizations" in k for k in load_file(straight / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    up = DiffusionUpscaler.from_pretrained(straight / "model", device="cpu")
    assert up.regression


def test_the_adversarial_term_needs_the_one_pass_upsampler(tmp_path):
    with pytest.raises(ValueError, match="--sr-adversarial needs --sr-regression"):
        train_astronaut_sr(tmp_path, max_steps=1, sr_adversarial=0.1)
