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


@pytest.fixture(scope="module")
def tiny_sr(tmp_path_factory):
    from conftest import TINY_TRAIN

    from id3pm.data import PrepareConfig, prepare
    from id3pm.training import TrainConfig, train

    root = tmp_path_factory.mktemp("sr")
    src = root / "src"
    src.mkdir()
    astro = skdata.astronaut()
    keys = []
    for i, (y, x) in enumerate([(80, 160), (200, 200), (300, 60), (20, 20)]):
        Image.fromarray(astro[y : y + 64, x : x + 64]).save(src / f"p{i}.png")  # detailed 16x16 targets after resize
        keys.append(f"p{i}.png")
    np.savez(root / "v.npz", keys=np.array(keys), vectors=np.zeros((4, 2), np.float32))
    prepare(PrepareConfig(src=str(src), out=str(root / "p"), encoder={"name": "table", "path": str(root / "v.npz")},
                          sizes=(16, 8), holdout=0.0, workers=1, aligned=True, image_format="png"), progress=False)
    cfg = {**TINY_TRAIN, "size": 16, "model": {"block_out_channels": [32, 64], "attention_resolutions": [8]}}
    train(TrainConfig(data=str(root / "p"), out=str(root / "run"), task="superres", cond_size=8, max_steps=2000,
                      save_every=2000, augment_level_max=0.2, **cfg))
    from id3pm.data import PreparedDataset

    ds = PreparedDataset(root / "p")
    return root / "run" / "model", ds.images(8), ds.images(16)


def test_tiny_sr_model_beats_bicubic_on_its_training_images(tiny_sr):
    model, low, high = tiny_sr
    up = DiffusionUpscaler.from_pretrained(model, device="cpu")
    assert up.info["task"] == "superres" and up.size == 16
    out = up(low, seeds=[0, 1, 2, 3], num_inference_steps=50)
    bicubic = np.stack([np.asarray(Image.fromarray(im).resize((16, 16), Image.BICUBIC)) for im in low])
    ours = np.mean([psnr(o, h) for o, h in zip(out, high)])
    base = np.mean([psnr(b, h) for b, h in zip(bicubic, high)])
    assert ours > base + 1.0, (ours, base)


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


def test_lanczos_fallback_is_labelled(trained_tiny, tmp_path):
    from id3pm.cli import main

    up = make_upscaler("lanczos", size=32)
    assert isinstance(up, LanczosUpscaler) and "lanczos" in up.label and "no super-resolution model" in up.label
    assert up(np.zeros((2, 8, 8, 3), np.uint8)).shape == (2, 32, 32, 3)
    assert isinstance(make_upscaler("auto", size=32), LanczosUpscaler)  # nothing shipped yet
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
