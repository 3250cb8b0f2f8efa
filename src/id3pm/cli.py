"""The `id3pm` command. Each subcommand parses its flags and calls the package."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

COMMANDS: dict = {}


def command(name: str, help: str):
    def register(fn):
        COMMANDS[name] = (fn, help)
        return fn

    return register


def add_generation_flags(p: argparse.ArgumentParser, n_default: int = 8) -> None:
    p.add_argument("--model", help="model folder (default: the shipped reference model)")
    p.add_argument("-n", "--num-images", type=int, default=n_default, help="samples per identity")
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale s")
    p.add_argument("--steps", type=int, default=25, help="sampling steps")
    p.add_argument("--sampler", default="dpmpp_2m", help="ddpm, ddim, dpmpp_2m, unipc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast: default on GPU; on a CPU with AVX512-BF16 about 2x faster")
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--pose", help="attribute models: yaw=30,pitch=0,roll=0 (degrees)")
    p.add_argument("--expression", help="attribute models: mouth_open=0.3,smile=1.1,eye_open=0.3")
    p.add_argument("--unset-attributes", default="drop", choices=["drop", "sample"],
                   help="attributes not given: dropped (the model decides) or drawn from the training data")
    p.add_argument("--upscale", nargs="?", const="auto", default=None,
                   help="super-resolve the samples: SR model folder, 'lanczos', or no value for the shipped SR model "
                        "(Lanczos, labelled as such, when none is shipped)")
    p.add_argument("--upscale-steps", type=int, default=25, help="sampling steps of the SR model (respaced DDPM)")
    p.add_argument("--upscale-size", type=int, default=128, help="output side of the Lanczos fallback")


def parse_attributes(args) -> dict | None:
    """--pose yaw=30 --expression smile=1.2 -> {"yaw": 30.0, "smile": 1.2}."""
    values = {}
    for text in (getattr(args, "pose", None), getattr(args, "expression", None)):
        for item in filter(None, (text or "").split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"attribute {item!r} is not name=value")
            values[key.strip()] = float(value)
    return values or None


def gen_kwargs(args) -> dict:
    return dict(guidance_scale=args.guidance, num_inference_steps=args.steps, sampler=args.sampler,
                batch_size=args.batch_size, attributes=parse_attributes(args), unset_attributes=args.unset_attributes,
                upscale=bool(args.upscale), upscale_steps=args.upscale_steps)


def load_pipeline(args):
    from id3pm.pipeline import ID3PMPipeline
    from id3pm.superres import make_upscaler

    pipe = ID3PMPipeline.from_pretrained(args.model, device=args.device, precision=args.precision)
    pipe.upscaler = make_upscaler(args.upscale, device=args.device, size=args.upscale_size)
    if pipe.upscaler is not None:
        print(f"upscaling with {pipe.upscaler.label}", file=sys.stderr)
    return pipe


def generate_and_write(pipe, args, names, vectors, references, skipped, extra: dict | None = None) -> dict:
    """Shared tail of invert and sample: generate, measure identity distance, write."""
    from id3pm.images import resize
    from id3pm.outputs import write_identity, write_job_sheet, write_results

    out_dir = Path(args.out)
    t0 = time.time()
    result = pipe(vectors, num_images_per_id=args.num_images, seed=args.seed, progress=True, **gen_kwargs(args))
    seconds = time.time() - t0
    distances = pipe.identity_distances(result.images, vectors)
    shown = result.upscaled if result.upscaled is not None else result.images
    up_distances = pipe.identity_distances(result.upscaled, vectors) if result.upscaled is not None else None
    items, rows = [], []
    for i, name in enumerate(names):
        ref = None if references[i] is None else resize(references[i], shown.shape[2])
        item = write_identity(out_dir, name, result.images[i], result.seeds, result.params, distances[i], ref)
        if result.upscaled is not None:
            up = write_identity(out_dir / "upscaled", name, result.upscaled[i], result.seeds, result.params,
                                up_distances[i], ref)
            item["upscaled"] = {"files": ["upscaled/" + f for f in up["files"]], "identity_distance": up["identity_distance"]}
        items.append(item)
        rows.append(([ref] if any(r is not None for r in references) else []) + list(shown[i]))
    header = (["input"] if any(r is not None for r in references) else []) + [f"seed {s}" for s in result.seeds]
    write_job_sheet(out_dir, rows, names, result.params, header)
    finite = distances[np.isfinite(distances)]
    payload = {
        "params": result.params,
        "distance": pipe.info.get("distance", "euclidean"),
        "items": items,
        "skipped": skipped,
        "mean_identity_distance": float(finite.mean()) if finite.size else None,
        "seconds": round(seconds, 2),
        "seconds_per_image": round(seconds / max(1, result.images.shape[0] * result.images.shape[1]), 3),
        "synthetic": True,
        "upscale": result.params.get("upscale"),
        **(extra or {}),
    }
    write_results(out_dir, payload)
    return payload


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


def report(payload: dict, out: str) -> None:
    for s in payload["skipped"]:
        print(f"skipped: {s}", file=sys.stderr)
    mean = payload["mean_identity_distance"]
    if payload.get("upscale"):
        print(f"upscaled with {payload['upscale']}")
    print(f"wrote {sum(len(i['files']) for i in payload['items'])} images to {out} "
          f"({payload['seconds_per_image']} s/image); mean identity distance "
          f"({payload['distance']}): {'n/a' if mean is None else f'{mean:.4f}'}; sheet: {out}/sheet.png")


@command("invert", "generate faces of the identities in photos")
def cmd_invert(args):
    from id3pm.images import ImageError, load_image
    from id3pm.outputs import safe_name

    pipe = load_pipeline(args)
    paths, photos, skipped = [], [], []
    for path in args.images:
        try:
            photos.append(load_image(path))
            paths.append(str(path))
        except ImageError as e:
            skipped.append(str(e))
    enc = pipe.encode(photos, aligned=args.aligned, keys=paths)
    keep = [i for i, e in enumerate(enc.errors) if e is None]
    skipped += [e for e in enc.errors if e is not None]
    if not keep:
        print("nothing to invert: " + "; ".join(skipped), file=sys.stderr)
        return 1
    names = unique_names([safe_name(p) for p in paths])
    refs = []
    for i in keep:  # the input's canonical crop, shown next to the samples
        refs.append(photos[i] if args.aligned else pipe.encoder.aligner.align(photos[i]).crop)
    payload = generate_and_write(pipe, args, [names[i] for i in keep], enc.vectors[keep], refs, skipped,
                                 {"inputs": [paths[i] for i in keep]})
    report(payload, args.out)
    return 0


def _invert_flags(p):
    p.add_argument("images", nargs="+", help="face photos")
    p.add_argument("--aligned", action="store_true", help="inputs are already canonical crops (no detection)")
    add_generation_flags(p)


@command("sample", "generate faces from identity vectors in a file")
def cmd_sample(args):
    from id3pm.encoders import check_vectors
    from id3pm.outputs import read_vectors, safe_name

    pipe = load_pipeline(args)
    keys, vectors = read_vectors(args.vectors)
    good, skipped = [], []
    for i, key in enumerate(keys):
        try:
            check_vectors(vectors[i], pipe.id_dim, f"{args.vectors}: {key}")
            good.append(i)
        except ValueError as e:
            skipped.append(str(e))
    if not good:
        print("no usable vectors: " + "; ".join(skipped), file=sys.stderr)
        return 1
    names = unique_names([safe_name(keys[i]) for i in good])
    payload = generate_and_write(pipe, args, names, np.stack([vectors[i] for i in good]), [None] * len(good), skipped)
    report(payload, args.out)
    return 0


def _sample_flags(p):
    p.add_argument("--vectors", required=True, help=".npy, .json, .npz, .csv or .parquet of identity vectors")
    add_generation_flags(p)


@command("prepare", "align, encode and store a folder of face photos for training")
def cmd_prepare(args):
    from id3pm.data import PrepareConfig, prepare
    from id3pm.encoders import parse_encoder_spec

    i, n = (int(v) for v in args.shard.split("/"))
    if not 0 <= i < n:
        raise SystemExit(f"--shard {args.shard}: expected i/n with 0 <= i < n")
    sizes = tuple(int(s) for s in (args.sizes or str(args.size)).split(","))
    cfg = PrepareConfig(
        src=args.src, out=args.out, encoder=parse_encoder_spec(args.encoder), sizes=sizes, holdout=args.holdout,
        workers=args.workers, metadata=args.metadata, attributes=tuple(a for a in args.attributes.split(",") if a),
        shard=(i, n), chunk=args.chunk, image_format=args.image_format, quality=args.quality,
        multiple_faces=args.multiple_faces, limit=args.limit, aligned=args.aligned,
    )
    m = prepare(cfg)
    run = m["last_run"]
    print(f"{run['written']} written, {run['skipped']} skipped, {run['already_done']} already done "
          f"in {run['seconds']} s ({run['images_per_second']} images/s, {run['workers']} workers)")
    print(f"data set: {m['counts']['train']} train, {m['counts']['holdout']} holdout; skipped by reason: {m['skipped']}")
    for cat, examples in m["skip_examples"].items():
        for e in examples[:3]:
            print(f"  {cat}: {e}")
    return 0


def _prepare_flags(p):
    p.add_argument("src", help="folder of face photos (recursive)")
    p.add_argument("out", help="output folder")
    p.add_argument("--encoder", default="dlib", help="dlib | onnx:path=F.onnx,... | remote:url=... | table:path=...")
    p.add_argument("--size", type=int, default=64, help="crop side")
    p.add_argument("--sizes", help="several crop sides, e.g. 64,128 (super-resolution)")
    p.add_argument("--holdout", type=float, default=0.05, help="held-out fraction (by hash of the file name)")
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    p.add_argument("--metadata", help="utkface or csv:PATH")
    p.add_argument("--attributes", default="", help="pose,expression (estimated from landmarks) and/or "
                   "meta:NAME (a numeric label from --metadata)")
    p.add_argument("--shard", default="0/1", help="i/n: this machine's part of the folder")
    p.add_argument("--chunk", type=int, default=1000, help="images per Parquet shard")
    p.add_argument("--image-format", default="webp", choices=["webp", "png", "jpeg"])
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--multiple-faces", default="error", choices=["error", "largest"])
    p.add_argument("--limit", type=int, help="only the first N files")
    p.add_argument("--aligned", action="store_true", help="photos are already canonical crops: skip detection")


@command("train", "train a model on a prepared data set")
def cmd_train(args):
    from id3pm.training import TrainConfig, train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if isinstance(values.get("model"), str):
        values["model"] = json.loads(values["model"])
    result = train(TrainConfig(**values))
    print(json.dumps(result))
    return 0


def _train_flags(p):
    from id3pm.training import TrainConfig

    p.add_argument("data", help="prepared data set folder")
    p.add_argument("out", help="run folder (rerun the same command to resume)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "out"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                           help=f"true/false (default {default})")
        elif f.name == "model":
            p.add_argument(flag, dest=f.name, default=None, help='JSON overrides of the network, e.g. {"dropout": 0}')
        else:
            p.add_argument(flag, dest=f.name, type=type(default), default=None, help=f"default {default}")


@command("evaluate", "identity distance, verification accuracy, diversity and FID of reconstructions vs baselines")
def cmd_evaluate(args):
    from id3pm.evaluation import EvalConfig, Evaluation

    cfg = EvalConfig(
        out=args.out, models=args.model or [], data=args.data, split=args.split, limit=args.limit,
        train_data=args.train_data, baselines=[b for b in args.baselines.split(",") if b],
        independent=args.independent or None, encoder=args.encoder, pairs=args.pairs, pairs_root=args.pairs_root,
        pairs_limit=args.pairs_limit, guidance=args.guidance, steps=args.steps, sampler=args.sampler,
        diversity_ids=args.diversity_ids, diversity_samples=args.diversity_samples, fid=args.fid,
        inception=args.inception, lpips_backbone=args.lpips_backbone, lpips_heads=args.lpips_heads,
        seed=args.seed, device=args.device,
    )
    metrics = Evaluation(cfg).run()
    print((Path(args.out) / "report.md").read_text())
    print(f"total {metrics['timing']['total_seconds']:.0f} s; report: {args.out}/report.md, metrics: {args.out}/metrics.json")
    return 0


def _evaluate_flags(p):
    p.add_argument("--model", action="append", help="model folder, optionally name=path (repeatable)")
    p.add_argument("--data", help="prepared data set whose held-out split gives the originals")
    p.add_argument("--split", default="holdout")
    p.add_argument("--limit", type=int, default=100, help="originals to evaluate")
    p.add_argument("--train-data", help="prepared set for the nearest-neighbour / random baselines")
    p.add_argument("--baselines", default="nn,random,real", help="nn,random,real,regression=MODEL_DIR")
    p.add_argument("--independent", default="faceres", help="independent encoder spec ('' to skip)")
    p.add_argument("--encoder", default="dlib", help="conditioning encoder when there is no --data/--model")
    p.add_argument("--pairs", help="LFW pairs.txt or path_a,path_b,same,fold CSV")
    p.add_argument("--pairs-root", help="folder the pair paths are relative to (default: the file's folder)")
    p.add_argument("--pairs-limit", type=int)
    p.add_argument("--guidance", type=float, nargs="+", default=[2.0], help="one row per guidance scale")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--diversity-ids", type=int, default=10)
    p.add_argument("--diversity-samples", type=int, default=10)
    p.add_argument("--fid", action="store_true", help="FID / precision / recall (needs --inception or make models)")
    p.add_argument("--inception", help="Inception TorchScript file (default cache/fid/default_1.pt)")
    p.add_argument("--lpips-backbone", help="AlexNet weights (safetensors or .pth) for LPIPS")
    p.add_argument("--lpips-heads", help="LPIPS linear heads (alex.pth) for LPIPS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--out", default="eval")


def identity_vector(pipe, source: str, aligned: bool = False) -> np.ndarray:
    """The vector of a photo, or of a vector file (.npy / .json, first row)."""
    from id3pm.images import load_image
    from id3pm.outputs import read_vectors

    if source.endswith((".npy", ".json")):
        return np.asarray(read_vectors(source)[1][0], dtype=np.float32)
    return pipe.encoder.encode_one(load_image(source), aligned=aligned, name=source)


def caption(d) -> str:
    return "d=n/a" if not np.isfinite(d) else f"d={d:.3f}"


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


def _edit_flags(p):
    p.add_argument("image", help="face photo or vector file")
    p.add_argument("--directions", required=True, help="file written by `id3pm directions`")
    p.add_argument("--direction", required=True, help="name in that file, e.g. age or pca0")
    p.add_argument("--strengths", type=float, nargs="+", default=[-2, -1, 0, 1, 2])
    p.add_argument("--aligned", action="store_true")
    add_generation_flags(p, n_default=1)


@command("serve", "a REST API and web page for inversion (loopback only unless --token is given)")
def cmd_serve(args):
    import os

    from id3pm.serving import Limits, serve

    token = args.token or os.environ.get("ID3PM_TOKEN") or None  # the environment keeps it out of `ps`
    limits = Limits(max_batch=args.max_batch, window_s=args.batch_window_ms / 1000, max_queue=args.max_queue,
                    timeout_s=args.timeout, rate=args.rate, burst=args.burst,
                    max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_pixels=args.max_pixels)
    serve(args.model, directions=args.directions, host=args.host, port=args.port, token=token, device=args.device,
          limits=limits, log_level=args.log_level, upscale=args.upscale)
    return 0


def _serve_flags(p):
    p.add_argument("--model", help="model folder (default: the shipped reference model)")
    p.add_argument("--directions", help="directions file (from `id3pm directions`) for /v1/edit")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback needs --token")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /v1 (or set ID3PM_TOKEN)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--max-batch", type=int, default=16, help="images per batched forward pass")
    p.add_argument("--batch-window-ms", type=float, default=15, help="how long to wait to fill a batch")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests; more are refused with 429")
    p.add_argument("--timeout", type=float, default=120, help="seconds per request (504 after)")
    p.add_argument("--rate", type=float, default=5, help="requests/s per client IP (0: no limit)")
    p.add_argument("--burst", type=int, default=20, help="requests a client may send at once")
    p.add_argument("--max-body-mb", type=float, default=8, help="largest request body")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest input image (width x height)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--upscale", nargs="?", const="auto", default=None,
                   help="let requests ask for super-resolution: SR model folder, 'lanczos', or no value for the "
                        "shipped SR model (Lanczos when none is shipped)")


SETUP = {"sweep": _sweep_flags, "interpolate": _interpolate_flags, "directions": _directions_flags,
         "edit": _edit_flags, "invert": _invert_flags, "sample": _sample_flags, "prepare": _prepare_flags, "train": _train_flags,
         "evaluate": _evaluate_flags, "serve": _serve_flags}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="id3pm", description="Invert black-box face recognition models via diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (fn, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        SETUP[name](p)
        p.set_defaults(func=fn)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as e:
        print(f"id3pm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
