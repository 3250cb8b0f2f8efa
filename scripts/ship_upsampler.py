"""#26: ship a trained upsampler into weights/ (fp16 safetensors, shards of at most 15 MB),
with the sampling settings chosen by the pilot and the paired verification written into
its id3pm.json ("upscale_defaults"), so that every caller that does not say otherwise
samples it the way it was measured.

    python scripts/ship_upsampler.py ~/.cache/id3pm/models/sr128gan-p22 --guidance 3 --back-projection 3

Once weights/id3pm-celeba-sr128 exists, `id3pm invert`, the Python API, `id3pm serve`
and `make demo` write 128 px pictures by default (id3pm.superres.shipped_upscaler_for).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from id3pm.modeldir import SHIPPED, load_model_dir, save_model_dir

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an exported upsampler folder (id3pm train --task superres ... /model)")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance on y")
    p.add_argument("--detail-strength", type=float, default=1.0, help="share of the predicted detail kept")
    p.add_argument("--back-projection", type=int, default=0, help="rounds of back-projection onto the input")
    p.add_argument("--out", default=str(ROOT / "weights" / SHIPPED["superres"]))
    args = p.parse_args()
    model, info = load_model_dir(args.model)
    if info.get("task") != "superres":
        raise SystemExit(f"{args.model}: a {info.get('task')!r} model, not an upsampler")
    info = {k: v for k, v in info.items() if k not in ("format", "sha256")}  # save_model_dir writes them again
    info["upscale_defaults"] = {"guidance_scale": args.guidance, "detail_strength": args.detail_strength,
                                "back_projection": args.back_projection}
    out, tmp = Path(args.out), Path(args.out + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, model, info, max_shard_size="15MB", dtype=torch.float16)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*.safetensors")) / 2**20
    print(f"shipped {args.model} -> {out} ({size:.1f} MiB fp16, defaults {info['upscale_defaults']})")


if __name__ == "__main__":
    main()
