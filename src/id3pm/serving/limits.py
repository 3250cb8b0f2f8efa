"""The server's bounds, in one place: the guard, the request models and the worker all read them.

The request models are built from these numbers (see `schemas.request_models`), so the
OpenAPI schema tells clients the real bounds of this server.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024  # whole request body (413)
    max_pixels: int = 16_000_000  # decoded image size, checked from the header before decoding (413)
    max_embed_images: int = 16  # images per /v1/embed call
    max_n: int = 16  # samples per generate / per strength in edit
    max_images: int = 32  # images one request may ask for in total
    max_steps: int = 100
    # black-box queries one generate request may spend (id3pm.refine): each is a sample plus an
    # encoder call, run as one job that holds the worker (64 at 25 steps: ~50 s for the 32 px
    # reference model on 2 AVX2 cores)
    max_queries: int = 64
    max_guidance: float = 20.0
    max_frames: int = 16
    max_strengths: int = 9
    max_strength: float = 10.0
    rate: float = 5.0  # requests per second per client IP on /v1 (0: no rate limit)
    burst: int = 20  # bucket size: requests a client may send at once
    timeout_s: float = 120.0  # per request, queueing included (504)
    # A request head must arrive within this (408); also the longest a connection lingers after
    # an early answer, or waits on a client that reads nothing of its answer (see deadlines.py).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0  # a request body must arrive within this from the head (408)
    max_batch: int = 16  # images per batched forward pass
    window_s: float = 0.015  # how long the worker waits to fill a batch
    max_queue: int = 64  # requests waiting for the model; more get 429 at once
