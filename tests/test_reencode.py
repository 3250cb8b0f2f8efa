"""`id3pm reencode`: a prepared set's stored crops encoded by another FR model, written as
the set `prepare` would have written with that encoder (no detection again)."""

import json

import numpy as np
import pytest
from conftest import make_tiny_prepared, missing_asset
from PIL import Image
from skimage import data as skdata

from id3pm.cli import main
from id3pm.data import PrepareConfig, PreparedDataset, prepare
from id3pm.encoders import make_encoder


def test_a_reencoded_set_is_the_set_prepare_writes_with_the_new_encoder(tmp_path, capsys):
    make_tiny_prepared(tmp_path, n=12, size=8, dim=8)
    prepared = tmp_path / "in-shards-of-4"  # the same photos in three shards
    prepare(PrepareConfig(src=str(tmp_path / "src"), out=str(prepared), encoder={"name": "table", "path": str(tmp_path / "vectors.npz")},
                          sizes=(8,), holdout=0.3, workers=1, aligned=True, image_format="png", chunk=4), progress=False)
    keys = [f"img{i}.png" for i in range(12)]
    new = np.random.default_rng(5).normal(size=(12, 5)).astype(np.float32)
    np.savez(tmp_path / "new.npz", keys=np.array(keys[:-2]), vectors=new[:-2])  # no answer for the last two photos
    spec = f"table:path={tmp_path / 'new.npz'}"
    out = tmp_path / "re"
    assert main(["reencode", str(prepared), str(out), "--encoder", spec, "--quiet"]) == 0
    assert "2 photos left out" in capsys.readouterr().out
    direct = tmp_path / "direct"  # what prepare writes from the photos with the new black box
    prepare(PrepareConfig(src=str(tmp_path / "src"), out=str(direct), encoder=make_encoder(spec).spec(), sizes=(8,),
                          holdout=0.3, workers=1, aligned=True, image_format="png"), progress=False)
    a, b = PreparedDataset(out), PreparedDataset(direct)
    assert a.keys == b.keys == keys[:-2] and a.id_dim == 5
    np.testing.assert_array_equal(a.vectors(), b.vectors())
    np.testing.assert_array_equal(a.images(8), b.images(8))
    assert list(a.table["split"].to_pylist()) == list(b.table["split"].to_pylist())  # the same people held out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["encoder"] == b.manifest["encoder"] and manifest["counts"] == b.manifest["counts"]
    assert manifest["skipped"]["table: no usable face"] == 2
    assert manifest["derived_from"]["encoder"]["name"] == "table"  # the source's (old) table encoder
    # an interrupted run continues: a shard lost is written again, the others are kept
    shards = sorted((out / "shards").glob("*.parquet"))
    assert len(shards) == 3
    kept = shards[-1].stat().st_mtime_ns
    shards[0].unlink()
    assert main(["reencode", str(prepared), str(out), "--encoder", spec, "--quiet"]) == 0
    assert shards[-1].stat().st_mtime_ns == kept
    np.testing.assert_array_equal(PreparedDataset(out).vectors(), b.vectors())


def test_reencode_refuses_the_sets_own_encoder_and_another_encoders_folder(tmp_path):
    prepared, _, _ = make_tiny_prepared(tmp_path, n=4, size=8, dim=8)
    assert main(["reencode", str(prepared), str(tmp_path / "x"), "--encoder",
                 f"table:path={tmp_path / 'vectors.npz'}", "--quiet"]) == 2
    np.savez(tmp_path / "other.npz", keys=np.array([f"img{i}.png" for i in range(4)]), vectors=np.ones((4, 3), np.float32))
    assert main(["reencode", str(prepared), str(tmp_path / "x"), "--encoder", f"table:path={tmp_path / 'other.npz'}",
                 "--quiet"]) == 0
    np.savez(tmp_path / "third.npz", keys=np.array([f"img{i}.png" for i in range(4)]), vectors=np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="holds vectors of .*other.npz"):
        from id3pm.data.reencode import reencode_prepared

        reencode_prepared(prepared, tmp_path / "x", make_encoder(f"table:path={tmp_path / 'third.npz'}"), progress=False)


def test_astronaut_crops_reencoded_by_mobilefacenet(tmp_path):
    """Real dlib crops of a real face, their MobileFaceNet vectors: the ones the encoder gives
    for the stored largest crops, and one person to it."""
    try:
        mfn = make_encoder("mobilefacenet")
    except FileNotFoundError as e:
        missing_asset(f"MobileFaceNet missing ({e}); run `make models`")
    src = tmp_path / "photos"
    src.mkdir()
    for i in range(4):
        Image.fromarray(np.ascontiguousarray(np.roll(skdata.astronaut(), 12 * i, axis=1))).save(src / f"a{i}.png")
    prepare(PrepareConfig(src=str(src), out=str(tmp_path / "prep"), sizes=(32, 64), holdout=0.0, workers=1), progress=False)
    assert main(["reencode", str(tmp_path / "prep"), str(tmp_path / "mfn"), "--encoder", "mobilefacenet", "--quiet"]) == 0
    data = PreparedDataset(tmp_path / "mfn")
    assert data.manifest["distance"] == "cosine" and data.id_dim == 192 and len(data) == 4
    np.testing.assert_allclose(data.vectors(), mfn.encode(list(data.images(64)), aligned=True).vectors, atol=1e-5)
    v = data.vectors() / np.linalg.norm(data.vectors(), axis=1, keepdims=True)
    assert (v @ v.T).min() > 0.7  # four shifts of one face
