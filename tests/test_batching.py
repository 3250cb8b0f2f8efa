"""The batcher's bookkeeping of which jobs a dead worker held (no model needed: the worker
is never started, so every submitted job stays queued)."""

import threading
import time

import numpy as np
from id3pm.serving.batching import Batcher, RenderJob


class SlowToRelease:
    """The queue's own lock, but its release gives other threads 1 ms to run: on a loaded CI
    machine a thread switch can land exactly there."""

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        self.lock.acquire()

    def __exit__(self, *exc):
        self.lock.release()
        time.sleep(0.001)


def test_a_job_submitted_while_a_crash_handler_looks_is_never_taken_for_one_the_worker_held():
    """Found by the fault-injection test (CI): a job submitted between the crash handler's look
    at the queue and its look at the live jobs was failed while still queued, and the next
    worker died claiming it ("Future in unexpected state: FINISHED")."""
    batcher = Batcher(pipe=None, max_queue=100_000)
    batcher._queue.mutex = SlowToRelease(batcher._queue.mutex)  # used by the crash handler's look only
    job = RenderJob(np.zeros((1, 4), np.float32), [0])
    stop, submitted = threading.Event(), []

    def submit_until_stopped():
        while not stop.is_set():
            submitted.append(batcher.submit(job))

    submitter = threading.Thread(target=submit_until_stopped)
    submitter.start()
    wrongly_taken = sum(len(batcher._taken()) for _ in range(30))
    stop.set()
    submitter.join()
    assert wrongly_taken == 0 and batcher.queued() == len(submitted) > 30


def test_a_job_already_answered_is_skipped_by_the_worker_not_fatal_to_it():
    batcher = Batcher(pipe=None)
    future = batcher.submit(RenderJob(np.zeros((1, 4), np.float32), [0]))
    future.set_exception(RuntimeError("failed by a crash handler"))
    pending = batcher._queue.get_nowait()
    assert batcher._claim(pending) is False
