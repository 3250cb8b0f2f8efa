"""#24's curve on the identity-disjoint yardstick, from the yardstick log in docs/results.md.

    python scripts/yardstick_curve.py       # writes docs/yardstick_curve.png and .json, prints the table

Verification accuracy on the CelebA test pairs (first image of each positive pair replaced
by a reconstruction, thresholds from the real pairs) under dlib and faceres, for every row
measured on the 600 pairs, in the log's order. The shipped model, retrieval and the real
32 px crop are drawn as lines (their latest 600-pair rows), beside the issue's bar. Reads
the log's table, so it never disagrees with it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from learning_curve import curve_parser, markdown_table, save_figure  # noqa: E402

YARDSTICK_HEADER = "### The yardstick log (from period 15)"
ACCURACY = "CelebA acc, real-pair thr. (dlib / faceres)"
PAIR = re.compile(r"([\d.]+) / ([\d.]+)")
ENCODERS = ("dlib", "faceres")
BAR = {"dlib": 95.0, "faceres": 85.0}  # the bar at the system's own thresholds
# rows drawn as reference lines rather than points of the curve: {method prefix: label}
REFERENCES = {"shipped": "shipped model (period 12)", "nearest neighbour": "retrieval (nearest neighbour)",
              "real (original crop)": "real crop at 32 px"}


def curve_rows(text: str) -> list[dict]:
    """The log's rows measured on the 600 pairs: {period, method, dlib, faceres}."""
    rows = []
    for cells in markdown_table(text, YARDSTICK_HEADER):
        m = PAIR.fullmatch(cells.get(ACCURACY, ""))
        if m and "600 pairs" in cells["run"].lower():
            period = cells["run"].split()[0]
            rows.append({"period": period, "method": cells["method"], "dlib": float(m[1]), "faceres": float(m[2])})
    return rows


def reference_of(row: dict) -> str | None:
    return next((label for prefix, label in REFERENCES.items() if row["method"].startswith(prefix)), None)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if reference_of(r) is None]
    latest = {reference_of(r): r for r in rows if reference_of(r) is not None}  # the last row of each wins
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharex=True)
    for ax, enc in zip(axes, ENCODERS):
        ax.plot(range(len(points)), [r[enc] for r in points], "o-", c="tab:blue", label="model, guidance 2")
        for (label, r), style in zip(latest.items(), (":", "-.", "--")):
            ax.axhline(r[enc], ls=style, c="grey", label=f"{label} ({r[enc]:.1f})")
        ax.axhline(BAR[enc], ls="--", c="tab:red", label=f"bar ({BAR[enc]:.0f})")
        ax.set_xticks(range(len(points)), [f"{r['period']}\n{r['method'].removesuffix(' s=2')}" for r in points],
                      fontsize=7)
        ax.set_title(f"{enc}: CelebA test pairs, first image replaced")
        ax.set_ylabel("verification accuracy, real-pair thresholds (%)")
        ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def main() -> None:
    args = curve_parser(__doc__.splitlines()[0], "yardstick_curve.png").parse_args()
    rows = curve_rows(args.results.read_text())
    print("| period | method | dlib | faceres |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['period']} | {r['method']} | {r['dlib']:.1f} | {r['faceres']:.1f} |")
    plot(rows, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
