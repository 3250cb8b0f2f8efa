"""Paired comparison of two evaluations on the same originals (id3pm.evaluation.paired,
scripts/compare_evals.py)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from id3pm.evaluation.paired import align, mcnemar_exact_p, paired_accuracy, paired_change, paired_comparison
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("b, c", [(1, 9), (0, 6), (12, 20), (30, 30), (0, 0)])
def test_mcnemar_exact_p_is_the_two_sided_binomial_test_on_the_discordant_pairs(b, c):
    expected = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
    assert mcnemar_exact_p(b, c) == pytest.approx(expected)
    assert mcnemar_exact_p(c, b) == pytest.approx(expected)


def test_paired_change_is_the_mean_difference_with_its_normal_interval():
    before, after = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.1, 3.9, 4.2])
    diffs = [0.5, 0.1, 0.9, 0.2]  # by hand
    mean = sum(diffs) / 4
    sd = (sum((d - mean) ** 2 for d in diffs) / 3) ** 0.5
    change, low, high = paired_change(before, after)
    assert change == pytest.approx(0.425)
    assert (low, high) == pytest.approx((mean - 1.959964 * sd / 2, mean + 1.959964 * sd / 2))
    assert np.isnan(paired_change([1.0], [2.0])[1])  # one item: no interval


def test_paired_comparison_counts_discordant_originals_and_the_mean_change():
    before = np.array([0.40, 0.45, 0.60, 0.70, np.nan, 0.52])
    after = np.array([0.38, 0.55, 0.50, 0.65, 0.40, np.nan])
    r = paired_comparison(before, after, threshold=0.5)
    # accepted before: 0.40, 0.45 ; after: 0.38, 0.40 (the NaN before was no face: rejected)
    assert (r["sar_before"], r["sar_after"]) == (2 / 6, 2 / 6)
    assert (r["accepted_only_before"], r["accepted_only_after"]) == (1, 1)  # 0.45 -> 0.55 ; nan -> 0.40
    diffs = np.array([-0.02, 0.10, -0.10, -0.05])  # the four pairs with both distances
    assert r["n_distance_pairs"] == 4 and r["distance_change"] == pytest.approx(diffs.mean())
    half = 1.959964 * diffs.std(ddof=1) / 2
    assert r["distance_change_ci95"] == pytest.approx([diffs.mean() - half, diffs.mean() + half])
    with pytest.raises(ValueError, match="same originals"):
        paired_comparison(before, after[:3], 0.5)


def test_paired_accuracy_of_two_verification_rows_decided_pair_by_pair():
    """Two rows of one verification run: 10 pairs, 8 right before; after, one of those is
    lost and three others won (two pairs right in both rows, one wrong in both)."""
    before = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], bool)
    after = np.array([1, 1, 1, 1, 1, 1, 1, 0, 1, 0], bool)
    r = paired_accuracy(before, after)
    assert (r["accuracy_before"], r["accuracy_after"], r["change"]) == (0.8, 0.8, 0.0)
    assert (r["right_only_before"], r["right_only_after"]) == (1, 1) and r["mcnemar_p"] == 1.0
    diffs = np.array([0.0] * 7 + [-1.0, 1.0, 0.0])
    half = 1.959964 * diffs.std(ddof=1) / np.sqrt(10)
    assert r["change_ci95"] == pytest.approx([-half, half])
    gained = paired_accuracy(np.zeros(40, bool), np.r_[np.ones(12, bool), np.zeros(28, bool)])
    assert gained["change"] == pytest.approx(0.3) and gained["change_ci95"][0] > 0
    assert gained["mcnemar_p"] == pytest.approx(binomtest(0, 12, 0.5).pvalue)
    with pytest.raises(ValueError, match="same pairs"):
        paired_accuracy(before, after[:4])


def test_a_consistent_small_gain_is_significant_paired_though_the_wilson_intervals_overlap():
    from id3pm.evaluation.sar import success_rate

    rng = np.random.default_rng(0)
    before = rng.normal(0.46, 0.06, 500)
    after = before - 0.01 + rng.normal(0, 0.005, 500)  # every original a little closer
    r = paired_comparison(before, after, threshold=0.5)
    assert r["distance_change_ci95"][1] < 0 and r["mcnemar_p"] < 0.01 and r["accepted_only_before"] == 0
    lo_after = success_rate(after, 0.5)["ci95"][0]
    hi_before = success_rate(before, 0.5)["ci95"][1]
    assert lo_after < hi_before  # unpaired, the two intervals overlap


def test_align_pairs_the_originals_by_key_whatever_their_order():
    keys_a, keys_b = np.array(["x", "y", "z"]), np.array(["z", "w", "x"])
    keys, a, b = align(keys_a, np.array([1.0, 2.0, 3.0]), keys_b, np.array([30.0, 0.0, 10.0]))
    assert keys.tolist() == ["x", "z"] and a.tolist() == [1.0, 3.0] and b.tolist() == [10.0, 30.0]
    with pytest.raises(ValueError, match="share no originals"):
        align(keys_a, np.zeros(3), np.array(["q"]), np.zeros(1))


def _evaluation(folder: Path, keys, rows: dict, thresholds: dict) -> Path:
    folder.mkdir()
    np.savez(folder / "distances.npz", key=np.array(keys), **rows)
    sar = {enc: {"fmr=0.01": {"threshold": t}} for enc, t in thresholds.items()}
    (folder / "metrics.json").write_text(json.dumps({"sar_type1": {"model s=2": sar}}))
    return folder


def test_the_script_compares_rows_of_two_evaluation_folders(tmp_path):
    keys = [f"id{i}" for i in range(4)]
    old = _evaluation(tmp_path / "old", keys, {"model s=2 | conditioning": np.array([0.40, 0.60, 0.70, 0.30]),
                                               "model s=2 | independent": np.array([0.30, 0.50, 0.45, 0.20])},
                      {"conditioning": 0.542, "independent": 0.411})
    new = _evaluation(tmp_path / "new", keys[::-1], {"raw s=2 | conditioning": np.array([0.31, 0.50, 0.50, 0.41]),
                                                     "raw s=2 | independent": np.array([0.2, 0.4, 0.4, 0.3])},
                      {"conditioning": 0.542, "independent": 0.411})
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_evals.py"), str(old), str(new),
                          "--rows", "model s=2", "--after-row", "raw s=2", "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "| model s=2 -> raw s=2 | conditioning | 0.500 | 0.430 | -0.0700" in out
    results = json.loads((tmp_path / "r.json").read_text())
    cond = results[0]
    # before: accepted id0 (0.40), id3 (0.30); after (reversed keys): id0 0.41, id1 0.50, id2 0.50, id3 0.31
    assert (cond["sar_before"], cond["sar_after"]) == (0.5, 1.0)
    assert (cond["accepted_only_before"], cond["accepted_only_after"]) == (0, 2)
    assert results[1]["encoder"] == "independent"


def test_ship_reference_compares_with_the_newest_earlier_evaluation_of_the_same_sample(tmp_path, capsys):
    import os

    ship = load_script("ship_reference")
    keys = ["a", "b"]
    rows = {"model s=2 | conditioning": np.array([0.5, 0.6])}
    thr = {"conditioning": 0.542}
    for i, name in enumerate(["p10", "p11", "other-size", "raw"]):
        folder = _evaluation(tmp_path / name, keys, rows if name != "raw" else {"raw s=2 | conditioning": np.ones(2)},
                             thr)
        metrics = json.loads((folder / "metrics.json").read_text())
        metrics["config"] = {"limit": 200 if name == "other-size" else 500}
        if name == "raw":
            metrics["sar_type1"] = {"raw s=2": metrics["sar_type1"]["model s=2"]}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        os.utime(folder / "metrics.json", (1000 + i, 1000 + i))
    assert ship.previous_evaluation(tmp_path, tmp_path / "new", 500) == tmp_path / "p11"
    assert ship.previous_evaluation(tmp_path, tmp_path / "p11", 500) == tmp_path / "p10"
    assert ship.previous_evaluation(tmp_path / "none", tmp_path / "new", 500) is None
    new = _evaluation(tmp_path / "new", keys, {"model s=2 | conditioning": np.array([0.5, 0.5])}, thr)
    ship.print_comparison(tmp_path / "p11", new)
    assert "| model s=2 | conditioning | 0.550 | 0.500 | -0.0500" in capsys.readouterr().out
    ship.print_comparison(tmp_path / "raw", new)  # nothing in common: said, not raised
    assert "no paired comparison with" in capsys.readouterr().out


def test_the_script_pairs_verification_rows_of_two_runs_on_the_same_pairs(tmp_path):
    """--verification: verification.npz of two runs (or two rows of one), pair by pair."""
    pairs = np.array([f"a{i}.png|b{i}.png" for i in range(6)])
    common = dict(pair=pairs, same=np.array([1, 0] * 3, bool), fold=np.array([0, 0, 1, 1, 2, 2]))
    for name, right in (("old", [1, 1, 0, 1, 1, 1]), ("new", [1, 1, 1, 1, 1, 1])):
        (tmp_path / name).mkdir()
        np.savez(tmp_path / name / "verification.npz", **common, **{
            "model s=2 | conditioning": np.array(right, bool),
            "model s=2 -> 128 px sr | conditioning": np.array([0, 1, 0, 1, 1, 1], bool)})
    script = [sys.executable, str(ROOT / "scripts" / "compare_evals.py")]
    out = subprocess.run(script + [str(tmp_path / "old"), str(tmp_path / "new"), "--verification", "--rows", "model s=2",
                                   "--json", str(tmp_path / "r.json")], capture_output=True, text=True, check=True).stdout
    assert "| model s=2 | conditioning | 83.33 | 100.00 | +16.67" in out
    r = json.loads((tmp_path / "r.json").read_text())[0]
    assert (r["right_only_before"], r["right_only_after"], r["mcnemar_p"]) == (0, 1, 1.0)
    one_run = subprocess.run(script + [str(tmp_path / "new")] * 2 + ["--verification", "--rows", "model s=2",
                                       "--after-row", "model s=2 -> 128 px sr"], capture_output=True, text=True, check=True)
    assert "| model s=2 -> model s=2 -> 128 px sr | conditioning | 100.00 | 66.67 | -33.33" in one_run.stdout
    np.savez(tmp_path / "old" / "verification.npz", **{**common, "pair": pairs[::-1]},
             **{"model s=2 | conditioning": np.ones(6, bool)})
    refused = subprocess.run(script + [str(tmp_path / "old"), str(tmp_path / "new"), "--verification", "--rows",
                                       "model s=2"], capture_output=True, text=True)
    assert refused.returncode != 0 and "verified different pairs" in refused.stderr


def _sar_metrics(data: Path, encoder: str, independent: str, judges: list[str], rows: dict) -> dict:
    """metrics.json of an evaluation whose data set was encoded by `encoder`; rows: name ->
    {role: accepted of 10}."""
    data.mkdir(parents=True, exist_ok=True)
    (data / "manifest.json").write_text(json.dumps({"encoder": {"name": encoder}}))
    cell = lambda k: {f: {"sar": k / 10, "ci95": [max(0, k / 10 - 0.2), min(1, k / 10 + 0.1)], "n": 10}  # noqa: E731
                      for f in ("fmr=0.01", "fmr=0.001")}
    return {"config": {"data": str(data), "independent": independent, "judges": judges},
            "sar_type1": {row: {role: cell(k) for role, k in per_role.items()} for row, per_role in rows.items()}}


def test_paths_figure_names_each_evaluations_encoders_by_its_own_data_set(tmp_path):
    # an adapter's evaluation is conditioned on the templates' FR model (mobilefacenet), the
    # shipped model's on dlib: the figure must put each number under the encoder that judged it
    a = tmp_path / "adapter"
    b = tmp_path / "dlib"
    for folder, metrics in [
        (a, _sar_metrics(tmp_path / "mfn-data", "mobilefacenet", "faceres", ["dlib"],
                         {"shipped s=2": {"conditioning": 8, "independent": 5, "dlib": 9}})),
        (b, _sar_metrics(tmp_path / "dlib-data", "dlib", "faceres", ["mobilefacenet"],
                         {"shipped s=2": {"conditioning": 10, "independent": 4, "mobilefacenet": 7}})),
    ]:
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps(metrics))
    fig = tmp_path / "paths.png"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "paths_figure.py"), "--out", str(fig),
                    f"adapter|{a}|shipped s=2", f"dlib templates|{b}|shipped s=2"], check=True, capture_output=True)
    rows = json.loads(fig.with_suffix(".json").read_text())
    sar = lambda r, e: rows[r]["sar_type1"][e]["fmr=0.01"]["sar"]  # noqa: E731
    assert (sar(0, "mobilefacenet"), sar(0, "faceres"), sar(0, "dlib")) == (0.8, 0.5, 0.9)
    assert (sar(1, "mobilefacenet"), sar(1, "faceres"), sar(1, "dlib")) == (0.7, 0.4, 1.0)
    assert fig.stat().st_size > 10_000
    missing = subprocess.run([sys.executable, str(ROOT / "scripts" / "paths_figure.py"), "--out", str(fig),
                              f"x|{a}|no such row"], capture_output=True, text=True)
    assert missing.returncode != 0 and "no row 'no such row'" in missing.stderr
