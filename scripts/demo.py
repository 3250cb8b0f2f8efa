"""`make demo`: invert four faces that ship with scikit-image (the NASA astronaut, public
domain, and three faces of its LFW subset) with dlib as the black box, at guidance 1, 2
and 4, and judge every picture under dlib AND the independent faceres encoder.

With shipped reference weights (weights/) it uses them. Without them it is a SMOKE
DEMO: it trains a tiny model for a fixed number of steps on the 25x25 LFW faces that
ship with scikit-image, so that every stage runs for real; it says so, and says when
that model saw too little to draw faces.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from skimage import data as skdata

from id3pm.images import contact_sheet, save_png
from id3pm.modeldir import shipped_path

GUIDANCE = (1.0, 2.0, 4.0)
SAMPLES = 3  # per face and guidance scale
LFW_FACES = (0, 20, 40)  # of scikit-image's lfw_subset (its first 100 images are faces)
DLIB_THRESHOLD = 0.6  # dlib's documented same-person threshold (Euclidean)
SMOKE_STEPS = 1500  # enough for the tiny model to draw blurry faces; budgeted in steps, not minutes
SMOKE_MIN_STEPS = 800  # below this the smoke model draws noise


def judge(pipe, ind, images: np.ndarray, vector: np.ndarray, crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances of images (any size) to the face under dlib (to its vector) and faceres (to its crop)."""
    d_cond = pipe.identity_distances(images[None], vector[None])[0]
    d_ind = np.full(len(images), np.nan)
    if ind is not None:
        ref = ind.encode([crop], aligned=True).vectors
        d_ind = ind.identity_distance(ind.encode(list(images), aligned=True).vectors, ref)
    return d_cond, d_ind


def smoke_model(out: Path, steps: int) -> tuple[Path, int]:
    from PIL import Image

    from id3pm.data import PrepareConfig, prepare
    from id3pm.training import TrainConfig, train

    faces = out / "smoke_data" / "lfw_subset"
    faces.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(skdata.lfw_subset()[:100]):
        Image.fromarray((img * 255).astype(np.uint8)).save(faces / f"face_{i:03d}.png")
    prepare(PrepareConfig(src=str(faces), out=str(out / "smoke_data" / "prepared"), sizes=(32,), holdout=0.1))
    result = train(TrainConfig(
        data=str(out / "smoke_data" / "prepared"), out=str(out / "smoke_run"), size=32, preset="tiny",
        model={"attention_resolutions": [8]}, batch_size=32, lr=1e-3, warmup_steps=50, ema_decay=0.995,
        max_steps=steps, save_every=500, sample_every=0, log_every=50,
    ))
    return out / "smoke_run" / "model", result["step"]


def demo_faces() -> dict[str, np.ndarray]:
    faces = {"astronaut": skdata.astronaut()}
    lfw = skdata.lfw_subset()
    for i in LFW_FACES:  # 25x25 grey: detection upsamples them
        faces[f"lfw_{i}"] = np.repeat((lfw[i] * 255).astype(np.uint8)[..., None], 3, axis=2)
    return faces


def independent_encoder():
    """faceres (fetched by `make models`), or None with the reason."""
    try:
        from id3pm.encoders import make_encoder

        enc = make_encoder({"name": "faceres"})
        enc.encode([np.zeros((64, 64, 3), np.uint8)], aligned=True)  # loads the graph now
        return enc, ""
    except Exception as err:  # missing model files: the demo still runs on dlib alone
        reason = str(err).splitlines()[0]
        if "make models" not in reason:
            reason += "; run `make models`"
        return None, f"faceres unavailable, its distances show as '-': {reason}"


def distance_text(d: float) -> str:
    """A caption's distance: '-' where none was measured (no face found, or no faceres)."""
    return f"{d:.2f}" if np.isfinite(d) else "-"


def verdict(name: str, d: np.ndarray, threshold: float, what: str) -> str:
    ok = np.isfinite(d)
    if not ok.any():
        return f"{name}: no face found in any sample"
    accepted = int((d[ok] < threshold).sum())
    return f"{name} best {np.nanmin(d):.2f}, median {np.nanmedian(d):.2f} vs {what} {threshold:.2f}: {accepted}/{d.size} accepted"


def verdicts(per_guidance: dict, thresholds: dict, with_faceres: bool) -> str:
    """One line: how many of a face's pictures dlib (and faceres) accept."""
    lines = [verdict("dlib", np.array([v["dlib"] for v in per_guidance.values()]), DLIB_THRESHOLD, "threshold")]
    if "faceres" in thresholds and with_faceres:
        lines.append(verdict("faceres", np.array([v["faceres"] for v in per_guidance.values()]),
                             thresholds["faceres"]["fmr=0.01"], "FMR-1% threshold"))
    return "; ".join(lines)


def run(out: Path, smoke_steps: int, model: str | None = None) -> int:
    from id3pm.pipeline import ID3PMPipeline

    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    model, smoke = (Path(model) if model else shipped_path("base")), False
    if model is None:
        smoke = True
        print("=" * 78)
        print("SMOKE DEMO: no trained weights are shipped, so this trains a tiny model for")
        print(f"{smoke_steps} steps on scikit-image's 25x25 LFW faces. It exercises every stage for")
        print("real; its pictures are blurry grey faces at best, not pictures of these people.")
        print("=" * 78)
        model, steps = smoke_model(out, smoke_steps)
        if steps < SMOKE_MIN_STEPS:
            print(f"WARNING: the smoke model saw only {steps} steps: expect noise, not faces.")
    pipe = ID3PMPipeline.from_pretrained(model)
    thresholds = pipe.info.get("thresholds", {})
    ind, why = independent_encoder()
    if ind is None:
        print(why)
    faces = demo_faces()
    enc = pipe.encode(list(faces.values()), keys=list(faces))
    rows, labels, captions, report = [], [], [], {"model": str(model), "smoke": smoke, "faces": {}}
    for (name, photo), vector, error in zip(faces.items(), enc.vectors, enc.errors):
        if error:
            print(f"{name}: skipped ({error})")
            report["faces"][name] = {"error": error}
            continue
        crop = pipe.encoder.aligner.align(photo, name=name).crop  # the canonical crop the encoders saw
        per_face, per_face_up = {}, {}
        row, caps, big_row, big_caps = [crop], ["input"], [crop], ["input"]
        for g in GUIDANCE:
            gen = pipe(vector[None], num_images_per_id=SAMPLES, guidance_scale=g, seed=0)  # + 128 px if an SR model ships
            d_cond, d_ind = judge(pipe, ind, gen.images[0], vector, crop)
            per_face[f"s={g:g}"] = {"dlib": d_cond.tolist(), "faceres": d_ind.tolist()}
            row += list(gen.images[0])
            caps += [f"s{g:g} {distance_text(dc)}/{distance_text(di)}" for dc, di in zip(d_cond, d_ind)]
            if gen.upscaled is not None:  # the demo sheet shows both sizes
                u_cond, u_ind = judge(pipe, ind, gen.upscaled[0], vector, crop)
                per_face_up[f"s={g:g}"] = {"dlib": u_cond.tolist(), "faceres": u_ind.tolist(), "upscaler": gen.params["upscale"]}
                big_row += list(gen.upscaled[0])
                big_caps += [f"s{g:g} {distance_text(dc)}/{distance_text(di)}" for dc, di in zip(u_cond, u_ind)]
        rows.append(row)
        labels.append(name[:12])
        captions.append(caps)
        report["faces"][name] = per_face
        if per_face_up:
            rows.append(big_row)
            labels.append(f"{name[:8]} {gen.upscaled.shape[2]}px")
            captions.append(big_caps)
            report["faces"][name + " upscaled"] = per_face_up
        print(f"{name}: " + verdicts(per_face, thresholds, ind is not None))
        if per_face_up:
            print(f"{name} at {gen.upscaled.shape[2]} px: " + verdicts(per_face_up, thresholds, ind is not None))
    upscaled = any(k.endswith(" upscaled") for k in report["faces"])
    sheet = contact_sheet(rows, row_labels=labels, cell=128 if upscaled else 96, captions=captions)  # 128: its own pixels
    save_png(sheet, out / "sheet.png", {"what": "id3pm demo: input, then samples at guidance 1, 2, 4 (and the same "
                                                "upscaled when an SR model ships); dlib/faceres distance"})
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"model: {model}{' (SMOKE)' if smoke else ''}")
    print(f"contact sheet: {out / 'sheet.png'} (captions: guidance, dlib / faceres distance); "
          f"results: {out / 'results.json'}; total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out")
    p.add_argument("--smoke-steps", type=int, default=SMOKE_STEPS, help="training steps of the smoke model")
    p.add_argument("--model", help="model folder (default: the shipped reference model)")
    args = p.parse_args()
    sys.exit(run(Path(args.out), args.smoke_steps, args.model))
