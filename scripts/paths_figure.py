"""One figure for rows of several evaluations of the same originals: type-I SAR at FMR 1%
and 0.1% under every FR model that judged them (#25's table: which path inverts a new FR
model's templates, at what cost). Each row is LABEL|EVAL_FOLDER|ROW:

    python scripts/paths_figure.py --out docs/inversion_paths.png \\
        "adapter (1 CPU-min)|$E/mfn-adapter|shipped s=2" \\
        "fine-tuned (2 CPU-h)|$E/mfn-finetune|mfn s=2" \\
        "retrieval|$E/mfn-adapter|nearest neighbour" "real crop|$E/mfn-adapter|real (original crop)"

The encoders are named, not given by role: "conditioning" is the evaluated data set's
encoder, which differs between evaluations (an adapter's rows are judged by the templates'
FR model). Bars carry 95% Wilson intervals; the JSON beside the figure holds the numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

FMRS = ("fmr=0.01", "fmr=0.001")


def encoder_names(metrics: dict) -> dict[str, str]:
    """Role in metrics.json ("conditioning", "independent", a judge's name) -> encoder name."""
    cfg = metrics["config"]
    manifest = json.loads((Path(cfg["data"]) / "manifest.json").read_text())
    names = {"conditioning": manifest["encoder"]["name"]}
    if cfg.get("independent"):
        names["independent"] = cfg["independent"].split(":")[0]
    names.update({j: j.split(":")[0] for j in cfg.get("judges", [])})
    return names


def collect(specs: list[str]) -> list[dict]:
    """[{label, encoder: {fmr: {sar, ci95, n}}}] in the order given."""
    out = []
    for spec in specs:
        label, folder, row = spec.split("|")
        metrics = json.loads((Path(folder) / "metrics.json").read_text())
        if row not in metrics["sar_type1"]:
            raise SystemExit(f"{folder}: no row {row!r} (rows: {', '.join(metrics['sar_type1'])})")
        names = encoder_names(metrics)
        per_role = metrics["sar_type1"][row]
        sar = {names.get(role, role): {f: {k: per_role[role][f][k] for k in ("sar", "ci95", "n")} for f in FMRS}
               for role in per_role}
        out.append({"label": label, "folder": folder, "row": row, "sar_type1": sar})
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    encoders = sorted({e for r in rows for e in r["sar_type1"]})
    fig, axes = plt.subplots(1, len(FMRS), figsize=(5.5 * len(FMRS), 3.8), sharey=True)
    width = 0.8 / len(rows)
    for ax, fmr in zip(axes, FMRS):
        x = np.arange(len(encoders))
        for k, r in enumerate(rows):
            cells = [r["sar_type1"].get(e, {}).get(fmr) for e in encoders]
            sar = np.array([100 * c["sar"] if c else np.nan for c in cells])
            err = np.array([[100 * (c["sar"] - c["ci95"][0]), 100 * (c["ci95"][1] - c["sar"])] if c else [0, 0]
                            for c in cells]).T
            ax.bar(x + (k - (len(rows) - 1) / 2) * width, sar, width, yerr=err, capsize=2, label=r["label"])
        ax.set_xticks(x, encoders)
        ax.set_title(f"type-I SAR at FMR {float(fmr.split('=')[1]):.1%}")
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("% of originals matched")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(rows), 3), fontsize=8)
    fig.tight_layout(rect=(0, 0.055 * ((len(rows) + 2) // 3 + 1), 1, 1))
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rows", nargs="+", help="LABEL|EVAL_FOLDER|ROW")
    p.add_argument("--out", type=Path, required=True, help="figure (.png); the numbers go beside it (.json)")
    args = p.parse_args()
    rows = collect(args.rows)
    plot(rows, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
