"""Train the reference model in ONE device call, and say how well the GPU was used.

    # here (CPU), the rehearsal with a tiny budget:
    python scripts/reference_train.py --data data_compact/utk64 --out /tmp/rehearsal --minutes 0.3 --preset tiny
    # on the device (see scripts/device_reference_run.sh):
    python3 scripts/reference_train.py --data data_compact/utk64 --out $OUT/run --minutes 8.0

It measures the GPU's bf16 matmul rate first (the ceiling), trains with `id3pm.training`
under a wall-clock budget (warm start from weights/ when present), and writes
run_summary.json: device, images seen, images/s, forward FLOPs, achieved fraction of
the measured peak, final loss.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch


def matmul_tflops(device: str, dtype=torch.bfloat16, n: int = 8192, reps: int = 10) -> float:
    """Measured dense matmul rate: the FLOP ceiling that training is compared with."""
    if device == "cpu":
        n, dtype = 2048, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def main() -> None:
    from id3pm.training import TrainConfig, train

    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--preset", default="base")
    p.add_argument("--batch-size", type=int, default=0, help="0: 256 on GPU, 32 on CPU")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--init-from", default="weights/id3pm-utkface-64", help="warm start when this folder exists")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = matmul_tflops(device)
    init = args.init_from if (Path(args.init_from) / "id3pm.json").exists() else ""
    batch = args.batch_size or (256 if device == "cuda" else 32)
    cfg = TrainConfig(
        data=args.data, out=args.out, preset=args.preset, batch_size=batch, lr=args.lr,
        warmup_steps=200 if not init else 20, max_steps=10**9, max_minutes=args.minutes,
        save_every=2000, sample_every=0, log_every=100, mixed_precision="bf16" if device == "cuda" else "no",
        compile=args.compile, init_from=init, progress=False,
    )
    start = time.time()
    result = train(cfg)
    wall = time.time() - start
    info = json.loads((Path(args.out) / "model" / "id3pm.json").read_text())
    log = [json.loads(line) for line in (Path(args.out) / "log.jsonl").read_text().splitlines()]
    steady = log[len(log) // 2 :] or log  # skip warm-up and compilation
    ips = sum(r["images_per_second"] for r in steady) / max(len(steady), 1)
    flops = info["training"]["forward_gflops_per_image"] * 1e9
    achieved = 3 * flops * ips / 1e12  # forward + backward (~2x forward)
    summary = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "measured_matmul_tflops": round(peak, 1),
        "wall_seconds": round(wall, 1),
        "steps": result["step"],
        "images_seen": result["images_seen"],
        "images_per_second": round(ips, 1),
        "forward_gflops_per_image": round(flops / 1e9, 3),
        "achieved_tflops": round(achieved, 2),
        "fraction_of_measured_peak": round(achieved / peak, 3),
        "final_loss": result["last_loss"],
        "warm_start": init or None,
        "config": {"preset": args.preset, "batch_size": batch, "lr": args.lr},
    }
    (Path(args.out) / "run_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    samples = sorted((Path(args.out) / "samples").glob("*.png"))
    if samples:
        shutil.copy(samples[-1], Path(args.out) / "samples_last.png")


if __name__ == "__main__":
    main()
