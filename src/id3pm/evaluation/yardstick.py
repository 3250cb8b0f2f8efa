"""The identity-disjoint yardstick: how well reconstructions hold on people the model
never saw, the numbers that decide between models and training periods.

UTKFace has no identity labels, so its holdout can show people of the training set; a
model can score there by memory. The yardstick uses only sets whose people are out of
training for sure:

- CelebA test: the identities that `prepare --split-by identity` held out. Type-I SAR on
  its crops, and the paper's verification (first image of each positive pair replaced)
  on pairs dealt from its people (id3pm.evaluation.verification.identity_pairs);
- AAF test: its held-out persons (one photo each): type-I SAR;
- ORL and Yale: never trained on; verification with their pairs files.

Each set is one `id3pm evaluate` run into OUT/<set>/ (its report, sheet and kept rows),
with the nearest-neighbour retrieval row from the training set beside every model, and
every judging encoder (conditioning, independent, mobilefacenet) in the columns.
yardstick.json / yardstick.md gather the numbers that the training log takes as columns.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from id3pm.data import PreparedDataset
from id3pm.evaluation.evaluate import EvalConfig, Evaluation
from id3pm.evaluation.verification import identity_pairs, write_pair_csv
from id3pm.files import atomic_write_bytes, atomic_write_json

FMR = "fmr=0.01"


@dataclass
class YardstickSet:
    name: str
    data: str | None = None  # prepared set whose holdout holds the originals of the type-I rows
    pairs: str | None = None  # verification pairs (CSV, paths relative to pairs_root)
    pairs_root: str | None = None
    diversity: bool = False  # this set also measures diversity (it has several photos per person)


def celeba_set(prepared: str | Path, work: Path, seed: int = 0) -> YardstickSet:
    """CelebA's held-out people: their crops, and pairs dealt from them into WORK/celeba_pairs.csv."""
    data = PreparedDataset(prepared)
    idx = data.split_indices("holdout")
    people = data.metadata("identity", idx)
    work.mkdir(parents=True, exist_ok=True)
    path = work / "celeba_pairs.csv"
    write_pair_csv(identity_pairs([data.keys[i] for i in idx], list(people), folds=10, seed=seed), path)
    return YardstickSet("celeba", data=str(prepared), pairs=str(path), pairs_root=data.manifest["source"],
                        diversity=True)


def yardstick_sets(work: Path, celeba=None, aaf=None, orl=None, yale=None) -> list[YardstickSet]:
    sets = []
    if celeba:
        sets.append(celeba_set(celeba, work))
    if aaf:
        sets.append(YardstickSet("aaf", data=str(aaf)))
    for name, folder in (("orl", orl), ("yale", yale)):
        if folder:
            sets.append(YardstickSet(name, pairs=str(Path(folder) / "pairs.csv"), pairs_root=str(folder)))
    if not sets:
        raise ValueError("the yardstick needs at least one of --celeba, --aaf, --orl, --yale")
    return sets


def run_yardstick(base: EvalConfig, sets: list[YardstickSet]) -> dict:
    """One evaluation per set (base's models, encoders and sampling settings), then the table."""
    out = Path(base.out)
    per_set, failed = {}, {}
    for s in sets:
        # the diversity set also takes the prior-start rows: spread against identity is one question
        cfg = replace(base, out=str(out / s.name), data=s.data, pairs=s.pairs, pairs_root=s.pairs_root,
                      diversity_ids=base.diversity_ids if s.diversity else 0, split="holdout",
                      prior_starts=base.prior_starts if s.diversity else [])
        try:
            per_set[s.name] = Evaluation(cfg).run()
        except (ValueError, OSError) as e:  # one bad set costs its own columns, not the others' (hours of sampling)
            failed[s.name] = str(e)
            print(f"yardstick: set {s.name} not measured: {e}", file=sys.stderr)
    table = {**yardstick_table(per_set), "failed_sets": failed}
    atomic_write_json(out / "yardstick.json", table)
    atomic_write_bytes(out / "yardstick.md", render_yardstick(table).encode())
    return table


def _rate(sar: dict | None) -> float | None:
    return None if not sar or FMR not in sar else sar[FMR]["sar"]


def yardstick_table(per_set: dict[str, dict]) -> dict:
    """{method: {column: value}}: the training log's columns. Columns are SET.MEASURE.ENCODER,
    with measures acc (thresholds on replaced folds, the paper's), acc_real (thresholds on real
    pairs), sar1 / sar2 (type-I / type-II SAR at FMR 1%)."""
    rows: dict[str, dict] = {}
    for set_name, m in per_set.items():
        for method, per_enc in m.get("sar_type1", {}).items():
            for enc, sar in per_enc.items():
                rows.setdefault(method, {})[f"{set_name}.sar1.{enc}"] = _rate(sar)
        for method, per_enc in m.get("verification", {}).get("rows", {}).items():
            # one row per ceiling: the crop at the model's size is the identity section's real row
            method = {"real images": "real photos"}.get(method, method)
            method = "real (original crop)" if method.startswith("real crop at ") else method
            for enc, v in per_enc.items():
                row = rows.setdefault(method, {})
                row[f"{set_name}.acc.{enc}"] = v["mean"]
                row[f"{set_name}.acc_real.{enc}"] = v.get("real_thresholds", v)["mean"]
                if "sar_type2" in v:
                    row[f"{set_name}.sar2.{enc}"] = _rate(v["sar_type2"])
        for method, spread in m.get("diversity", {}).items():
            row = rows.setdefault(method, {})
            row[f"{set_name}.pose_spread_deg"] = spread["pose_deg"]["mean"]
            row[f"{set_name}.one_minus_ms_ssim"] = spread["one_minus_ms_ssim"]["mean"]
            if "one_minus_ms_ssim_grey" in spread:  # evaluations before period 24 lack it
                row[f"{set_name}.one_minus_ms_ssim_grey"] = spread["one_minus_ms_ssim_grey"]["mean"]
    columns = sorted({c for r in rows.values() for c in r})
    return {"fmr": FMR, "columns": columns, "rows": rows}


def render_yardstick(table: dict) -> str:
    cols = table["columns"]
    lines = ["# The identity-disjoint yardstick", "",
             "People the model never saw. acc: verification accuracy with the first image of each positive pair "
             "replaced (thresholds on replaced folds, the paper's); acc_real: thresholds on the real pairs; sar1 / "
             "sar2: type-I / type-II SAR at FMR 1%; conditioning = the model's encoder (dlib), independent = faceres, "
             "further judges by their own names (mobilefacenet). Ceilings: `real (original "
             "crop)` is the original's canonical crop at the model's size (a perfect reconstruction at that "
             "resolution), `real photos` the photos themselves.", ""]
    for group in sorted({c.split(".")[0] for c in cols}):
        mine = [c for c in cols if c.startswith(group + ".")]
        lines += [f"## {group}", "", "| method | " + " | ".join(c.split(".", 1)[1] for c in mine) + " |",
                  "|---|" + "---|" * len(mine)]
        for method, row in table["rows"].items():
            if any(c in row for c in mine):
                cells = ["-" if row.get(c) is None else (f"{row[c]:.2f}" if "spread_deg" in c else f"{100 * row[c]:.1f}"
                                                         if "ms_ssim" not in c else f"{row[c]:.3f}") for c in mine]
                lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Not measured: {name}: {why}" for name, why in table.get("failed_sets", {}).items()]
    return "\n".join(lines)
