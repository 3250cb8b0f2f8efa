"""Adapters (id3pm.adapter, `id3pm adapt`): maps from a new FR model's templates into a
model's conditioning space, fitted on photos both black boxes encoded. The black boxes
here are made by the tests: linear maps of the pixels, and vector tables."""

import json

import numpy as np
import pytest

from conftest import make_tiny_prepared, pooled
from id3pm.adapter import Adapter, AdapterConfig, fit_adapter, mean_cosine
from id3pm.cli import main
from id3pm.modeldir import load_model_dir
from id3pm.pipeline import ID3PMPipeline

SOURCE, TARGET = {"name": "new-fr"}, {"name": "old-fr"}


def linear_encoder(dim: int, seed: int, pixels: int = 192):
    w = np.random.default_rng(seed).normal(size=(dim, pixels)) / np.sqrt(pixels)
    return lambda photos: photos @ w.T


@pytest.fixture(scope="module")
def photos():
    """600 random 8x8 RGB 'photos', flattened and centred."""
    return np.random.default_rng(0).uniform(-0.5, 0.5, size=(600, 192))


def test_ridge_recovers_the_true_map_between_two_linear_encoders(photos):
    old = linear_encoder(24, seed=1)
    mix = np.random.default_rng(2).normal(size=(16, 24))
    new = lambda p: old(p) @ mix.T  # noqa: E731  (new = mix @ old: 16 mixtures of old's 24 outputs, fewer dims)
    truth = np.random.default_rng(3).normal(size=(24, 16))  # the map to recover: old-space target = truth @ new
    x, y = new(photos), new(photos) @ truth.T
    result = fit_adapter(x, y, SOURCE, 16, TARGET, 24, kinds=("ridge",), curve_sizes=(50, None))
    a = result.adapter
    w = a.linear.weight.detach().numpy() / a.x_scale.numpy()  # the map on unstandardised inputs
    np.testing.assert_allclose(w, truth, atol=0.02 * np.abs(truth).max())
    fresh = np.random.default_rng(9).uniform(-0.5, 0.5, size=(50, 192))
    assert mean_cosine(a(new(fresh)), new(fresh) @ truth.T) > 0.999
    assert result.curve[0]["photos"] == 50 and result.curve[-1]["photos"] == 540  # 10% held out


def test_the_mlp_is_chosen_where_the_map_is_not_linear(photos):
    x = linear_encoder(12, seed=4)(photos) * 3
    y = np.tanh(x[:, :8]) + 0.5 * x[:, 8:] ** 2 @ np.ones((4, 8))
    result = fit_adapter(x, y, SOURCE, 12, TARGET, 8, curve_sizes=(None,), mlp_steps=600)
    assert result.adapter.config.kind == "mlp"
    assert result.scores["mlp"] > result.scores["ridge"] + 0.05, result.scores


def test_an_adapter_round_trips_through_its_folder(photos, tmp_path):
    x = linear_encoder(12, seed=5)(photos)
    y = np.tanh(x[:, :8])
    a = fit_adapter(x, y, SOURCE, 12, TARGET, 8, curve_sizes=(None,), mlp_steps=100).adapter
    b = Adapter.load(a.save(tmp_path / "adapter"))
    np.testing.assert_array_equal(a(x[:20]), b(x[:20]))
    assert b.config == a.config and b.config.fit["chosen_by"].startswith("held-out cosine in the target space")
    with pytest.raises(ValueError, match="takes 12-d new-fr vectors, got length 7"):
        b(np.zeros((1, 7)))


def test_a_mismatched_adapter_is_refused_in_one_line(tmp_path):
    a = Adapter(AdapterConfig(source={"name": "mobilefacenet"}, source_dim=192, target={"name": "dlib"}, target_dim=128))
    with pytest.raises(ValueError, match="maps mobilefacenet vectors, not faceres"):
        a.check("faceres", {"name": "dlib"}, 128)
    with pytest.raises(ValueError, match=r"maps into dlib \(128-d\), but the model is conditioned on table \(8-d\)"):
        a.check("mobilefacenet", {"name": "table"}, 8)
    with pytest.raises(FileNotFoundError, match="not an adapter folder"):
        Adapter.load(tmp_path)


@pytest.fixture(scope="module")
def new_templates(tmp_path_factory):
    """A second black box for the tiny model's people: 12-d templates, a fixed linear map
    of the 8-d vectors the model was trained on, for 60 photos prepared with the model's
    (table) encoder."""
    root = tmp_path_factory.mktemp("adapt")
    prepared, _, vectors = make_tiny_prepared(root, n=60, size=8, dim=8)
    mix = np.random.default_rng(7).normal(size=(12, 8))
    keys = [f"img{i}.png" for i in range(60)]
    np.savez(root / "new.npz", keys=np.array(keys), vectors=(vectors @ mix.T).astype(np.float32))
    return prepared, root / "new.npz", mix


def test_cli_adapt_fits_writes_the_curve_and_refuses_the_models_own_encoder(trained_tiny, new_templates, tmp_path):
    prepared, new_table, _ = new_templates
    out = tmp_path / "adapter"
    assert main(["adapt", "--encoder", f"table:path={new_table}", "--model", str(trained_tiny[0]), "--data",
                 str(prepared), "--out", str(out), "--sizes", "20,all", "--mlp-steps", "100", "--quiet"]) == 0
    curve = json.loads((out / "curve.json").read_text())
    assert [r["photos"] for r in curve["curve"]] == [20, 54] and (out / "curve.png").stat().st_size > 0
    assert curve["scores"]["ridge"] > 0.99  # the map is exactly linear
    assert Adapter.load(out).config.target["name"] == "table"
    info = json.loads((trained_tiny[0] / "id3pm.json").read_text())
    own = ",".join(f"{k}={v}" for k, v in info["encoder"].items() if k != "name")
    assert main(["adapt", "--encoder", f"table:{own}", "--model", str(trained_tiny[0]), "--data", str(prepared),
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2


def ridge_adapter(model, new_templates, out):
    """`id3pm adapt` from the new table encoder into the tiny model's space, on all 60 photos."""
    prepared, new_table, _ = new_templates
    assert main(["adapt", "--encoder", f"table:path={new_table}", "--model", str(model), "--data", str(prepared),
                 "--out", str(out), "--sizes", "all", "--kinds", "ridge", "--quiet"]) == 0
    return out


def test_a_template_of_the_new_encoder_generates_its_person_through_the_adapter(trained_tiny, new_templates, tmp_path):
    path, images, vectors = trained_tiny
    mix = new_templates[2]
    out = ridge_adapter(path, new_templates, tmp_path / "adapter")
    direct = ID3PMPipeline.from_pretrained(path, device="cpu")
    adapted = ID3PMPipeline.from_pretrained(path, device="cpu", adapter=out)
    assert adapted.id_dim == 12 and adapted.encoder.name == "table"
    kw = dict(num_images_per_id=2, guidance_scale=2.0, num_inference_steps=20, seed=0)
    a = adapted(vectors @ mix.T, **kw)  # the people's templates under the new black box
    b = direct(vectors, **kw)
    assert np.abs(a.images.astype(int) - b.images.astype(int)).mean() < 2  # the same pictures
    targets = pooled(np.stack(images))
    for i in range(len(vectors)):
        for sample in pooled(a.images[i]):
            assert ((targets - sample) ** 2).mean(axis=(1, 2, 3)).argmin() == i
    assert a.params["adapter"] == {"from": "table", "kind": "ridge"}
    assert adapted.template_encoder == "table" and adapted.template_distance == "euclidean"
    with pytest.raises(ValueError, match="pass an adapter"):
        ID3PMPipeline.from_pretrained(path, device="cpu", encoder="dlib")
    with pytest.raises(ValueError, match="maps table vectors, not dlib"):
        ID3PMPipeline.from_pretrained(path, device="cpu", encoder="dlib", adapter=out)
    model, info = load_model_dir(path)
    with pytest.raises(ValueError, match=r"length 8, got shape \(4, 12\)"):  # without the adapter: refused
        ID3PMPipeline(model, info)(vectors @ mix.T)


def test_the_server_takes_and_describes_the_new_encoders_templates(trained_tiny, new_templates, tmp_path):
    from fastapi.testclient import TestClient

    from id3pm.serving import Limits, create_app

    path, _, vectors = trained_tiny
    mix = new_templates[2]
    pipe = ID3PMPipeline.from_pretrained(path, device="cpu", adapter=ridge_adapter(path, new_templates, tmp_path / "a"))
    with TestClient(create_app(pipe, None, limits=Limits(rate=0))) as client:
        card = client.get("/v1/model").json()
        assert card["id_dim"] == 12 and card["adapter"] == {"into": "table", "kind": "ridge"}
        ok = client.post("/v1/generate", json={"vector": (vectors[0] @ mix.T).tolist(), "n": 1, "steps": 4})
        assert ok.status_code == 200, ok.text
        short = client.post("/v1/generate", json={"vector": vectors[0].tolist(), "n": 1, "steps": 4})
        assert short.status_code == 422 and "12" in short.text  # the model's own 8-d vectors are refused


def test_evaluate_takes_the_adapters_templates_and_refuses_others(trained_tiny, new_templates, tmp_path):
    from id3pm.data import PrepareConfig, prepare
    from id3pm.evaluation import EvalConfig, Evaluation

    prepared, new_table, _ = new_templates
    mfn = Adapter(AdapterConfig(source={"name": "mobilefacenet"}, source_dim=192, target={"name": "table"}, target_dim=8))
    mfn.save(tmp_path / "mfn")
    cfg = EvalConfig(out=str(tmp_path / "eval"), models=[str(trained_tiny[0])], data=str(prepared),
                     independent=None, adapter=str(tmp_path / "mfn"))
    with pytest.raises(ValueError, match=r"takes 192-d mobilefacenet templates \(through its adapter\), the data holds 8-d"):
        Evaluation(cfg)
    adapter = ridge_adapter(trained_tiny[0], new_templates, tmp_path / "table")
    with pytest.raises(ValueError, match="takes 12-d table templates .* holds 8-d table vectors"):
        Evaluation(EvalConfig(**{**cfg.__dict__, "adapter": str(adapter)}))  # the model's own vectors, not templates
    new_data = tmp_path / "prepared-new"  # the same photos prepared with the new black box
    prepare(PrepareConfig(src=str(prepared.parent / "src"), out=str(new_data), encoder={"name": "table", "path": str(new_table)},
                          sizes=(8,), holdout=0.0, workers=1, aligned=True, image_format="png"), progress=False)
    ok = Evaluation(EvalConfig(**{**cfg.__dict__, "adapter": str(adapter), "data": str(new_data)}))
    assert ok.pipes[0][1].id_dim == 12 and ok.cond.dim == 12


def test_adapt_takes_templates_that_reencode_stored(trained_tiny, new_templates, tmp_path):
    """`adapt --templates SET` (vectors of the new FR model from `id3pm reencode`) fits the
    adapter that `adapt --encoder NEW` fits by encoding the photos itself."""
    prepared, new_table, _ = new_templates
    assert main(["reencode", str(prepared), str(tmp_path / "new-set"), "--encoder", f"table:path={new_table}",
                 "--quiet"]) == 0
    assert main(["adapt", "--templates", str(tmp_path / "new-set"), "--model", str(trained_tiny[0]), "--data",
                 str(prepared), "--out", str(tmp_path / "from-set"), "--sizes", "all", "--kinds", "ridge", "--quiet"]) == 0
    encoded = ridge_adapter(trained_tiny[0], new_templates, tmp_path / "encoded")
    a, b = Adapter.load(tmp_path / "from-set"), Adapter.load(encoded)
    assert a.config.source == b.config.source and a.config.source_dim == 12
    probe = np.random.default_rng(3).normal(size=(5, 12)).astype(np.float32)
    np.testing.assert_allclose(a(probe), b(probe), rtol=1e-4, atol=1e-5)
    assert main(["adapt", "--model", str(trained_tiny[0]), "--data", str(prepared), "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2  # neither --encoder nor --templates
