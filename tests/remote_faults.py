"""A remote black box that misbehaves, counted: one `encode` job against the scripted
service (tests/fake_fr_service.py) in which every other request meets a random fault.
Used small by tests/test_reliability.py and large by scripts/reliability.py.

Survived: the faulted image gets a one-line error that names it and says what went
wrong, and every healthy image around it gets its exact vector (the job goes on).
Lost: a healthy image without its vector, or a faulted one that got a vector.
"""

from __future__ import annotations

import random
import time

import numpy as np
from fake_fr_service import FakeService, running_service
from faults import FaultRow, summarise

from id3pm.encoders import make_encoder

# fault -> what its item's error must say (the encoder's timeout is 0.5 s, replies are capped at 50 kB)
FAULTS = {"hang": "timed out", "trickle": "not complete after", "close": "RemoteDisconnected",
          "truncated": "IncompleteRead", "huge": "larger than 50000 bytes", "short": "length 2, expected 3",
          "nan": "non-finite", "inf": "non-finite", "garbage": "not JSON", "500": "HTTP 500"}


def encoder(url: str, retries: int = 0):
    return make_encoder({"name": "remote", "url": url, "dim": 3, "retries": retries, "backoff": 0.01, "timeout": 0.5,
                         "batch_size": 1, "max_reply_bytes": 50_000})


def colours(n: int) -> list[np.ndarray]:
    """n flat images whose vectors (mean colours) all differ."""
    return [np.full((8, 8, 3), (i % 250, (i // 250) % 250, 3), np.uint8) for i in range(n)]


def remote_encoder_faults(cases: int, seed: int = 0) -> FaultRow:
    """`cases` faults, each followed by a healthy reply (three failed batches in a row
    stop a job on purpose: ServiceDown), in one job of 2 x cases images."""
    rng = random.Random(seed)
    faults = [rng.choice(list(FAULTS)) for _ in range(cases)]
    images, keys = colours(2 * cases), [f"img{i:04d}.png" for i in range(2 * cases)]
    start = time.time()
    with running_service() as url:
        FakeService.script = [action for fault in faults for action in (fault, "ok")]
        result = encoder(url).encode(images, keys=keys)
    survived, lost, missed = 0, 0, []
    for i, fault in enumerate(faults):
        bad, good = 2 * i, 2 * i + 1
        error = result.errors[bad] or ""
        got_vector = np.isfinite(result.vectors[bad]).all()
        healthy = result.errors[good] is None and np.allclose(result.vectors[good], images[good][0, 0])
        lost += int(got_vector) + int(not healthy)
        if error.startswith(keys[bad] + ": ") and FAULTS[fault] in error and "\n" not in error and healthy:
            survived += 1
        else:
            missed.append(fault)
    note = (f"{summarise(faults)}; {2 * cases} images in one job, {time.time() - start:.0f} s"
            + (f"; not as expected: {summarise(missed)}" if missed else ""))
    return FaultRow("remote encoder misbehaving (one job, batches of one)", cases, survived, lost, note)


def remote_encoder_retries(cases: int) -> FaultRow:
    """A 500, then a closed connection, then an answer: with 2 retries every vector arrives."""
    images = colours(cases)
    with running_service() as url:
        FakeService.script = ["500", "close", "ok"] * cases
        result = encoder(url, retries=2).encode(images)
    arrived = sum(e is None and np.allclose(v, im[0, 0]) for e, v, im in zip(result.errors, result.vectors, images))
    return FaultRow("remote encoder: 500, closed connection, then an answer (2 retries)", cases, arrived,
                    cases - arrived, f"{3 * cases} requests")
