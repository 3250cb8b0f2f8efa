"""report.md of `id3pm evaluate`: the metrics dict rendered as Markdown tables."""

from __future__ import annotations

from id3pm.evaluation.paired import accuracy_change_text


def _fmt(s: dict | None, key: str = "mean") -> str:
    if not s or s.get(key) is None:
        return "-"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if key == "mean" else f"{s[key]:.3f}"


def _sar(table: dict | None, key: str) -> str:
    if not table or key not in table:
        return "-"
    r = table[key]
    return f"{100 * r['sar']:.1f}% [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"


def _sar_rows(per_method: dict, enc_names: list[str]) -> list[str]:
    """A SAR table: {method: {encoder: sar_table}} -> header, rule and one line per method."""
    lines = ["| method | " + " | ".join(f"{n} SAR @FMR 1% | {n} SAR @FMR 0.1%" for n in enc_names) + " |",
             "|---|" + "---|---|" * len(enc_names)]
    for name, per in per_method.items():
        cells = [f"{_sar(per.get(n), 'fmr=0.01')} | {_sar(per.get(n), 'fmr=0.001')}" for n in enc_names]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _paired_accuracy_cell(p: dict) -> str:
    return (f"{100 * p['accuracy_before']:.2f} -> {100 * p['accuracy_after']:.2f}, "
            f"{accuracy_change_text(p)}, p {p['mcnemar_p']:.2g}")


def render_report(m: dict, encoders) -> str:
    lines = ["# id3pm evaluation", ""]
    enc_names = [n for n, _ in encoders]
    desc = ", ".join(f"{n}: `{e.name}` ({e.distance} distance)" for n, e in encoders)
    lines += [f"Encoders: {desc}.", ""]
    if "identity" in m:
        lines += ["## Identity distance to the original (lower is better)", "",
                  "| method | " + " | ".join(f"{n} mean ± std | {n} median" for n in enc_names) + " |",
                  "|---|" + "---|---|" * len(enc_names)]
        for name, entry in m["identity"].items():
            cells = [f"{_fmt(entry.get(n))} | {_fmt(entry.get(n), 'median')}" for n in enc_names]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "![identity distance densities](identity_distance.png)", ""]
    if m.get("sar_type1"):
        lines += ["## Success attack rate, type-I (reconstruction vs the inverted image; threshold at the FMR "
                  "of real impostor pairs; 95% Wilson CI)", "",
                  *_sar_rows(m["sar_type1"], enc_names), "", "![type-I SAR per method and encoder](sar.png)", ""]
    if m.get("verification"):
        v = m["verification"]
        lines += [f"## Verification accuracy ({v['pairs']} pairs, 10-fold; first image of each positive pair "
                  "replaced by its reconstruction)", "",
                  "Thresholds chosen on the other nine folds: of the replaced pairs (the paper's way, which lets the "
                  "system adapt to the attack) and of the real pairs (the system's own threshold, stricter).", "",
                  "| method | " + " | ".join(f"{n} accuracy | {n} accuracy, real-pair thresholds | {n} AUC"
                                             for n in enc_names) + " |",
                  "|---|" + "---|---|---|" * len(enc_names)]
        for name, row in v["rows"].items():
            real = {n: row[n].get("real_thresholds", row[n]) for n in enc_names}  # the real row: the same
            cells = [f"{row[n]['mean']:.3f} ± {row[n]['std']:.3f} | {real[n]['mean']:.3f} ± {real[n]['std']:.3f} | "
                     f"{row[n]['auc']:.3f}" for n in enc_names]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "Type-II SAR (reconstruction of the first image vs the second image of each positive pair; "
                  "threshold at the FMR of the real negative pairs):", "",
                  *_sar_rows({name: {n: row[n]["sar_type2"] for n in enc_names}
                              for name, row in v["rows"].items() if "sar_type2" in row[enc_names[0]]}, enc_names), ""]
        if v.get("upscaled_paired"):
            lines += ["Upscaled rows against the rows they enlarge, pair by pair at the real pairs' thresholds "
                      "(accuracy before -> after, change [95% CI], McNemar p on the pairs only one gets right):", "",
                      "| row | " + " | ".join(enc_names) + " |", "|---|" + "---|" * len(enc_names)]
            for name, paired in v["upscaled_paired"].items():
                cells = [_paired_accuracy_cell(paired[n]) for n in enc_names]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
            lines.append("")
    if m.get("diversity"):
        lines += ["## Diversity among samples of one identity (higher is more diverse)", "",
                  "| method | pose (deg) | expression | emotion (TV) | 1 - MS-SSIM | 1 - MS-SSIM, grey | LPIPS | identity spread |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, d in m["diversity"].items():
            lines.append(f"| {name} | {_fmt(d.get('pose_deg'))} | {_fmt(d.get('expression'))} | {_fmt(d.get('emotion'))} | "
                         f"{_fmt(d.get('one_minus_ms_ssim'))} | {_fmt(d.get('one_minus_ms_ssim_grey'))} | {_fmt(d.get('lpips'))} | {_fmt(d.get('identity_spread'))} |")
        lines.append("")
    if m.get("fid"):
        lines += ["## FID, KID and precision / recall against the original crops", "",
                  "| method | FID | KID x 1000 (± std over subsets) | precision | recall |", "|---|---|---|---|---|"]
        for name, f in m["fid"].items():
            kid = f"{1000 * f['kid']:.2f} ± {1000 * f['kid_std']:.2f}" if "kid" in f else "-"
            lines.append(f"| {name} | {f['fid']:.2f} | {kid} | {f['precision']:.3f} | {f['recall']:.3f} |")
        lines += ["", "(FID on a few hundred images is biased upwards; KID is not; compare rows, not papers.)", ""]
    if m.get("breakdown"):
        lines += ["## Identity distance by group (conditioning encoder, mean)", ""]
        for col, groups in m["breakdown"].items():
            methods = list(next(iter(groups.values())))
            lines += [f"### {col}", "", "| group | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
            for g, per in groups.items():
                lines.append(f"| {g} (n={per[methods[0]]['conditioning']['n']}) | "
                             + " | ".join(_fmt(per[mm]["conditioning"]) for mm in methods) + " |")
            lines.append("")
    t = m.get("timing", {})
    lines += ["## Timing", "", *(f"- {k}: {v:.1f}" for k, v in t.items()), ""]
    return "\n".join(lines)


def render_attack_report(m: dict) -> str:
    """attack.md: type-I SAR of every method under both encoders, with what it cost."""
    per_method = m["sar_type1"]
    enc_names = list(next(iter(per_method.values())))
    head = _sar_rows(per_method, enc_names)
    lines = ["# Attack report", "",
             "Type-I success attack rate: the share of reconstructions that the FR system accepts as the person "
             "whose template was inverted, at the thresholds where real impostor pairs of the same data reach a "
             "false-match rate of 1% and 0.1% (95% Wilson CI). Queries: black-box calls per identity at inversion "
             "time, spent on the conditioning encoder only; the independent encoder is never queried, so its "
             "columns show how much of a gain transfers.", "",
             head[0][:-1] + "| queries / identity | seconds / identity |", head[1] + "---|---|"]
    cost = m.get("cost", {})
    for name, line in zip(per_method, head[2:]):
        c = cost.get(name, {})
        lines.append(f"{line[:-1]}| {c.get('queries_per_identity', 0):g} | {c.get('seconds_per_identity', 0):.2f} |")
    lines += ["", "![SAR against queries](attack.png)", ""]
    if m.get("protection"):
        lines += render_protection_rows(m["protection"], enc_names)
    return "\n".join(lines)


def render_protection_rows(rows: dict, enc_names: list[str]) -> list[str]:
    """The protected-template rows: the conditioning columns are the PROTECTED system's."""
    head = _sar_rows({name: row["sar_type1"] for name, row in rows.items()}, enc_names)
    lines = ["## Protected templates", "",
             "The system stores t(f(x)) (id3pm.encoders.protected). Unaware: the attacker feeds the template to a "
             "method built on plain vectors. Aware: it knows t and uses a model trained on protected vectors, or "
             "retrieval over a pool it protected itself. The conditioning columns are judged by the protected "
             "system at the thresholds of its own impostor pairs; the independent encoder is unprotected.", "",
             head[0][:-1] + "| seconds / identity |", head[1] + "---|"]
    for row, line in zip(rows.values(), head[2:]):
        lines.append(f"{line[:-1]}| {row['seconds_per_identity']:.2f} |")
    return lines + [""]
