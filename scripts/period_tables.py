"""The two tables a working period adds to the documentation, from the holdout evaluation
that scripts/ship_reference.py wrote (its metrics.json, outside the repository):

    python scripts/period_tables.py ~/.cache/id3pm/eval/20261201-1150/metrics.json

1. the method table of docs/results.md (distance, SAR at FMR 1% with its 95% CI, and at
   0.1%, under dlib and faceres);
2. the group table of the model card (weights/README.md): mean dlib distance by age band,
   gender and race.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = [("model s=1", "model s=1"), ("model s=2", "model s=2 (default)"), ("model s=4", "model s=4"),
        ("nearest neighbour", "nearest neighbour"), ("regression decoder", "regression decoder g(y)"),
        ("random training image", "random training image"), ("real (original crop)", "real (original crop)")]
WITH_CI = {"model s=1", "model s=2", "model s=4", "nearest neighbour"}  # rows the text compares
CARD_COLUMNS = [("real (original crop)", "real 32 px crop"), ("model s=2", "model s=2"),
                ("nearest neighbour", "nearest neighbour")]


def percent(row: dict, ci: bool) -> str:
    text = f"{100 * row['sar']:.1f}%"
    if ci:
        low, high = row["ci95"]
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def method_table(metrics: dict) -> list[str]:
    lines = ["| method | dlib dist | dlib SAR @1% | @0.1% | faceres dist | faceres SAR @1% | @0.1% |",
             "|---|---|---|---|---|---|---|"]
    for key, label in ROWS:
        if key not in metrics["identity"]:
            continue
        cells = []
        for enc in ("conditioning", "independent"):
            sar = metrics["sar_type1"][key][enc]
            cells += [f"{metrics['identity'][key][enc]['mean'] + 0.0:.3f}".replace("-0.000", "0.000"), percent(sar["fmr=0.01"], key in WITH_CI),
                      percent(sar["fmr=0.001"], False)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def group_table(metrics: dict) -> list[str]:
    lines = ["| group | n | " + " | ".join(label for _, label in CARD_COLUMNS) + " |",
             "|---|---|" + "---|" * len(CARD_COLUMNS)]
    for column, prefix in (("age", "age "), ("gender", ""), ("race", "")):
        for group, rows in metrics["breakdown"].get(column, {}).items():
            n = rows["real (original crop)"]["conditioning"]["n"]
            cells = [f"{rows[key]['conditioning']['mean']:.3f}" for key, _ in CARD_COLUMNS]
            lines.append(f"| {prefix}{group} | {n} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("metrics", type=Path, help="metrics.json of the period's holdout evaluation")
    metrics = json.loads(p.parse_args().metrics.read_text())
    print("\n".join(method_table(metrics)))
    print()
    print("\n".join(group_table(metrics)))


if __name__ == "__main__":
    main()
