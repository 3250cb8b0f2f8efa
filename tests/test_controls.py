"""Controls in identity space: interpolation, directions, walking; and attribute
conditioning proven on a tiny model."""

import numpy as np
import pytest
from conftest import PALETTE, TINY_TRAIN
from PIL import Image

from id3pm.controls import (
    binary_direction,
    continuous_direction,
    interpolate,
    is_normalized,
    load_directions,
    pca_directions,
    save_directions,
    slerp,
    walk,
    Direction,
)


def test_slerp_endpoints_norm_and_midpoint():
    a, b = np.array([1.0, 0, 0]), np.array([0, 1.0, 0])
    np.testing.assert_allclose(slerp(a, b, 0), a, atol=1e-12)
    np.testing.assert_allclose(slerp(a, b, 1), b, atol=1e-12)
    mid = slerp(a, b, 0.5)
    np.testing.assert_allclose(mid, [np.sqrt(0.5), np.sqrt(0.5), 0], atol=1e-12)
    frames = interpolate(a, b, 7)
    assert is_normalized(frames) and frames.shape == (7, 3)
    # equal angular steps along the great circle
    angles = np.degrees(np.arccos(np.clip(frames[:-1] @ frames[1:].T, -1, 1).diagonal()))
    np.testing.assert_allclose(angles, 15.0, atol=1e-3)


def test_linear_interpolation_of_unnormalised_vectors_keeps_the_norm():
    a, b = np.array([2.0, 0.0]), np.array([0.0, 4.0])
    frames = interpolate(a, b, 5)
    np.testing.assert_allclose(frames[0], a, rtol=1e-6) and np.testing.assert_allclose(frames[-1], b, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(frames, axis=1), [2, 2.5, 3, 3.5, 4], rtol=1e-6)
    # direction moves linearly: frames lie on the chord's rays
    chord = 0.5 * a + 0.5 * b
    np.testing.assert_allclose(frames[2] / np.linalg.norm(frames[2]), chord / np.linalg.norm(chord), rtol=1e-6)


def test_binary_direction_known_answer():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 4))
    labels = np.array([0, 1] * 100)
    shift = np.array([0.0, 3.0, 0.0, -1.0])
    vectors = base + labels[:, None] * shift
    d, prov = binary_direction(vectors, labels)
    want = vectors[labels == 1].mean(0) - vectors[labels == 0].mean(0)
    np.testing.assert_allclose(d, want)
    assert np.abs(d - shift).max() < 0.4 and prov["n0"] == prov["n1"] == 100
    with pytest.raises(ValueError, match="exactly 2 values"):
        binary_direction(vectors, np.arange(200) % 3)


def test_continuous_direction_uses_the_10th_and_90th_percentiles():
    ages = np.arange(100, dtype=float)  # 0..99: below 9.9 -> 0..9, above 89.1 -> 90..99
    vectors = np.stack([ages, -ages], axis=1)
    d, prov = continuous_direction(vectors, ages)
    assert prov["n_below"] == 10 and prov["n_above"] == 10
    np.testing.assert_allclose(d, [94.5 - 4.5, -(94.5 - 4.5)])
    with_none = list(ages) + [None, None]
    d2, _ = continuous_direction(np.vstack([vectors, np.zeros((2, 2))]), with_none)
    np.testing.assert_allclose(d2, d)


def test_pca_directions_and_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.normal(size=(500, 3)) * [5.0, 1.0, 0.1]
    (d0, p0), (d1, _) = pca_directions(v, 2)
    assert abs(abs(d0[0]) - 5) < 0.5 and abs(d0[1]) < 0.5 and p0["explained_variance"] > 0.9
    save_directions(tmp_path / "d.json", [Direction("pca0", d0.astype(np.float32), p0)])
    loaded = load_directions(tmp_path / "d.json")
    np.testing.assert_allclose(loaded["pca0"].vector, d0, rtol=1e-6)
    assert loaded["pca0"].provenance["kind"] == "pca"


def test_walk_stays_on_the_sphere_for_normalised_vectors():
    v = np.array([1.0, 0, 0])
    out = walk(v, np.array([0, 0.5, 0]), [-2, 0, 2])
    assert is_normalized(out) and np.allclose(out[1], v)
    raw = walk(np.array([2.0, 0]), np.array([0, 1.0]), [-1, 1])
    np.testing.assert_allclose(raw, [[2, -1], [2, 1]])


def test_directions_from_a_prepared_dataset_with_labels(tmp_path):
    from id3pm.cli import main
    from id3pm.data import PrepareConfig, prepare

    src = tmp_path / "src"
    src.mkdir()
    keys = [f"{age}_{g}_0_2017.png" for age, g in [(10, 0), (20, 1), (30, 0), (80, 1), (5, 0), (60, 1)]]
    vectors = np.array([[a / 10, g] for a, g in [(10, 0), (20, 1), (30, 0), (80, 1), (5, 0), (60, 1)]], np.float32)
    for k in keys:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src / k)
    np.savez(tmp_path / "v.npz", keys=np.array(keys), vectors=vectors)
    prepare(PrepareConfig(src=str(src), out=str(tmp_path / "p"), encoder={"name": "table", "path": str(tmp_path / "v.npz")},
                          sizes=(8,), holdout=0.0, workers=1, aligned=True, metadata="utkface"), progress=False)
    assert main(["directions", str(tmp_path / "p"), "--labels", "gender,age", "--pca", "1",
                 "--out", str(tmp_path / "d.json")]) == 0
    d = load_directions(tmp_path / "d.json")
    np.testing.assert_allclose(d["gender"].vector, [(20 + 80 + 60) / 30 - (10 + 30 + 5) / 30, 1.0], rtol=1e-5)
    assert d["age"].provenance["kind"] == "continuous" and d["age"].vector[0] > 0
    assert d["pca0"].provenance["kind"] == "pca" and d["gender"].provenance["encoder"]["name"] == "table"


# -- attribute conditioning ----------------------------------------------------------------
def test_setting_an_attribute_moves_what_it_controls(tmp_path):
    """Identity sets the colours, the attribute "yaw" sets on which side the block is.
    After training, asking for yaw=+30 or yaw=-30 puts the block on that side, for every
    identity; with the attribute unset, the picture still has the block on one side
    (one half nearer the block colour, the other nearer the background)."""
    from id3pm.data import PrepareConfig, prepare
    from id3pm.pipeline import ID3PMPipeline
    from id3pm.training import TrainConfig, train

    src = tmp_path / "src"
    src.mkdir()
    keys, vecs, rows = [], [], []
    ids = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    for i in range(3):
        for yaw in (-30, 30):
            img = np.empty((8, 8, 3), np.uint8)
            img[:] = PALETTE[i]
            if yaw < 0:
                img[:, :4] = PALETTE[i + 3]
            else:
                img[:, 4:] = PALETTE[i + 3]
            key = f"id{i}_yaw{yaw}.png"
            Image.fromarray(img).save(src / key)
            keys.append(key)
            vecs.append(ids[i])
            rows.append(f"{key},{yaw}\n")
    np.savez(tmp_path / "v.npz", keys=np.array(keys), vectors=np.array(vecs))
    (tmp_path / "labels.csv").write_text("file,yaw\n" + "".join(rows))
    prepare(PrepareConfig(src=str(src), out=str(tmp_path / "p"), encoder={"name": "table", "path": str(tmp_path / "v.npz")},
                          sizes=(8,), holdout=0.0, workers=1, aligned=True, metadata=f"csv:{tmp_path / 'labels.csv'}",
                          attributes=("meta:yaw",), image_format="png"), progress=False)
    train(TrainConfig(data=str(tmp_path / "p"), out=str(tmp_path / "run"), max_steps=1500, save_every=1500,
                      attr_drop=0.2, **TINY_TRAIN))
    pipe = ID3PMPipeline.from_pretrained(tmp_path / "run" / "model", device="cpu")
    assert pipe.info["attributes"]["names"] == ["yaw"]
    for yaw, side in ((-30, slice(0, 4)), (30, slice(4, 8))):
        out = pipe(ids, num_images_per_id=2, guidance_scale=2.0, num_inference_steps=20, seed=0,
                   attributes={"yaw": yaw}).images.astype(float)
        for i in range(3):
            block = out[i][:, :, side].mean(axis=(0, 1, 2))
            other = out[i][:, :, slice(4, 8) if side.start == 0 else slice(0, 4)].mean(axis=(0, 1, 2))
            assert np.abs(block - PALETTE[i + 3]).mean() < np.abs(block - PALETTE[i]).mean(), (yaw, i)
            assert np.abs(other - PALETTE[i]).mean() < np.abs(other - PALETTE[i + 3]).mean(), (yaw, i)
    unset = pipe(ids, num_images_per_id=1, num_inference_steps=10, seed=0).images
    sampled = pipe(ids, num_images_per_id=1, num_inference_steps=10, seed=0, unset_attributes="sample").images
    assert unset.shape == sampled.shape == (3, 1, 8, 8, 3)
    for images in (unset, sampled):  # unset or drawn from the data: still a block on ONE side
        for i in range(3):
            nearer = []
            for half in (slice(0, 4), slice(4, 8)):
                mean = images[i, 0][:, half].reshape(-1, 3).mean(axis=0)
                nearer.append(int(np.abs(PALETTE[i + 3] - mean).sum() < np.abs(PALETTE[i] - mean).sum()))
            assert sorted(nearer) == [0, 1], (i, nearer)  # one half block colour, the other background
    with pytest.raises(ValueError, match="unknown attribute 'pitch'"):
        pipe(ids, attributes={"pitch": 3})
