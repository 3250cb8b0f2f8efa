"""End of a working period: measure the CPU run's EMA model on the holdout, ship it as
fp16 safetensors into weights/, and append its row to the training log.

    python scripts/ship_reference.py --run ~/.cache/id3pm/runs/reference32p \
        --data ~/.cache/id3pm/data/utk --limit 200

- The evaluation (identity distance and type-I SAR under dlib AND faceres, against
  nearest-neighbour retrieval, random training images and the real crops) goes to
  --eval-out, OUTSIDE the repository: its contact sheet shows UTKFace faces, whose
  terms forbid redistribution.
- The shipped id3pm.json records the measured thresholds at FMR 1% and 0.1% (from the
  holdout's real impostor pairs), so that the demo can give a verdict per face.
- One row per period goes to the "Training log" table of docs/results.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
from pathlib import Path

import torch

from id3pm.evaluation import EvalConfig, Evaluation
from id3pm.evaluation.paired import compare_evaluations, comparison_table
from id3pm.hardware import cpu_description
from id3pm.modeldir import load_model_dir, read_info, save_model_dir
from id3pm.prior import prior_folder

ROOT = Path(__file__).resolve().parents[1]
LOG_HEADER = "## Training log of the reference model"
# evaluation rows logged next to the model's
BASELINE_ROWS = ["regression decoder", "nearest neighbour", "random training image"]
# the training log's columns: the model at the default guidance (the bar's setting; other
# scales are in the report only), then the baselines ('-' where one was not run)
LOG_ROWS = ["model s=2", *BASELINE_ROWS]
COMPARED_ROWS = ["model s=1", "model s=2", "model s=4"]  # paired against the previous period


def evaluate(model: Path, data: str, out: Path, limit: int, guidance: list[float], baselines: list[str]) -> dict:
    baselines = list(baselines)
    if prior_folder(model).exists():  # the regression decoder g(y) that the model refines, as a row of its own
        baselines.append(f"regression={prior_folder(model)}")
    cfg = EvalConfig(out=str(out), models=[f"model={model}"], data=data, limit=limit, guidance=guidance,
                     baselines=baselines, diversity_ids=5, diversity_samples=5)
    return Evaluation(cfg).run()


def thresholds(metrics: dict, encoders: dict) -> dict:
    """{encoder name: {"fmr=0.01": d, "fmr=0.001": d}} from the type-I SAR tables."""
    first = next(iter(metrics["sar_type1"].values()))
    # further judges (mobilefacenet) are measured too, but the demo's verdicts use these two
    return {encoders[enc]: {fmr: row["threshold"] for fmr, row in table.items()}
            for enc, table in first.items() if enc in encoders}


def ship(run: Path, weights: Path, extra: dict) -> None:
    model, info = load_model_dir(run / "model")  # the EMA weights, as exported by the run
    tmp = weights.with_name(weights.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, model, {**info, **extra}, max_shard_size="15MB", dtype=torch.float16)
    if info.get("prior"):  # the regression decoder g(y) the model was trained with (id3pm.prior)
        prior, prior_info = load_model_dir(prior_folder(run / "model"))
        save_model_dir(prior_folder(tmp), prior, prior_info, max_shard_size="15MB", dtype=torch.float16)
    shutil.rmtree(weights, ignore_errors=True)
    tmp.rename(weights)


def previous_evaluation(root: Path, current: Path, limit: int) -> Path | None:
    """The newest earlier evaluation of the shipped model's rows on a holdout sample of the
    same size (the sample is fixed by its size), for a paired comparison with this one."""
    found = []
    for folder in root.iterdir() if root.is_dir() else []:
        if folder.resolve() == current.resolve() or not (folder / "distances.npz").exists():
            continue
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if metrics.get("config", {}).get("limit") == limit and "model s=2" in metrics.get("sar_type1", {}):
            found.append(((folder / "metrics.json").stat().st_mtime, folder))
    return max(found)[1] if found else None


def print_comparison(before: Path | None, after: Path) -> None:
    """Paired against the previous period (src/id3pm/evaluation/paired.py): it only informs,
    so a failure says why and the shipping goes on."""
    if before is None:
        print("no earlier evaluation of this holdout sample to compare with")
        return
    try:
        print(f"paired against {before}:\n{comparison_table(compare_evaluations(before, after, COMPARED_ROWS))}")
    except (ValueError, OSError, KeyError) as err:
        print(f"no paired comparison with {before}: {err}")


def log_row(metrics: dict, info: dict, limit: int) -> str:
    t = info["training"]
    sar = metrics["sar_type1"]
    ident = metrics["identity"]

    def cell(name: str) -> str:
        if name not in ident:
            return "-"
        d = ident[name]
        s = sar[name]
        parts = []
        for enc in ("conditioning", "independent"):
            if enc in d:
                parts.append(f"{d[enc]['mean']:.3f} / {100 * s[enc]['fmr=0.01']['sar']:.1f}%")
        return " · ".join(parts)

    date = datetime.date.today().isoformat()
    cells = " | ".join(cell(m) for m in LOG_ROWS)
    # the whole lineage (warm starts) and the regression prior's training count too
    images, steps = t.get("total_images_seen", t["images_seen"]), t.get("total_steps", t["steps"])
    hours = (t.get("total_train_seconds", t["train_seconds"]) + t.get("prior_train_seconds", 0.0)) / 3600
    return (f"| {date} | {images:,} | {steps:,} | {hours:.2f} | {t['device']} | "
            f"{t['last_loss']:.4f} | {limit} | {cells} |")


def append_log(row: str) -> None:
    path = ROOT / "docs" / "results.md"
    text = path.read_text()
    if LOG_HEADER not in text:
        head = ("| date | images seen | steps | CPU hours | device | loss | holdout ids | "
                + " | ".join(f"{c}: dlib dist / SAR@1% · faceres dist / SAR@1%" for c in LOG_ROWS) + " |")
        text = text.rstrip() + (f"\n\n{LOG_HEADER}\n\nOne row per working period (scripts/ship_reference.py); "
                                "the run continues from period to period. Identity distance to the original "
                                "(mean) and type-I SAR at FMR 1% under the conditioning encoder (dlib) and the "
                                "independent one (faceres), on a fixed random sample of the holdout "
                                "(`PreparedDataset.sample_indices`).\n\n" + head + "\n|" + "---|" * head.count(" | ") + "---|\n")
    path.write_text(insert_row(text, row))


def insert_row(text: str, row: str) -> str:
    """The row goes right under the last row of the log's table, above the notes that
    follow it."""
    lines = text.rstrip("\n").split("\n")
    start = lines.index(LOG_HEADER)
    table = [i for i in range(start, len(lines)) if lines[i].startswith("|")]
    end = table[0]
    while end + 1 < len(lines) and lines[end + 1].startswith("|"):
        end += 1
    return "\n".join(lines[: end + 1] + [row] + lines[end + 1 :]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="the training run whose export (RUN/model) ships")
    p.add_argument("--data", required=True)
    p.add_argument("--limit", type=int, default=200, help="holdout identities")
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0], help="scales to evaluate (2 is logged)")
    p.add_argument("--baselines", default="nn,random,real",
                   help="comma-separated baselines; 'real' alone for a holdout-only prepared set (no training "
                        "images to retrieve from)")
    p.add_argument("--eval-out", type=Path, default=Path.home() / ".cache" / "id3pm" / "eval")
    p.add_argument("--weights", type=Path, default=ROOT / "weights" / "id3pm-utkface-32")
    p.add_argument("--no-log", action="store_true", help="measure and ship, but add no training-log row")
    p.add_argument("--measure", type=Path, help="measure this model folder (e.g. the shipped one) and log its "
                   "row; ship nothing")
    args = p.parse_args()
    if (args.run is None) == (args.measure is None):
        p.error("give --run (measure and ship its export) or --measure (measure a model folder only)")

    out = args.eval_out / datetime.datetime.now().strftime("%Y%m%d-%H%M")
    model = args.measure or args.run / "model"
    before = previous_evaluation(args.eval_out, out, args.limit)
    metrics = evaluate(model, args.data, out, args.limit, args.guidance, [b for b in args.baselines.split(",") if b])
    info = read_info(model)
    names = {"conditioning": info["encoder"]["name"], "independent": "faceres"}
    summary = {name: {enc: {"identity_mean": metrics["identity"][name][enc]["mean"],
                            "sar_fmr_0.01": metrics["sar_type1"][name][enc]["fmr=0.01"]["sar"]}
                      for enc in metrics["identity"][name]}
               for name in metrics["sar_type1"]}
    extra = {"thresholds": thresholds(metrics, names),
             "holdout_evaluation": {"identities": args.limit, "guidance": args.guidance, "cpu": cpu_description(),
                                    "rows": summary}}
    if not args.measure:
        ship(args.run, args.weights, extra)
    row = log_row(metrics, info, args.limit)
    if not args.no_log:
        append_log(row)
    print((out / "report.md").read_text())
    print(row)
    print(json.dumps(extra["thresholds"]))
    print_comparison(before, out)
    print(f"{'measured' if args.measure else 'shipped'} {model}; evaluation in {out}")


if __name__ == "__main__":
    main()
