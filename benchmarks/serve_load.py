"""Load test of `id3pm serve`: serial requests vs many concurrent clients.

    python benchmarks/serve_load.py                      # a tiny untrained model, made on the fly
    python benchmarks/serve_load.py --model runs/x/model --clients 32 --requests 256

Starts the server as a subprocess on a free loopback port (traffic never leaves this
machine), sends a bounded number of /v1/generate requests (random identity vectors)
first one at a time, then from --clients concurrent clients, and reports requests/s,
p50/p95 latency, the batch sizes the worker formed (from /healthz), errors and the
server's resident memory before and after. Writes benchmarks/results/serve_load.json.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent


def tiny_model(root: Path, size: int) -> Path:
    """An untrained network conditioned on dlib (128-d): the speed of the serving path, not of a real model."""
    import torch

    from id3pm.modeldir import save_model_dir
    from id3pm.models import IDConditionedUNet

    torch.manual_seed(0)
    net = IDConditionedUNet(sample_size=size, block_out_channels=(32, 64), layers_per_block=1, attention_head_dim=32,
                            norm_num_groups=8, attention_resolutions=(size // 2,), id_dim=128, dropout=0.0)
    info = {"task": "base", "image_size": size, "diffusion": {"schedule": "cosine", "num_timesteps": 1000},
            "encoder": {"name": "dlib"}, "distance": "euclidean", "id_dim": 128}
    return save_model_dir(root / "model", net, info)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(args, model: Path, port: int, max_queue: int | None = None) -> subprocess.Popen:
    max_queue = max_queue or max(64, 2 * args.clients)
    cmd = [sys.executable, "-m", "id3pm.cli", "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--device", args.device, "--rate", "0", "--max-queue", str(max_queue),
           "--max-batch", str(args.max_batch), "--batch-window-ms", str(args.window_ms), "--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not come up within 120 s")


def body(i: int, args) -> dict:
    vector = np.random.default_rng(i).normal(size=128) * 0.05
    return {"vector": vector.round(5).tolist(), "n": args.n, "steps": args.steps, "guidance": args.guidance, "seed": i}


async def run_phase(url: str, args, clients: int, total: int) -> dict:
    """`clients` workers share `total` requests; bounded by --max-seconds as well."""
    latencies, errors, next_id = [], {}, iter(range(total))
    deadline = time.perf_counter() + args.max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(client: httpx.AsyncClient):
        for i in next_id:
            if time.perf_counter() > deadline:
                return
            t0 = time.perf_counter()
            try:
                r = await client.post(f"{url}/v1/generate", json=body(i, args))
                ok = r.status_code == 200 and len(r.json()["images"]) == args.n
                key = None if ok else f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                key = type(e).__name__
            if key is None:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[key] = errors.get(key, 0) + 1

    async with httpx.AsyncClient(timeout=args.max_seconds, limits=limits) as client:
        before = (await client.get(f"{url}/healthz")).json()
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(clients)])
        seconds = time.perf_counter() - t0
        after = (await client.get(f"{url}/healthz")).json()
    lat = np.array(latencies) * 1000
    sizes = {k: after["batch_sizes"].get(k, 0) - before["batch_sizes"].get(k, 0) for k in after["batch_sizes"]}
    merged = {k: after["requests_per_batch"].get(k, 0) - before["requests_per_batch"].get(k, 0)
              for k in after["requests_per_batch"]}
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients, "requests_ok": len(latencies), "errors": errors, "seconds": round(seconds, 2),
        "requests_per_s": round(len(latencies) / seconds, 2) if seconds else None,
        "images_per_s": round(len(latencies) * args.n / seconds, 2) if seconds else None,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
        "batches": batches, "forward_passes": after["forward_passes"] - before["forward_passes"],
        "mean_batch_images": round((after["images"] - before["images"]) / batches, 2) if batches else None,
        "batch_sizes": {k: v for k, v in sizes.items() if v}, "requests_per_batch": {k: v for k, v in merged.items() if v},
    }


def table(rows: list[dict]) -> str:
    cols = [("phase", "phase", 10), ("clients", "clients", 7), ("ok", "requests_ok", 5), ("err", "errors", 9),
            ("req/s", "requests_per_s", 7), ("p50 ms", "p50_ms", 8), ("p95 ms", "p95_ms", 8), ("batches", "batches", 7),
            ("img/batch", "mean_batch_images", 9), ("rss MB before>after", "rss", 20)]
    lines = ["  ".join(h.rjust(w) for h, _, w in cols)]
    for r in rows:
        cells = []
        for _, key, w in cols:
            v = r.get(key)
            v = sum(v.values()) if isinstance(v, dict) else v
            cells.append(str(v).rjust(w))
        lines.append("  ".join(cells))
    return "\n".join(lines)


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """The server and request settings that the load and soak benchmarks share."""
    p.add_argument("--model", help="model folder (default: a tiny untrained model)")
    p.add_argument("--size", type=int, default=32, help="image side of the tiny model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=1, help="images per request")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--window-ms", type=float, default=15)
    # 1 by default: on a small shared machine, OpenMP threads waiting for a descheduled peer
    # made single requests take up to 14 s instead of 0.2 s (measured with 2 on 2 busy cores).
    p.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads of the server")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(p)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=128, help="requests in the concurrent phase")
    p.add_argument("--serial", type=int, default=16, help="requests in the serial phase")
    p.add_argument("--max-seconds", type=float, default=300, help="stop a phase after this long")
    p.add_argument("--out", default=str(HERE / "results" / "serve_load.json"))
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else tiny_model(Path(tmp), args.size)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args, model, port)
        try:
            asyncio.run(run_phase(url, args, 1, 2))  # warm-up: encoder and kernels loaded
            rss0 = rss_mb(proc.pid)
            serial = {"phase": "serial", **asyncio.run(run_phase(url, args, 1, args.serial))}
            rss1 = rss_mb(proc.pid)
            conc = {"phase": "concurrent", **asyncio.run(run_phase(url, args, args.clients, args.requests))}
            rss2 = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)
    serial["rss"] = f"{rss0:.0f}>{rss1:.0f}"
    conc["rss"] = f"{rss1:.0f}>{rss2:.0f}"
    print(table([serial, conc]))
    for r in (serial, conc):
        print(f"{r['phase']}: batch sizes (images: count) {r['batch_sizes']}, requests merged per batch "
              f"{r['requests_per_batch']}, errors {r['errors'] or 'none'}")
    if serial["requests_per_s"] and conc["requests_per_s"]:
        print(f"throughput: {conc['requests_per_s'] / serial['requests_per_s']:.1f}x serial")
    result = {"settings": {k: v for k, v in vars(args).items() if k != "out"}, "model": "tiny-untrained" if not args.model
              else Path(args.model).name, "cpu_count": os.cpu_count(), "serial": serial, "concurrent": conc,
              "rss_mb": {"before": round(rss0, 1), "after_serial": round(rss1, 1), "after_concurrent": round(rss2, 1)}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
