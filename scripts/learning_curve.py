"""The reference model's learning curve, from the training log in docs/results.md.

    python scripts/learning_curve.py        # writes docs/learning_curve.png and .json, prints the table

Type-I SAR at FMR 1% of the model at guidance 2 against images seen, under the
conditioning encoder (dlib) and the independent one (faceres), with nearest-neighbour
retrieval and the bar (dlib 90%) as reference lines. Reads the first table under the
log's heading, its rows on 500 random holdout identities (--holdout-ids), so it never
disagrees with it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from ship_reference import LOG_HEADER  # noqa: E402

CELL = re.compile(r"([\d.]+) / ([\d.]+)% · ([\d.]+) / ([\d.]+)%")  # dlib dist / SAR · faceres dist / SAR


def markdown_table(text: str, heading: str) -> list[dict[str, str]]:
    """The first Markdown table under a heading line, as one {header: cell} per row."""
    lines = text.split("\n")
    start = lines.index(heading)
    table = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    header = [c.strip() for c in table[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in table[2:]]


def log_rows(text: str) -> list[dict]:
    """The log table's rows; method cells parsed into distances and SARs."""
    rows = []
    for cells in markdown_table(text, LOG_HEADER):
        row = {"date": cells["date"], "images": int(cells["images seen"].replace(",", "")),
               "steps": int(cells["steps"].replace(",", "")), "cpu_hours": float(cells["CPU hours"]),
               "holdout_ids": int(cells.get("holdout ids", "500"))}
        for name, cell in cells.items():
            m = CELL.fullmatch(cell)
            if m:
                method = name.split(":")[0]
                row[method] = {"dlib_dist": float(m[1]), "dlib_sar": float(m[2]),
                               "faceres_dist": float(m[3]), "faceres_sar": float(m[4])}
        rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["images"] / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for enc, colour in (("dlib", "tab:blue"), ("faceres", "tab:green")):
        ax.plot(x, [r["model s=2"][f"{enc}_sar"] for r in rows], "o-", c=colour, label=f"model s=2, {enc}")
        nn = rows[-1].get("nearest neighbour")
        if nn:
            ax.axhline(nn[f"{enc}_sar"], ls=":", c=colour, label=f"nearest neighbour, {enc}")
    ax.axhline(90, ls="--", c="grey", label="bar: dlib 90%")
    ax.set_xlabel("images seen (millions; whole lineage)")
    ax.set_ylabel("type-I SAR at FMR 1% (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Reference model, 500 random UTKFace holdout identities")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curve_parser(description: str, figure: str) -> argparse.ArgumentParser:
    """The arguments of a curve script: the results file it reads, the figure it writes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / figure)
    return p


def main() -> None:
    p = curve_parser(__doc__.splitlines()[0], "learning_curve.png")
    p.add_argument("--holdout-ids", type=int, default=500, help="the rows measured on this many identities")
    args = p.parse_args()
    # one fixed sample per curve: a row measured on fewer holdout identities is another sample
    rows = [r for r in log_rows(args.results.read_text()) if r["holdout_ids"] == args.holdout_ids]
    print("| images seen | steps | CPU hours | dlib SAR@1% | faceres SAR@1% | dlib dist | faceres dist |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["model s=2"]
        print(f"| {r['images']:,} | {r['steps']:,} | {r['cpu_hours']:.2f} | {m['dlib_sar']:.1f}% | "
              f"{m['faceres_sar']:.1f}% | {m['dlib_dist']:.3f} | {m['faceres_dist']:.3f} |")
    plot(rows, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
