"""Protected templates: each transform against its defining property, computed
independently, and the wrapper through `prepare` and a real dlib vector."""

import numpy as np
import pytest

from id3pm.encoders import identity_distance, make_encoder
from id3pm.encoders.protected import AdditiveNoise, BioHash, Orthonormal, PCATruncation, fit_pca

RNG = np.random.default_rng(0)
Y = RNG.normal(size=(50, 16)).astype(np.float32)


def test_a_secret_rotation_keeps_every_distance_and_depends_on_the_key():
    t = Orthonormal(16, key=3)
    np.testing.assert_allclose(t.q @ t.q.T, np.eye(16), atol=1e-12)
    z = t(Y)
    for kind in ("euclidean", "cosine"):
        np.testing.assert_allclose(identity_distance(z[:25], z[25:], kind), identity_distance(Y[:25], Y[25:], kind),
                                   atol=1e-5)
    np.testing.assert_array_equal(Orthonormal(16, key=3)(Y), z)  # the key fixes the template
    assert np.abs(Orthonormal(16, key=4)(Y) - z).mean() > 0.3
    assert np.abs(z - Y).mean() > 0.3  # and it is not the plain vector


def test_biohash_codes_are_signs_whose_distance_counts_flipped_bits():
    t = BioHash(16, key=1, bits=12)
    codes = t(Y)
    assert codes.shape == (50, 12) and set(np.unique(codes)) == {-1.0, 1.0}
    flipped = (codes[:25] != codes[25:]).sum(axis=1)
    np.testing.assert_allclose(identity_distance(codes[:25], codes[25:]) ** 2 / 4, flipped)
    # nearby vectors share more bits than unrelated ones (random projections keep angles)
    near = t(Y + 0.05 * RNG.normal(size=Y.shape).astype(np.float32))
    assert (near != codes).mean() < 0.5 * (codes[:25] != codes[25:]).mean()
    assert (BioHash(16, key=2, bits=12)(Y) != codes).mean() > 0.25  # a new key, new codes


def test_additive_noise_has_the_asked_snr_and_is_the_same_for_the_same_face():
    t = AdditiveNoise(16, snr_db=6.0, key=5)
    many = RNG.normal(size=(4000, 16)).astype(np.float32)
    noisy = t(many)
    snr = 10 * np.log10(np.mean(many.astype(np.float64) ** 2) / np.mean((noisy - many).astype(np.float64) ** 2))
    assert abs(snr - 6.0) < 0.15
    np.testing.assert_array_equal(t(many[:3]), noisy[:3])  # deterministic per vector
    assert not np.allclose(AdditiveNoise(16, snr_db=6.0, key=6)(many[:3]), noisy[:3])
    with_nan = many[:2].copy()
    with_nan[1, 0] = np.nan
    assert np.isnan(t(with_nan)[1]).all() and np.isfinite(t(with_nan)[0]).all()


def test_pca_truncation_removes_exactly_the_discarded_variance(tmp_path):
    basis = RNG.normal(size=(5, 16))
    scale = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    data = (RNG.normal(size=(400, 5)) * scale) @ basis + 2.0  # a 5-d subspace, offset
    path = fit_pca(data, tmp_path / "pca.npz")
    np.testing.assert_allclose(PCATruncation(16, str(path), k=5)(data), data, atol=1e-3)  # all of it is kept
    kept = PCATruncation(16, str(path), k=2)(data)
    # independently: eigenvalues of the covariance; the residual is the sum of the dropped ones
    eig = np.sort(np.linalg.eigvalsh(np.cov(data.T, bias=True)))[::-1]
    np.testing.assert_allclose(((data - kept) ** 2).sum(axis=1).mean(), eig[2:].sum(), rtol=1e-3)


def test_pca_basis_files_are_checked_and_never_unpickled(tmp_path):
    fit_pca(RNG.normal(size=(30, 8)), tmp_path / "p8.npz")
    with pytest.raises(ValueError, match="8-d vectors, the encoder gives 16-d"):
        PCATruncation(16, str(tmp_path / "p8.npz"))
    with pytest.raises(ValueError, match="k must be in 1..8"):
        PCATruncation(8, str(tmp_path / "p8.npz"), k=9)
    np.savez(tmp_path / "evil.npz", mean=np.array([object()], dtype=object), components=np.zeros((1, 8)))
    with pytest.raises(ValueError, match="pickle"):
        PCATruncation(8, str(tmp_path / "evil.npz"))


def test_the_wrapper_protects_what_the_black_box_returns_and_rebuilds_from_its_spec(tmp_path):
    keys = [f"k{i}.png" for i in range(4)]
    np.savez(tmp_path / "v.npz", keys=np.array(keys), vectors=Y[:4])
    spec = {"name": "protected", "encoder": {"name": "table", "path": str(tmp_path / "v.npz")},
            "transform": "biohash", "key": 9, "bits": 8}
    enc = make_encoder(spec)
    image = np.zeros((8, 8, 3), np.uint8)
    result = enc.encode([image] * 5, keys=keys + ["missing.png"])
    np.testing.assert_array_equal(result.vectors[:4], BioHash(16, key=9, bits=8)(Y[:4]))
    assert result.errors[4] is not None and np.isnan(result.vectors[4]).all()
    assert enc.dim == 8 and enc.distance == "euclidean"
    again = make_encoder(enc.spec())
    np.testing.assert_array_equal(again.encode([image], keys=keys[:1]).vectors, result.vectors[:1])
    with pytest.raises(ValueError, match="unknown template transform"):
        make_encoder({**spec, "transform": "rot13"})


def photos_with_table_vectors(tmp_path, n: int):
    """n distinct 8x8 photos in tmp_path/src and a table encoder giving photo i the vector
    Y[i]: (src folder, file names, encoder spec)."""
    from conftest import distinct_images
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    keys = [f"img{i}.png" for i in range(n)]
    for key, img in zip(keys, distinct_images(n, 8)):
        Image.fromarray(img).save(src / key)
    np.savez(tmp_path / "v.npz", keys=np.array(keys), vectors=Y[:n])
    return src, keys, {"name": "table", "path": str(tmp_path / "v.npz")}


def test_prepare_stores_protected_templates(tmp_path):
    from id3pm.data import PrepareConfig, PreparedDataset, prepare

    src, keys, plain = photos_with_table_vectors(tmp_path, 4)
    encoder = {"name": "protected", "encoder": plain, "transform": "orthonormal", "key": 2}
    prepare(PrepareConfig(src=str(src), out=str(tmp_path / "p"), encoder=encoder, sizes=(8,), holdout=0.0, workers=1,
                          aligned=True, image_format="png"), progress=False)
    data = PreparedDataset(tmp_path / "p")
    assert data.manifest["encoder"]["transform"] == "orthonormal"
    stored = data.vectors(data.split_indices("train"))
    order = [keys.index(data.keys[i]) for i in data.split_indices("train")]
    np.testing.assert_allclose(stored, Orthonormal(16, key=2)(Y[:4])[order], atol=1e-6)


@pytest.mark.parametrize("transform", [{"transform": "biohash", "key": 7, "bits": 12},
                                       {"transform": "noise", "snr_db": 10.0, "key": 3}])
def test_a_set_protected_from_stored_vectors_is_the_set_prepare_writes(tmp_path, transform, capsys):
    """`id3pm protect` computes t(f(x)) from the stored f(x) instead of running the FR
    model again: vectors, encoder spec, id_dim, distance and crops equal those of
    `prepare --encoder protected:...` on the same photos."""
    from id3pm.cli import main
    from id3pm.data import PrepareConfig, PreparedDataset, prepare

    src, _, plain = photos_with_table_vectors(tmp_path, 6)
    common = dict(src=str(src), sizes=(8,), holdout=0.3, workers=1, aligned=True, image_format="png", chunk=4)
    prepare(PrepareConfig(out=str(tmp_path / "plain"), encoder=plain, **common), progress=False)
    prepare(PrepareConfig(out=str(tmp_path / "direct"), encoder={"name": "protected", "encoder": plain, **transform},
                          **common), progress=False)
    spec = ",".join(f"{k}={v}" for k, v in transform.items() if k != "transform")
    assert main(["protect", str(tmp_path / "plain"), str(tmp_path / "derived"), "--transform",
                 f"{transform['transform']}:{spec}"]) == 0
    direct, derived = PreparedDataset(tmp_path / "direct"), PreparedDataset(tmp_path / "derived")
    assert derived.keys == direct.keys and len(list((tmp_path / "derived" / "shards").glob("*.parquet"))) == 2
    np.testing.assert_array_equal(derived.vectors(), direct.vectors())
    for k in ("encoder", "id_dim", "distance", "counts"):
        assert derived.manifest[k] == direct.manifest[k], k
    np.testing.assert_array_equal(derived.images(8), direct.images(8))
    assert np.array_equal(derived.split_indices("holdout"), direct.split_indices("holdout"))
    # a protected set is not protected twice, and a folder of another scheme is not mixed into
    assert main(["protect", str(tmp_path / "derived"), str(tmp_path / "twice"), "--transform", "orthonormal:key=1"]) == 2
    assert "already protected" in capsys.readouterr().err
    assert main(["protect", str(tmp_path / "plain"), str(tmp_path / "derived"), "--transform", "orthonormal:key=1"]) == 2
    assert "use a new folder" in capsys.readouterr().err


def test_a_real_dlib_template_keeps_its_matches_under_rotation():
    from skimage import data as skdata

    from id3pm.alignment import FaceAligner

    plain = make_encoder("dlib")
    protected = make_encoder({"name": "protected", "encoder": "dlib", "transform": "orthonormal", "key": 11})
    photo = skdata.astronaut()
    crop = FaceAligner().align(photo).crop
    a, b = plain.encode([photo, crop], aligned=False).vectors, protected.encode([photo], aligned=False).vectors
    c = protected.encode([crop], aligned=True).vectors
    np.testing.assert_allclose(b, Orthonormal(128, key=11)(a[:1]), atol=1e-5)
    plain_c = plain.encode([crop], aligned=True).vectors
    np.testing.assert_allclose(identity_distance(b, c), identity_distance(a[:1], plain_c), atol=1e-5)


def test_a_model_warm_started_on_protected_templates_learns_to_invert_them(trained_tiny, tmp_path):
    """The aware attacker: a tiny model trained on plain vectors, fine-tuned on the BioHash
    codes of the same images (`id3pm protect`, then `train --init-from`). It takes the
    codes' scale (id_scale: entries O(1) before the Linear) and generates, for each code,
    the image it protects."""
    from conftest import TINY_TRAIN, distinct_images, make_tiny_prepared, pooled

    from id3pm.data.protect import protect_prepared
    from id3pm.modeldir import load_model_dir
    from id3pm.pipeline import ID3PMPipeline
    from id3pm.training import TrainConfig, train

    model_dir, _, vectors = trained_tiny
    prepared = make_tiny_prepared(tmp_path / "d", size=8)[0]  # the same images and vectors as trained_tiny
    protect_prepared(prepared, tmp_path / "bio", {"transform": "biohash", "key": 1})
    codes = BioHash(8, key=1)(vectors)
    assert len({tuple(c) for c in codes}) == 4
    train(TrainConfig(out=str(tmp_path / "aware"), data=str(tmp_path / "bio"), init_from=str(model_dir), max_steps=400,
                      save_every=400, **TINY_TRAIN))
    plain_net, _ = load_model_dir(model_dir)
    aware = ID3PMPipeline.from_pretrained(tmp_path / "aware" / "model", device="cpu")
    assert aware.info["encoder"]["transform"] == "biohash" and aware.model.config.id_scale == pytest.approx(1.0)
    assert plain_net.config.id_scale == pytest.approx(np.sqrt(8) / np.linalg.norm(vectors, axis=1).mean(), rel=1e-5)
    out = aware(codes, num_images_per_id=2, seed=0, num_inference_steps=20).images
    targets = pooled(np.stack(distinct_images(4, 8)))
    for i in range(4):
        for j in range(2):
            assert ((targets - pooled(out[i, j])) ** 2).mean(axis=(1, 2, 3)).argmin() == i
