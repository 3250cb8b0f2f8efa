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
    """evaluate's SAR bars (id3pm.evaluation.plots.sar_bars), one group per row."""
    from types import SimpleNamespace

    from id3pm.evaluation.plots import sar_bars

    encoders = sorted({e for r in rows for e in r["sar_type1"]})
    sar = {r["label"]: r["sar_type1"] for r in rows}
    sar_bars(sar, [(e, SimpleNamespace(name=e)) for e in encoders], path, label_chars=60)


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
