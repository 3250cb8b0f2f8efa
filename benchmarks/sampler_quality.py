"""Which fast sampler keeps identity best? Samples held-out identity vectors with each
sampler at 10 and 25 steps and with 250-step DDPM (the reference), and prints the
identity distance to the input vector under the conditioning encoder, plus how far
each fast sampler's pictures are from the reference's for the same seeds.

    python benchmarks/sampler_quality.py --model weights/id3pm-utkface-64 --data data_compact/utk64 --n 32
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from id3pm.data import PreparedDataset
from id3pm.pipeline import ID3PMPipeline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="prepared set: vectors of its holdout split")
    p.add_argument("--n", type=int, default=32, help="identities")
    p.add_argument("--samplers", default="ddim,dpmpp_2m,unipc,ddpm")
    p.add_argument("--steps", default="10,25")
    p.add_argument("--reference-steps", type=int, default=250)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--device")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    pipe = ID3PMPipeline.from_pretrained(args.model, device=args.device, upscale=None)
    data = PreparedDataset(args.data)
    vectors = data.vectors(data.sample_indices("holdout", args.n))
    rows = []

    def run(sampler, steps):
        t = time.time()
        images = pipe(vectors, num_images_per_id=1, guidance_scale=args.guidance, num_inference_steps=steps,
                      sampler=sampler, seed=0, progress=True).images
        seconds = time.time() - t
        d = pipe.identity_distances(images, vectors)[:, 0]
        return images, d, seconds

    ref_images, ref_d, ref_s = run("ddpm", args.reference_steps)
    rows.append({"sampler": "ddpm", "steps": args.reference_steps, "identity_distance": float(np.nanmean(ref_d)),
                 "pixel_difference_to_reference": 0.0, "seconds_per_image": ref_s / len(vectors)})
    for sampler in args.samplers.split(","):
        for steps in [int(s) for s in args.steps.split(",")]:
            images, d, s = run(sampler, steps)
            rows.append({"sampler": sampler, "steps": steps, "identity_distance": float(np.nanmean(d)),
                         "pixel_difference_to_reference": float(np.abs(images.astype(float) - ref_images).mean()),
                         "seconds_per_image": s / len(vectors)})
    print(f"\n| sampler | steps | identity distance ({pipe.info.get('distance')}) | mean pixel diff to "
          f"DDPM-{args.reference_steps} | s/image |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sampler']} | {r['steps']} | {r['identity_distance']:.4f} | {r['pixel_difference_to_reference']:.1f} "
              f"| {r['seconds_per_image']:.3f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampler_quality.json").write_text(json.dumps({"model": args.model, "n": len(vectors), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
