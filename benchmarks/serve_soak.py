"""Soak test of `id3pm serve`: a sustained overload, then a check that it recovered.

    python benchmarks/serve_soak.py                        # 10 minutes at 2x capacity, tiny model
    python benchmarks/serve_soak.py --seconds 60 --factor 3

1. Capacity: --clients closed-loop clients for --capacity-seconds; requests/s answered.
2. Soak: requests ARRIVE at --factor x capacity for --seconds (open loop, Poisson; the
   total is bounded by rate x seconds), whether or not earlier ones were answered. The
   server must answer every one: 200, or 429 when its queue is full. Anything else (5xx,
   a dropped connection, no answer within --timeout) counts as lost.
3. Memory: the server's RSS sampled every second. It must level off: the largest RSS of
   the last fifth of the soak may exceed that of the first fifth by at most --rss-bound-mb.
4. Afterwards: --serial requests one at a time must all answer 200, with a median latency
   within 3x of the same measurement before the soak.

Prints a table, writes benchmarks/results/serve_soak.json and serve_soak.png (RSS and
latency over time). Exit status 1 when something was lost, RSS grew past the bound, or
the server did not recover. Not part of the test suite (tests/test_serve_soak.py runs a
few seconds of it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve_load import add_server_arguments, body, free_port, rss_mb, start_server, tiny_model  # noqa: E402


@dataclass
class Answer:
    sent: float  # seconds since the soak began
    seconds: float  # latency
    status: int  # HTTP status; 0 = no answer (connection error or client timeout)
    error: str = ""  # the client's exception when there was no answer


class RssSampler:
    """The server's resident memory every `every` seconds, from a thread."""

    def __init__(self, pid: int, every: float = 1.0):
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter() - self._t0, rss_mb(self.pid)))
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class ClosedLoop:
    seconds: float
    latencies: list[float]  # of the requests answered 200
    failed: int  # answered anything else, or not at all

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds


async def closed_loop(url: str, args, clients: int, seconds: float, first_id: int) -> ClosedLoop:
    """`clients` clients, each sending its next request when the last is answered."""
    ids, latencies, failed = iter(range(first_id, first_id + 10**9)), [], 0
    deadline = time.perf_counter() + seconds

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal failed
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                ok = (await client.post(f"{url}/v1/generate", json=body(next(ids), args))).status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                failed += 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=args.timeout) as client:
        await asyncio.gather(*[client_loop(client) for _ in range(clients)])
    return ClosedLoop(time.perf_counter() - t0, latencies, failed)


async def open_loop(url: str, args, rate: float, seconds: float) -> list[Answer]:
    """Poisson arrivals at `rate`/s for `seconds`; every request gets its own task."""
    rng = np.random.default_rng(args.seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, size=int(rate * seconds * 1.5) + 10))
    arrivals = arrivals[arrivals < seconds]
    answers: list[Answer] = []
    limits = httpx.Limits(max_connections=args.max_connections, max_keepalive_connections=args.max_connections)

    async def one(client: httpx.AsyncClient, i: int, at: float) -> None:
        t0 = time.perf_counter()
        status, error = 0, ""
        try:
            status = (await client.post(f"{url}/v1/generate", json=body(10**6 + i, args))).status_code
        except httpx.HTTPError as e:
            error = f"{type(e).__name__}: {e}"[:120]
        answers.append(Answer(round(at, 3), time.perf_counter() - t0, status, error))

    async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as client:
        t_begin = time.perf_counter()
        tasks = []
        for i, at in enumerate(arrivals):
            await asyncio.sleep(max(0.0, t_begin + at - time.perf_counter()))
            if i and i % max(1, len(arrivals) // 10) == 0:
                say(f"soak: {i}/{len(arrivals)} sent, {len(answers)} answered")
            tasks.append(asyncio.create_task(one(client, i, float(at))))
        await asyncio.gather(*tasks)
    return sorted(answers, key=lambda a: a.sent)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(values) * 1000, q)), 1) if values else None


@dataclass
class SoakResult:
    capacity_rps: float
    offered_rps: float
    seconds: float
    sent: int
    ok: int
    refused_429: int
    lost: int  # anything but 200 and 429, or no answer
    other_statuses: dict = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    share_429: float = 0.0
    rss_start_mb: float = 0.0
    rss_first_fifth_max_mb: float = 0.0
    rss_last_fifth_max_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_bound_mb: float = 0.0
    rss_levels_off: bool = False
    serial_p50_before_ms: float | None = None
    serial_p50_after_ms: float | None = None
    recovered: bool = False
    serial_before_ms: list = field(default_factory=list)
    serial_after_ms: list = field(default_factory=list)
    lost_examples: list = field(default_factory=list)  # when sent, latency, the client's error

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.rss_levels_off and self.recovered


def rss_windows(samples: list[tuple[float, float]]) -> tuple[float, float, float]:
    """Largest RSS in the first and the last fifth of the sampled time (the soak and its
    drain), and overall."""
    span = samples[-1][0]
    first = [m for t, m in samples if t <= span / 5]
    last = [m for t, m in samples if t >= span * 4 / 5]
    return max(first), max(last), max(m for _, m in samples)


def soak(url: str, pid: int, args) -> tuple[SoakResult, list[Answer], list[tuple[float, float]]]:
    asyncio.run(closed_loop(url, args, 1, 2.0, 0))  # warm-up: kernels and encoder loaded
    before = asyncio.run(closed_loop(url, args, 1, args.serial_seconds, 100))
    say(f"serial before: {len(before.latencies)} requests, p50 {percentile_ms(before.latencies, 50)} ms")
    full = asyncio.run(closed_loop(url, args, args.clients, args.capacity_seconds, 10_000))
    capacity = full.rate
    rate = args.factor * capacity
    say(f"capacity {capacity:.2f} req/s ({len(full.latencies)} in {full.seconds:.1f} s); "
        f"soak at {rate:.2f} req/s for {args.seconds:.0f} s")
    rss_start = rss_mb(pid)
    with RssSampler(pid) as sampler:
        answers = asyncio.run(open_loop(url, args, rate, args.seconds))
    after = asyncio.run(closed_loop(url, args, 1, args.serial_seconds, 200_000))
    say(f"serial after: {len(after.latencies)} requests, {after.failed} failed, "
        f"p50 {percentile_ms(after.latencies, 50)} ms")
    ok = [a for a in answers if a.status == 200]
    refused = sum(a.status == 429 for a in answers)
    other: dict[str, int] = {}
    for a in answers:
        if a.status not in (200, 429):
            key = str(a.status) if a.status else f"no answer ({a.error.split(':')[0]})"
            other[key] = other.get(key, 0) + 1
    first, last, peak = rss_windows(sampler.samples)
    p_before, p_after = percentile_ms(before.latencies, 50), percentile_ms(after.latencies, 50)
    result = SoakResult(
        capacity_rps=round(capacity, 2), offered_rps=round(rate, 2), seconds=args.seconds, sent=len(answers),
        ok=len(ok), refused_429=refused, lost=sum(other.values()), other_statuses=other,
        p50_ms=percentile_ms([a.seconds for a in ok], 50), p99_ms=percentile_ms([a.seconds for a in ok], 99),
        share_429=round(refused / max(1, len(answers)), 4), rss_start_mb=round(rss_start, 1),
        rss_first_fifth_max_mb=round(first, 1), rss_last_fifth_max_mb=round(last, 1), rss_peak_mb=round(peak, 1),
        rss_bound_mb=args.rss_bound_mb, rss_levels_off=last <= first + args.rss_bound_mb,
        serial_p50_before_ms=p_before, serial_p50_after_ms=p_after,
        recovered=after.failed == 0 and p_before is not None and p_after is not None and p_after <= 3 * p_before,
        serial_before_ms=[round(x * 1000, 1) for x in before.latencies],
        serial_after_ms=[round(x * 1000, 1) for x in after.latencies])
    result.lost_examples = [asdict(a) for a in answers if a.status not in (200, 429)][:20]
    return result, answers, sampler.samples


def table(r: SoakResult) -> str:
    rows = [
        ("capacity (closed loop)", f"{r.capacity_rps} req/s"),
        ("offered (open loop)", f"{r.offered_rps} req/s for {r.seconds:.0f} s"),
        ("requests sent", r.sent),
        ("answered 200", r.ok),
        ("answered 429", f"{r.refused_429} ({100 * r.share_429:.1f}%)"),
        ("lost (other status, no answer)", f"{r.lost} {r.other_statuses or ''}".strip()),
        ("latency of the 200s, p50 / p99", f"{r.p50_ms} / {r.p99_ms} ms"),
        ("RSS start / first-fifth max / last-fifth max / peak",
         f"{r.rss_start_mb} / {r.rss_first_fifth_max_mb} / {r.rss_last_fifth_max_mb} / {r.rss_peak_mb} MB"),
        ("RSS levels off (last <= first + bound)", f"{r.rss_levels_off} (bound {r.rss_bound_mb} MB)"),
        ("serial p50 before / after", f"{r.serial_p50_before_ms} / {r.serial_p50_after_ms} ms"),
        ("recovered (all 200, p50 within 3x)", r.recovered),
    ]
    return "\n".join(["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def plot(answers: list[Answer], samples: list[tuple[float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot([t for t, _ in samples], [m for _, m in samples])
    ax1.set_ylabel("server RSS (MB)")
    for status, colour in ((200, "tab:blue"), (429, "tab:orange")):
        pts = [(a.sent, a.seconds * 1000) for a in answers if a.status == status]
        if pts:
            ax2.scatter(*zip(*pts), s=2, c=colour, label=str(status))
    lost = [(a.sent, a.seconds * 1000) for a in answers if a.status not in (200, 429)]
    if lost:
        ax2.scatter(*zip(*lost), s=8, c="red", label="lost")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency (ms)")
    ax2.set_xlabel("seconds into the soak (by arrival)")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(p)
    p.add_argument("--seconds", type=float, default=600, help="length of the soak")
    p.add_argument("--factor", type=float, default=2.0, help="offered load, in multiples of the measured capacity")
    p.add_argument("--clients", type=int, default=16, help="closed-loop clients that measure capacity")
    p.add_argument("--capacity-seconds", type=float, default=30)
    p.add_argument("--serial-seconds", type=float, default=10, help="one-at-a-time requests before and after")
    p.add_argument("--max-queue", type=int, default=64, help="the server's queue; beyond it, 429")
    p.add_argument("--max-connections", type=int, help="the client's connection pool (default 4 x queue + 16: "
                   "under the server's own limit of 4 x queue + 32, beyond which uvicorn answers 503 by design)")
    p.add_argument("--timeout", type=float, default=120, help="client timeout; no answer by then = lost")
    p.add_argument("--rss-bound-mb", type=float, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "serve_soak.json"))
    args = p.parse_args(argv)
    args.max_connections = args.max_connections or 4 * args.max_queue + 16
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else tiny_model(Path(tmp), args.size)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args, model, port, max_queue=args.max_queue)
        say(f"server up (pid {proc.pid})")
        try:
            result, answers, samples = soak(url, proc.pid, args)
        finally:
            proc.terminate()
            proc.wait(30)
    print(table(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    out.write_text(json.dumps({"settings": settings, "model": Path(args.model).name if args.model else "tiny-untrained",
                               "result": asdict(result), "passed": result.passed,
                               "rss_mb": [[round(t, 1), round(m, 1)] for t, m in samples]}, indent=2) + "\n")
    plot(answers, samples, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}; {'PASSED' if result.passed else 'FAILED'}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
