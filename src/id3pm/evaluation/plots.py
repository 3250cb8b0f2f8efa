"""Pictures of `id3pm evaluate`: identity-distance densities and the reconstruction sheet."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from id3pm.images import contact_sheet, save_png


def identity_density_plot(identity_raw: dict, encoders: list, path: Path) -> None:
    """Identity-distance densities per method, one panel per encoder (paper Fig. 4).
    identity_raw: {method: {encoder name: distances}}; encoders: [(name, Encoder)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import gaussian_kde

    fig, axes = plt.subplots(1, len(encoders), figsize=(6 * len(encoders), 4), squeeze=False)
    for ax, (enc_name, enc) in zip(axes[0], encoders):
        for name, entry in identity_raw.items():
            d = entry[enc_name]
            d = d[np.isfinite(d)]
            if len(d) > 2 and d.std() > 0:
                xs = np.linspace(d.min() - d.std(), d.max() + d.std(), 200)
                ax.plot(xs, gaussian_kde(d)(xs), label=name)
        ax.set_title(f"{enc_name} encoder ({enc.name}, {enc.distance})")
        ax.set_xlabel("identity distance to the original")
        ax.set_ylabel("density")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reconstruction_sheet(recons: dict, path: Path, n: int = 8) -> None:
    """Rows: the first n originals; columns: the original and each method's reconstruction."""
    names = list(recons)
    rows = [[recons[name][i] for name in names] for i in range(min(n, len(recons[names[0]])))]
    save_png(contact_sheet(rows, col_labels=[nm[:18] for nm in names], cell=96), path,
             {"what": "originals and reconstructions"})


def attack_plot(metrics: dict, path: Path) -> None:
    """SAR against black-box queries per identity, one panel per FMR (1% and 0.1%: a
    strong model saturates the queried encoder at 1%), one line per search and encoder;
    the model without queries sits at 1 (best-of-1 is the plain sample)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fmrs = [("fmr=0.01", "1%"), ("fmr=0.001", "0.1%")]
    fig, axes = plt.subplots(1, len(fmrs), figsize=(11, 4), sharey=True)
    for ax, (fmr, label) in zip(axes, fmrs):
        _attack_panel(ax, metrics["sar_type1"], fmr)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("black-box queries per identity (1 = no queries)")
        ax.set_ylabel(f"type-I SAR at FMR {label} (%)")
        ax.set_title(f"FMR {label} (grey: retrieval / random baselines)", fontsize=10)
    axes[0].legend(fontsize=7)
    fig.suptitle("SAR against queries (solid: the queried encoder; dashed: the independent one, never queried)",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _attack_panel(ax, sar: dict, fmr: str) -> None:
    lines: dict[tuple[str, str], dict[float, float]] = {}
    for name, per in sar.items():
        head, sep, n = name.rpartition(" N=")  # "model s=2 renoise N=16"
        if not sep:
            continue
        base, _, search = head.rpartition(" ")
        for enc, table in per.items():
            points = lines.setdefault((search, enc), {})
            points[float(n)] = 100 * table[fmr]["sar"]
            if base in sar:  # the same model without queries
                points.setdefault(1.0, 100 * sar[base][enc][fmr]["sar"])
    for (search, enc), points in sorted(lines.items()):
        if points:
            xs, ys = zip(*sorted(points.items()))
            ax.plot(xs, ys, marker="o", linestyle="-" if enc == "conditioning" else "--", label=f"{search}, {enc}")
    for name in sar:  # the non-generative rows as horizontal references
        if name.startswith(("nearest", "random")):
            for enc, table in sar[name].items():
                ax.axhline(100 * table[fmr]["sar"], color="grey", linestyle=":" if enc == "conditioning" else "-.",
                           linewidth=0.8)


def sar_bars(sar: dict, encoders: list, path: Path, label_chars: int = 22) -> None:
    """Type-I SAR of every method under every judging encoder, one panel per FMR (1% and
    0.1%), bars with their 95% Wilson intervals. sar: {method: {encoder: sar_table}};
    method names are cut to label_chars on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(sar)
    enc_names = [n for n, _ in encoders if all(n in sar[m] for m in names)]
    width = 0.8 / max(1, len(enc_names))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names) + 2), 4), sharey=True)
    for ax, (fmr, label) in zip(axes, [("fmr=0.01", "1%"), ("fmr=0.001", "0.1%")]):
        for k, (enc, e) in enumerate((n, e) for n, e in encoders if n in enc_names):
            rows = [sar[m][enc][fmr] for m in names]
            x = np.arange(len(names)) + (k - (len(enc_names) - 1) / 2) * width
            ys = np.array([100 * r["sar"] for r in rows])
            err = np.array([[100 * (r["sar"] - r["ci95"][0]) for r in rows], [100 * (r["ci95"][1] - r["sar"]) for r in rows]])
            ax.bar(x, ys, width, yerr=err, capsize=2, label=f"{enc} ({e.name})")
        ax.set_xticks(np.arange(len(names)), [n[:label_chars] for n in names], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"type-I SAR at FMR {label}", fontsize=10)
        ax.set_ylim(0, 105)
    axes[0].set_ylabel("accepted as the person (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
