"""`id3pm invert` and `id3pm sample`: photos or vectors in, synthetic faces out."""

from __future__ import annotations

import sys

import numpy as np

from id3pm.cli.common import add_generation_flags, add_query_flags, generate_and_write, load_pipeline, report, unique_names
from id3pm.cli.registry import command, flags_of


@command("invert", "generate faces of the identities in photos")
def cmd_invert(args):
    from id3pm.images import ImageError, load_image
    from id3pm.outputs import safe_name

    paths, photos, skipped = [], [], []
    inputs = expand_folders(args.images)
    if not inputs:
        print(f"nothing to invert: no image files in {', '.join(args.images)}", file=sys.stderr)
        return 1
    pipe = load_pipeline(args)
    for path in inputs:
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


def expand_folders(items: list[str]) -> list[str]:
    """Files as given; a folder becomes the image files under it (sorted, recursive), as in prepare."""
    from pathlib import Path

    from id3pm.data.prepare import list_images

    out = []
    for item in items:
        if Path(item).is_dir():
            out += [str(Path(item) / key) for key in list_images(item)]
        else:
            out.append(item)
    return out


@flags_of("invert")
def _invert_flags(p):
    p.add_argument("images", nargs="+", help="face photos, or folders of them")
    p.add_argument("--aligned", action="store_true", help="inputs are already canonical crops (no detection)")
    add_generation_flags(p)
    add_query_flags(p)


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


@flags_of("sample")
def _sample_flags(p):
    p.add_argument("--vectors", required=True, help=".npy, .json, .npz, .csv or .parquet of identity vectors")
    add_generation_flags(p)
    add_query_flags(p)
