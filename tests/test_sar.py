"""Success attack rate: thresholds at a false-match rate, Wilson intervals, NaN = failed attack."""

import math

import numpy as np
import pytest

from id3pm.evaluation.sar import impostor_distances, sar_table, success_rate, threshold_at_fmr, wilson_interval


def test_threshold_accepts_at_most_the_fmr_share_of_impostors():
    rng = np.random.default_rng(0)
    impostors = rng.uniform(0.4, 1.0, 10_000)
    for fmr in (0.01, 0.001):
        thr = threshold_at_fmr(impostors, fmr)
        accepted = (impostors < thr).mean()
        assert accepted <= fmr and accepted > fmr - 2 / len(impostors)
    assert threshold_at_fmr(np.arange(1000) / 1000, 0.01) == 0.010  # 10 of 1000 below it


def test_wilson_interval_hand_values():
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 50)  # sound at 0%: [0, 7.1%]
    assert low == 0.0 and high == pytest.approx(0.0713, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    # at 100% the interval ends at 1 exactly (rounding gave 0.9999... for 4 of 4, a negative error bar)
    assert all(wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0 for n in range(1, 200))


def test_unreadable_reconstructions_count_as_failed_attacks():
    r = success_rate(np.array([0.1, 0.2, np.nan, 0.9]), threshold=0.5)
    assert r["accepted"] == 2 and r["n"] == 4 and r["sar"] == 0.5


def test_impostor_pairs_skip_faceless_rows_and_sar_table_uses_them():
    v = np.array([[0.0, 0.0], [3.0, 4.0], [np.nan, np.nan], [6.0, 8.0]])
    d = impostor_distances(v, "euclidean")
    assert sorted(d.tolist()) == [5.0, 5.0, 10.0]
    table = sar_table(np.array([4.0, 6.0]), d, fmrs=(0.5,))
    assert table["fmr=0.5"]["threshold"] == 5.0 and table["fmr=0.5"]["sar"] == 0.5


def test_impostor_distances_in_blocks_are_every_pair_once():
    from id3pm.encoders import identity_distance

    v = np.random.default_rng(0).normal(size=(250, 16)).astype(np.float32)  # 31,125 pairs: more than one block
    i, j = np.triu_indices(250, 1)
    for kind in ("euclidean", "cosine"):
        np.testing.assert_allclose(impostor_distances(v, kind), identity_distance(v[i], v[j], kind))
    assert impostor_distances(v, "euclidean", max_pairs=1000).shape == (1000,)
    assert impostor_distances(v[:1], "euclidean").shape == (0,)
