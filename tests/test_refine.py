"""Query-refined inversion on a tiny trained model, judged by a black box that the test
builds: a linear map of the pooled colours that returns each training image's vector."""

import numpy as np
import pytest
from conftest import pooled

from id3pm.encoders import Encoder, EncodeResult
from id3pm.refine import query_refine


class LinearColourEncoder(Encoder):
    """vector = A @ (2x2 pooled colours); A is fitted so that the training images map to
    their vectors exactly, so the encoder agrees with the model's conditioning vectors."""

    name = "linear-colour"
    crop = None

    def __init__(self, images, vectors):
        features = np.stack([self.features(i) for i in images])
        self.a = np.linalg.lstsq(features, vectors, rcond=None)[0]
        self.dim = vectors.shape[1]
        self.calls = 0

    @staticmethod
    def features(img):
        return pooled(img).reshape(-1) / 255.0

    def encode_crops(self, crops):  # pragma: no cover - encode() is overridden
        raise NotImplementedError

    def encode(self, images, aligned=False, keys=None):
        self.calls += len(images)
        feats = np.stack([self.features(i) for i in images])
        return EncodeResult((feats @ self.a).astype(np.float32), [None] * len(images))


@pytest.fixture(scope="module")
def setup(trained_tiny):
    from id3pm.pipeline import ID3PMPipeline

    model_dir, images, vectors = trained_tiny
    pipe = ID3PMPipeline.from_pretrained(model_dir, device="cpu")
    encoder = LinearColourEncoder(images, vectors)
    np.testing.assert_allclose(encoder.encode(images).vectors, vectors, atol=1e-4)  # the judge is consistent
    return pipe, encoder, vectors


def test_queries_buy_identity_on_the_encoder_that_is_queried(setup):
    pipe, encoder, vectors = setup
    # few sampling steps at guidance 1: a model imperfect enough for queries to matter
    common = dict(encoder=encoder, guidance_scale=1.0, num_inference_steps=4, seed=0)
    calls_before = encoder.calls
    single = query_refine(pipe, vectors, queries=1, **common)
    best = query_refine(pipe, vectors, queries=16, **common)
    search = query_refine(pipe, vectors, queries=16, search="renoise", strength=0.5, **common)
    assert (best.queries == 16).all() and (search.queries == 16).all() and (single.queries == 1).all()
    assert encoder.calls - calls_before == 4 * (1 + 16 + 16)  # every query went through the black box
    # best-of-16 includes the single sample's seed: never worse, and better on average
    assert (best.distances[:, 0] <= single.distances[:, 0] + 1e-6).all()
    assert best.distances[:, 0].mean() < 0.9 * single.distances[:, 0].mean()
    assert search.distances[:, 0].mean() < 0.9 * single.distances[:, 0].mean()
    for curve in best.curves + search.curves:  # the best distance so far, one value per query
        assert len(curve) == 16 and all(b <= a for a, b in zip(curve, curve[1:]))
    # what was kept is what the black box says of it
    again = encoder.encode(list(best.images[:, 0])).vectors
    np.testing.assert_allclose(np.linalg.norm(again - vectors, axis=1), best.distances[:, 0], atol=1e-4)


def test_keep_returns_the_k_closest_in_order(setup):
    pipe, encoder, vectors = setup
    out = query_refine(pipe, vectors[:2], queries=6, keep=3, encoder=encoder, num_inference_steps=4)
    assert out.images.shape == (2, 3, 8, 8, 3)
    assert (np.diff(out.distances, axis=1) >= 0).all()
    payload = out.to_json()
    assert payload["queries"] == [6, 6] and len(payload["curves"][0]) == 6


def test_bad_query_settings_are_refused(setup):
    pipe, encoder, vectors = setup
    with pytest.raises(ValueError, match="keep must be in 1..queries"):
        query_refine(pipe, vectors, queries=2, keep=3, encoder=encoder)
    with pytest.raises(ValueError, match="unknown search"):
        query_refine(pipe, vectors, queries=2, search="cma", encoder=encoder)
    with pytest.raises(ValueError, match="length 8"):
        query_refine(pipe, vectors[:, :5], queries=2, encoder=encoder)
    with pytest.raises(ValueError, match="the table encoder cannot judge generated images"):
        query_refine(pipe, vectors, queries=2)  # the model's own encoder is a lookup table


def test_the_cli_refuses_queries_it_cannot_spend(setup, trained_tiny, tmp_path, capsys):
    from id3pm.cli import main

    model_dir, _, vectors = trained_tiny
    np.save(tmp_path / "v.npy", vectors)
    code = main(["sample", "--model", str(model_dir), "--vectors", str(tmp_path / "v.npy"), "--queries", "4",
                 "-n", "2", "--out", str(tmp_path / "out")])
    assert code != 0
    assert "cannot judge generated images" in capsys.readouterr().err
