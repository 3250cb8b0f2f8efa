"""`id3pm prepare`: per-item skips, resume, sharding, split, and the stored data."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from id3pm.cli import main
from id3pm.data import PreparedDataset, PrepareConfig, prepare
from id3pm.data.metadata import MetadataError, parse_utkface, read_label_csv
from id3pm.data.prepare import split_of


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Astronaut copies with UTKFace-style names, plus a corrupt file, a picture without
    a face and a malformed UTKFace name."""
    src = tmp_path_factory.mktemp("photos")
    astro = skdata.astronaut()
    for i, name in enumerate(["35_0_0_20170101000000001.jpg.chip.jpg", "36_1_2_20170101000000002.jpg.chip.jpg"]):
        Image.fromarray(np.ascontiguousarray(np.roll(astro, 8 * i, axis=1))).save(src / name, quality=95)
    (src / "sub").mkdir()
    Image.fromarray(astro[:, ::-1].copy()).save(src / "sub" / "40_0_1_20170101000000003.jpg.chip.jpg")
    (src / "41_1_3_20170101000000004.jpg.chip.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(src / "50_0_0_20170101000000005.jpg.chip.jpg")
    Image.fromarray(astro).save(src / "39_1_20170116174525125.jpg.chip.jpg")  # race field missing upstream
    return src


def test_utkface_names():
    assert parse_utkface("a/26_1_3_20170119180445678.jpg.chip.jpg") == {"age": 26, "gender": 1, "race": 3}
    with pytest.raises(MetadataError, match="malformed UTKFace name"):
        parse_utkface("61_1_20170109142408075.jpg.chip.jpg")


def test_label_csv(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("file,age,glasses\nx.jpg,31,yes\ny.jpg,,no\n")
    assert read_label_csv(path) == {"x.jpg": {"age": 31, "glasses": "yes"}, "y.jpg": {"age": None, "glasses": "no"}}


def test_prepare_reports_skips_and_resumes_without_repeating(photo_folder, tmp_path):
    out = tmp_path / "prep"
    cfg = PrepareConfig(src=str(photo_folder), out=str(out), metadata="utkface", workers=2, chunk=2, sizes=(64, 32),
                        attributes=("pose",))
    m = prepare(cfg, progress=False)
    assert m["counts"]["train"] + m["counts"]["holdout"] == 3
    assert m["skipped"] == {"unreadable file": 1, "no face found": 1, "malformed UTKFace name": 1}
    reasons = " | ".join(sum(m["skip_examples"].values(), []))
    assert "41_1_3_20170101000000004.jpg.chip.jpg: cannot read image" in reasons
    assert "50_0_0_20170101000000005.jpg.chip.jpg: no face found" in reasons
    assert "39_1_20170116174525125.jpg.chip.jpg: malformed UTKFace name" in reasons
    assert m["last_run"]["images_per_second"] > 0

    ds = PreparedDataset(out)
    assert ds.images(64).shape == (3, 64, 64, 3) and ds.images(32).shape == (3, 32, 32, 3)
    assert ds.vectors().shape == (3, 128) and np.isfinite(ds.vectors()).all()
    assert list(ds.metadata("age")) == [35, 36, 40] and ds.attribute_names == ["yaw", "pitch", "roll"]
    # the rolled copies are the same person: dlib agrees
    assert np.linalg.norm(ds.vectors()[0] - ds.vectors()[1]) < 0.3

    shards_before = sorted(p.name for p in (out / "shards").glob("*"))
    again = prepare(cfg, progress=False)
    assert again["last_run"]["processed"] == 0 and again["last_run"]["already_done"] == 6
    assert sorted(p.name for p in (out / "shards").glob("*")) == shards_before


def test_shards_split_the_folder_and_split_is_stable(photo_folder, tmp_path):
    keys = []
    for i in range(2):
        out = tmp_path / "shared_out"
        prepare(PrepareConfig(src=str(photo_folder), out=str(out), workers=1, shard=(i, 2)), progress=False)
    ds = PreparedDataset(tmp_path / "shared_out")
    keys = ds.keys
    assert len(keys) == 4 and len(set(keys)) == 4  # no metadata parser: the malformed name is fine here
    assert split_of("x.jpg", 0.5) == split_of("x.jpg", 0.5)
    frac = np.mean([split_of(f"img{i}.jpg", 0.05) == "holdout" for i in range(4000)])
    assert 0.04 < frac < 0.06


def test_prepare_cli_prints_summary(photo_folder, tmp_path, capsys):
    code = main(["prepare", str(photo_folder), str(tmp_path / "o"), "--metadata", "utkface", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "3 written, 3 skipped" in out and "images/s" in out and "malformed UTKFace name" in out
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["encoder"]["name"] == "dlib" and manifest["id_dim"] == 128
    assert main(["prepare", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2


def test_evaluation_sample_is_random_nested_and_stable():
    # The first N keys of a UTKFace split are mostly children (names begin with the age):
    # evaluations take a seeded random sample instead, nested across sizes.
    ds = PreparedDataset.__new__(PreparedDataset)
    ds.split_indices = lambda split: np.arange(1, 4000, 2)  # the split: odd rows of the table
    small, large = ds.sample_indices("holdout", 100), ds.sample_indices("holdout", 500)
    assert len(set(small.tolist())) == 100 and np.all(small % 2 == 1)
    assert np.array_equal(large[:100], small)  # nested
    assert np.array_equal(ds.sample_indices("holdout", 100), small)  # stable
    assert small.max() > 2000 and small.min() < 2000  # spread over the split, not its first 100 rows (max 199)
    assert len(ds.sample_indices("holdout", None)) == 2000
