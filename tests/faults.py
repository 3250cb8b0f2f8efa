"""Fault injection: SIGKILL `id3pm prepare` and `id3pm train` at random moments (some
of them while a shard or a checkpoint is being written), rerun, and compare with an
uninterrupted run. Used small by tests/test_reliability.py and large by
scripts/reliability.py (`make reliability`), which prints the table of
docs/reliability.md.

Every run is a real `python -m id3pm.cli` process on tiny data the harness makes
(distinct 8x8 images, a table encoder), so that a kill lands anywhere: in the imports,
in the work, in a write, in a rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FaultRow:
    fault: str
    tried: int
    survived: int
    lost: int  # rows or steps missing or different after recovery: must be 0
    note: str = ""


def make_source(root: Path, n: int) -> tuple[Path, Path]:
    """n distinct 8x8 PNGs and a table of their vectors."""
    from PIL import Image

    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    keys = []
    for i in range(n):
        img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(img).save(src / f"f{i:04d}.png")
        keys.append(f"f{i:04d}.png")
    table = root / "vectors.npz"
    np.savez(table, keys=np.array(keys), vectors=rng.normal(size=(n, 8)).astype(np.float32))
    return src, table


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "id3pm.cli", *args]


def env(slow_writes: float = 0.0) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"),
            "ID3PM_FAULT_SLOW_WRITES": str(slow_writes)}


def run_to_end(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)


def kill_repeatedly(cmd: list[str], kills: int, rng: random.Random, duration: float, write_marker: Path,
                    after_each=None) -> list[str]:
    """SIGKILL runs of cmd until `kills` of them were really killed (a run that finished
    first is noted, not counted, and makes the next delays shorter). Atomic writes are
    slowed down (ID3PM_FAULT_SLOW_WRITES) so that kills can land inside them."""
    where, max_delay = [], duration
    for _ in range(kills * 4):
        if sum(w != "after it finished" for w in where) == kills:
            break
        where.append(run_and_kill(cmd, rng, max_delay, write_marker))
        if after_each is not None:
            after_each()
        if where[-1] == "after it finished":
            max_delay /= 2
    return where


def run_and_kill(cmd: list[str], rng: random.Random, max_delay: float, write_marker: Path | None) -> str:
    """Start cmd and SIGKILL it: after a random delay, or (half the time, when
    write_marker is given) as soon as a write is in progress. Returns where it was."""
    proc = subprocess.Popen(cmd, env=env(slow_writes=0.05), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_write = write_marker is not None and rng.random() < 0.5
    deadline = time.time() + (max_delay * 3 if wait_for_write else rng.uniform(0, max_delay))
    where = "at a random moment"
    while time.time() < deadline and proc.poll() is None:
        if wait_for_write and writing(write_marker):
            where = "during a write"
            break
        time.sleep(0.002)
    if proc.poll() is not None:
        return "after it finished"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return where


def writing(marker: Path) -> bool:
    """A checkpoint.tmp folder, or a .tmp file of an atomic write, exists in marker."""
    if marker.name.endswith(".tmp"):
        return marker.exists()
    return marker.is_dir() and any(p.suffix == ".tmp" for p in marker.iterdir())


# -- prepare --------------------------------------------------------------------------------
def prepare_cmd(src: Path, table: Path, out: Path) -> list[str]:
    return cli("prepare", str(src), str(out), "--encoder", f"table:path={table}", "--aligned", "--size", "8",
               "--workers", "1", "--chunk", "3", "--holdout", "0.2", "--image-format", "png")


def prepared_rows(out: Path) -> dict:
    """{key: (split, vector bytes, image bytes)} of every shard; raises on a duplicate key
    or an unreadable shard."""
    import pyarrow.parquet as pq

    rows = {}
    for shard in sorted(out.glob("shards/*.parquet")):
        table = pq.read_table(shard)
        for key, split, vec, img in zip(table["key"].to_pylist(), table["split"].to_pylist(),
                                        table["id_vector"].to_pylist(), table["image_8"].to_pylist()):
            if key in rows:
                raise AssertionError(f"{shard.name}: duplicate row {key}")
            rows[key] = (split, np.asarray(vec, np.float32).tobytes(), img)
    return rows


def prepare_kills(root: Path, kills: int, n_images: int = 60, seed: int = 0) -> FaultRow:
    src, table = make_source(root, n_images)
    reference = root / "reference"
    start = time.time()
    run_to_end(prepare_cmd(src, table, reference))
    duration = time.time() - start
    expected = prepared_rows(reference)
    out = root / "killed"
    where = kill_repeatedly(prepare_cmd(src, table, out), kills, random.Random(seed), duration, out / "shards",
                            after_each=lambda: prepared_rows(out))  # every shard readable, no duplicates, every time
    run_to_end(prepare_cmd(src, table, out))
    got = prepared_rows(out)
    lost = len(set(expected) ^ set(got)) + sum(got[k] != expected[k] for k in set(expected) & set(got))
    done = sum(w != "after it finished" for w in where)
    return FaultRow("SIGKILL `id3pm prepare`", done, done if lost == 0 else 0, lost, summarise(where))


# -- train ----------------------------------------------------------------------------------
def train_cmd(data: Path, out: Path, steps: int) -> list[str]:
    model = json.dumps({"block_out_channels": [32, 64], "attention_resolutions": [4]})
    return cli("train", str(data), str(out), "--size", "8", "--preset", "tiny", "--model", model, "--schedule", "linear",
               "--batch-size", "8", "--lr", "1e-3", "--warmup-steps", "5", "--max-steps", str(steps), "--save-every", "2",
               "--sample-every", "0", "--log-every", "2", "--progress", "no", "--mixed-precision", "no")


def checkpoint_tensors(run: Path, name: str = "checkpoint") -> dict:
    from safetensors.numpy import load_file

    ck = run / name
    out = {}
    for name in ("model", "ema", "optimizer"):
        out.update({f"{name}/{k}": v for k, v in load_file(ck / f"{name}.safetensors").items()})
    return out


def train_kills(root: Path, kills: int, steps: int = 40, seed: int = 0) -> FaultRow:
    src, table = make_source(root, 12)
    data = root / "data"
    run_to_end(prepare_cmd(src, table, data))
    reference = root / "reference"
    start = time.time()
    run_to_end(train_cmd(data, reference, steps))
    duration = time.time() - start
    out = root / "killed"
    where = kill_repeatedly(train_cmd(data, out, steps), kills, random.Random(seed), duration, out / "checkpoint.tmp")
    run_to_end(train_cmd(data, out, steps))
    a, b = checkpoint_tensors(reference), checkpoint_tensors(out)
    lost = len(set(a) ^ set(b)) + sum(not np.array_equal(a[k], b[k]) for k in set(a) & set(b))
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    lost += abs(state["step"] - steps)
    done = sum(w != "after it finished" for w in where)
    return FaultRow("SIGKILL `id3pm train` (weights bit-identical?)", done, done if lost == 0 else 0, lost,
                    summarise(where))


# -- disk full ------------------------------------------------------------------------------
class SmallDisk:
    """A tmpfs of a given size: a real ENOSPC, not a simulated one. Mounting needs root
    (CAP_SYS_ADMIN); mount_error() says why it cannot be done here."""

    def __init__(self, path: Path, size: int):
        self.path, self.size = path, size

    def __enter__(self) -> "SmallDisk":
        self.path.mkdir(parents=True, exist_ok=True)
        _mount("-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path))
        return self

    def resize(self, size: int) -> None:
        _mount("-o", f"remount,size={size}", str(self.path))

    def __exit__(self, *exc) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode:
        raise OSError(f"mount {' '.join(args)}: {proc.stderr.strip()}")


def mount_error(root: Path) -> str | None:
    """None when a tmpfs can be mounted here, else the reason."""
    try:
        with SmallDisk(root / "probe", 1 << 20):
            return None
    except OSError as e:
        return f"cannot mount a tmpfs (needs root): {e}"


def footprint(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def one_line_disk_full_error(proc: subprocess.CompletedProcess, command: str) -> bool:
    lines = proc.stderr.strip().splitlines()
    return (proc.returncode == 2 and "Traceback" not in proc.stderr and bool(lines)
            and lines[-1].startswith(f"id3pm {command}: error:") and "no space left on device" in lines[-1])


def disk_full_runs(root: Path, command: str, cmd_for, expected, state_of, sizes: list[float]) -> FaultRow:
    """Run cmd_for(out) on tmpfs disks of size fraction * the uninterrupted run's footprint.
    Survived: it stopped with a one-line error, what it had written before stayed readable
    (state_of raises otherwise), and a rerun after the disk grew ended equal to `expected`."""
    tried, survived, lost, notes = 0, 0, 0, []
    for i, fraction in enumerate(sizes):
        size = max(4096, int(fraction * expected["bytes"]))
        with SmallDisk(root / f"disk{i}", size) as disk:
            out = disk.path / "out"
            proc = subprocess.run(cmd_for(out), env=env(), capture_output=True, text=True, timeout=600)
            if proc.returncode == 0:
                notes.append("had space")
                continue
            tried += 1
            ok = one_line_disk_full_error(proc, command)
            try:
                state_of(out)  # what a crash-safe writer left must still read
            except Exception:
                ok = False
            disk.resize(8 * expected["bytes"] + (64 << 20))
            run_to_end(cmd_for(out))
            missing = expected["compare"](out)
            lost += missing
            survived += int(ok and missing == 0)
            notes.append("ENOSPC")
    return FaultRow(f"disk full during `id3pm {command}` (tmpfs)", tried, survived, lost, summarise(notes))


def train_disk_full(root: Path, sizes: list[float], steps: int = 12) -> FaultRow:
    """A tiny training run on disks too small for it: each stops at a checkpoint or log
    write, keeps its previous checkpoint loadable, and resumes to bit-identical weights."""
    src, table = make_source(root, 12)
    data = root / "data"
    run_to_end(prepare_cmd(src, table, data))
    reference = root / "reference"
    run_to_end(train_cmd(data, reference, steps))
    want = checkpoint_tensors(reference)

    def compare(out: Path) -> int:
        got = checkpoint_tensors(out)
        step = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
        return len(set(want) ^ set(got)) + sum(not np.array_equal(want[k], got[k]) for k in set(want) & set(got)) \
            + abs(step - steps)

    def state_of(out: Path) -> None:
        from id3pm.checkpoint import find_checkpoint

        ck = find_checkpoint(out / "checkpoint")
        if ck is not None:
            checkpoint_tensors(ck.parent if ck.name == "checkpoint" else out, ck.name)

    return disk_full_runs(root, "train", lambda out: train_cmd(data, out, steps),
                          {"bytes": footprint(reference), "compare": compare}, state_of, sizes)


def prepare_disk_full(root: Path, sizes: list[float], n_images: int = 30) -> FaultRow:
    """`prepare` on disks too small for its shards: each stops at a shard write, every
    shard written stays readable, and a rerun with space ends with exactly the rows."""
    src, table = make_source(root, n_images)
    reference = root / "reference"
    run_to_end(prepare_cmd(src, table, reference))
    want = prepared_rows(reference)

    def compare(out: Path) -> int:
        got = prepared_rows(out)
        return len(set(want) ^ set(got)) + sum(got[k] != want[k] for k in set(want) & set(got))

    return disk_full_runs(root, "prepare", lambda out: prepare_cmd(src, table, out),
                          {"bytes": footprint(reference), "compare": compare}, prepared_rows, sizes)


def summarise(where: list[str]) -> str:
    counts: dict[str, int] = {}
    for w in where:
        counts[w] = counts.get(w, 0) + 1
    return ", ".join(f"{n} {w}" for w, n in sorted(counts.items()))


def table(rows: list[FaultRow]) -> str:
    lines = ["| fault | tried | survived | data lost | notes (where the faults landed, what was seen) |", "|---|---|---|---|---|"]
    lines += [f"| {r.fault} | {r.tried} | {r.survived} | {r.lost} | {r.note} |" for r in rows]
    return "\n".join(lines)


# -- model folders ----------------------------------------------------------------------------
CORRUPTIONS = ("bit flip", "truncation", "appended bytes", "random bytes")


def tiny_model_folder(out: Path, id_dim: int = 8) -> Path:
    """A small model folder in 2+ shards, with the weight hashes save_model_dir records."""
    import torch

    from id3pm.modeldir import save_model_dir
    from id3pm.models import IDConditionedUNet

    torch.manual_seed(0)
    net = IDConditionedUNet(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=16,
                            norm_num_groups=4, attention_resolutions=(8,), id_dim=id_dim, dropout=0.0)
    info = {"task": "base", "image_size": 16, "diffusion": {"schedule": "cosine", "num_timesteps": 1000},
            "encoder": {"name": "dlib"}, "distance": "euclidean", "id_dim": id_dim}
    return save_model_dir(out, net, info, max_shard_size="40KB")


def corrupt(data: bytes, kind: str, rng: random.Random) -> bytes:
    if kind == "bit flip":
        at = rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :]
    if kind == "truncation":
        return data[: rng.randrange(len(data))]
    if kind == "appended bytes":
        return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 4096)))


def model_folder_corruptions(root: Path, cases: int, seed: int = 0) -> FaultRow:
    """Corrupt one weight file of a model folder at random (a bit anywhere, header or data;
    a truncation; bytes appended; random bytes) and check the folder: survived = refused
    with a one-line error naming the file; lost = corrupt weights accepted."""
    from id3pm.modelcheck import ModelFolderError, check_model_folder
    from id3pm.modeldir import read_info

    folder = tiny_model_folder(root / "model")
    info = read_info(folder)
    files = sorted((folder / "unet").glob("*.safetensors"))
    rng = random.Random(seed)
    survived, lost, kinds, unclear = 0, 0, [], []
    for _ in range(cases):
        target, kind = rng.choice(files), rng.choice(CORRUPTIONS)
        original = target.read_bytes()
        target.write_bytes(corrupt(original, kind, rng))
        try:
            check_model_folder(folder, info)
            lost += 1
        except ModelFolderError as e:
            clear = target.name in str(e) and "\n" not in str(e)
            survived += int(clear)
            unclear += [] if clear else [f"{kind}: {str(e).splitlines()[0][:120]}"]
        finally:
            target.write_bytes(original)
        kinds.append(kind)
    check_model_folder(folder, info)  # restored: loads again
    note = summarise(kinds) + (f"; first unclear refusal: {unclear[0]}" if unclear else "")
    return FaultRow("corrupt weight file of a model folder (refused in one line?)", cases, survived, lost, note)


# -- a live server --------------------------------------------------------------------------------
@dataclass
class Live:
    server: object  # uvicorn.Server
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def open_connections(self) -> int:
        return len(self.server.server_state.connections)


@contextlib.contextmanager
def live_server(app, limits, log_level: str = "error") -> Iterator[Live]:
    """uvicorn in a thread, with serve()'s options, on a free loopback port held from the start."""
    import uvicorn

    from id3pm.serving import uvicorn_options

    # IPPROTO_TCP as getaddrinfo gives it to uvicorn.run: with proto 0, asyncio leaves Nagle's
    # algorithm on for accepted connections, and every kept-alive answer waits 40 ms for an ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, **uvicorn_options(limits)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield Live(server, "127.0.0.1", sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


# -- a killed server worker ----------------------------------------------------------------------
class WorkerKilled(BaseException):
    """Raised inside the model worker thread by the harness: the thread dies wherever it is."""


def kill_thread(thread) -> None:
    import ctypes

    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(WorkerKilled))
    if done != 1:
        raise RuntimeError(f"could not kill thread {thread.name} ({done})")


class Clients:
    """Threads that POST /v1/generate in a loop and record (status, seconds, detail) per answer."""

    def __init__(self, url: str, n: int, steps: int):
        import threading

        self.url, self.steps, self.answers = url, steps, []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]

    def _loop(self, i: int) -> None:
        import httpx

        with httpx.Client(timeout=60) as c:
            k = 0
            while not self.stop.is_set():
                body = {"vector": [0.01 * ((i + j) % 7) for j in range(128)], "steps": self.steps, "n": 2, "seed": k}
                t0 = time.perf_counter()
                try:
                    r = c.post(f"{self.url}/v1/generate", json=body)
                    self.answers.append((r.status_code, time.perf_counter() - t0, r.json().get("detail", "")))
                except Exception as e:  # a hang ends here at the client's timeout
                    self.answers.append((0, time.perf_counter() - t0, f"{type(e).__name__}: {e}"))
                k += 1

    def __enter__(self) -> "Clients":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(90)


def worker_kills(root: Path, kills: int, clients: int = 4, seed: int = 0) -> FaultRow:
    """Kill the server's model worker thread at random moments while clients keep requests
    in flight (a real uvicorn on loopback, a tiny model). Survived: after the kill a new
    worker answers a fresh request, and every answer of the whole run was 200 or the
    one-line 503 "worker died ... retry" within 10 s (never a 500, a 504 or a hang).
    Lost: answers that were none of these."""

    import httpx
    from id3pm.pipeline import ID3PMPipeline
    from id3pm.serving import Limits, create_app

    rng = random.Random(seed)
    pipe = ID3PMPipeline.from_pretrained(tiny_model_folder(root / "model", id_dim=128), device="cpu")
    limits = Limits(rate=0, timeout_s=60)
    app = create_app(pipe, limits=limits)
    batcher = app.state.batcher
    survived, where = 0, []
    with live_server(app, limits, log_level="critical") as live, Clients(live.url, clients, steps=8) as load:
        url = live.url
        for _ in range(kills):
            time.sleep(rng.uniform(0.05, 0.5))
            before = batcher.stats["worker_crashes"]
            where.append("during a batch" if batcher.busy() else "while idle")
            kill_thread(batcher._thread)
            deadline = time.time() + 10
            while batcher.stats["worker_crashes"] == before and time.time() < deadline:
                time.sleep(0.01)
            try:
                probe = httpx.post(f"{url}/v1/generate", json={"vector": [0.0] * 128, "steps": 2}, timeout=60)
                answered = probe.status_code == 200
            except httpx.HTTPError:
                answered = False
            survived += int(batcher.stats["worker_crashes"] == before + 1 and answered)
        time.sleep(1.0)
    answers = load.answers
    crashed = [a for a in answers if a[0] == 503 and "worker died" in a[2] and "\n" not in a[2]]
    good = [a for a in answers if a[0] == 200]
    bad = [a for a in answers if a not in crashed and a not in good or a[1] > 10]
    note = (f"{summarise(where)}; {len(answers)} requests: {len(good)} answered 200, {len(crashed)} in flight got "
            f"503 'worker died, retry' (slowest {max((a[1] for a in crashed), default=0):.2f} s), {len(bad)} other")
    if bad:
        note += f"; first other: {bad[0][0]} {bad[0][2][:100]}"
    return FaultRow("model worker thread killed mid-batch (`id3pm serve`)", kills, survived, len(bad), note)
