"""Did the model get better? A paired comparison of two evaluations of the same holdout
sample (`evaluate`'s distances.npz and metrics.json), row by row and encoder by encoder:

    python scripts/compare_evals.py ~/.cache/id3pm/eval/20261201-1140 ~/.cache/id3pm/eval/20261201-1500 \
        [--rows "model s=2" ...] [--after-row "raw s=2"] [--fmr 0.01] [--json out.json]

Prints a markdown table: mean distance before and after, the mean paired change with its
95% interval, SAR before and after at the BEFORE run's threshold, the originals accepted
by only one of the two, and McNemar's exact p (src/id3pm/evaluation/paired.py).
--after-row compares a differently named row of the second evaluation (e.g. another
model folder evaluated under its own name) against the first row given by --rows.
--verification compares verification rows instead (verification.npz: the same pairs,
decided pair by pair at the real pairs' thresholds): accuracy before and after, the
change with its 95% interval, the pairs only one gets right, McNemar's p. Both folders
may be the same, to pair two rows of one run (an upscaled row against its 32 px row).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from id3pm.evaluation.paired import compare_evaluations, compare_verification, comparison_table, verification_table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before", type=Path, help="evaluation folder (distances.npz, metrics.json)")
    p.add_argument("after", type=Path)
    p.add_argument("--rows", nargs="+", default=["model s=1", "model s=2", "model s=4"])
    p.add_argument("--after-row", help="the second evaluation's row to compare with the first of --rows")
    p.add_argument("--fmr", type=float, default=0.01)
    p.add_argument("--verification", action="store_true", help="compare verification rows (verification.npz)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    rows = args.rows[:1] if args.after_row else args.rows
    try:
        if args.verification:
            results = compare_verification(args.before, args.after, rows, args.after_row)
        else:
            results = compare_evaluations(args.before, args.after, rows, args.after_row, args.fmr)
    except (ValueError, OSError) as err:
        raise SystemExit(f"compare_evals: {err}")
    print(verification_table(results) if args.verification else comparison_table(results, args.fmr))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
