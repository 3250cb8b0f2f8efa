"""Did the model get better? A paired comparison of two evaluations of the same holdout
sample (`evaluate`'s distances.npz and metrics.json), row by row and encoder by encoder:

    python scripts/compare_evals.py ~/.cache/id3pm/eval/20261201-1140 ~/.cache/id3pm/eval/20261201-1500 \
        [--rows "model s=2" ...] [--after-row "raw s=2"] [--fmr 0.01] [--json out.json]

Prints a markdown table: mean distance before and after, the mean paired change with its
95% interval, SAR before and after at the BEFORE run's threshold, the originals accepted
by only one of the two, and McNemar's exact p (src/id3pm/evaluation/paired.py).
--after-row compares a differently named row of the second evaluation (e.g. another
model folder evaluated under its own name) against the first row given by --rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from id3pm.evaluation.paired import align, paired_comparison

ENCODERS = ("conditioning", "independent")


def load(folder: Path) -> tuple[dict, dict]:
    metrics = json.loads((folder / "metrics.json").read_text())
    with np.load(folder / "distances.npz") as npz:
        arrays = {name: npz[name] for name in npz.files}
    return metrics, arrays


def threshold(metrics: dict, encoder: str, fmr: float) -> float:
    """The threshold at this FMR, from the run's real impostor pairs (the same for every row)."""
    first = next(iter(metrics["sar_type1"].values()))
    return first[encoder][f"fmr={fmr:g}"]["threshold"]


def compare(before: Path, after: Path, rows: list[str], after_row: str | None, fmr: float) -> list[dict]:
    m_before, d_before = load(before)
    _, d_after = load(after)
    out = []
    for row in rows:
        other = after_row or row
        for enc in ENCODERS:
            a, b = f"{row} | {enc}", f"{other} | {enc}"
            if a not in d_before or b not in d_after:
                continue
            _, x, y = align(d_before["key"], d_before[a], d_after["key"], d_after[b])
            result = paired_comparison(x, y, threshold(m_before, enc, fmr))
            out.append({"row": row if other == row else f"{row} -> {other}", "encoder": enc, **result})
    if not out:
        raise SystemExit(f"no row of {rows} is in both {before} and {after}")
    return out


def markdown(results: list[dict], fmr: float) -> str:
    lines = [f"| row | encoder | dist before | after | change [95% CI] | SAR@{100 * fmr:g}% before | after "
             "| only before | only after | McNemar p |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        low, high = r["distance_change_ci95"]
        lines.append(f"| {r['row']} | {r['encoder']} | {r['distance_before']:.3f} | {r['distance_after']:.3f} "
                     f"| {r['distance_change']:+.4f} [{low:+.4f}, {high:+.4f}] | {100 * r['sar_before']:.1f}% "
                     f"| {100 * r['sar_after']:.1f}% | {r['accepted_only_before']} | {r['accepted_only_after']} "
                     f"| {r['mcnemar_p']:.3g} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path, help="evaluation folder (distances.npz, metrics.json)")
    p.add_argument("after", type=Path)
    p.add_argument("--rows", nargs="+", default=["model s=1", "model s=2", "model s=4"])
    p.add_argument("--after-row", help="the second evaluation's row to compare with the first of --rows")
    p.add_argument("--fmr", type=float, default=0.01)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    rows = args.rows[:1] if args.after_row else args.rows
    results = compare(args.before, args.after, rows, args.after_row, args.fmr)
    print(markdown(results, args.fmr))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
