"""Evaluation metrics against hand-made examples, the verification protocol on real
faces, and `id3pm evaluate` end to end."""

import csv
import json
import re

import numpy as np
import pytest
import torch
from conftest import missing_asset, shared_data, untrained_dlib_model
from PIL import Image
from skimage import data as skdata

from id3pm.cli import main
from id3pm.encoders import identity_distance, make_encoder
from id3pm.evaluation import EvalConfig, Evaluation
from id3pm.evaluation.features import LPIPS, InceptionFeatures
from id3pm.evaluation.metrics import (
    frechet_distance,
    kernel_inception_distance,
    mean_pairwise,
    ms_ssim,
    precision_recall,
)
from id3pm.evaluation.verification import best_threshold, kfold_accuracy, read_lfw_pairs, read_pair_csv, roc_auc
from id3pm.images import load_image


def test_kfold_threshold_on_a_hand_made_example():
    # fold 0: perfectly separable at 0.5; fold 1: one same pair is far (0.9)
    d = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.9, 0.7, 0.8])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    # threshold from fold 1 (0.3 same, 0.9 same, 0.7/0.8 diff): best is 0.5 (acc 3/4) -> fold 0 acc 1.0
    # threshold from fold 0: midpoint 0.5 -> fold 1: 0.3 right, 0.9 wrong, 0.7 right, 0.8 right = 0.75
    r = kfold_accuracy(d, same, folds)
    assert r["folds"] == [1.0, 0.75] and r["mean"] == pytest.approx(0.875) and r["std"] == pytest.approx(0.125)
    assert best_threshold(np.array([0.1, 0.2, 0.8]), np.array([1, 1, 0], bool)) == pytest.approx(0.5)
    d[0] = np.nan  # a failed encoding counts as a wrong decision
    assert kfold_accuracy(d, same, folds)["folds"][0] == 0.75
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 1.0 and roc_auc([0.1, 0.9], [0, 1]) == 0.0


def test_kfold_with_thresholds_chosen_on_the_real_pairs():
    """The system's thresholds come from the real pairs of the other folds; the replaced
    distances are only judged. Real: same pairs at 0.2, different at 0.8 in both folds
    (threshold 0.5). Replaced: the same pairs moved to 0.6 in fold 0 and 0.4 in fold 1."""
    real = np.array([0.2, 0.2, 0.8, 0.8, 0.2, 0.2, 0.8, 0.8])
    replaced = np.array([0.6, 0.6, 0.8, 0.8, 0.4, 0.4, 0.8, 0.8])
    same = np.array([1, 1, 0, 0, 1, 1, 0, 0], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    r = kfold_accuracy(replaced, same, folds, threshold_distances=real)
    assert r["thresholds"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert r["folds"] == [0.5, 1.0]  # fold 0's reconstructions (0.6) are rejected at 0.5
    # chosen on the replaced folds (the paper's way), fold 0 is judged at fold 1's 0.6: all right
    adapted = kfold_accuracy(replaced, same, folds)
    assert adapted["folds"][0] == 1.0 and adapted["mean"] > r["mean"]


def test_pairs_files(tmp_path):
    lfw = tmp_path / "pairs.txt"
    lfw.write_text("2 1\nAnn 1 2\nAnn 1 Bob 3\nCy 2 4\nDee 1 Eve 1\n")
    pairs = read_lfw_pairs(lfw)
    assert pairs[0].a == "Ann/Ann_0001.jpg" and pairs[0].b == "Ann/Ann_0002.jpg" and pairs[0].same and pairs[0].fold == 0
    assert not pairs[1].same and pairs[1].b == "Bob/Bob_0003.jpg" and pairs[2].fold == 1
    lfw.write_text("2 1\nAnn 1 2\n")
    with pytest.raises(ValueError, match="expected 2 folds"):
        read_lfw_pairs(lfw)
    c = tmp_path / "p.csv"
    c.write_text("path_a,path_b,same,fold\na.png,b.png,1,3\n")
    assert read_pair_csv(c)[0].fold == 3


@pytest.mark.shared_data
def test_lfw_pairs_file_of_shared_data():
    pairs = read_lfw_pairs(shared_data("lfw_pairs.txt"))
    assert len(pairs) == 6000 and sum(p.same for p in pairs) == 3000 and {p.fold for p in pairs} == set(range(10))


def test_ssim_against_scikit_image_and_ms_ssim_properties():
    from skimage.metrics import structural_similarity

    from id3pm.evaluation.metrics import ssim

    rng = np.random.default_rng(0)
    a = np.stack([skdata.astronaut()[y : y + 64, x : x + 64] for y, x in [(100, 200), (300, 100), (0, 0)]])
    noisy = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    ref = [structural_similarity(a[i], noisy[i], channel_axis=2, gaussian_weights=True, sigma=1.5, win_size=7,
                                 use_sample_covariance=False, data_range=255) for i in range(3)]
    # skimage averages over the whole (edge-cropped) image, we over the valid region: same within rounding
    np.testing.assert_allclose(ssim(a, noisy), ref, atol=0.02)
    np.testing.assert_allclose(ms_ssim(a, a), 1.0, atol=1e-5)
    assert (ms_ssim(a, noisy) < 0.9).all()
    assert ms_ssim(a, noisy)[0] == pytest.approx(ms_ssim(noisy, a)[0], abs=1e-5)


def test_structural_ms_ssim_ignores_colour_casts_and_sees_structure():
    from id3pm.evaluation.metrics import standardised_luminance, structural_ms_ssim

    a = np.stack([skdata.astronaut()[y : y + 64, x : x + 64] for y, x in [(100, 200), (300, 100)]])
    # a warm cast with a darker exposure: every channel scaled and shifted differently
    cast = np.clip(a * np.array([1.0, 0.8, 0.6]) * 0.7 + np.array([30, 10, 0]), 0, 255).astype(np.uint8)
    mirrored = a[:, :, ::-1]  # the same colours, another picture
    assert 1 - ms_ssim(a, cast).mean() > 0.05  # the colour MS-SSIM counts the cast as a difference
    assert 1 - structural_ms_ssim(a, cast).mean() < 0.02  # ... the structural one does not
    assert 1 - structural_ms_ssim(a, mirrored).mean() > 0.2
    np.testing.assert_allclose(structural_ms_ssim(a, a), 1.0, atol=1e-5)
    # luminance by BT.601, then one mean and contrast for every image (numbers by hand)
    grey = np.array([[[[0, 0, 0], [255, 255, 255]], [[255, 0, 0], [0, 0, 255]]]], np.uint8)
    y = np.array([0, 255, 0.299 * 255, 0.114 * 255])
    expected = (y - y.mean()) / y.std() * 48 + 128
    np.testing.assert_allclose(standardised_luminance(grey).ravel(), expected, rtol=1e-5)


def test_kid_is_the_unbiased_polynomial_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    pairs = [(i, j) for i in range(6) for j in range(6) if i != j]
    want = (sum(k(x[i], x[j]) for i, j in pairs) / 30 + sum(k(y[i], y[j]) for i, j in pairs) / 30
            - 2 * sum(k(x[i], y[j]) for i in range(6) for j in range(6)) / 36)
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=6)  # one subset: the whole sets
    assert mean == pytest.approx(want, rel=1e-10) and std == pytest.approx(0, abs=1e-12)
    # unbiased: two samples of one distribution score about 0, a shifted one clearly more
    same = kernel_inception_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), subset_size=200)[0]
    shifted = kernel_inception_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 0.3, subset_size=200)[0]
    assert abs(same) < 0.02 < shifted
    with pytest.raises(ValueError, match="at least 2 images"):
        kernel_inception_distance(x[:1], y)


def test_frechet_distance_formula_and_precision_recall():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    # two isotropic Gaussians N(0, I) and N(m, 4I): |m|^2 + tr(I + 4I - 2 * 2I) = |m|^2 + 4 (in 4-d)
    y = rng.normal(size=(20000, 4))
    z = rng.normal(size=(20000, 4)) * 2 + 1
    assert frechet_distance(y, z) == pytest.approx(4 + 4, rel=0.05)
    p, r = precision_recall(x[:200], x[:200] + 1e-3)
    assert p == 1.0 and r == 1.0
    far = precision_recall(x[:200], x[:200] + 100)
    assert far == (0.0, 0.0)
    assert mean_pairwise(np.array([[0.0], [3.0], [4.0]])) == pytest.approx((3 + 4 + 1) / 3)


def test_fid_of_a_set_with_itself_with_a_torchscript_model(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 5, stride=4))
    path = tmp_path / "tiny_inception.pt"
    torch.jit.script(net).save(str(path))
    feats = InceptionFeatures(path, size=64)
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    f = feats(images)
    assert f.shape == (40, 32)
    assert frechet_distance(f, feats(images)) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(f, feats(255 - images)) > 1e-3
    with pytest.raises(FileNotFoundError, match="make models"):
        InceptionFeatures(tmp_path / "missing.pt")


def test_lpips_matches_its_formula(tmp_path):
    torch.manual_seed(0)
    lp_probe = LPIPS.__new__(LPIPS)  # just for the layer list
    torch.nn.Module.__init__(lp_probe)
    backbone = {}
    shapes = [(64, 3, 11), (192, 64, 5), (384, 192, 3), (256, 384, 3), (256, 256, 3)]
    for i, (o, c, k) in zip([0, 3, 6, 8, 10], shapes):
        backbone[f"features.{i}.weight"] = torch.randn(o, c, k, k) * 0.05
        backbone[f"features.{i}.bias"] = torch.randn(o) * 0.01
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS.CHANNELS)}
    torch.save(backbone, tmp_path / "alexnet.pth")
    from safetensors.torch import save_file

    save_file(heads, tmp_path / "heads.safetensors")
    lp = LPIPS(tmp_path / "alexnet.pth", tmp_path / "heads.safetensors")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert np.allclose(lp(a, a), 0) and (lp(a, b) > 0).all() and np.allclose(lp(a, b), lp(b, a), rtol=1e-5)
    # independent computation with functional ops
    F = torch.nn.functional
    x = lambda im: (torch.as_tensor(im).permute(0, 3, 1, 2).float() / 127.5 - 1 - torch.tensor(LPIPS.SHIFT).view(1, 3, 1, 1)) / torch.tensor(LPIPS.SCALE).view(1, 3, 1, 1)  # noqa: E731

    def feats(t):
        out = []
        t = F.relu(F.conv2d(t, backbone["features.0.weight"], backbone["features.0.bias"], stride=4, padding=2)); out.append(t)  # noqa: E702
        t = F.relu(F.conv2d(F.max_pool2d(t, 3, 2), backbone["features.3.weight"], backbone["features.3.bias"], padding=2)); out.append(t)  # noqa: E702,E501
        t = F.relu(F.conv2d(F.max_pool2d(t, 3, 2), backbone["features.6.weight"], backbone["features.6.bias"], padding=1)); out.append(t)  # noqa: E702,E501
        t = F.relu(F.conv2d(t, backbone["features.8.weight"], backbone["features.8.bias"], padding=1)); out.append(t)  # noqa: E702
        t = F.relu(F.conv2d(t, backbone["features.10.weight"], backbone["features.10.bias"], padding=1)); out.append(t)  # noqa: E702
        return [f / (f.norm(dim=1, keepdim=True) + 1e-10) for f in out]

    want = sum((heads[f"lin{i}.model.1.weight"].view(1, -1, 1, 1) * (fa - fb) ** 2).sum(1).mean(dim=(1, 2))
               for i, (fa, fb) in enumerate(zip(feats(x(a)), feats(x(b)))))
    np.testing.assert_allclose(lp(a, b), want.numpy(), rtol=1e-4)


@pytest.mark.shared_data
@pytest.mark.parametrize("encoder", ["dlib", "faceres"])
def test_verification_on_real_orl_pairs_and_random_baseline(encoder):
    root = shared_data("orl")
    rows = list(csv.DictReader(open(root / "pairs.csv")))
    try:
        enc = make_encoder(encoder)
    except FileNotFoundError as e:
        missing_asset(f"faceres models missing ({e}); run `make models`")
    paths = sorted({r["path_a"] for r in rows} | {r["path_b"] for r in rows})
    vec = dict(zip(paths, enc.encode([load_image(root / p) for p in paths], keys=paths).vectors))
    d = np.array([identity_distance(vec[r["path_a"]], vec[r["path_b"]], enc.distance) for r in rows])
    same = np.array([r["same"] == "1" for r in rows])
    folds = np.array([int(r["fold"]) for r in rows])
    assert kfold_accuracy(d, same, folds)["mean"] > 0.9
    # random images instead of the first image of positive pairs: chance level
    rng = np.random.default_rng(0)
    shuffled = d.copy()
    others = list(vec.values())
    for k in np.flatnonzero(same):
        shuffled[k] = identity_distance(others[rng.integers(len(others))], vec[rows[k]["path_b"]], enc.distance)
    acc = kfold_accuracy(shuffled, same, folds)["mean"]
    assert 0.35 < acc < 0.65


def astronaut_set_and_model(tmp_path, seed: int = 0):
    """A prepared set of 9 astronaut variants (real dlib vectors) and an untrained
    dlib-conditioned 32 px model: (photos folder, prepared folder, model folder, net, info)."""
    from id3pm.data import PrepareConfig, prepare

    src = tmp_path / "photos"
    if not src.exists():
        src.mkdir()
        astro = skdata.astronaut()
        for i in range(9):  # a2, a6, a8 fall in the holdout half (hash of the name)
            shifted = np.roll(astro, 10 * i, axis=1)
            Image.fromarray(np.ascontiguousarray(shifted if i % 2 else shifted[:, ::-1])).save(src / f"a{i}.png")
        prepare(PrepareConfig(src=str(src), out=str(tmp_path / "prep"), sizes=(32,), holdout=0.5, workers=1), progress=False)
    model, net, info = untrained_dlib_model(tmp_path / "model", seed)
    return src, tmp_path / "prep", model, net, info


def test_evaluate_end_to_end(tmp_path):
    """Plumbing with real dlib vectors: astronaut variants, an untrained dlib-conditioned
    model, baselines, a pairs CSV; the report has every section."""
    from id3pm.modeldir import save_model_dir

    src, _, model, net, info = astronaut_set_and_model(tmp_path)
    # an attacker who knows the protection scheme: a model on protected vectors (untrained: plumbing)
    protected = {"name": "protected", "encoder": {"name": "dlib"}, "transform": "orthonormal", "key": 3}
    aware = save_model_dir(tmp_path / "aware", net, {**info, "encoder": protected})
    (tmp_path / "pairs.csv").write_text("path_a,path_b,same,fold\n" + "".join(
        f"a{i}.png,a{(i + 1) % 6}.png,{1 if i % 2 else 0},{i % 2}\n" for i in range(6)))
    code = main(["evaluate", "--model", f"untrained={model}", "--data", str(tmp_path / "prep"), "--limit", "2",
                 "--independent", "", "--pairs", str(tmp_path / "pairs.csv"), "--pairs-root", str(src),
                 "--guidance", "1", "3", "--steps", "2", "--diversity-ids", "1", "--diversity-samples", "3",
                 "--queries", "2", "--report", "attack", "--out", str(tmp_path / "eval"), "--device", "cpu",
                 "--model", f"aware={aware}", "--protect", "biohash:key=5"])
    assert code == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    rows = set(m["identity"])
    assert {"untrained s=1", "untrained s=3", "nearest neighbour", "random training image", "real (original crop)"} <= rows
    # retrieval finds the same person (all images are the astronaut): close under dlib
    assert m["identity"]["nearest neighbour"]["conditioning"]["mean"] < 0.45
    assert m["verification"]["rows"]["real images"]["conditioning"]["failed_pairs"] == 0
    assert set(m["diversity"]) >= {"untrained s=1", "nearest neighbour"}
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Identity distance to the original" in report and "Verification accuracy" in report and "Diversity" in report
    assert (tmp_path / "eval" / "identity_distance.png").exists() and (tmp_path / "eval" / "sheet.png").exists()
    # SAR: type-I per method on the holdout, type-II per method on the positive pairs
    sar = m["sar_type1"]["nearest neighbour"]["conditioning"]["fmr=0.01"]
    # 2 originals evaluated, thresholds from all 3 holdout images' impostor pairs
    assert sar["n"] == 2 and sar["impostor_pairs"] == 3 and 0 <= sar["ci95"][0] <= sar["sar"] <= sar["ci95"][1]
    saved = np.load(tmp_path / "eval" / "distances.npz")  # per-original distances, to re-threshold later
    assert len(saved["key"]) == 2 and saved["nearest neighbour | conditioning"].shape == (2,)
    assert np.isclose(saved["nearest neighbour | conditioning"].mean(), m["identity"]["nearest neighbour"]["conditioning"]["mean"])
    real = m["sar_type1"]["real (original crop)"]["conditioning"]["fmr=0.01"]  # the ceiling row
    assert real["n"] == 2 and real["threshold"] == sar["threshold"]
    assert m["verification"]["rows"]["untrained s=1"]["conditioning"]["sar_type2"]["fmr=0.01"]["n"] == 3
    assert len(m["verification"]["rows"]["untrained s=1"]["conditioning"]["real_thresholds"]["folds"]) == 2
    assert "Success attack rate, type-I" in report and "Type-II SAR" in report
    # the attack report: rows refined with 2 dlib queries per identity, their cost, the figure
    for search in ("best_of_n", "renoise"):
        row = f"untrained s=1 {search} N=2"
        assert row in m["sar_type1"] and m["cost"][row]["queries_per_identity"] == 2
        # the kept image is the closer of two under dlib, one of which is the plain sample's seed
        assert m["identity"][row]["conditioning"]["mean"] <= m["identity"]["untrained s=1"]["conditioning"]["mean"] + 1e-6
    assert m["cost"]["untrained s=1"]["queries_per_identity"] == 0
    attack = (tmp_path / "eval" / "attack.md").read_text()
    assert "untrained s=1 renoise N=2" in attack and "queries / identity" in attack
    assert (tmp_path / "eval" / "attack.png").exists()
    # protected templates: the aware model's scheme and --protect, each against both attackers
    prot = m["protection"]
    assert {"orthonormal key=3 · aware: aware s=1", "orthonormal key=3 · unaware: untrained s=1",
            "orthonormal key=3 · aware: nearest neighbour", "orthonormal key=3 · unaware: nearest neighbour",
            "biohash bits=128 key=5 · aware: nearest neighbour"} <= set(prot)
    assert not any(name.startswith("biohash") and "aware: aware" in name for name in prot)  # another scheme's model
    # a rotation keeps distances: retrieval over a rotated pool scores what plain retrieval scored
    assert prot["orthonormal key=3 · aware: nearest neighbour"]["identity"]["conditioning"]["mean"] == pytest.approx(
        m["identity"]["nearest neighbour"]["conditioning"]["mean"], abs=1e-4)
    # the aware attacker also feeds the plain model Q^T t: the rotation undone, the plain model's faces
    undone = prot["orthonormal key=3 · aware: untrained s=1 via preimage"]["identity"]["conditioning"]["mean"]
    assert undone == pytest.approx(m["identity"]["untrained s=1"]["conditioning"]["mean"], abs=1e-3)
    # ... judged at the same thresholds: the impostor pairs of all 3 holdout images, rotated (distances kept)
    for fmr in ("fmr=0.01", "fmr=0.001"):
        got = prot["orthonormal key=3 · aware: untrained s=1 via preimage"]["sar_type1"]["conditioning"][fmr]
        plain = m["sar_type1"]["untrained s=1"]["conditioning"][fmr]
        assert got["impostor_pairs"] == plain["impostor_pairs"] == 3 and got["sar"] == plain["sar"]
        assert got["threshold"] == pytest.approx(plain["threshold"], abs=1e-5)
    # BioHashing's preimage is fitted on the attacker's pool: a handful of vectors cannot fit one, and a note says so
    assert any(re.search(r"biohash bits=128 key=5 · aware: untrained s=1 via preimage: a pool of \d plain vectors "
                         r"cannot fit a 128-d preimage", n) for n in m["notes"]), m["notes"]
    assert "## Protected templates" in attack and "biohash bits=128 key=5 · unaware: nearest neighbour" in attack


def test_a_kept_row_comes_back_only_under_its_own_key(tmp_path):
    from id3pm.evaluation.rowcache import RowCache, folder_digest

    cache = RowCache(tmp_path / "rows")
    key = {"class": "refined", "queries": 4, "model": "abc", "originals": ["a.png", "b.png"], "seed": 0}
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    assert cache.get(key) is None
    cache.put(key, images, [4, 4], 12.5)
    got, spent, seconds = cache.get(dict(reversed(list(key.items()))))  # key order does not matter
    np.testing.assert_array_equal(got, images)
    assert spent == [4, 4] and seconds == 12.5
    assert cache.get({**key, "seed": 1}) is None and cache.get({**key, "originals": ["a.png"]}) is None
    path = next((tmp_path / "rows").glob("*.npz"))
    path.write_bytes(path.read_bytes()[:100])  # torn by a crash: made again, not a traceback
    assert cache.get(key) is None
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.safetensors").write_bytes(b"1")
    first = folder_digest(tmp_path / "m")
    (tmp_path / "m" / "w.safetensors").write_bytes(b"2")
    assert folder_digest(tmp_path / "m") != first


def test_a_rerun_into_the_same_folder_samples_only_the_rows_it_lacks(tmp_path, monkeypatch):
    """Rows are kept in OUT/rows: adding --queries 3 to a finished run samples only the
    N=3 rows, the others come back image for image; a model overwritten with other
    weights in the same folder is another model, sampled again."""
    import id3pm.refine

    _, prep, model, net, info = astronaut_set_and_model(tmp_path)
    calls = []
    real_refine = id3pm.refine.query_refine
    monkeypatch.setattr(id3pm.refine, "query_refine", lambda pipe, v, queries, **kw: calls.append(queries) or
                        real_refine(pipe, v, queries, **kw))
    args = ["evaluate", "--model", f"m={model}", "--data", str(prep), "--limit", "2", "--independent", "",
            "--steps", "2", "--diversity-ids", "0", "--baselines", "", "--search", "best_of_n",
            "--out", str(tmp_path / "eval"), "--device", "cpu", "--queries"]
    assert main(args + ["2"]) == 0
    first = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    # one search per identity (a refined row is made in pieces); kept: s=2 and best_of_n N=2
    assert calls == [2, 2] and len(list((tmp_path / "eval" / "rows").glob("*.npz"))) == 2
    assert main(args + ["2", "3"]) == 0
    second = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert calls == [2, 2, 3, 3]  # the N=2 row was not sampled again
    for row in ("m s=2", "m s=2 best_of_n N=2"):
        assert second["identity"][row] == first["identity"][row]
        assert second["cost"][row] == first["cost"][row]  # its cost is the first run's
    assert second["cost"]["m s=2 best_of_n N=3"]["queries_per_identity"] == 3
    from id3pm.modeldir import save_model_dir

    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model_dir(model, net, info)  # new weights, same folder
    assert main(args + ["2"]) == 0
    assert calls == [2, 2, 3, 3, 2, 2]


def test_a_refined_row_cut_short_resumes_after_its_last_identity(tmp_path, monkeypatch):
    """A crash inside a query-refined row (hours at N = 256) loses one identity at most: the
    rerun samples only the identities not yet kept, and the row equals one made at once."""
    import id3pm.refine

    _, prep, model, _, _ = astronaut_set_and_model(tmp_path)
    args = ["evaluate", "--model", f"m={model}", "--data", str(prep), "--limit", "3", "--independent", "",
            "--steps", "2", "--diversity-ids", "0", "--baselines", "", "--search", "renoise", "--queries", "4",
            "--device", "cpu", "--out"]
    assert main(args + [str(tmp_path / "whole")]) == 0
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    class Crash(Exception):
        pass

    calls, real_refine = [], id3pm.refine.query_refine

    def crashing_refine(pipe, v, queries, **kw):
        calls.append(len(v))
        if len(calls) == 2:
            raise Crash("killed inside the row")
        return real_refine(pipe, v, queries, **kw)

    monkeypatch.setattr(id3pm.refine, "query_refine", crashing_refine)
    with pytest.raises(Crash):
        main(args + [str(tmp_path / "cut")])
    assert len(list((tmp_path / "cut" / "rows").glob("*.part.npz"))) == 1  # the first identity, kept
    calls.clear()
    monkeypatch.setattr(id3pm.refine, "query_refine", lambda pipe, v, queries, **kw: calls.append(len(v)) or
                        real_refine(pipe, v, queries, **kw))
    assert main(args + [str(tmp_path / "cut")]) == 0
    assert calls == [1, 1]  # identities 2 and 3 only
    assert not list((tmp_path / "cut" / "rows").glob("*.part.npz"))  # the finished row replaced its pieces
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    row = "m s=2 renoise N=4"
    assert cut["identity"][row] == whole["identity"][row]
    assert cut["cost"][row]["queries_per_identity"] == whole["cost"][row]["queries_per_identity"] == 4


def test_a_pairs_limit_takes_pairs_from_every_fold_and_one_fold_is_a_clear_error():
    from id3pm.evaluation.verification import Pair, kfold_accuracy, spread_over_folds

    pairs = [Pair(f"a{f}{i}", f"b{f}{i}", i < 2, f) for f in range(3) for i in range(4)]  # fold by fold, positives first
    taken = spread_over_folds(pairs, 6)
    assert [p.fold for p in taken] == [0, 1, 2, 0, 1, 2] and spread_over_folds(pairs, None) == pairs
    assert [p.same for p in taken] == [True] * 3 + [False] * 3  # a limit keeps both kinds in every fold
    assert [p.a for p in taken[:3]] == ["a00", "a10", "a20"] and [p.a for p in taken[3:]] == ["a02", "a12", "a22"]
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_accuracy([0.1, 0.9], [True, False], [0, 0])


def test_a_margin_loss_model_judges_every_row(tmp_path):
    """--judges adds MobileFaceNet's columns to the identity, SAR and verification tables
    (real vectors of real crops); the conditioning encoder is never its own extra judge."""
    try:
        make_encoder("mobilefacenet")
    except FileNotFoundError as e:
        missing_asset(f"MobileFaceNet missing ({e}); run `make models`")
    src, prep, model, _, _ = astronaut_set_and_model(tmp_path)
    (tmp_path / "pairs.csv").write_text("path_a,path_b,same,fold\n" + "".join(
        f"a{i}.png,a{(i + 1) % 6}.png,{1 if i % 2 else 0},{i % 2}\n" for i in range(6)))
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", f"untrained={model}", "--data", str(prep), "--limit", "3",
                 "--independent", "", "--judges", "dlib,mobilefacenet", "--pairs", str(tmp_path / "pairs.csv"),
                 "--pairs-root", str(src), "--guidance", "1", "--steps", "2", "--diversity-ids", "0",
                 "--baselines", "nn", "--out", str(out), "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["identity"]["untrained s=1"]) == {"conditioning", "mobilefacenet"}  # dlib judges once
    mfn = {row: entry["mobilefacenet"]["mean"] for row, entry in m["identity"].items()}
    # the originals' own crops are the vectors judged against; other photos of the astronaut are near
    # (cosine distance), the untrained model's noise is far
    assert mfn["real (original crop)"] < 1e-4 and mfn["nearest neighbour"] < 0.5 < mfn["untrained s=1"]
    sar = m["sar_type1"]["nearest neighbour"]["mobilefacenet"]["fmr=0.01"]
    assert sar["n"] == 3 and sar["impostor_pairs"] == 3
    verification = m["verification"]["rows"]
    assert verification["real images"]["mobilefacenet"]["failed_pairs"] == 0
    assert "sar_type2" in verification["untrained s=1"]["mobilefacenet"]
    assert "mobilefacenet SAR @FMR 1%" in (out / "report.md").read_text()
    assert (out / "sar.png").stat().st_size > 0  # the SAR table as bars, every judge
    assert np.load(out / "distances.npz")["untrained s=1 | mobilefacenet"].shape == (3,)


def test_a_judge_without_its_model_file_is_a_note(tmp_path):
    _, prep, _, _, _ = astronaut_set_and_model(tmp_path)
    ev = Evaluation(EvalConfig(out=str(tmp_path / "eval"), data=str(prep), independent=None, baselines=[],
                               judges=[f"mobilefacenet:models_dir={tmp_path / 'nowhere'}"]))
    assert [name for name, _ in ev.encoders] == ["conditioning"]
    assert len(ev.metrics["notes"]) == 1 and "judge mobilefacenet skipped" in ev.metrics["notes"][0]
    assert "make models" in ev.metrics["notes"][0]


def test_the_fid_section_ranks_noise_below_real_faces(tmp_path):
    """--fid with a (tiny, test-made) TorchScript feature net: FID, KID and precision/recall
    per row; an untrained model's noise is farther from the original crops than retrieved
    photos of the same face."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 7, stride=4), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 5, stride=4))
    torch.jit.script(net).save(str(tmp_path / "tiny_inception.pt"))
    _, prep, model, _, _ = astronaut_set_and_model(tmp_path)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", f"untrained={model}", "--data", str(prep), "--limit", "3", "--independent", "",
                 "--judges", "", "--guidance", "1", "--steps", "2", "--diversity-ids", "0", "--baselines", "nn",
                 "--fid", "--inception", str(tmp_path / "tiny_inception.pt"), "--out", str(out), "--device", "cpu"]) == 0
    fid = json.loads((out / "metrics.json").read_text())["fid"]
    assert set(fid) == {"untrained s=1", "nearest neighbour"} and fid["nearest neighbour"]["n"] == 3
    assert fid["untrained s=1"]["kid"] > fid["nearest neighbour"]["kid"]
    assert fid["untrained s=1"]["fid"] > fid["nearest neighbour"]["fid"]
    assert "KID x 1000" in (out / "report.md").read_text()


def test_upscaled_verification_rows_get_each_template_and_their_own_ceiling(tmp_path, monkeypatch):
    """--upscale: every verification row again after the upsampler, which gets image j's own
    template (the dlib vector of the first photo of positive pair j) and seed; the real crop at
    the upsampler's size is the ceiling beside them. An upsampler conditioned on another
    encoder's vectors is refused by name."""
    import id3pm.superres as superres
    from id3pm.modeldir import save_model_dir
    from id3pm.models import IDConditionedUNet

    src, prep, model, _, _ = astronaut_set_and_model(tmp_path)
    (tmp_path / "pairs.csv").write_text("path_a,path_b,same,fold\n" + "".join(
        f"a{i}.png,a{(i + 1) % 6}.png,{1 if i % 2 else 0},{i % 2}\n" for i in range(6)))
    calls = []

    class Spy(superres.LanczosUpscaler):
        def __call__(self, images, seeds=None, **kwargs):
            calls.append((images.shape, list(seeds), kwargs["id_vectors"]))
            return super().__call__(images)

    monkeypatch.setattr(superres, "make_upscaler", lambda spec, device=None, **kw: None if spec is None else Spy(64))
    cfg = EvalConfig(out=str(tmp_path / "eval"), models=[f"untrained={model}"], data=str(prep), limit=2,
                     independent=None, judges=[], baselines=["nn"], pairs=str(tmp_path / "pairs.csv"),
                     pairs_root=str(src), guidance=[1.0], steps=2, diversity_ids=0, device="cpu", upscale=["spy=x"])
    verification = Evaluation(cfg).run()["verification"]
    rows = verification["rows"]
    assert {"real 64 px crop", "untrained s=1 -> 64 px spy", "nearest neighbour -> 64 px spy"} <= set(rows)
    # each enlarged row paired with the row it enlarges, on the same pairs at the real pairs' thresholds
    paired = verification["upscaled_paired"]["untrained s=1 -> 64 px spy"]["conditioning"]
    assert set(verification["upscaled_paired"]) == {"untrained s=1 -> 64 px spy", "nearest neighbour -> 64 px spy"}
    for side, row in (("before", "untrained s=1"), ("after", "untrained s=1 -> 64 px spy")):
        assert paired[f"accuracy_{side}"] == pytest.approx(rows[row]["conditioning"]["real_thresholds"]["mean"])  # equal folds
    saved = np.load(tmp_path / "eval" / "verification.npz")
    assert saved["untrained s=1 | conditioning"].shape == (6,) and saved["fold"].tolist() == [0, 1] * 3
    assert saved["untrained s=1 -> 64 px spy | conditioning"].mean() == pytest.approx(paired["accuracy_after"])
    firsts = [f"a{i}.png" for i in (1, 3, 5)]  # the first photos of the positive pairs, in path order
    dlib = make_encoder({"name": "dlib"})
    want = dlib.encode([load_image(src / p) for p in firsts], keys=firsts).vectors
    assert len(calls) == 2 and all(shape == (3, 32, 32, 3) and seeds == [0, 1, 2] for shape, seeds, _ in calls)
    np.testing.assert_allclose(calls[0][2], want, atol=1e-5)
    # the enlarged retrieval row is judged: the astronaut is found, so the positive pairs stay close
    assert rows["nearest neighbour -> 64 px spy"]["conditioning"]["failed_pairs"] == 0

    net = IDConditionedUNet(sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                            attention_resolutions=(), mid_attention=False, id_dim=8, extra_cond_channels=3,
                            use_level_embedding=True)
    info = {"task": "superres", "image_size": 16, "cond_size": 8, "diffusion": {"schedule": "cosine", "num_timesteps": 1000},
            "encoder": {"name": "faceres"}, "id_dim": 8}
    other = save_model_dir(tmp_path / "faceres_sr", net, info)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="conditioned on faceres vectors, the templates are dlib's"):
        Evaluation(EvalConfig(**{**cfg.__dict__, "upscale": [str(other)], "out": str(tmp_path / "e2")}))
