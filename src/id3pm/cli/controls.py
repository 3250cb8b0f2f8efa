"""`id3pm sweep`, `interpolate`, `directions` and `edit`: the controls of ID3PM Sec. 4.3."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from id3pm.cli.common import add_generation_flags, caption, gen_kwargs, identity_vector, load_pipeline
from id3pm.cli.registry import command, flags_of


@command("sweep", "guidance-scale sweep: rows seeds, columns scales (paper Fig. 5)")
def cmd_sweep(args):
    from id3pm.images import contact_sheet, save_png

    pipe = load_pipeline(args)
    v = identity_vector(pipe, args.image, args.aligned)
    kw = gen_kwargs(args)
    kw.pop("guidance_scale")
    images, dist = pipe.sweep(v, args.guidance, num_seeds=args.seeds, seed=args.seed, **kw)
    out = Path(args.out)
    seeds = [args.seed + i for i in range(args.seeds)]
    sheet = contact_sheet([list(row) for row in images], row_labels=[f"seed {s}" for s in seeds],
                          col_labels=[f"s = {g:g}" for g in args.guidance],
                          captions=[[caption(d) for d in row] for row in dist], cell=128)
    save_png(sheet, out / "sweep.png", {"command": "sweep", "guidance": args.guidance, "seeds": seeds})
    from id3pm.files import atomic_write_json

    atomic_write_json(out / "sweep.json", {"input": args.image, "guidance": args.guidance, "seeds": seeds,
                                           "identity_distance": dist.tolist(), "distance": pipe.info.get("distance")})
    if np.isfinite(dist).any():
        means = [np.nanmean(col) if np.isfinite(col).any() else float("nan") for col in dist.T]
        print("mean identity distance per guidance scale: " + ", ".join(f"{g:g}: {m:.3f}" for g, m in zip(args.guidance, means)))
    print(f"grid: {out / 'sweep.png'}")
    return 0


@flags_of("sweep")
def _sweep_flags(p):
    p.add_argument("image", help="face photo or vector file (.npy/.json)")
    p.add_argument("--seeds", type=int, default=4, help="rows")
    p.add_argument("--aligned", action="store_true")
    add_generation_flags(p)
    for a in p._actions:
        if a.dest == "guidance":
            a.nargs, a.default, a.help = "+", [1.0, 1.5, 2.0, 2.5, 3.0], "columns: guidance scales"


@command("interpolate", "a smooth walk from identity A to identity B with a fixed seed")
def cmd_interpolate(args):
    import imageio.v2 as imageio

    from id3pm.files import atomic_write_json
    from id3pm.images import contact_sheet, save_png

    pipe = load_pipeline(args)
    a, b = identity_vector(pipe, args.a, args.aligned), identity_vector(pipe, args.b, args.aligned)
    images, vectors, da, db = pipe.interpolate(a, b, frames=args.frames, seed=args.seed, **gen_kwargs(args))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet([list(images)], col_labels=[f"t={t:.2f}" for t in np.linspace(0, 1, args.frames)],
                          captions=[[f"A {x:.2f} B {y:.2f}" for x, y in zip(da, db)]], cell=128)
    save_png(sheet, out / "interpolation.png", {"command": "interpolate", "seed": args.seed})
    frames = list(images) + list(images[::-1])  # there and back
    imageio.mimsave(out / "interpolation.gif", frames, duration=0.15, loop=0)
    atomic_write_json(out / "interpolation.json", {"a": args.a, "b": args.b, "seed": args.seed,
                                                   "distance_to_a": da.tolist(), "distance_to_b": db.tolist(),
                                                   "synthetic": True})
    print("distance to A: " + " ".join(f"{x:.3f}" for x in da))
    print("distance to B: " + " ".join(f"{x:.3f}" for x in db))
    print(f"strip: {out / 'interpolation.png'}, animation: {out / 'interpolation.gif'}")
    return 0


@flags_of("interpolate")
def _interpolate_flags(p):
    p.add_argument("a", help="face photo or vector file")
    p.add_argument("b", help="face photo or vector file")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--aligned", action="store_true")
    add_generation_flags(p)


@command("directions", "compute ID-space directions from a prepared data set's labels, and PCA directions")
def cmd_directions(args):
    from id3pm.controls import directions_from_dataset, save_directions
    from id3pm.data import PreparedDataset
    from id3pm.data.metadata import read_label_csv

    data = PreparedDataset(args.data)
    kinds = dict(item.split("=") for item in filter(None, (args.kinds or "").split(",")))
    table = read_label_csv(args.labels_csv) if args.labels_csv else None
    labels = [x for x in (args.labels or "").split(",") if x]
    directions = directions_from_dataset(data, labels, kinds, pca=args.pca, label_table=table)
    save_directions(args.out, directions)
    for d in directions:
        p = d.provenance
        groups = {k: v for k, v in p.items() if k.startswith("n") and k != "n"}
        print(f"{d.name}: {p['kind']}, |direction| = {np.linalg.norm(d.vector):.4f} {groups or ''}")
    print(f"saved {len(directions)} directions to {args.out}")
    return 0


@flags_of("directions")
def _directions_flags(p):
    p.add_argument("data", help="prepared data set")
    p.add_argument("--labels", help="comma-separated labels, e.g. age,gender (meta_* columns or --labels-csv)")
    p.add_argument("--kinds", help="label=binary|continuous overrides, e.g. age=continuous")
    p.add_argument("--labels-csv", help="CSV of per-image labels (key/path/file column)")
    p.add_argument("--pca", type=int, default=0, help="also the first N principal directions")
    p.add_argument("--out", default="directions.json")


@command("edit", "walk an identity along a direction and render a strip")
def cmd_edit(args):
    from id3pm.controls import load_directions
    from id3pm.files import atomic_write_json
    from id3pm.images import contact_sheet, save_png

    pipe = load_pipeline(args)
    directions = load_directions(args.directions)
    if args.direction not in directions:
        raise ValueError(f"no direction {args.direction!r} in {args.directions}; it has {sorted(directions)}")
    v = identity_vector(pipe, args.image, args.aligned)
    images, _, dist = pipe.edit(v, directions[args.direction].vector, args.strengths, num_images=args.num_images,
                                seed=args.seed, **gen_kwargs(args))
    out = Path(args.out)
    rows = [list(images[:, k]) for k in range(images.shape[1])]
    sheet = contact_sheet(rows, row_labels=[f"seed {args.seed + k}" for k in range(len(rows))],
                          col_labels=[f"{args.direction} {s:+g}" for s in args.strengths],
                          captions=[[caption(d) for d in dist[:, k]] for k in range(len(rows))], cell=128)
    save_png(sheet, out / f"edit_{args.direction}.png", {"command": "edit", "direction": args.direction})
    atomic_write_json(out / f"edit_{args.direction}.json", {"input": args.image, "direction": args.direction,
                                                            "strengths": args.strengths,
                                                            "distance_to_input": dist.tolist()})
    print(f"strip: {out / f'edit_{args.direction}.png'}")
    return 0


@flags_of("edit")
def _edit_flags(p):
    p.add_argument("image", help="face photo or vector file")
    p.add_argument("--directions", required=True, help="file written by `id3pm directions`")
    p.add_argument("--direction", required=True, help="name in that file, e.g. age or pca0")
    p.add_argument("--strengths", type=float, nargs="+", default=[-2, -1, 0, 1, 2])
    p.add_argument("--aligned", action="store_true")
    add_generation_flags(p, n_default=1)
