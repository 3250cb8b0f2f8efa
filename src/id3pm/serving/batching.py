"""Dynamic batching: one worker thread owns the model and the encoder; requests queue
up and are merged into batched forward passes.

    batcher = Batcher(pipe, max_batch=16, window_s=0.015, max_queue=64).start()
    future = batcher.submit(RenderJob(vectors, seeds, guidance=2.0, steps=25, sampler="dpmpp_2m"))
    future.result().images  # (B, H, W, 3) uint8

Why a thread and not the event loop: a forward pass blocks for tens of milliseconds to
seconds; the HTTP side must keep accepting (and refusing) requests meanwhile. Why ONE
thread: the network and dlib are not meant to be driven from several threads at once,
and on one device parallel calls only fight over the same cores.

Every job is a list of (identity vector, seed) pairs, so generate (one vector, n
seeds), interpolate (F vectors, one seed) and edit (S vectors x n seeds) all merge.
Pairs of different requests share a forward pass only when their sampling settings
(steps, sampler, guidance) agree: those fix the network calls of the whole trajectory.
Batches go through `ID3PMPipeline.render`, where image i has its own generator seeded
with seeds[i]: a picture does not depend on what it was batched with.

A job that fails (an Exception) fails only its own group; the worker goes on. Should the
worker thread itself die (anything else raised in it: a bug, or the fault-injection test
that kills it, tests/faults.py:worker_kills), the jobs it held fail at once with
WorkerCrashed and a new worker takes over the queue: a request in flight gets an error
answer, never a wait until its timeout, and the server keeps serving.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass

import numpy as np
import torch

from id3pm.encoders import EncodeResult

log = logging.getLogger("id3pm.serve")

class QueueFull(RuntimeError):
    """The bounded queue is full: the caller should answer 429 at once."""


class BatcherClosed(RuntimeError):
    pass


class WorkerCrashed(RuntimeError):
    """The worker thread died while it held the job; a new worker has taken over."""


@dataclass
class RenderJob:
    vectors: np.ndarray  # (B, D) float32 identity vectors, one per image
    seeds: list[int]  # (B,) one seed per image
    guidance: float = 2.0
    steps: int = 25
    sampler: str = "dpmpp_2m"
    upscale: bool = False  # run the pipeline's upscaler on the pictures

    @property
    def key(self) -> tuple:  # jobs with equal keys can share forward passes
        return (int(self.steps), str(self.sampler), float(self.guidance), bool(self.upscale))

    def __len__(self) -> int:
        return len(self.seeds)


@dataclass
class RenderResult:
    images: np.ndarray  # (B, H, W, 3) uint8
    vectors: np.ndarray  # (B, D) the encoder's vectors of the images; NaN rows where it failed


@dataclass
class EncodeJob:
    images: list[np.ndarray]  # uint8 RGB
    aligned: bool = False
    keys: list[str] | None = None

    def __len__(self) -> int:
        return 0  # does not count towards the image budget of a render batch


@dataclass
class RefineJob:
    """One identity refined with black-box queries to the server's encoder (id3pm.refine).
    It renders and encodes `queries` images by itself, in max_batch chunks: the search is
    sequential (renoise rounds depend on the previous ones), so it merges with nothing."""
    vector: np.ndarray  # (D,) float32
    queries: int
    keep: int
    search: str = "best_of_n"
    strength: float = 0.5
    guidance: float = 2.0
    steps: int = 25
    sampler: str = "dpmpp_2m"
    seed: int = 0

    def __len__(self) -> int:
        return 0  # runs alone: it does not fill a render batch


@dataclass(eq=False)  # hashed by identity: kept in a set until answered
class _Pending:
    job: RenderJob | EncodeJob | RefineJob
    future: Future


def render(pipe, vectors: np.ndarray, seeds: list[int], guidance: float, steps: int, sampler: str) -> np.ndarray:
    """(B, H, W, 3) uint8: image i from vectors[i] and seeds[i] (the pipeline's batch
    primitive), so it equals pipe(vectors[i], num_images_per_id=1, seed=seeds[i]) whatever
    requests the pairs came from. The API has no attribute controls: an attribute model
    gets its attributes dropped (the model decides), as with `unset_attributes="drop"`."""
    if not 1 <= steps <= pipe.diffusion.num_timesteps:
        raise ValueError(f"steps must be in 1..{pipe.diffusion.num_timesteps}")
    attrs, mask = pipe._attributes(None, len(seeds))
    return pipe.render(vectors, seeds, guidance, steps, sampler, attrs, mask)


class Batcher:
    def __init__(self, pipe, max_batch: int = 16, window_s: float = 0.015, max_queue: int = 64):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.pipe, self.max_batch, self.window_s = pipe, int(max_batch), float(window_s)
        self._queue: queue.Queue[_Pending | None] = queue.Queue(maxsize=int(max_queue))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False  # start() was called and close() was not: a dead worker is replaced
        self._live: set[_Pending] = set()  # submitted and not answered yet (queued, or taken by the worker)
        # Held while a job enters the queue and _live, and while a crash handler tells the two
        # apart: without it a job submitted mid-snapshot looks "taken" and is failed while queued.
        self._submitting = threading.Lock()
        # Counters, written by the worker only (reads from other threads are for monitoring).
        self.stats = Counter(requests=0, completed=0, failed=0, cancelled=0, rejected=0, batches=0,
                             forward_passes=0, images=0, encode_jobs=0, refine_jobs=0, worker_crashes=0)
        self.batch_sizes: Counter = Counter()  # images per batch -> how many batches
        self.requests_per_batch: Counter = Counter()  # requests merged into a batch -> how many batches

    # -- the caller's side ------------------------------------------------------------
    def start(self) -> Batcher:
        """Start the worker (again, after close: an app's lifespan may run more than once)."""
        self._started = True
        if not self.alive:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="id3pm-batcher", daemon=True)
            self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, job: RenderJob | EncodeJob | RefineJob) -> Future:
        """A Future for the job's RenderResult / EncodeResult / RefineResult. Raises QueueFull at once when
        the queue is full; cancelling the future before the worker takes it skips the job."""
        if self._stop.is_set():
            raise BatcherClosed("the model worker is shutting down")
        if self._started and not self.alive:  # it died, and its own replacement did not start
            self.start()
        pending = _Pending(job, Future())
        with self._submitting:
            try:
                self._queue.put_nowait(pending)
            except queue.Full:
                self.stats["rejected"] += 1
                raise QueueFull(f"server busy: {self._queue.maxsize} requests already waiting") from None
            self._live.add(pending)
        pending.future.add_done_callback(lambda _: self._live.discard(pending))
        self.stats["requests"] += 1
        return pending.future

    def snapshot(self) -> dict:
        return {**self.stats, "queued": self.queued(), "alive": self.alive,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "requests_per_batch": {str(k): v for k, v in sorted(self.requests_per_batch.items())}}

    def close(self, timeout: float = 10.0) -> None:
        self._started = False
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes an idle worker at once
        if self._thread is not None:
            self._thread.join(timeout)
        while True:  # whatever is still queued will never run
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            if pending is not None and pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(BatcherClosed("the model worker was shut down"))

    # -- the worker -------------------------------------------------------------------
    def _gather(self) -> list[_Pending]:
        """The first waiting job, plus whatever arrives within the window, up to max_batch images.
        Should the worker die, whatever it took from the queue is found by _taken()."""
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        if first is None:  # close() woke us
            return []
        batch, images = [first], len(first.job)
        deadline = time.perf_counter() + self.window_s
        while images < self.max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                nxt = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if nxt is None:
                break
            batch.append(nxt)
            images += len(nxt.job)
        return batch

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        worker = threading.current_thread()

        def count(module, args, output):  # network calls of this worker (not of other users of the model)
            if threading.current_thread() is worker:
                self.stats["forward_passes"] += 1

        hook = self.pipe.model.register_forward_hook(count)
        try:
            self._loop()
        except BaseException as e:  # not a job's failure (those are caught in _finish): the worker itself died
            self._crashed(e)
        finally:
            hook.remove()

    def _crashed(self, error: BaseException) -> None:
        """Fail the jobs the dead worker held, and start a new worker for the queue."""
        log.error("the model worker died (%s: %s); restarting it", type(error).__name__, error)
        crash = WorkerCrashed(f"the model worker died while running this request ({type(error).__name__}); "
                              "it was restarted: retry")
        for p in self._taken():
            with contextlib.suppress(Exception):  # answered or cancelled meanwhile
                p.future.set_exception(crash)
        if self._started and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="id3pm-batcher", daemon=True)
            self._thread.start()
        self.stats["worker_crashes"] += 1  # last: a watcher that sees it finds the new worker in _thread

    def _taken(self) -> list[_Pending]:
        """Jobs submitted, not answered and no longer queued: the worker held them. (A kill may
        land inside queue.get after the item left the queue, so a list kept by the worker
        itself could miss one.)"""
        with self._submitting, self._queue.mutex:
            queued = {id(p) for p in self._queue.queue if p is not None}
            live = list(self._live)
        return [p for p in live if id(p) not in queued and not p.future.done()]

    def busy(self) -> bool:
        """Whether the worker holds a job now (for the fault-injection harness)."""
        return bool(self._taken())

    def _loop(self) -> None:
        while not self._stop.is_set():
            gathered = [p for p in self._gather() if self._claim(p)]
            for p in (p for p in gathered if isinstance(p.job, EncodeJob)):
                self._finish([p], lambda: [self._encode(p.job)])
            for p in (p for p in gathered if isinstance(p.job, RefineJob)):
                self._finish([p], lambda: [self._refine(p.job)])
            groups: dict[tuple, list[_Pending]] = {}
            for p in gathered:
                if isinstance(p.job, RenderJob):
                    groups.setdefault(p.job.key, []).append(p)
            for group in groups.values():
                self._finish(group, lambda g=group: self._render_group(g))

    def _claim(self, p: _Pending) -> bool:
        try:
            if p.future.set_running_or_notify_cancel():
                return True
        except RuntimeError:  # already answered: failed by a crash handler (should not happen; never fatal)
            return False
        self.stats["cancelled"] += 1  # its request timed out or went away while queued
        return False

    def _finish(self, pendings: list[_Pending], work) -> None:
        """Run work() -> one result per pending job; a failure fails every job of the group."""
        try:
            results = work()
        except Exception as e:  # reported to each caller; the worker lives on
            for p in pendings:
                with contextlib.suppress(InvalidStateError):
                    p.future.set_exception(e)
            self.stats["failed"] += len(pendings)
            return
        for p, r in zip(pendings, results):
            with contextlib.suppress(InvalidStateError):  # already failed by a crash handler: keep that answer
                p.future.set_result(r)
        self.stats["completed"] += len(pendings)

    def _encode(self, job: EncodeJob) -> EncodeResult:
        self.stats["encode_jobs"] += 1
        return self.pipe.encoder.encode(job.images, aligned=job.aligned, keys=job.keys)

    def _refine(self, job: RefineJob):
        from id3pm.refine import query_refine

        self.stats["refine_jobs"] += 1
        result = query_refine(self.pipe, job.vector[None], job.queries, keep=job.keep, search=job.search,
                              guidance_scale=job.guidance, num_inference_steps=job.steps, sampler=job.sampler,
                              seed=job.seed, strength=job.strength, batch_size=self.max_batch)
        self.stats["images"] += int(result.queries.sum())
        return result

    def _render_group(self, group: list[_Pending]) -> list[RenderResult]:
        """All (vector, seed) pairs of jobs with the same settings, in chunks of max_batch."""
        steps, sampler, guidance, upscale = group[0].job.key
        vectors = np.concatenate([p.job.vectors for p in group]).astype(np.float32)
        seeds = [s for p in group for s in p.job.seeds]
        owners = np.repeat(np.arange(len(group)), [len(p.job) for p in group])
        images, encoded = [], []
        for start in range(0, len(seeds), self.max_batch):
            chunk = slice(start, start + self.max_batch)
            imgs = render(self.pipe, vectors[chunk], seeds[chunk], guidance, steps, sampler)
            if upscale:  # the base picture's seed fixes the SR noise too, as in the pipeline
                imgs = self.pipe.upscale(imgs, vectors[chunk], seeds[chunk])
            images.append(imgs)
            encoded.append(self._encode_generated(imgs))
            self.stats["batches"] += 1
            self.stats["images"] += len(imgs)
            self.batch_sizes[len(imgs)] += 1
            self.requests_per_batch[len(set(owners[chunk].tolist()))] += 1
        images_all, encoded_all = np.concatenate(images), np.concatenate(encoded)
        bounds = np.cumsum([0] + [len(p.job) for p in group])
        return [RenderResult(images_all[a:b], encoded_all[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def _encode_generated(self, images: np.ndarray) -> np.ndarray:
        """The black box's vectors of generated canonical crops (for identity distances)."""
        enc = self.pipe.encoder
        if not enc.encodes_pixels:  # a lookup table cannot judge new images
            return np.full((len(images), self.pipe.id_dim), np.nan, np.float32)
        return enc.encode(list(images), aligned=True).vectors
