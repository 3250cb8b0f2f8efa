"""A row of the yardstick's training log (docs/results.md) from `id3pm yardstick`'s JSON:

    python scripts/yardstick_row.py YARD/yardstick.json --method "wild s=2" --label "period 15, step 1,234"

Prints one Markdown row: verification accuracy on CelebA test pairs with real-pair
thresholds, type-I SAR at FMR 1% on CelebA and AAF test people, and ORL / Yale accuracy,
each under dlib / faceres; and the pose spread on CelebA. A missing number is "-".
"""

from __future__ import annotations

import argparse
import json

COLUMNS = [  # (header, column of yardstick.json without the encoder)
    ("CelebA acc, real-pair thr.", "celeba.acc_real"),
    ("CelebA acc (paper's thr.)", "celeba.acc"),
    ("CelebA type-I SAR@1%", "celeba.sar1"),
    ("CelebA type-II SAR@1%", "celeba.sar2"),
    ("AAF type-I SAR@1%", "aaf.sar1"),
    ("ORL acc, real-pair thr.", "orl.acc_real"),
    ("Yale acc, real-pair thr.", "yale.acc_real"),
]


def cell(row: dict, column: str) -> str:
    values = [row.get(f"{column}.{enc}") for enc in ("conditioning", "independent")]
    return " / ".join("-" if v is None else f"{100 * v:.1f}" for v in values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("yardstick", help="yardstick.json")
    ap.add_argument("--method", action="append", required=True, help="row(s) of the table to print")
    ap.add_argument("--label", default="", help="first cell (date, period, step)")
    args = ap.parse_args()
    table = json.loads(open(args.yardstick).read())
    print("| run | method | " + " | ".join(f"{h} (dlib / faceres)" for h, _ in COLUMNS) + " | CelebA pose spread (deg) |")
    print("|---|---|" + "---|" * len(COLUMNS) + "---|")
    for method in args.method:
        row = table["rows"][method]
        spread = row.get("celeba.pose_spread_deg")
        print(f"| {args.label} | {method} | " + " | ".join(cell(row, c) for _, c in COLUMNS)
              + f" | {'-' if spread is None else f'{spread:.1f}'} |")


if __name__ == "__main__":
    main()
