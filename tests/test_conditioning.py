"""The core claim on a tiny scale: a model trained on (image, ID vector) pairs follows
the vector; and what the pipeline and CLI do with such a model."""

import json

import numpy as np
import pytest
from conftest import pooled

from id3pm.cli import main
from id3pm.images import png_text
from id3pm.pipeline import ID3PMPipeline


@pytest.fixture(scope="module")
def pipe(trained_tiny):
    return ID3PMPipeline.from_pretrained(trained_tiny[0], device="cpu")


@pytest.mark.parametrize("sampler,steps", [("dpmpp_2m", 20), ("ddim", 20), ("ddpm", 50)])
def test_each_vector_generates_its_own_training_image(trained_tiny, pipe, sampler, steps):
    _, images, vectors = trained_tiny
    out = pipe(vectors, num_images_per_id=3, guidance_scale=2.0, num_inference_steps=steps, sampler=sampler, seed=0)
    targets = pooled(np.stack(images))
    for i in range(len(vectors)):
        for sample in pooled(out.images[i]):
            errors = ((targets - sample) ** 2).mean(axis=(1, 2, 3))
            assert errors.argmin() == i, f"vector {i}: closest training image {errors.argmin()}, errors {errors}"
    # not just nearest: close in absolute terms too (pixel values 0..255)
    assert np.abs(out.images.astype(float) - np.stack(images)[:, None]).mean() < 40


def test_guidance_zero_ignores_the_vector(trained_tiny, pipe):
    _, _, vectors = trained_tiny
    out = pipe(vectors, num_images_per_id=1, guidance_scale=0.0, num_inference_steps=10, seed=3)
    # unconditional: every identity gets the same picture for the same seed
    assert np.abs(out.images[0].astype(int) - out.images[1].astype(int)).max() == 0


def test_seeded_sampling_does_not_depend_on_batch_size(trained_tiny, pipe):
    _, _, vectors = trained_tiny
    kw = dict(num_images_per_id=3, guidance_scale=2.0, num_inference_steps=8, sampler="ddpm", seed=11)
    a = pipe(vectors, batch_size=12, **kw).images.astype(int)
    b = pipe(vectors, batch_size=1, **kw).images.astype(int)
    c = pipe(vectors[2:3], batch_size=5, **kw).images.astype(int)
    assert np.abs(a - b).max() <= 1  # float rounding of batched matmuls may move a pixel by one level
    assert np.abs(a[2:3] - c).max() <= 1
    assert np.abs(a[:, 0] - a[:, 1]).max() > 10  # different seeds, different pictures


def test_bad_vectors_are_rejected_with_a_clear_message(pipe):
    with pytest.raises(ValueError, match="length 8"):
        pipe(np.zeros((2, 5)))
    bad = np.zeros((2, 8))
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        pipe(bad)


def test_cli_sample_writes_marked_pngs_sheet_and_json(trained_tiny, tmp_path):
    model, _, vectors = trained_tiny
    vectors_file = tmp_path / "v.json"
    vectors_file.write_text(json.dumps({"alice": vectors[0].tolist(), "broken": [1.0, 2.0], "bob": vectors[1].tolist()}))
    out = tmp_path / "out"
    code = main(["sample", "--vectors", str(vectors_file), "--model", str(model), "-n", "2", "--steps", "5",
                 "--out", str(out), "--device", "cpu"])
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    assert [i["identity"] for i in result["items"]] == ["alice", "bob"]
    assert len(result["skipped"]) == 1 and "broken" in result["skipped"][0] and "length 8" in result["skipped"][0]
    text = png_text(str(out / "alice" / "seed_0001.png"))
    assert text["Synthetic"] == "true" and json.loads(text["id3pm"])["seed"] == 1
    assert (out / "sheet.png").exists() and (out / "alice" / "sheet.png").exists()


def test_sweep_keeps_seeds_across_columns(trained_tiny, pipe):
    _, _, vectors = trained_tiny
    images, dist = pipe.sweep(vectors[0], [0.0, 1.0, 3.0], num_seeds=2, seed=4, num_inference_steps=10)
    assert images.shape == (2, 3, 8, 8, 3) and dist.shape == (2, 3)
    again, _ = pipe.sweep(vectors[0], [0.0, 1.0, 3.0], num_seeds=2, seed=4, num_inference_steps=10)
    assert np.array_equal(images, again)  # a fixed seed gives the same grid
    unconditional = pipe(vectors[1], num_images_per_id=2, guidance_scale=0.0, num_inference_steps=10, seed=4).images[0]
    assert np.abs(images[:, 0].astype(int) - unconditional.astype(int)).max() <= 1  # s=0 ignores the identity


def test_interpolation_moves_monotonically_from_a_to_b(trained_tiny, pipe):
    _, images, vectors = trained_tiny
    frames, vecs, _, _ = pipe.interpolate(vectors[0], vectors[2], frames=7, seed=1, num_inference_steps=20)
    assert frames.shape == (7, 8, 8, 3) and np.allclose(vecs[0], vectors[0]) and np.allclose(vecs[-1], vectors[2])
    target_a, target_b = pooled(images[0]), pooled(images[2])
    to_a = [np.abs(pooled(f) - target_a).mean() for f in frames]
    to_b = [np.abs(pooled(f) - target_b).mean() for f in frames]
    assert to_a[0] < to_a[-1] and to_b[-1] < to_b[0]
    # monotone up to small wiggles between neighbouring frames
    assert all(b >= a - 8 for a, b in zip(to_a, to_a[1:])) and all(b <= a + 8 for a, b in zip(to_b, to_b[1:]))


def test_cli_controls_write_strips_gif_and_json(trained_tiny, tmp_path):
    from id3pm.controls import Direction, save_directions

    model, _, vectors = trained_tiny
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(vectors[0].tolist()))
    b.write_text(json.dumps(vectors[1].tolist()))
    common = ["--model", str(model), "--steps", "5", "--device", "cpu"]
    assert main(["interpolate", str(a), str(b), "--frames", "4", "--out", str(tmp_path / "i"), *common]) == 0
    assert (tmp_path / "i" / "interpolation.gif").exists() and (tmp_path / "i" / "interpolation.png").exists()
    assert len(json.loads((tmp_path / "i" / "interpolation.json").read_text())["distance_to_a"]) == 4
    assert main(["sweep", str(a), "--guidance", "1", "2", "--seeds", "2", "--out", str(tmp_path / "s"), *common]) == 0
    assert np.array(json.loads((tmp_path / "s" / "sweep.json").read_text())["identity_distance"]).shape == (2, 2)
    save_directions(tmp_path / "d.json", [Direction("toward_b", vectors[1] - vectors[0], {"kind": "test"})])
    assert main(["edit", str(a), "--directions", str(tmp_path / "d.json"), "--direction", "toward_b",
                 "--strengths", "0", "1", "--out", str(tmp_path / "e"), *common]) == 0
    assert (tmp_path / "e" / "edit_toward_b.png").exists()
    assert main(["edit", str(a), "--directions", str(tmp_path / "d.json"), "--direction", "age",
                 "--out", str(tmp_path / "e"), *common]) == 2


def test_bf16_precision_stays_close_to_fp32(trained_tiny, pipe):
    model, _, vectors = trained_tiny
    fast = ID3PMPipeline.from_pretrained(model, device="cpu", precision="bf16")
    kw = dict(num_images_per_id=2, num_inference_steps=20, seed=2)
    a = pipe(vectors, **kw).images.astype(float)
    b = fast(vectors, **kw)
    assert b.params["precision"] == "bf16" and pipe.precision == "fp32"
    assert np.abs(a - b.images).mean() < 6  # 0..255 pixel levels, on average over the pictures
    with pytest.raises(ValueError, match="precision must be"):
        ID3PMPipeline.from_pretrained(model, device="cpu", precision="fp8")
