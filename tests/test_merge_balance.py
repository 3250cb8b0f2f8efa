"""More people: identity labels (CelebA, All-Age-Faces), identity-disjoint splits, merged
training sets and balanced draws, and noise on the condition."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_TRAIN, distinct_images
from id3pm.cli import main
from id3pm.data import PreparedDataset, PrepareConfig, prepare
from id3pm.data.balance import age_bands, balance_weights, group_weights, parse_balance
from id3pm.data.merge import merge_prepared, parse_sources
from id3pm.data.metadata import MetadataError, metadata_parser, parse_aaf, read_celeba_identities
from id3pm.training import WeightedBatchOrder, noisy_condition


def test_aaf_names_give_person_and_age():
    assert parse_aaf("img/00042A27.jpg") == {"identity": 42, "age": 27}
    with pytest.raises(MetadataError, match="x.jpg: malformed All-Age-Faces name"):
        parse_aaf("x.jpg")


def test_celeba_identity_file(tmp_path):
    path = tmp_path / "identity_CelebA.txt"
    path.write_text("000001.jpg 2880\n000002.jpg 2937\n\n")
    assert read_celeba_identities(path) == {"000001.jpg": {"identity": 2880}, "000002.jpg": {"identity": 2937}}
    parse = metadata_parser(f"celeba:{path}")
    assert parse("img/000002.jpg") == {"identity": 2937}
    with pytest.raises(MetadataError, match="000003.jpg: no labels"):
        parse("000003.jpg")
    path.write_text("000001.jpg 2880\n000002.jpg person\n")
    with pytest.raises(MetadataError, match=r"identity_CelebA.txt:2: expected 'file identity'"):
        read_celeba_identities(path)
    with pytest.raises(FileNotFoundError, match="no such identity file"):
        metadata_parser(f"celeba:{tmp_path / 'missing.txt'}")


def make_labelled_set(root, n, identities, dim=8, sizes=(8,), holdout=0.5, split_by="identity", seed=1, ages=None):
    """n distinct images whose identity labels come from a CSV, prepared with the table encoder."""
    src = root / "src"
    src.mkdir(parents=True)
    keys = [f"img{i:03d}.png" for i in range(n)]
    for k, img in zip(keys, distinct_images(n, sizes[0])):
        Image.fromarray(img).save(src / k)
    vectors = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    np.savez(root / "vectors.npz", keys=np.array(keys), vectors=vectors)
    lines = ["file,identity,age"] + [f"{k},{'' if identities[i] is None else identities[i]},{'' if ages is None else ages[i]}"
                                     for i, k in enumerate(keys)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    manifest = prepare(PrepareConfig(src=str(src), out=str(root / "prepared"), holdout=holdout, split_by=split_by,
                                     encoder={"name": "table", "path": str(root / "vectors.npz")}, sizes=sizes,
                                     metadata=f"csv:{root / 'labels.csv'}", workers=1, aligned=True, image_format="png"),
                       progress=False)
    return root / "prepared", manifest


def test_split_by_identity_keeps_every_person_on_one_side(tmp_path):
    identities = [i // 5 for i in range(60)]  # 12 people, 5 photos each
    prepared, manifest = make_labelled_set(tmp_path, 60, identities)
    ds = PreparedDataset(prepared)
    split = np.array(ds.table["split"].to_pylist())
    ids = ds.metadata("identity")
    sides = {person: set(split[ids == person]) for person in set(ids)}
    assert all(len(s) == 1 for s in sides.values())  # all photos of a person on one side
    assert {"train", "holdout"} == set().union(*sides.values())  # and both sides used
    assert manifest["split_by"] == "identity"
    # a split by file puts the photos of some person on both sides
    _, by_key = make_labelled_set(tmp_path / "bykey", 60, identities, split_by="key")
    ds2 = PreparedDataset(tmp_path / "bykey" / "prepared")
    split2, ids2 = np.array(ds2.table["split"].to_pylist()), ds2.metadata("identity")
    assert any(len(set(split2[ids2 == p])) == 2 for p in set(ids2))


def test_split_by_identity_skips_a_photo_without_identity(tmp_path):
    _, manifest = make_labelled_set(tmp_path, 6, [1, 1, None, 2, 2, 3])
    assert manifest["counts"]["train"] + manifest["counts"]["holdout"] == 5
    assert manifest["skip_examples"]["other"] == ["img002.png: --split-by identity needs an identity label "
                                                 "(--metadata celeba:FILE, aaf or csv)"]


def test_merge_prefixes_keys_and_adds_sources(tmp_path):
    a, _ = make_labelled_set(tmp_path / "a", 6, [0, 0, 1, 1, 2, 2], seed=1)
    b, _ = make_labelled_set(tmp_path / "b", 4, [7, 8, 9, 9], seed=2)
    assert main(["merge", str(tmp_path / "m"), f"first={a}", f"second={b}"]) == 0
    merged, da, db = PreparedDataset(tmp_path / "m"), PreparedDataset(a), PreparedDataset(b)
    assert len(merged) == 10
    assert sorted(merged.keys) == sorted([f"first/{k}" for k in da.keys] + [f"second/{k}" for k in db.keys])
    by_key = dict(zip(merged.keys, merged.vectors()))
    for ds, name in ((da, "first"), (db, "second")):
        for k, v in zip(ds.keys, ds.vectors()):
            np.testing.assert_array_equal(by_key[f"{name}/{k}"], v)
        assert (merged.sources == name).sum() == len(ds)
    split_of = {f"{name}/{k}": sp for ds, name in ((da, "first"), (db, "second"))
                for k, sp in zip(ds.keys, ds.table["split"].to_pylist())}
    assert merged.table["split"].to_pylist() == [split_of[k] for k in merged.keys]
    assert merged.images(8).shape == (10, 8, 8, 3)
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["counts"]["train"] + manifest["counts"]["holdout"] == 10 and manifest["id_dim"] == 8
    # the merged tree can move as a whole: source paths are relative
    (tmp_path / "moved").mkdir()
    for name in ("a", "b", "m"):
        (tmp_path / name).rename(tmp_path / "moved" / name)
    assert len(PreparedDataset(tmp_path / "moved" / "m")) == 10


def test_merge_refuses_sets_that_disagree(tmp_path):
    a, _ = make_labelled_set(tmp_path / "a", 4, [0, 0, 1, 1], dim=8)
    b, _ = make_labelled_set(tmp_path / "b", 4, [0, 0, 1, 1], dim=6)
    with pytest.raises(ValueError, match="source b has id_dim=6, source a 8"):
        merge_prepared(tmp_path / "m", {"a": str(a), "b": str(b)})
    with pytest.raises(ValueError, match="at least two"):
        parse_sources([str(a)])
    with pytest.raises(ValueError, match="two sources named 'prepared'"):
        parse_sources([str(a), str(b)])
    assert main(["merge", str(tmp_path / "m2"), f"x={a}", f"y={tmp_path / 'nothing'}"]) == 2


def test_balance_weights_against_hand_counts():
    sources = np.array(["utk"] * 6 + ["celeba"] * 2)
    w = balance_weights(sources, None, "source")
    np.testing.assert_allclose(w, [1 / 12] * 6 + [1 / 4] * 2)
    ages = [3, 5, 8, 30, 30, 70, None, None]  # utk: three children, two of 20-39, one of 60+
    w = balance_weights(sources, ages, "source,age")
    # utk's half split in three bands; children share their sixth, the 60+ one has it alone
    np.testing.assert_allclose(w, [1 / 18] * 3 + [1 / 12] * 2 + [1 / 6] + [1 / 4] * 2)
    assert list(age_bands([0, 12, 13, 19, 20, 39, 40, 59, 60, None, float("nan")])) == [0, 0, 1, 1, 2, 2, 3, 3, 4, -1, -1]
    assert balance_weights(sources, None, "") is None
    assert group_weights([np.array([0, 0, 0, 1])]).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown \\['race'\\]"):
        parse_balance("source,race")


def test_weighted_order_draws_the_shares_and_repeats_per_step():
    w = np.array([0.5, 0.25, 0.125, 0.125])
    order = WeightedBatchOrder(w, 64, seed=3)
    drawn = np.concatenate([order.indices(k) for k in range(400)])
    np.testing.assert_allclose(np.bincount(drawn, minlength=4) / len(drawn), w, atol=0.01)
    np.testing.assert_array_equal(order.indices(17), WeightedBatchOrder(w, 64, seed=3).indices(17))
    halves = np.concatenate([order.indices(17, rank=0, world=2), order.indices(17, rank=1, world=2)])
    np.testing.assert_array_equal(halves, order.indices(17))  # two processes split one global batch


def test_condition_noise_has_the_asked_norm():
    class Rnd:
        g = torch.Generator().manual_seed(0)

        def randn(self, shape, device):
            return torch.randn(shape, generator=self.g)

    y = torch.ones(2000, 128) * 0.05  # norm 0.566
    noisy = noisy_condition(y, 0.2, mean_norm=0.566, rnd=Rnd())
    norms = (noisy - y).norm(dim=1)
    assert norms.mean().item() == pytest.approx(0.2 * 0.566, rel=0.02)
    assert noisy_condition(y, 0.0, 0.566, Rnd()) is y


def test_training_on_a_merged_set_balances_its_sources(tmp_path):
    """Source `few` has 2 images, `many` has 8: balanced, half the draws go to `few`."""
    from id3pm.modeldir import load_model_dir
    from id3pm.training import Trainer, TrainConfig

    few, _ = make_labelled_set(tmp_path / "few", 2, [0, 1], holdout=0.0, seed=1)
    many, _ = make_labelled_set(tmp_path / "many", 8, list(range(8)), holdout=0.0, seed=2)
    merge_prepared(tmp_path / "m", {"few": str(few), "many": str(many)})
    cfg = TrainConfig(data=str(tmp_path / "m"), out=str(tmp_path / "run"), max_steps=20, save_every=20,
                      balance="source", cond_noise=0.1, **TINY_TRAIN)
    trainer = Trainer(cfg)
    drawn = np.concatenate([trainer.order.indices(k) for k in range(200)])
    from_few = np.isin(drawn, np.flatnonzero(trainer.data.sources[trainer.train_set.indices] == "few"))
    assert from_few.mean() == pytest.approx(0.5, abs=0.03)
    trainer.run()
    _, info = load_model_dir(tmp_path / "run" / "model")
    assert info["balance"] == {"spec": "source", "source_shares": {"few": 0.5, "many": 0.5}}


def test_augmented_copies_are_encoded_again_and_merge_into_their_source(tmp_path, capsys):
    """Real dlib vectors: astronaut photos, copies mirrored or jittered; each copy's vector is
    the black box's answer for the copy, close to (not equal to) the original's."""
    from skimage import data as skdata

    from id3pm.data.augment import Mirror, measure_shifts
    from id3pm.encoders import make_encoder

    src = tmp_path / "photos"
    src.mkdir()
    astro = skdata.astronaut()
    for i in range(3):
        Image.fromarray(np.ascontiguousarray(np.roll(astro, 12 * i, axis=1))).save(src / f"p{i}.png")
    prepare(PrepareConfig(src=str(src), out=str(tmp_path / "prep"), sizes=(32, 128), holdout=0.0, workers=1,
                          attributes=("pose",), image_format="png"), progress=False)
    code = main(["augment", str(tmp_path / "prep"), str(tmp_path / "aug"), "--transforms", "mirror", "--copies", "2",
                 "--workers", "1"])
    assert code == 0
    plain, aug = PreparedDataset(tmp_path / "prep"), PreparedDataset(tmp_path / "aug")
    assert len(aug) == 6 and set(aug.keys) == {f"aug{k}/p{i}.png" for k in range(2) for i in range(3)}
    assert set(aug.metadata("augment")) == {"mirror"}
    enc = make_encoder({"name": "dlib"})
    for i, key in enumerate(plain.keys):
        j = aug.keys.index(f"aug0/{key}")
        mirrored = Mirror()(plain.images(128, [i])[0], None)
        np.testing.assert_allclose(aug.images(128, [j])[0], mirrored)  # the copy is the mirrored crop
        np.testing.assert_allclose(aug.vectors([j])[0], enc.encode([mirrored], aligned=True).vectors[0], atol=1e-5)
        assert 0 < np.linalg.norm(aug.vectors([j])[0] - plain.vectors([i])[0]) < 0.3  # moved, the same person
        yaw = plain.attributes([i])[0][0]
        assert aug.attributes([j])[0][0] == pytest.approx(-yaw, abs=3.0)  # pose estimated again: yaw flips
    again = main(["augment", str(tmp_path / "prep"), str(tmp_path / "aug"), "--transforms", "mirror", "--copies", "2",
                  "--workers", "1"])
    assert again == 0 and len(PreparedDataset(tmp_path / "aug")) == 6  # resumed: nothing twice
    merge_prepared(tmp_path / "m", {"astro": str(tmp_path / "prep"), "astro-aug@astro": str(tmp_path / "aug"),
                                    "other": str(tmp_path / "prep")})
    merged = PreparedDataset(tmp_path / "m")
    assert sorted(set(merged.sources)) == ["astro", "other"] and (merged.sources == "astro").sum() == 9
    assert sum(k.startswith("astro-aug/aug1/") for k in merged.keys) == 3
    shifts = measure_shifts(str(tmp_path / "prep"), n=3)
    assert set(shifts) == {"reencode", "mirror", "photometric", "grey", "geometric", "blur", "jpeg"}
    assert shifts["reencode"]["mean"] < shifts["mirror"]["mean"] and all(s["n"] == 3 for s in shifts.values())
    assert main(["augment", str(tmp_path / "prep"), str(tmp_path / "x"), "--transforms", "rotate"]) == 2
    assert "unknown ['rotate']" in capsys.readouterr().err


def test_the_cli_lists_every_augmentation_by_name():
    """cli/data.py spells the names out so that `id3pm --help` does not import torch."""
    from id3pm.cli.data import AUGMENT_TRANSFORMS
    from id3pm.data.augment import TRANSFORMS

    assert tuple(TRANSFORMS) == AUGMENT_TRANSFORMS
