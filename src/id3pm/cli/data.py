"""`id3pm prepare`, `id3pm protect` and `id3pm train`."""

from __future__ import annotations

import argparse
import dataclasses
import json

from id3pm.cli.registry import command, flags_of


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
        split_by=args.split_by, workers=args.workers, metadata=args.metadata, attributes=tuple(a for a in args.attributes.split(",") if a),
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


@flags_of("prepare")
def _prepare_flags(p):
    p.add_argument("src", help="folder of face photos (recursive)")
    p.add_argument("out", help="output folder")
    p.add_argument("--encoder", default="dlib", help="dlib | onnx:path=F.onnx,... | remote:url=... | table:path=... | protected:encoder=dlib,transform=biohash,key=7")
    p.add_argument("--size", type=int, default=64, help="crop side")
    p.add_argument("--sizes", help="several crop sides, e.g. 64,128 (super-resolution)")
    p.add_argument("--holdout", type=float, default=0.05, help="held-out fraction (by hash of the file name)")
    p.add_argument("--split-by", default="key", choices=["key", "identity"],
                   help="hash the file name, or the identity label (all photos of a person on one side)")
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    p.add_argument("--metadata", help="utkface | aaf | celeba:identity_CelebA.txt | csv:PATH")
    p.add_argument("--attributes", default="", help="pose,expression (estimated from landmarks) and/or "
                   "meta:NAME (a numeric label from --metadata)")
    p.add_argument("--shard", default="0/1", help="i/n: this machine's part of the folder")
    p.add_argument("--chunk", type=int, default=1000, help="images per Parquet shard")
    p.add_argument("--image-format", default="webp", choices=["webp", "png", "jpeg"])
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--multiple-faces", default="error", choices=["error", "largest"])
    p.add_argument("--limit", type=int, help="only the first N files")
    p.add_argument("--aligned", action="store_true", help="photos are already canonical crops: skip detection")


@command("augment", "training copies of a prepared set, each encoded again by the black box")
def cmd_augment(args):
    from id3pm.data.augment import AugmentConfig, augment_prepared, measure_shifts

    if args.measure:
        shifts = measure_shifts(args.src, args.measure, args.seed)
        for name, s in shifts.items():
            print(f"{name:12s} moves y by {s['mean']:.3f} on average (median {s['median']:.3f}, 90% {s['p90']:.3f}; n={s['n']})")
        if args.out:
            from id3pm.files import atomic_write_json

            atomic_write_json(args.out, shifts)
        return 0
    if not args.out:
        raise ValueError("augment needs an output folder (or --measure N)")
    m = augment_prepared(AugmentConfig(src=args.src, out=args.out, transforms=args.transforms, p=args.p,
                                       copies=args.copies, seed=args.seed, workers=args.workers, limit=args.limit))
    print(f"{args.out}: {m['counts']['train']} copies; skipped by reason: {m['skipped']}")
    return 0


# The names of id3pm.data.augment.TRANSFORMS, spelled out: that module imports torch, and
# `id3pm --help` must not (a test checks that the two lists agree).
AUGMENT_TRANSFORMS = ("mirror", "photometric", "grey", "geometric", "blur", "jpeg")


@flags_of("augment")
def _augment_flags(p):
    p.add_argument("src", help="prepared set (its training split is copied)")
    p.add_argument("out", nargs="?", help="output folder of copies (with --measure: a JSON file, optional)")
    p.add_argument("--transforms", default=",".join(AUGMENT_TRANSFORMS),
                   help="some of " + ", ".join(AUGMENT_TRANSFORMS))
    p.add_argument("--p", type=float, default=0.5, help="probability of each transform in a copy (at least one)")
    p.add_argument("--copies", type=int, default=1, help="copies per training image")
    p.add_argument("--limit", type=int, help="only N training images (a seeded sample)")
    p.add_argument("--measure", type=int, default=0,
                   help="N: how far each transform alone moves y over N crops; writes no set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")


@command("merge", "several prepared sets as one training set (keys prefixed by source, a source column)")
def cmd_merge(args):
    from id3pm.data.merge import merge_prepared, parse_sources

    m = merge_prepared(args.out, parse_sources(args.sources))
    for s in m["sources"]:
        print(f"{s['name']}: {s['counts']['train']} train, {s['counts']['holdout']} holdout (split by {s['split_by']})")
    print(f"{args.out}: {m['counts']['train']} train, {m['counts']['holdout']} holdout")
    return 0


@flags_of("merge")
def _merge_flags(p):
    p.add_argument("out", help="output folder (a manifest naming the sources; no crop is copied)")
    p.add_argument("sources", nargs="+", help="prepared folders, each NAME=PATH or PATH (named by its folder); "
                   "NAME@GROUP=PATH is drawn in GROUP's share (augmented copies beside their source)")


@command("protect", "derive a prepared set of protected templates from a prepared plain set (no FR queries)")
def cmd_protect(args):
    from id3pm.data.protect import protect_prepared
    from id3pm.encoders.protected import parse_protection

    m = protect_prepared(args.src, args.out, parse_protection(args.transform))
    print(f"{args.out}: {m['counts']['train']} train, {m['counts']['holdout']} holdout templates of {m['encoder']}")
    return 0


@flags_of("protect")
def _protect_flags(p):
    p.add_argument("src", help="prepared set of plain vectors (id3pm prepare)")
    p.add_argument("out", help="output folder: the same crops and labels, protected templates")
    p.add_argument("--transform", required=True, help="orthonormal:key=7 | biohash:key=7[,bits=64] | "
                   "noise:snr_db=10,key=7 | pca:path=BASIS.npz,k=32")


@command("reencode", "the crops of a prepared set encoded by another FR model, as a new prepared set")
def cmd_reencode(args):
    from id3pm.data.reencode import reencode_prepared
    from id3pm.encoders import make_encoder

    m = reencode_prepared(args.src, args.out, make_encoder(args.encoder), progress=not args.quiet)
    lost = m["skipped"].get(f"{m['encoder']['name']}: no usable face", 0)
    print(f"{args.out}: {m['counts']['train']} train, {m['counts']['holdout']} holdout {m['id_dim']}-d vectors of "
          f"{m['encoder']['name']}" + (f"; {lost} photos left out (no usable face)" if lost else ""))
    return 0


@flags_of("reencode")
def _reencode_flags(p):
    p.add_argument("src", help="prepared set (id3pm prepare)")
    p.add_argument("out", help="output folder: the same crops, labels and split, the new encoder's vectors "
                              "(rerun to continue an interrupted run)")
    p.add_argument("--encoder", required=True, help="mobilefacenet | faceres | onnx:path=F.onnx,... | remote:url=...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


@command("train", "train a model on a prepared data set")
def cmd_train(args):
    from id3pm.train_config import TrainConfig
    from id3pm.training import train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if isinstance(values.get("model"), str):
        values["model"] = json.loads(values["model"])
    result = train(TrainConfig(**values))
    print(json.dumps(result))
    return 0


@flags_of("train")
def _train_flags(p):
    from id3pm.train_config import TrainConfig, field_comments

    comments = field_comments(TrainConfig)
    p.add_argument("data", help="prepared data set folder")
    p.add_argument("out", help="run folder (rerun the same command to resume)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "out"):
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        what = comments.get(f.name, "")
        # SUPPRESS: a flag not given stays out of args, so TrainConfig's own default applies
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, type=lambda s: s.lower() in ("1", "true", "yes"),
                           default=argparse.SUPPRESS, help=f"{what}: true/false (default {default})")
        elif f.name == "model":
            p.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                           help='JSON overrides of the network, e.g. {"dropout": 0}')
        else:
            p.add_argument(flag, dest=f.name, type=type(default), default=argparse.SUPPRESS,
                           help=f"{what} (default {default})".replace("%", "%%"))
