"""Sampling speed of the default model size, against the hardware's limit and a naive
baseline, all measured in the same run (`make bench`).

For each sampler and step count it prints images/s, seconds/image, the fraction of
the FLOP-limited rate (network FLOPs per image / measured dense-matmul rate), and
peak memory; and the effect of each optimisation against the naive way (separate
conditional and unconditional passes, fp32, no compilation), with the largest pixel
difference it causes. On GPU: CUDA events, warm-up, medians. Results also go to JSON.

    python benchmarks/sampling.py --out benchmarks/results            # CPU, batch 8
    python benchmarks/sampling.py --device cuda --batch 256 --out ...  # GPU
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from id3pm.diffusion import GaussianDiffusion, make_betas, respace, space_timesteps
from id3pm.modeldir import PRESETS
from id3pm.models import IDConditionedUNet
from id3pm.sampling import get_sampler, guided_denoiser, make_generators, per_image_noise


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, warmup: bool = True) -> float:
    """Median wall seconds of fn() (after a warm-up call on GPU, where the first call
    pays for kernel selection and allocation)."""
    if warmup and device == "cuda":
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rate(device: str, dtype) -> float:
    """Measured dense FLOP/s: the ceiling a convolutional network can approach. The
    faster of a large GEMM and a large 3x3 convolution: on AMD CPUs MKL's fp32 GEMM
    takes a slow path (~0.1 TFLOP/s here) while oneDNN's convolution uses the AVX-512
    units (~0.36), so the GEMM alone would flatter every number measured against it."""
    from id3pm.hardware import cpu_has_native_bf16

    # emulated bf16 (e.g. an AVX2-only Zen 3) runs at a few GFLOP/s: smaller problems, or
    # the measurement alone takes many minutes
    emulated = device == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16()
    n = 8192 if device == "cuda" else 256 if emulated else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: thread pool, packing buffers
    gemm = 2 * n**3 / timed(lambda: a @ b, device, 7)
    c, batch = (64, 1) if emulated else (256, 8)
    x = torch.randn(batch, c, 64, 64, device=device, dtype=dtype)
    w = torch.randn(c, c, 3, 3, device=device, dtype=dtype)
    conv = lambda: torch.nn.functional.conv2d(x, w, padding=1)  # noqa: E731
    conv()
    conv_rate = 2 * batch * c * c * 9 * 64 * 64 / timed(conv, device, 5)
    RATES.append({"dtype": str(dtype).split(".")[-1], "gemm_tflops": gemm / 1e12, "conv_tflops": conv_rate / 1e12})
    return max(gemm, conv_rate)


RATES: list[dict] = []


def forward_flops(model, batch: int, device, size: int = 64) -> float:
    x = torch.zeros(batch, 3, size, size, device=device)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x, torch.zeros(batch, dtype=torch.long, device=device), id_vector=torch.zeros(batch, 128, device=device))
    return fc.get_total_flops() / batch


def naive_denoiser(model, y, scale):
    """The way not to do it: two forward passes per step."""
    def denoise(x, t):
        cond = model(x, t, id_vector=y)
        uncond = model(x, t, id_vector=y, drop_id=torch.ones(len(y), dtype=torch.bool, device=y.device))
        return torch.cat([uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3]), cond[:, 3:]], 1)
    return denoise


def run_sampler(model, diffusion, sampler, steps, batch, device, variant="optimised", dtype=torch.float32):
    d = respace(diffusion, space_timesteps(diffusion.num_timesteps, steps))
    y = torch.randn(batch, 128, device=device)
    gens = make_generators(range(batch))
    x = per_image_noise(gens, (3, 64, 64), device)
    if variant == "naive":
        with torch.no_grad():
            return get_sampler(sampler)(naive_denoiser(model, y, 2.0), d, x, gens)
    if variant == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32)
    with torch.inference_mode(), autocast:
        return get_sampler(sampler)(guided_denoiser(model, y, 2.0), d, x, gens)


def peak_memory_mib(device) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=0, help="images per batch (default 8 on CPU, 256 on GPU)")
    p.add_argument("--preset", default="base")
    p.add_argument("--samplers", default="ddpm,ddim,dpmpp_2m,unipc")
    p.add_argument("--steps", default="10,25,50")
    p.add_argument("--full-steps", action="store_true", help="also 1000 steps for every sampler (slow on CPU)")
    p.add_argument("--repeats", type=int, default=0, help="timed runs per row (default 1 on CPU, 5 on GPU)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (minutes of compilation)")
    p.add_argument("--only-optimisations", action="store_true", help="skip the sampler table")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    device = args.device
    batch = args.batch or (256 if device == "cuda" else 8)
    args.repeats = args.repeats or (5 if device == "cuda" else 1)
    torch.manual_seed(0)
    model = IDConditionedUNet(**PRESETS[args.preset]).to(device).eval()
    diffusion = GaussianDiffusion(make_betas("cosine", 1000))
    flops = forward_flops(model, 1, device)
    half = torch.bfloat16
    rate_fp32 = matmul_rate(device, torch.float32)
    rate_bf16 = matmul_rate(device, half)
    print(f"device {device} ({torch.cuda.get_device_name() if device == 'cuda' else platform.processor() or 'cpu'}), "
          f"threads {torch.get_num_threads()}, batch {batch}")
    print(f"model {args.preset}: {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M parameters, "
          f"{flops / 1e9:.2f} GFLOP per forward per image")
    print("measured ceiling (max of GEMM and 3x3 conv): " + ", ".join(
        f"{r['dtype']} GEMM {r['gemm_tflops']:.2f} / conv {r['conv_tflops']:.2f} TFLOP/s" for r in RATES))

    rows = []

    def measure(name, sampler, steps, variant="optimised", dtype=torch.float32, rep=args.repeats, mdl=model):
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sec = timed(lambda: run_sampler(mdl, diffusion, sampler, steps, batch, device, variant, dtype), device, rep)
        # useful FLOPs: one batched forward of 2 images (cond + uncond) per image and step
        useful = 2 * flops * steps * batch
        ceiling = rate_bf16 if dtype == half else rate_fp32
        row = {"name": name, "sampler": sampler, "steps": steps, "variant": variant, "dtype": str(dtype).split(".")[-1],
               "images_per_s": batch / sec, "s_per_image": sec / batch, "tflops": useful / sec / 1e12,
               "fraction_of_matmul_rate": useful / sec / ceiling, "peak_mem_mib": peak_memory_mib(device)}
        rows.append(row)
        print(f"{name:34s} {sampler:9s} {steps:5d} steps  {row['images_per_s']:8.2f} img/s  "
              f"{row['s_per_image']:8.3f} s/img  {row['fraction_of_matmul_rate'] * 100:5.1f}% of matmul  "
              f"{row['peak_mem_mib']:8.0f} MiB")
        return row

    print("\n-- samplers (optimised: one batched cond+uncond forward, inference mode) --")
    for sampler in ([] if args.only_optimisations else args.samplers.split(",")):
        for steps in [int(s) for s in args.steps.split(",")]:
            measure("optimised", sampler, steps)
        if device == "cuda" or args.full_steps:
            measure("optimised", sampler, 1000, rep=1)

    # the CPU cannot afford 1000 steps at full batch for every sampler: one image tells the per-step cost
    if device == "cpu" and not args.full_steps and not args.only_optimisations:
        full = batch
        batch = 1
        print("(full 1000-step DDPM on the CPU at batch 1; --full-steps for every sampler)")
        measure("optimised, batch 1", "ddpm", 1000, rep=1)
        batch = full

    print("\n-- optimisations at 25 steps, dpmpp_2m, against the naive baseline --")
    effects = []
    probe_x = torch.randn(batch, 3, 64, 64, device=device)
    probe_y = torch.randn(batch, 128, device=device)

    def eps_of(mdl, variant, dtype):
        """Guided noise prediction at three timesteps: what each step of every sampler uses."""
        outs = []
        for t in (50, 500, 950):
            tt = torch.full((batch,), t, device=device)
            x = probe_x.contiguous(memory_format=torch.channels_last) if variant == "channels_last" else probe_x
            den = naive_denoiser(mdl, probe_y, 2.0) if variant == "naive" else guided_denoiser(mdl, probe_y, 2.0)
            with torch.inference_mode(), torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
                outs.append(den(x, tt)[:, :3].float())
        return torch.stack(outs)

    reference = eps_of(model, "naive", torch.float32)
    base = None
    variants = [("naive: 2 forwards, fp32", "naive", torch.float32, model),
                ("batched cond+uncond", "optimised", torch.float32, model)]
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    variants += [("batched + channels_last", "channels_last", torch.float32, model_cl),
                 ("batched + channels_last + bf16", "channels_last", half, model_cl)]
    if args.compile:
        t = time.time()
        compiled = torch.compile(model_cl)
        run_sampler(compiled, diffusion, "dpmpp_2m", 2, batch, device, "channels_last", half)
        print(f"(compilation took {time.time() - t:.0f} s)")
        variants.append(("batched + channels_last + bf16 + compile", "channels_last", half, compiled))
    for name, variant, dtype, mdl in variants:
        row = measure(name, "dpmpp_2m", 25, variant, dtype, mdl=mdl)
        base = base or row
        err = (eps_of(mdl, variant, dtype) - reference).abs()
        effects.append({"optimisation": name, "images_per_s": row["images_per_s"],
                        "speedup_vs_naive": row["images_per_s"] / base["images_per_s"],
                        "fraction_of_ceiling": row["fraction_of_matmul_rate"],
                        "eps_max_abs_difference": float(err.max()), "eps_mean_abs_difference": float(err.mean())})
    if device == "cpu":  # smaller batches keep the feature maps in cache on a CPU
        full = batch
        for b in (1, 2):
            batch = b
            probe = measure(f"batched + channels_last + bf16, batch {b}", "dpmpp_2m", 25, "channels_last", half,
                            mdl=model_cl)
            effects.append({"optimisation": f"batched + channels_last + bf16, batch {b}", "images_per_s": probe["images_per_s"],
                            "speedup_vs_naive": probe["images_per_s"] / base["images_per_s"],
                            "fraction_of_ceiling": probe["fraction_of_matmul_rate"],
                            "eps_max_abs_difference": effects[3]["eps_max_abs_difference"],
                            "eps_mean_abs_difference": effects[3]["eps_mean_abs_difference"]})
        batch = full
    print("\n| optimisation | images/s | speed-up vs naive | % of ceiling | eps max / mean abs difference |\n|---|---|---|---|---|")
    for e in effects:
        print(f"| {e['optimisation']} | {e['images_per_s']:.2f} | {e['speedup_vs_naive']:.2f}x | "
              f"{e['fraction_of_ceiling'] * 100:.0f}% | {e['eps_max_abs_difference']:.4f} / {e['eps_mean_abs_difference']:.5f} |")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": device, "batch": batch, "preset": args.preset, "threads": torch.get_num_threads(),
              "forward_gflops_per_image": flops / 1e9, "matmul_tflops": {"fp32": rate_fp32 / 1e12, "bf16": rate_bf16 / 1e12}, "rates": RATES,
              "rows": rows, "optimisations": effects, "torch": torch.__version__}
    path = out / f"sampling_{device}{'_optimisations' if args.only_optimisations else ''}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
