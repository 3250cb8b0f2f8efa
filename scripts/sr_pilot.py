"""#26 pilot: which upsampler takes 32 px faces to 128 px, keeping identity and looking
like real 128 px faces? Judged on identity-disjoint test photos (a prepared set's holdout
people, e.g. CelebA's):

    python scripts/sr_pilot.py ~/.cache/id3pm/data/celeba ~/.cache/id3pm/sr-pilot \
        --arms lanczos,realesrgan[,SR_MODEL_DIR] [--n 100]

Inputs: the real 32 px crops of N held-out photos, and the shipped model's samples from
the same photos' vectors (guidance 2). Each arm enlarges both to 128 px:
- lanczos (id3pm.superres.LanczosUpscaler), the fallback today;
- realesrgan: Real-ESRGAN x4plus from PyPI, run by scripts/realesrgan_upscale.py in its
  own virtual environment (--sr-python), never a dependency of id3pm;
- a trained upsampler folder (id3pm.superres.DiffusionUpscaler: diffusion, or one pass
  for one trained with --sr-regression, which ignores #STEPS); one trained with y
  (--sr-identity) gets each photo's own vector, the template being inverted; DIR@G sets
  its guidance (DIR@0: y dropped, the upsampler alone), DIR#S its steps (25), DIR~A its
  detail strength, DIR^K its rounds of back-projection (unset: the folder's upscale_defaults).
Measures, per input and arm: identity distance to the real 128 px crop under dlib, faceres
and MobileFaceNet, paired against the 32 px input itself (mean change, 95% CI; McNemar on
SAR at FMR 1%, thresholds from impostor pairs of held-out photos); KID against the real
128 px crops (Inception features, mean and std over subsets of half the images); seconds
per image. Writes OUT/pilot.json, OUT/pilot.md and OUT/sheet.png (the sheet shows the
data set's people: keep it out of the repository).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
from PIL import Image

from id3pm.data import PreparedDataset
from id3pm.encoders import identity_distance, make_encoder
from id3pm.evaluation.features import InceptionFeatures
from id3pm.evaluation.metrics import kernel_inception_distance
from id3pm.evaluation.paired import paired_comparison
from id3pm.evaluation.sar import impostor_distances
from id3pm.images import contact_sheet, save_png
from id3pm.superres import DiffusionUpscaler, LanczosUpscaler

JUDGES = ("dlib", "faceres", "mobilefacenet")
NONE = "none (32 px)"


def model_samples(vectors: np.ndarray, out: Path) -> np.ndarray:
    """The shipped model's samples (guidance 2, seed 0), kept in OUT for reruns."""
    path = out / "samples32.npy"
    if not path.exists():
        from id3pm.pipeline import ID3PMPipeline

        pipe = ID3PMPipeline.from_pretrained(None, device="cpu", upscale=None)
        np.save(path, pipe(vectors, num_images_per_id=1, seed=0, guidance_scale=2.0).images[:, 0])
    return np.load(path)


def realesrgan(images: np.ndarray, work: Path, python: str) -> tuple[np.ndarray, float]:
    src, dst = work / "in", work / "out"
    src.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(src / f"{i:05d}.png")
    helper = Path(__file__).with_name("realesrgan_upscale.py")
    subprocess.run([python, str(helper), str(src), str(dst), "128"], check=True)
    seconds = json.loads((dst / "seconds.json").read_text())["seconds_per_image"]
    return np.stack([np.asarray(Image.open(dst / f"{i:05d}.png").convert("RGB")) for i in range(len(images))]), seconds


def arm_name(arm: str) -> str:
    """How an arm is shown: a folder by its name, with its guidance and steps when set."""
    path = arm.split("@")[0].split("#")[0].split("~")[0].split("^")[0]
    return Path(path).name + arm[len(path):]


def diffusion_arm(arm: str, images: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """DIR[@GUIDANCE][#STEPS][~STRENGTH][^ROUNDS] on images, each with its template vector
    (seed i for image i); ~ sets the detail strength, ^ the back-projection rounds."""
    arm, _, rounds = arm.partition("^")
    arm, _, strength = arm.partition("~")
    path, _, steps = arm.partition("#")
    path, _, guidance = path.partition("@")
    sr = DiffusionUpscaler.from_pretrained(path, "cpu")
    return sr(images, seeds=list(range(len(images))), id_vectors=vectors,  # unset: the folder's upscale_defaults
              guidance_scale=float(guidance) if guidance else None, num_inference_steps=int(steps or 25),
              detail_strength=float(strength) if strength else None, back_projection=int(rounds) if rounds else None)


def upsample(arm: str, images: np.ndarray, vectors: np.ndarray, work: Path, args) -> tuple[np.ndarray, float]:
    """(N, 128, 128, 3) and seconds per image; kept in WORK so that a rerun measures again only."""
    cached = work / "up.npy"
    if cached.exists():
        return np.load(cached), json.loads((work / "seconds.json").read_text())
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if arm == "lanczos":
        out, seconds = LanczosUpscaler(128)(images), None
    elif arm == "realesrgan":
        out, seconds = realesrgan(images, work, args.sr_python)
    else:
        out, seconds = diffusion_arm(arm, images, vectors), None
    seconds = seconds if seconds is not None else (time.time() - start) / len(images)
    np.save(cached, out)
    (work / "seconds.json").write_text(json.dumps(seconds))
    return out, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="prepared set with identity-disjoint holdout people and 128 px crops")
    p.add_argument("out")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--arms", default="lanczos,realesrgan")
    p.add_argument("--thresholds", type=int, default=1000, help="held-out photos whose impostor pairs set FMR 1%%")
    p.add_argument("--sr-python", default=str(Path.home() / ".cache/id3pm/sr-venv/bin/python"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = PreparedDataset(args.data)
    population = data.sample_indices("holdout", max(args.n, args.thresholds))
    idx = population[: args.n]
    real = data.images(128, idx)
    vectors = data.vectors(idx)  # each photo's template: the model's input, and an upsampler's trained with y
    inputs = {"real 32 px crop": data.images(32, idx), "model sample": model_samples(vectors, out)}
    arms = [a for a in args.arms.split(",") if a]
    images, seconds = {}, {}
    for kind, small in inputs.items():
        images[(kind, NONE)] = small
        for arm in arms:
            work = out / "arms" / f"{arm_name(arm)}-{kind.split()[0]}"
            images[(kind, arm)], seconds[f"{kind} | {arm}"] = upsample(arm, small, vectors, work, args)
    result = {"n": len(idx), "arms": arms, "seconds_per_image": seconds, "identity": {}, "against_lanczos": {}, "kid": {}}
    for name in JUDGES:
        enc = make_encoder(name)
        refs = enc.encode(list(data.images(128, population)), aligned=True).vectors
        threshold = float(np.quantile(impostor_distances(refs, enc.distance, identities=data.identities(population)), 0.01))
        dist = {key: identity_distance(enc.encode(list(im), aligned=True).vectors, refs[: len(idx)], enc.distance)
                for key, im in images.items()}
        for (kind, arm), d in dist.items():
            if arm != NONE:
                result["identity"].setdefault(f"{kind} | {arm}", {})[name] = paired_comparison(dist[(kind, NONE)], d, threshold)
            if arm not in (NONE, "lanczos") and (kind, "lanczos") in dist:  # the bar of #26: against the fallback
                result["against_lanczos"].setdefault(f"{kind} | {arm}", {})[name] = paired_comparison(
                    dist[(kind, "lanczos")], d, threshold)
    inception = InceptionFeatures(device="cpu")
    real_features = inception(real)
    for (kind, arm), im in images.items():
        if arm != NONE:
            mean, std = kernel_inception_distance(real_features, inception(im), subset_size=len(idx) // 2)
            result["kid"][f"{kind} | {arm}"] = {"kid": mean, "std": std}
    (out / "pilot.json").write_text(json.dumps(result, indent=1))
    (out / "pilot.md").write_text(render(result))
    print(render(result))
    sheet(inputs, images, arms, real, out / "sheet.png")


def render(r: dict) -> str:
    lines = [f"{r['n']} held-out photos; identity: distance to the real 128 px crop, paired against the 32 px input "
             "(change, 95% CI), SAR at FMR 1% of the 32 px input -> upsampled; KID x 1000 against the real 128 px crops "
             "(± std over subsets)", "",
             "| input | arm | s / image | " + " | ".join(f"{j} change [95% CI] | {j} SAR 32 -> 128" for j in JUDGES)
             + " | KID x 1000 |", "|---|---|---:|" + "---|---|" * len(JUDGES) + "---|"]
    for key, per in r["identity"].items():
        kind, arm = key.split(" | ")
        cells = []
        for j in JUDGES:
            c = per[j]
            lo, hi = c["distance_change_ci95"]
            cells.append(f"{c['distance_change']:+.4f} [{lo:+.4f}, {hi:+.4f}] | "
                         f"{100 * c['sar_before']:.0f} -> {100 * c['sar_after']:.0f} (p {c['mcnemar_p']:.2g})")
        kid = r["kid"][key]
        lines.append(f"| {kind} | {arm_name(arm)} | {r['seconds_per_image'][key]:.3f} | " + " | ".join(cells)
                     + f" | {1000 * kid['kid']:.2f} ± {1000 * kid['std']:.2f} |")
    if r.get("against_lanczos"):
        lines += ["", "Against Lanczos on the same images (distance change, 95% CI; SAR at FMR 1% Lanczos -> arm):", "",
                  "| input | arm | " + " | ".join(JUDGES) + " |", "|---|---|" + "---|" * len(JUDGES)]
        for key, per in r["against_lanczos"].items():
            kind, arm = key.split(" | ")
            lines.append(f"| {kind} | {arm_name(arm)} | " + " | ".join(
                f"{per[j]['distance_change']:+.4f} [{per[j]['distance_change_ci95'][0]:+.4f}, "
                f"{per[j]['distance_change_ci95'][1]:+.4f}], {100 * per[j]['sar_before']:.0f} -> "
                f"{100 * per[j]['sar_after']:.0f}" for j in JUDGES) + " |")
    return "\n".join(lines) + "\n"


def sheet(inputs: dict, images: dict, arms: list[str], real: np.ndarray, path: Path, rows: int = 6) -> None:
    rows = min(rows, len(real))
    cols = ["input (nearest)"] + [arm_name(a) for a in arms] + ["real 128 px"]
    grid = []
    for kind, small in inputs.items():
        for i in range(rows):
            big = np.asarray(Image.fromarray(small[i]).resize((128, 128), Image.NEAREST))
            grid.append([big] + [images[(kind, a)][i] for a in arms] + [real[i]])
    labels = [f"{kind.split()[0]} {i}" for kind in inputs for i in range(rows)]
    save_png(contact_sheet(grid, labels, cols), path)


if __name__ == "__main__":
    main()
