"""Held-out denoising errors of base models on the same images, timesteps and noise
(src/id3pm/evaluation/denoising.py): the validation loss, with y and with y dropped.

    python scripts/denoising_errors.py --data ~/.cache/id3pm/data/celeba --split holdout train \
        --model shipped=weights/id3pm-utkface-32 --model nodrop=~/.cache/id3pm/pilots/nodrop/model \
        --limit 512 --out ~/.cache/id3pm/eval/p25/denoising

Prints a markdown table per split: error knowing y, error with y dropped, the identity gain
(their difference), and each model's change against the first one, paired image by image
with its 95% interval. Writes denoising.json (summaries and changes), denoising.npz (the
per-image errors) and denoising.png (error and identity gain against t); with --curve also
denoising_curve.png, the first split's errors against the images each model's lineage saw.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from id3pm.data.dataset import PreparedDataset
from id3pm.evaluation.denoising import DEFAULT_TIMESTEPS, denoising_errors
from id3pm.evaluation.paired import paired_change
from id3pm.pipeline import ID3PMPipeline


def named(spec: str) -> tuple[str, str]:
    name, _, path = spec.rpartition("=")
    return (name or Path(path).name), path


def split_images(data: PreparedDataset, split: str, size: int, limit: int, seed: int):
    idx = data.sample_indices(split, limit, seed)
    if len(idx) == 0:
        raise SystemExit(f"denoising_errors: {data.path}: no images in split {split!r}")
    sizes = data.manifest["sizes"]
    if size not in sizes:
        raise SystemExit(f"denoising_errors: {data.path} has no {size} px images (it has {sizes})")
    return data.images(size, idx), data.vectors(idx)


def table(split: str, names: list[str], results: dict) -> str:
    first = results[names[0]]
    lines = [f"### {split} ({len(first.cond)} images)", "",
             f"| model | error, y known | error, y dropped | identity gain | change of error vs {names[0]} "
             f"| change of gain vs {names[0]} |", "|---|---|---|---|---|---|"]
    for name in names:
        r = results[name]
        change = gain = ""
        if name != names[0]:
            change = "{:+.5f} [{:+.5f}, {:+.5f}]".format(*paired_change(first.cond, r.cond))
            gain = "{:+.5f} [{:+.5f}, {:+.5f}]".format(*paired_change(first.identity_gain, r.identity_gain))
        lines.append(f"| {name} | {r.cond.mean():.5f} | {r.null.mean():.5f} | {r.identity_gain.mean():.5f} "
                     f"| {change} | {gain} |")
    return "\n".join(lines)


def plot(path: Path, report: dict) -> None:
    """Error (y known) and identity gain against t, per split and model, from the summaries
    of denoising.json (so that a figure can be redrawn from the JSON alone)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (split, summaries), style in zip(report.items(), ("-", "--", ":")):
        for k, (name, r) in enumerate(summaries.items()):
            colour = plt.cm.viridis(k / max(1, len(summaries) - 1))  # distinct for any number of models
            gain = np.subtract(r["error_null_by_t"], r["error_cond_by_t"])
            axes[0].plot(r["timesteps"], r["error_cond_by_t"], style, color=colour, label=f"{name} ({split})")
            axes[1].plot(r["timesteps"], gain, style, color=colour, label=f"{name} ({split})")
    axes[0].set(xlabel="t (of 1000)", ylabel="eps MSE, y known", yscale="log", title="denoising error")
    axes[1].set(xlabel="t (of 1000)", ylabel="error with y dropped - with y", title="identity gain")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def images_seen(folder: str) -> int | None:
    """Images a model's whole lineage trained on (its id3pm.json; warm starts included)."""
    from id3pm.modeldir import read_info

    training = read_info(folder).get("training", {})
    return training.get("total_images_seen", training.get("images_seen"))


def plot_curve(path: Path, models: dict, summaries: dict) -> list[dict]:
    """The learning curve of the held-out error: each model's error (y known) and identity
    gain against the images its lineage saw. Returns the points, for the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [{"model": name, "images_seen": images_seen(folder), "error_cond": summaries[name]["error_cond"],
               "identity_gain": summaries[name]["identity_gain"]} for name, folder in models.items()]
    points = [p for p in points if p["images_seen"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "error_cond", "eps MSE, y known"), (axes[1], "identity_gain", "identity gain")):
        ax.plot([p["images_seen"] / 1e6 for p in points], [p[key] for p in points], "o-")
        for p in points:
            ax.annotate(p["model"], (p["images_seen"] / 1e6, p[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="images seen by the lineage (millions)", ylabel=label)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return points


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path, help="prepared data set (id3pm prepare)")
    p.add_argument("--split", nargs="+", default=["holdout"], help="splits to score (holdout, train)")
    p.add_argument("--model", action="append", required=True, help="NAME=FOLDER, repeatable; the first is the baseline")
    p.add_argument("--limit", type=int, default=512, help="seeded images per split")
    p.add_argument("--timesteps", type=int, nargs="+", default=list(DEFAULT_TIMESTEPS))
    p.add_argument("--seed", type=int, default=0, help="picks the images and draws the noise")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--curve", action="store_true",
                   help="also denoising_curve.png: the first split's errors against each model's images seen")
    args = p.parse_args(argv)
    data = PreparedDataset(args.data)
    models = dict(named(s) for s in args.model)
    pipes = {name: ID3PMPipeline.from_pretrained(path, device="cpu", upscale=None) for name, path in models.items()}
    sizes = {pipe.image_size for pipe in pipes.values()}
    if len(sizes) != 1:
        raise SystemExit(f"denoising_errors: the models differ in image size {sorted(sizes)}: nothing pairs up")
    size = sizes.pop()
    args.out.mkdir(parents=True, exist_ok=True)
    report, arrays = {}, {}
    for split in args.split:
        images, vectors = split_images(data, split, size, args.limit, args.seed)
        results = {}
        for name, pipe in pipes.items():
            t0 = time.time()
            results[name] = denoising_errors(pipe, images, vectors, args.timesteps, args.seed)
            print(f"{split}: {name} in {time.time() - t0:.0f} s", flush=True)
            arrays[f"{split}/{name}/cond"], arrays[f"{split}/{name}/null"] = results[name].cond, results[name].null
        print(table(split, list(models), results) + "\n", flush=True)
        first = results[next(iter(models))]
        report[split] = {name: {**r.summary(),
                                "error_change": paired_change(first.cond, r.cond),
                                "identity_gain_change": paired_change(first.identity_gain, r.identity_gain)}
                         for name, r in results.items()}
    curve = plot_curve(args.out / "denoising_curve.png", models, report[args.split[0]]) if args.curve else None
    (args.out / "denoising.json").write_text(json.dumps({"models": models, "data": str(args.data), "limit": args.limit,
                                                         "seed": args.seed, "splits": report, "curve": curve}, indent=1))
    np.savez(args.out / "denoising.npz", **arrays)
    plot(args.out / "denoising.png", report)
    print(f"wrote {args.out}/denoising.json, .npz, .png")


if __name__ == "__main__":
    main()
