"""What the generating commands share: their flags, loading the pipeline, writing results."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, refused up front with a one-line message."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def guidance_scale(text: str) -> float:
    """argparse type: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_generation_flags(p: argparse.ArgumentParser, n_default: int = 8) -> None:
    p.add_argument("--model", help="model folder (default: the shipped reference model)")
    p.add_argument("--encoder", help="the FR model whose templates to invert, when it is not the one the model "
                                      "was conditioned on: needs --adapter (default: the model's own)")
    p.add_argument("--adapter", help="adapter folder from `id3pm adapt`: maps --encoder's templates into the "
                                      "model's conditioning space")
    p.add_argument("-n", "--num-images", type=positive_int, default=n_default, help="samples per identity")
    p.add_argument("--guidance", type=guidance_scale, default=2.0, help="classifier-free guidance scale s")
    p.add_argument("--steps", type=positive_int, default=25, help="sampling steps")
    p.add_argument("--sampler", default="dpmpp_2m", help="ddpm, ddim, dpmpp_2m, unipc")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="bf16 autocast: default on GPU; on a CPU with AVX512-BF16 about 2x faster")
    p.add_argument("--out", default="out", help="output folder")
    p.add_argument("--pose", help="attribute models: yaw=30,pitch=0,roll=0 (degrees)")
    p.add_argument("--expression", help="attribute models: mouth_open=0.3,smile=1.1,eye_open=0.3")
    p.add_argument("--unset-attributes", default="drop", choices=["drop", "sample"],
                   help="attributes not given: dropped (the model decides) or drawn from the training data")
    p.add_argument("--upscale", nargs="?", const="auto", default="default",
                   help="super-resolve the samples (the 32 px ones are written too): SR model folder, 'lanczos', "
                        "'none', or no value for the shipped SR model (Lanczos, labelled as such, when none is "
                        "shipped). Default: the shipped SR model when one fits the model, else none")
    p.add_argument("--upscale-steps", type=positive_int, default=25, help="sampling steps of the SR model (respaced DDPM)")
    p.add_argument("--upscale-size", type=int, default=128, help="output side of the Lanczos fallback")


def add_query_flags(p: argparse.ArgumentParser) -> None:
    """invert and sample: spend black-box queries at inversion time (id3pm.refine)."""
    p.add_argument("--queries", type=int, default=0,
                   help="black-box queries per identity to refine with (0: none, as in the paper); keeps the "
                        "--num-images closest")
    p.add_argument("--search", default="best_of_n", choices=["best_of_n", "renoise"],
                   help="how queries are spent: best of N samples, or re-noising the best candidates (SDEdit)")
    p.add_argument("--strength", type=float, default=0.5, help="renoise: how far the best candidates are re-noised (0..1]")


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
                upscale=None, upscale_steps=args.upscale_steps)  # None: when load_pipeline set an upscaler


def load_pipeline(args):
    from id3pm.pipeline import ID3PMPipeline
    from id3pm.superres import make_upscaler

    pipe = ID3PMPipeline.from_pretrained(args.model, device=args.device, precision=args.precision,
                                         encoder=args.encoder, adapter=args.adapter, upscale=None)
    pipe.upscaler = make_upscaler(args.upscale, device=args.device, size=args.upscale_size, base_info=pipe.info)
    if pipe.upscaler is not None:
        print(f"upscaling with {pipe.upscaler.label}", file=sys.stderr)
    return pipe


def generate_and_write(pipe, args, names, vectors, references, skipped, extra: dict | None = None) -> dict:
    """Shared tail of invert and sample: generate, measure identity distance, write."""
    from id3pm.images import resize
    from id3pm.outputs import write_identity, write_job_sheet, write_results

    out_dir = Path(args.out)
    t0 = time.time()
    if getattr(args, "queries", 0):
        result, refine_json = refined(pipe, args, vectors)
        extra = {**(extra or {}), "refine": refine_json}
    else:
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
    column = "rank" if "queries" in result.params else "seed"  # refined images are ranked; their seeds are in "refine"
    header = (["input"] if any(r is not None for r in references) else []) + [f"{column} {s}" for s in result.seeds]
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


def refined(pipe, args, vectors):
    """--queries: spend them on the black box, keep the --num-images closest per identity.
    Returns (PipelineOutput with the kept images by rank, the refinement's JSON)."""
    from id3pm.pipeline import PipelineOutput
    from id3pm.refine import query_refine

    if parse_attributes(args):
        raise ValueError("--queries works without --pose and --expression for now")
    out = query_refine(pipe, vectors, queries=args.queries, keep=args.num_images, search=args.search,
                       guidance_scale=args.guidance, num_inference_steps=args.steps, sampler=args.sampler,
                       seed=args.seed, strength=args.strength, batch_size=args.batch_size, progress=True)
    params = {"guidance_scale": args.guidance, "num_inference_steps": args.steps, "sampler": args.sampler,
              "seed": args.seed, "model": pipe.model_path, "encoder": pipe.info["encoder"].get("name"),
              "precision": pipe.precision, "queries": args.queries, "search": args.search}
    upscaled = None
    if pipe.upscaler is not None:  # the kept images are enlarged like plain samples (queries judge the 32 px ones)
        n, k = out.images.shape[:2]
        flat = pipe.upscale(out.images.reshape(n * k, *out.images.shape[2:]), np.repeat(vectors, k, axis=0),
                            [args.seed + j for _ in range(n) for j in range(k)], args.upscale_steps)
        upscaled, params["upscale"] = flat.reshape(n, k, *flat.shape[1:]), pipe.upscaler.label
    return PipelineOutput(out.images, list(range(args.num_images)), params, upscaled), out.to_json()


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


def identity_vector(pipe, source: str, aligned: bool = False) -> np.ndarray:
    """The vector of a photo, or of a vector file (.npy / .json, first row)."""
    from id3pm.images import load_image
    from id3pm.outputs import read_vectors

    if source.endswith((".npy", ".json")):
        return np.asarray(read_vectors(source)[1][0], dtype=np.float32)
    return pipe.encoder.encode_one(load_image(source), aligned=aligned, name=source)


def caption(d) -> str:
    return "d=n/a" if not np.isfinite(d) else f"d={d:.3f}"
