"""`id3pm adapt`: fit a map from another FR model's templates into a model's conditioning
space (id3pm.adapter), on prepared photos encoded by both black boxes."""

from __future__ import annotations

import sys
from pathlib import Path

from id3pm.cli.registry import command, flags_of


@command("adapt", "fit an adapter from another FR model's templates into a model's conditioning space")
def cmd_adapt(args):
    import numpy as np

    from id3pm.adapter import fit_adapter
    from id3pm.data.dataset import PreparedDataset
    from id3pm.data.reencode import reencode
    from id3pm.encoders import make_encoder
    from id3pm.files import atomic_write_json
    from id3pm.modeldir import read_info, shipped_path

    model = args.model or shipped_path("base")
    if model is None:
        raise FileNotFoundError("no model given and no shipped model in weights/: pass --model DIR")
    info = read_info(model)
    data = PreparedDataset(args.data)
    check_same_space(data, info, args.data, model)
    idx = training_photos(data, args.limit, args.seed)
    out = Path(args.out)
    if args.templates:  # the new FR model's vectors of the same photos, already computed (`id3pm reencode`)
        x, spec = stored_templates(PreparedDataset(args.templates), data, idx)
    else:
        if not args.encoder:
            raise ValueError("adapt needs --encoder (the new FR model) or --templates (a set it encoded)")
        encoder = make_encoder(args.encoder)
        x, spec = reencode(data, idx, encoder, out / ".encoded", progress=not args.quiet), encoder.spec()
    if spec == dict(info["encoder"]):
        raise ValueError(f"{spec['name']} is the model's own encoder: it needs no adapter")
    ok = np.isfinite(x).all(1)
    if not ok.all():
        print(f"skipped {int((~ok).sum())} of {len(idx)} photos: no {spec['name']} template for them", file=sys.stderr)
    idx, x = idx[ok], x[ok]
    groups = photo_groups(data, idx)
    sizes = [None if s == "all" else int(s) for s in args.sizes.split(",")]
    result = fit_adapter(x, data.vectors(idx), spec, x.shape[1], dict(info["encoder"]), int(info["id_dim"]),
                         groups=groups, kinds=tuple(args.kinds.split(",")), curve_sizes=sizes, seed=args.seed,
                         mlp_steps=args.mlp_steps)
    result.adapter.config.fit.update({"data": str(args.data), "model": str(model),
                                      **({"templates": str(args.templates)} if args.templates else {})})
    result.adapter.save(out)
    atomic_write_json(out / "curve.json", {"curve": result.curve, "scores": result.scores,
                                           "chosen": result.adapter.config.kind, "encoder": spec,
                                           "target": info["encoder"], "photos": int(len(idx))})
    curve_plot(result.curve, out / "curve.png", f"{spec['name']} -> {info['encoder']['name']}")
    print(curve_table(result.curve))
    print(f"chose {result.adapter.config.kind} (held-out cosine {result.scores[result.adapter.config.kind]:.4f}); "
          f"adapter: {out}; curve: {out / 'curve.png'}")
    return 0


def check_same_space(data, info: dict, data_path, model) -> None:
    """The prepared vectors are the adapter's targets: they must be the model's encoder's."""
    have = data.manifest.get("encoder", {}).get("name")
    if have != info["encoder"]["name"] or data.id_dim != int(info["id_dim"]):
        raise ValueError(f"{data_path} holds {have} vectors ({data.id_dim}-d) but {model} is conditioned on "
                         f"{info['encoder']['name']} ({info['id_dim']}-d): prepare the photos with the model's encoder")


def stored_templates(templates, data, idx):
    """(vectors, encoder spec): the templates set's vectors of the photos data[idx], matched by
    key (NaN rows for photos it lacks, e.g. where its encoder found no face)."""
    import numpy as np

    where = {k: i for i, k in enumerate(templates.keys)}
    all_keys = data.keys
    rows = np.array([where.get(all_keys[i], -1) for i in idx])
    if not (rows >= 0).any():
        raise ValueError(f"{templates.path} holds none of the training photos of {data.path}: reencode that set")
    x = np.full((len(idx), templates.id_dim), np.nan, np.float32)
    x[rows >= 0] = templates.vectors(rows[rows >= 0])
    return x, dict(templates.manifest["encoder"])


def training_photos(data, limit: int | None, seed: int):
    """The set's training split (its holdout people stay unseen), at most `limit` of them."""
    import numpy as np

    idx = data.split_indices("train") if "split" in data.table.column_names else np.arange(len(data))
    if limit and limit < len(idx):
        idx = np.sort(np.random.default_rng(seed).permutation(idx)[:limit])
    if len(idx) < 20:
        raise ValueError(f"only {len(idx)} training photos: an adapter needs more")
    return idx


def photo_groups(data, idx):
    """A person per photo where the set knows identities (the held-out photos are other
    people), else each photo its own group."""
    ids = data.identities(idx)
    all_keys = data.keys  # a property that lists every key of the set: read it once
    keys = [all_keys[i] for i in idx]
    return [k if ids is None or ids[j] is None else ids[j] for j, k in enumerate(keys)]


def curve_table(curve: list) -> str:
    kinds = [k for k in curve[0] if k != "photos"]
    lines = ["| photos | " + " | ".join(f"{k} held-out cosine" for k in kinds) + " |",
             "|---:|" + "---:|" * len(kinds)]
    lines += [f"| {row['photos']} | " + " | ".join(f"{row[k]:.4f}" for k in kinds) + " |" for row in curve]
    return "\n".join(lines)


def curve_plot(curve: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for kind in [k for k in curve[0] if k != "photos"]:
        ax.plot([r["photos"] for r in curve], [r[kind] for r in curve], marker="o", label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("photos the adapter was fitted on")
    ax.set_ylabel("held-out cosine in the target space")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@flags_of("adapt")
def _adapt_flags(p):
    p.add_argument("--encoder", help="the new FR model: mobilefacenet, faceres, onnx:path=F.onnx, ... (it encodes the "
                                     "photos' stored crops; or give --templates)")
    p.add_argument("--templates", help="the same photos already encoded by the new FR model (`id3pm reencode DATA "
                                       "OUT --encoder NEW`): their vectors are used, matched by key")
    p.add_argument("--model", help="model folder whose conditioning space to map into (default: the shipped reference model)")
    p.add_argument("--data", required=True, help="prepared photos (`id3pm prepare` with the model's encoder); their training split is used")
    p.add_argument("--out", required=True, help="adapter folder to write")
    p.add_argument("--sizes", default="500,2000,8000,all", help="numbers of photos for the quality curve")
    p.add_argument("--kinds", default="ridge,mlp", help="maps to fit, simplest first; the first within 0.002 of the best held-out cosine is kept")
    p.add_argument("--limit", type=int, help="use at most this many training photos (a seeded sample)")
    p.add_argument("--mlp-steps", type=int, default=2000, help="full-batch AdamW steps of the MLP (early-stopped)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
