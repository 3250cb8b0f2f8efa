"""Training throughput of the default model size: images/s and the fraction of the
measured matmul rate, for the plain fp32 step and each optimisation, measured in the
same run. Data loading is excluded by design (prepared sets are decoded into memory
once: see id3pm.data.TrainingSet), so this is the ceiling of `id3pm train`.

    python benchmarks/training.py                          # CPU, batch 16
    python benchmarks/training.py --size 32 --preset compact mini --batch 64 --compile
    python benchmarks/training.py --device cuda --batch 256 --compile
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from id3pm.diffusion import GaussianDiffusion, make_betas
from id3pm.modeldir import PRESETS
from id3pm.models import IDConditionedUNet
from id3pm.training import StepRandom, TrainConfig, step_loss

sys_path = Path(__file__).resolve().parent
import sys  # noqa: E402

sys.path.insert(0, str(sys_path))
from sampling import forward_flops, matmul_rate, sync  # noqa: E402


def steps_per_second(model, opt, batch, device, dtype, steps: int, size: int = 64, compiled: bool = False) -> float:
    diffusion = GaussianDiffusion(make_betas("cosine", 1000))
    cfg = TrainConfig(data="", out="")
    data = {"image": torch.rand(batch, 3, size, size, device=device) * 2 - 1, "id_vector": torch.randn(batch, 128, device=device)}
    if device == "cuda":
        data["image"] = data["image"].contiguous(memory_format=torch.channels_last) if next(
            model.parameters()).is_contiguous(memory_format=torch.channels_last) else data["image"]

    def one(step):
        rnd = StepRandom(0, step, 0, device)
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            loss = step_loss(cfg, model, diffusion, data, rnd, {}).get("loss").mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for s in range(3 if compiled else 1):  # warm-up (thread pools; compilation)
        one(s)
    sync(device)
    t = time.perf_counter()
    for s in range(steps):
        one(s)
    sync(device)
    return steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--preset", nargs="+", default=["base"], help="one or more presets (rows per preset)")
    p.add_argument("--size", type=int, default=64, help="image side")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    device = args.device
    batch = args.batch or (256 if device == "cuda" else 16)
    steps = args.steps or (30 if device == "cuda" else 4)
    rates = {"fp32": matmul_rate(device, torch.float32), "bf16": matmul_rate(device, torch.bfloat16)}
    from id3pm.hardware import cpu_description, cpu_has_native_bf16

    # (name, autocast dtype, channels_last, fused AdamW, torch.compile)
    variants = [("fp32, AdamW (foreach)", torch.float32, False, False, False)]
    if device == "cuda" or cpu_has_native_bf16():  # bf16 is the fast path: try what may speed it up
        variants.append(("bf16 autocast", torch.bfloat16, False, False, False))
        variants.append(("bf16 + channels_last", torch.bfloat16, True, False, False))
        if device == "cuda":
            variants.append(("bf16 + channels_last + fused AdamW", torch.bfloat16, True, True, False))
        if args.compile:
            variants.append(("bf16 + channels_last + fused + compile", torch.bfloat16, True, device == "cuda", True))
    else:  # bf16 is emulated (e.g. an AVX2-only Zen 3: its convolutions ran ~70x slower than
        # fp32 here, so a bf16 training row would take hours): fp32 is the path to speed up
        variants.append(("fp32 + channels_last", torch.float32, True, False, False))
        if args.compile:
            variants.append(("fp32 + compile", torch.float32, False, False, True))
    rows = []
    cpu = cpu_description()
    print(f"device {device} ({cpu}), batch {batch}, size {args.size}; matmul fp32 {rates['fp32'] / 1e12:.2f}, "
          f"bf16 {rates['bf16'] / 1e12:.2f} TFLOP/s")
    for preset in args.preset:
        base = None
        for name, dtype, cl, fused, comp in variants:
            torch.manual_seed(0)
            model = IDConditionedUNet(sample_size=args.size, **PRESETS[preset]).to(device)
            flops = forward_flops(model.eval(), 1, device, args.size)
            model.train()
            if cl:
                model = model.to(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
            run = torch.compile(model) if comp else model
            ips = steps_per_second(run, opt, batch, device, dtype, steps, args.size, comp) * batch
            base = base or ips
            achieved = 3 * flops * ips  # forward + backward (~2x forward)
            ceiling = rates["bf16" if dtype == torch.bfloat16 else "fp32"]
            rows.append({"preset": preset, "variant": name, "images_per_s": ips, "speedup": ips / base,
                         "forward_gflops": flops / 1e9, "tflops": achieved / 1e12,
                         "fraction_of_matmul_rate": achieved / ceiling})
            print(f"{preset:8s} {name:42s} {ips:9.1f} img/s  {achieved / 1e12:7.2f} TFLOP/s  "
                  f"{achieved / ceiling * 100:5.1f}% of matmul", flush=True)
    print(f"\n{cpu}, batch {batch}, {args.size}x{args.size}; speed-up against fp32 of the same preset")
    print("| preset | GFLOP/forward | variant | images/s | speed-up | % of matmul rate |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['forward_gflops']:.2f} | {r['variant']} | {r['images_per_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r['fraction_of_matmul_rate'] * 100:.1f}% |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"training_{device}_{args.size}.json").write_text(json.dumps(
        {"device": device, "cpu": cpu, "batch": batch, "size": args.size,
         "matmul_tflops": {k: v / 1e12 for k, v in rates.items()}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
