"""Paired comparison of two evaluations on the SAME originals (e.g. the reference model
at the end of two working periods, scored on the same fixed holdout sample).

Two separate 95% Wilson intervals overlap long after a difference is real, because they
ignore that both rates were measured on the same identities. Pairing removes the
between-identity spread:

- identity distance: the mean of the per-original differences, with its 95% interval
  (normal approximation; n is in the hundreds);
- SAR: McNemar's exact test on the discordant originals, those accepted by one model and
  rejected by the other; the concordant ones say nothing about the difference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

FIRST = ("conditioning", "independent")  # then any further judges, by name


def mcnemar_exact_p(only_before: int, only_after: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference", each of the n discordant
    originals falls on either side with probability 1/2."""
    n, k = only_before + only_after, min(only_before, only_after)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_change(before: np.ndarray, after: np.ndarray, z: float = 1.959964) -> tuple[float, float, float]:
    """Mean of after - before over the same items, with its normal 95% interval (NaN
    bounds for a single item)."""
    diff = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    half = z * diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else math.nan
    return float(diff.mean()), float(diff.mean() - half), float(diff.mean() + half)


def paired_comparison(before: np.ndarray, after: np.ndarray, threshold: float, z: float = 1.959964) -> dict:
    """before, after: distances of the same originals in the same order (NaN: no face in
    the reconstruction, a rejected attack and no distance). Accept d < threshold."""
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.shape != after.shape:
        raise ValueError(f"paired comparison needs the same originals: {before.shape} vs {after.shape}")
    ok = np.isfinite(before) & np.isfinite(after)
    change, low, high = paired_change(before[ok], after[ok], z)
    accepted_before = np.nan_to_num(before, nan=np.inf) < threshold
    accepted_after = np.nan_to_num(after, nan=np.inf) < threshold
    only_before = int((accepted_before & ~accepted_after).sum())
    only_after = int((accepted_after & ~accepted_before).sum())
    return {
        "n": len(before),
        "n_distance_pairs": int(ok.sum()),
        "distance_before": float(before[ok].mean()),
        "distance_after": float(after[ok].mean()),
        "distance_change": change,
        "distance_change_ci95": [low, high],
        "sar_before": float(accepted_before.mean()),
        "sar_after": float(accepted_after.mean()),
        "accepted_only_before": only_before,
        "accepted_only_after": only_after,
        "mcnemar_p": mcnemar_exact_p(only_before, only_after),
    }


def paired_accuracy(correct_before: np.ndarray, correct_after: np.ndarray, z: float = 1.959964) -> dict:
    """Two rows of one verification run decided pair by pair (the same pairs, the same
    thresholds: the real pairs' ones): the change in accuracy with its 95% interval (normal,
    on the per-pair differences) and McNemar's exact test on the pairs only one row gets
    right. Pooled over folds, so equal to the mean over folds when the folds are equal."""
    before, after = np.asarray(correct_before, bool), np.asarray(correct_after, bool)
    if before.shape != after.shape:
        raise ValueError(f"paired accuracy needs the same pairs: {before.shape} vs {after.shape}")
    change, low, high = paired_change(before.astype(float), after.astype(float), z)
    only_before, only_after = int((before & ~after).sum()), int((after & ~before).sum())
    return {
        "n": len(before),
        "accuracy_before": float(before.mean()),
        "accuracy_after": float(after.mean()),
        "change": change,
        "change_ci95": [low, high],
        "right_only_before": only_before,
        "right_only_after": only_after,
        "mcnemar_p": mcnemar_exact_p(only_before, only_after),
    }


def align(keys_a: np.ndarray, values_a: np.ndarray, keys_b: np.ndarray, values_b: np.ndarray):
    """The originals both evaluations scored, in one order: (keys, a's values, b's values)."""
    index_b = {k: i for i, k in enumerate(keys_b.tolist())}
    common = [(i, index_b[k]) for i, k in enumerate(keys_a.tolist()) if k in index_b]
    if not common:
        raise ValueError("the two evaluations share no originals (different data or holdout sample)")
    ia, ib = (np.array(c) for c in zip(*common))
    return keys_a[ia], values_a[ia], values_b[ib]



def load_evaluation(folder: Path) -> tuple[dict, dict]:
    """(metrics.json, {row | encoder: distances, "key": originals}) of an `evaluate` folder."""
    metrics = json.loads((folder / "metrics.json").read_text())
    with np.load(folder / "distances.npz") as npz:
        arrays = {name: npz[name] for name in npz.files}
    return metrics, arrays


def threshold(metrics: dict, encoder: str, fmr: float) -> float:
    """The threshold at this FMR, from the run's real impostor pairs (the same for every row)."""
    first = next(iter(metrics["sar_type1"].values()))
    return first[encoder][f"fmr={fmr:g}"]["threshold"]


def encoders_of(arrays: dict) -> list[str]:
    """The judging encoders of an evaluation's distances ("ROW | ENCODER" arrays)."""
    found = {name.rpartition(" | ")[2] for name in arrays if " | " in name}
    return [e for e in FIRST if e in found] + sorted(found - set(FIRST))


def compare_evaluations(before: Path, after: Path, rows: list[str], after_row: str | None = None,
                        fmr: float = 0.01) -> list[dict]:
    """One paired comparison per row and encoder that both folders hold, at the BEFORE
    run's threshold; after_row: the second folder's name for the first of `rows`."""
    m_before, d_before = load_evaluation(before)
    _, d_after = load_evaluation(after)
    out = []
    for row in rows:
        other = after_row or row
        for enc in encoders_of(d_before):
            a, b = f"{row} | {enc}", f"{other} | {enc}"
            if a not in d_before or b not in d_after:
                continue
            _, x, y = align(d_before["key"], d_before[a], d_after["key"], d_after[b])
            result = paired_comparison(x, y, threshold(m_before, enc, fmr))
            out.append({"row": row if other == row else f"{row} -> {other}", "encoder": enc, **result})
    if not out:
        raise ValueError(f"no row of {rows} is in both {before} and {after}")
    return out


def compare_verification(before: Path, after: Path, rows: list[str], after_row: str | None = None) -> list[dict]:
    """Verification rows of two `evaluate` folders (or two rows of one) on the same pairs,
    pair by pair at the real pairs' thresholds (verification.npz); after_row as above."""
    with np.load(before / "verification.npz") as a, np.load(after / "verification.npz") as b:
        a, b = dict(a), dict(b)
    if not np.array_equal(a["pair"], b["pair"]) or not np.array_equal(a["fold"], b["fold"]):
        raise ValueError(f"{before} and {after} verified different pairs or folds: no pairing")
    out = []
    for row in rows:
        other = after_row or row
        for enc in encoders_of(a):
            x, y = a.get(f"{row} | {enc}"), b.get(f"{other} | {enc}")
            if x is not None and y is not None:
                out.append({"row": row if other == row else f"{row} -> {other}", "encoder": enc,
                            **paired_accuracy(x, y)})
    if not out:
        raise ValueError(f"no verification row of {rows} is in both {before} and {after}")
    return out


def accuracy_change_text(r: dict) -> str:
    """A paired_accuracy result's change in points with its 95% interval: "+1.50 [+0.24, +2.76]"."""
    low, high = r["change_ci95"]
    return f"{100 * r['change']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]"


def verification_table(results: list[dict]) -> str:
    lines = ["| row | encoder | accuracy before | after | change [95% CI] | right only before | only after | McNemar p |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['row']} | {r['encoder']} | {100 * r['accuracy_before']:.2f} | {100 * r['accuracy_after']:.2f} "
                     f"| {accuracy_change_text(r)} | {r['right_only_before']} "
                     f"| {r['right_only_after']} | {r['mcnemar_p']:.3g} |")
    return "\n".join(lines)


def comparison_table(results: list[dict], fmr: float = 0.01) -> str:
    lines = [f"| row | encoder | dist before | after | change [95% CI] | SAR@{100 * fmr:g}% before | after "
             "| only before | only after | McNemar p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        low, high = r["distance_change_ci95"]
        lines.append(f"| {r['row']} | {r['encoder']} | {r['distance_before']:.3f} | {r['distance_after']:.3f} "
                     f"| {r['distance_change']:+.4f} [{low:+.4f}, {high:+.4f}] | {100 * r['sar_before']:.1f}% "
                     f"| {100 * r['sar_after']:.1f}% | {r['accepted_only_before']} | {r['accepted_only_after']} "
                     f"| {r['mcnemar_p']:.3g} |")
    return "\n".join(lines)
