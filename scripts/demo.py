"""`make demo`: invert the astronaut (scikit-image, NASA, public domain) with dlib as
the black box.

With shipped reference weights (weights/) it uses them. Without them it is a SMOKE
DEMO: it trains a tiny model for a few minutes on the 25x25 LFW faces that ship
with scikit-image, so that every stage (detection, alignment, encoding, training,
guided sampling, identity measurement) runs for real; its pictures are blurry grey
faces, not convincing pictures of the astronaut.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

from id3pm.cli import main as id3pm
from id3pm.modeldir import shipped_path


def smoke_model(out: Path, minutes: float) -> Path:
    from id3pm.data import PrepareConfig, prepare
    from id3pm.training import TrainConfig, train

    faces = out / "smoke_data" / "lfw_subset"
    faces.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(skdata.lfw_subset()[:100]):  # the first 100 are faces
        Image.fromarray((img * 255).astype(np.uint8)).save(faces / f"face_{i:03d}.png")
    prepare(PrepareConfig(src=str(faces), out=str(out / "smoke_data" / "prepared"), sizes=(32,), holdout=0.1))
    train(TrainConfig(
        data=str(out / "smoke_data" / "prepared"), out=str(out / "smoke_run"), size=32, preset="tiny",
        model={"attention_resolutions": [8]}, batch_size=32, lr=1e-3, warmup_steps=50, ema_decay=0.995,
        max_steps=3000, max_minutes=minutes, save_every=500, sample_every=0, log_every=50,
    ))
    return out / "smoke_run" / "model"


def run(out: Path, minutes: float) -> int:
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    model = shipped_path("base")
    if model is None:
        print("=" * 78)
        print("SMOKE DEMO: no trained weights are shipped yet, so this trains a tiny model for")
        print(f"about {minutes:g} minutes on scikit-image's 25x25 LFW faces. It exercises every stage")
        print("for real, but its pictures are blurry grey faces, not convincing pictures of her.")
        print("=" * 78)
        model = smoke_model(out, minutes)
    astronaut = out / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(astronaut)
    code = id3pm(["invert", str(astronaut), "--model", str(model), "-n", "8", "--guidance", "2", "--steps", "25",
                  "--sampler", "dpmpp_2m", "--out", str(out / "astronaut")])
    if code:
        return code
    result = json.loads((out / "astronaut" / "results.json").read_text())
    print(f"model: {model}")
    print(f"identity distances (dlib, threshold 0.6): {result['items'][0]['identity_distance']}")
    print(f"contact sheet: {out / 'astronaut' / 'sheet.png'}; total {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo_out")
    p.add_argument("--minutes", type=float, default=3.0, help="smoke training budget")
    args = p.parse_args()
    sys.exit(run(Path(args.out), args.minutes))
