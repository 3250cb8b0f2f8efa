"""Held-out denoising errors (id3pm.evaluation.denoising) on a tiny model that learned four
images from their vectors: knowing y must help, the right y more than a wrong one, and the
same seed must give the same noise to every model so that errors pair up."""

import numpy as np
import pytest
import torch
from conftest import load_script


@pytest.fixture(scope="module")
def tiny_pipe(trained_tiny):
    from id3pm.pipeline import ID3PMPipeline

    model_dir, images, vectors = trained_tiny
    return ID3PMPipeline.from_pretrained(model_dir, device="cpu", upscale=None), images, vectors


def test_knowing_the_right_vector_lowers_the_error_and_a_wrong_one_raises_it(tiny_pipe):
    from id3pm.evaluation.denoising import denoising_errors

    pipe, images, vectors = tiny_pipe
    right = denoising_errors(pipe, images, vectors, seed=3)
    wrong = denoising_errors(pipe, images, np.roll(vectors, 1, axis=0), seed=3)
    assert (right.identity_gain > 0).all()  # y tells the model which of the 4 faces it denoises
    assert (wrong.cond > right.cond).all()  # another image's y misleads it, image by image
    np.testing.assert_allclose(wrong.null, right.null)  # y dropped: the vectors cannot matter


def test_one_timestep_matches_the_network_called_directly(tiny_pipe):
    """The formula against an independent computation: q_sample by hand, the network called
    with y and with y dropped, the mean squared error of the noise channels."""
    from id3pm.diffusion.schedules import make_betas
    from id3pm.evaluation.denoising import denoising_errors, fixed_noise

    pipe, images, vectors = tiny_pipe
    t = 600
    got = denoising_errors(pipe, images, vectors, timesteps=(t,), seed=5)
    alpha_bar = np.cumprod(1 - make_betas(pipe.info["diffusion"]["schedule"], pipe.info["diffusion"]["num_timesteps"]))[t]
    x0 = torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    eps = fixed_noise(len(images), pipe.image_size, (t,), 5)[0]
    xt = float(np.sqrt(alpha_bar)) * x0 + float(np.sqrt(1 - alpha_bar)) * eps
    y = torch.as_tensor(vectors, dtype=torch.float32)
    tt = torch.full((len(images),), t)
    with torch.no_grad():
        for drop, errors in ((False, got.cond), (True, got.null)):
            out = pipe.model(xt, tt, id_vector=y, drop_id=torch.full((len(images),), drop))
            np.testing.assert_allclose(((out[:, :3] - eps) ** 2).mean(dim=(1, 2, 3)).numpy(), errors, rtol=1e-4)


def test_the_same_seed_gives_the_same_errors_and_bad_input_is_refused(tiny_pipe):
    from id3pm.evaluation.denoising import denoising_errors

    pipe, images, vectors = tiny_pipe
    a = denoising_errors(pipe, images, vectors, timesteps=(100, 900), seed=1, batch_size=3)  # batches cut unevenly
    b = denoising_errors(pipe, images, vectors, timesteps=(100, 900), seed=1)
    np.testing.assert_allclose(a.cond, b.cond, rtol=1e-5)
    assert a.summary()["images"] == 4 and len(a.summary()["error_cond_by_t"]) == 2
    with pytest.raises(ValueError, match="model's size"):
        denoising_errors(pipe, np.zeros((4, 16, 16, 3), np.uint8), vectors)
    with pytest.raises(ValueError, match="4 images but 3 vectors"):
        denoising_errors(pipe, images, vectors[:3])


def test_the_script_pairs_two_models_on_the_same_images(trained_tiny, tmp_path, capsys):
    """scripts/denoising_errors.py: a model against itself changes by exactly 0, and the
    table, JSON, arrays and plot are written."""
    import json

    script = load_script("denoising_errors")
    model_dir, _, _ = trained_tiny
    prepared = model_dir.parents[1] / "prepared"
    script.main(["--data", str(prepared), "--split", "train", "--model", f"a={model_dir}", "--model", f"b={model_dir}",
                 "--timesteps", "200", "800", "--out", str(tmp_path), "--curve"])
    written = json.loads((tmp_path / "denoising.json").read_text())
    report = written["splits"]["train"]
    assert [p["images_seen"] for p in written["curve"]] == [1500 * 8] * 2  # 1,500 steps of 8 images
    assert (tmp_path / "denoising_curve.png").stat().st_size > 0
    assert report["b"]["error_change"] == [0.0, 0.0, 0.0] and report["a"]["identity_gain"] > 0
    assert (tmp_path / "denoising.png").stat().st_size > 0
    assert np.load(tmp_path / "denoising.npz")["train/b/cond"].shape == (4,)
    assert "| b |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no images in split 'holdout'"):
        script.main(["--data", str(prepared), "--split", "holdout", "--model", str(model_dir), "--out", str(tmp_path)])
