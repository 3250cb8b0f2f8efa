"""Black-box encoders: real dlib vectors of real faces, and each backend's contract."""

import csv

import numpy as np
import pytest
import torch
from conftest import shared_data
from fake_fr_service import FakeService, running_service
from scipy.stats import mannwhitneyu
from skimage import data as skdata

from id3pm.alignment import FaceAligner
from id3pm.encoders import identity_distance, make_encoder, parse_encoder_spec
from id3pm.encoders.remote import RemoteError, ServiceDown
from id3pm.images import load_image, resize


@pytest.fixture(scope="module")
def dlib_encoder():
    return make_encoder("dlib")


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()


def test_dlib_vector_of_the_astronaut(dlib_encoder, astronaut):
    result = dlib_encoder.encode([astronaut])
    assert result.errors == [None]
    v = result.vectors[0]
    assert v.shape == (128,) and v.dtype == np.float32 and np.isfinite(v).all()
    assert 0.5 < np.linalg.norm(v) < 3  # dlib descriptors are not unit-normalised


def test_aligned_canonical_crop_encodes_like_the_photo(dlib_encoder, astronaut):
    v_photo = dlib_encoder.encode_one(astronaut)
    crop = FaceAligner().align(astronaut).crop
    assert identity_distance(dlib_encoder.encode_one(crop, aligned=True), v_photo) < 0.05
    # a 64x64 generated-size crop still lands well inside dlib's same-person threshold (0.6)
    assert identity_distance(dlib_encoder.encode_one(resize(crop, 64), aligned=True), v_photo) < 0.35


def test_per_item_failures_do_not_sink_the_batch(dlib_encoder, astronaut):
    blank = np.full((200, 200, 3), 128, np.uint8)
    wrong = np.zeros((10, 10), np.uint8)
    result = dlib_encoder.encode([blank, astronaut, wrong], keys=["blank.png", "astro.png", "grey.png"])
    assert result.errors[0] == "blank.png: no face found"
    assert result.errors[1] is None and np.isfinite(result.vectors[1]).all()
    assert "grey.png: expected a uint8 RGB array" in result.errors[2]
    assert np.isnan(result.vectors[0]).all() and list(result.ok) == [False, True, False]


def test_two_faces_largest_or_error(astronaut):
    small = resize(astronaut, 256)
    canvas = np.zeros((512, 1024, 3), np.uint8)
    canvas[:, :512] = astronaut
    canvas[100:356, 700:956] = small
    res = make_encoder("dlib").encode([canvas], keys=["pair.png"])
    assert res.errors == [None] and "faces found, used the largest" in res.warnings[0]
    strict = make_encoder("dlib", multiple_faces="error").encode([canvas], keys=["pair.png"])
    assert strict.errors[0].startswith("pair.png: ") and strict.errors[0].endswith("faces found, expected one")


def _orl_auc(encoder, root, rows):
    paths = sorted({r["path_a"] for r in rows} | {r["path_b"] for r in rows})
    res = encoder.encode([load_image(root / p) for p in paths], keys=paths)
    vec = dict(zip(paths, res.vectors))
    same, diff = [], []
    for r in rows:
        d = identity_distance(vec[r["path_a"]], vec[r["path_b"]])
        if np.isfinite(d):
            (same if r["same"] == "1" else diff).append(d)
    return mannwhitneyu(diff, same).statistic / (len(same) * len(diff)), len(same) + len(diff), len(rows)


@pytest.mark.shared_data
def test_real_dlib_vectors_separate_people_on_orl(dlib_encoder):
    root = shared_data("orl")
    rows = list(csv.DictReader(open(root / "pairs.csv")))[:120]  # 2 folds keep the test short
    auc, used, total = _orl_auc(dlib_encoder, root, rows)
    assert used >= 0.95 * total  # the 23x28 ORL faces are found after upscaling
    assert auc > 0.95


# -- onnx -----------------------------------------------------------------------------
class TinyFR(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
            torch.nn.Linear(32, 16),
        )

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny_fr.onnx"
    model = TinyFR().eval()
    torch.onnx.export(model, (torch.zeros(2, 3, 112, 112),), str(path), input_names=["input"], output_names=["emb"],
                      dynamic_shapes={"x": {0: torch.export.Dim("n", min=1, max=64)}}, dynamo=True)
    return path, model


def test_onnx_encoder_runs_the_users_model(onnx_model, astronaut):
    path, model = onnx_model
    enc = make_encoder(parse_encoder_spec(f"onnx:path={path},input_size=112,template=arcface"))
    assert enc.dim == 16 and enc.distance == "cosine"
    result = enc.encode([astronaut, np.full((100, 100, 3), 7, np.uint8)], keys=["a", "flat"])
    assert result.errors[0] is None and result.errors[1] == "flat: no face found"
    # the same numbers as the torch model on the crop the encoder cut
    crop = enc.crop_from_photo(astronaut, "a")[0]
    x = torch.from_numpy((crop.astype(np.float32) - 127.5) / 127.5).permute(2, 0, 1)[None]
    ref = model(x).detach().numpy()[0]
    np.testing.assert_allclose(result.vectors[0], ref / np.linalg.norm(ref), atol=1e-5)
    # aligned input: landmarks on the canonical crop, same ArcFace template
    aligned = enc.encode_one(FaceAligner().align(astronaut).crop, aligned=True)
    assert identity_distance(aligned, result.vectors[0], "cosine") < 0.02


def test_onnx_chip_template_and_missing_file(onnx_model, astronaut):
    path, _ = onnx_model
    enc = make_encoder({"name": "onnx", "path": str(path), "template": "chip", "padding": 0.4, "input_size": 112})
    assert enc.encode([astronaut]).errors == [None]
    with pytest.raises(Exception, match="nope.onnx"):
        make_encoder({"name": "onnx", "path": "nope.onnx"})


# -- remote ---------------------------------------------------------------------------
@pytest.fixture()
def service():
    with running_service() as url:
        yield url


def test_remote_encoder_round_trip_and_retry(service):
    imgs = [np.full((8, 8, 3), c, np.uint8) for c in (10, 200)]
    FakeService.script = ["503", "ok"]
    enc = make_encoder({"name": "remote", "url": service, "backoff": 0.01})
    res = enc.encode(imgs)
    np.testing.assert_allclose(res.vectors, [[10] * 3, [200] * 3])
    assert enc.dim == 3


def test_remote_encoder_gives_up_on_a_batch_after_its_retries(service):
    FakeService.script = ["503"] * 2
    res = make_encoder({"name": "remote", "url": service, "retries": 1, "backoff": 0.01, "dim": 3}).encode(
        [np.zeros((8, 8, 3), np.uint8)])
    assert "no valid reply after 2 attempts (HTTP 503" in res.errors[0]


def test_remote_encoder_unreachable():
    enc = make_encoder({"name": "remote", "url": "http://127.0.0.1:9/v1/embed", "retries": 0, "timeout": 2})
    res = enc.encode([np.zeros((8, 8, 3), np.uint8)], keys=["a.png"])  # one batch: its item gets the error
    assert res.errors[0].startswith("a.png: http://127.0.0.1:9")
    with pytest.raises(ServiceDown, match="3 batches in a row"):  # a dead service stops the job
        make_encoder({"name": "remote", "url": "http://127.0.0.1:9/v1/embed", "retries": 0, "timeout": 2,
                      "batch_size": 1}).encode([np.zeros((8, 8, 3), np.uint8)] * 5)


@pytest.mark.parametrize("fault, error", [
    ("hang", "timed out"), ("trickle", "not complete after"), ("close", "RemoteDisconnected"),
    ("truncated", "IncompleteRead"), ("huge", "larger than 50000 bytes"), ("short", "length 2, expected 3"),
    ("nan", "non-finite"), ("inf", "non-finite"), ("garbage", "not JSON"), ("500", "HTTP 500"),
])
def test_a_misbehaving_service_fails_its_batch_only(service, fault, error):
    # batches of one image: the middle one meets the fault, the others are encoded
    imgs = [np.full((8, 8, 3), c, np.uint8) for c in (10, 20, 30)]
    FakeService.script = ["ok", fault, "ok"]
    enc = make_encoder({"name": "remote", "url": service, "dim": 3, "retries": 0, "timeout": 0.5, "batch_size": 1,
                        "max_reply_bytes": 50_000})
    res = enc.encode(imgs, keys=["a.png", "b.png", "c.png"])
    np.testing.assert_allclose(res.vectors[[0, 2]], [[10] * 3, [30] * 3])
    assert np.isnan(res.vectors[1]).all() and res.errors[0] is None and res.errors[2] is None
    assert res.errors[1].startswith("b.png: ") and error in res.errors[1] and "\n" not in res.errors[1], res.errors[1]


def test_a_service_that_fails_then_answers_is_retried(service):
    FakeService.script = ["500", "close", "ok"]
    enc = make_encoder({"name": "remote", "url": service, "retries": 2, "backoff": 0.01, "timeout": 2})
    np.testing.assert_allclose(enc.encode([np.full((8, 8, 3), 7, np.uint8)]).vectors, [[7] * 3])


# -- table ----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npz", ".csv", ".parquet"])
def test_table_encoder_looks_up_by_key(tmp_path, suffix):
    keys = ["people/ann.jpg", "bob.png"]
    vectors = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    path = tmp_path / f"t{suffix}"
    if suffix == ".npz":
        np.savez(path, keys=np.array(keys), vectors=vectors)
    elif suffix == ".csv":
        path.write_text("key,v0,v1,v2\n" + "".join(f"{k},{','.join(map(str, v))}\n" for k, v in zip(keys, vectors)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"key": keys, "vector": vectors.tolist()}), path)
    enc = make_encoder({"name": "table", "path": str(path)})
    img = np.zeros((4, 4, 3), np.uint8)
    res = enc.encode([img, img, img], keys=["data/people/ann.jpg", "bob", "carol.jpg"])
    np.testing.assert_allclose(res.vectors[:2], vectors)
    assert res.errors[2].startswith("carol.jpg: no vector for this key")


def test_unknown_encoder_and_bad_spec():
    with pytest.raises(ValueError, match="unknown encoder 'arcface'"):
        make_encoder("arcface")
    with pytest.raises(ValueError, match="not key=value"):
        parse_encoder_spec("onnx:path")
    assert parse_encoder_spec("onnx:path=a.onnx,input_size=112,bgr=true") == {
        "name": "onnx", "path": "a.onnx", "input_size": 112, "bgr": True}
