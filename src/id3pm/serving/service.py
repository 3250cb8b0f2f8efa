"""What the routes share: the per-request timeout, bounded image decoding, the model worker
(its refusals turned into HTTP answers), identities, and the pictures a route returns.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import threading

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from id3pm.encoders import identity_distance
from id3pm.images import ImageError, png_bytes
from id3pm.serving.batching import (Batcher, BatcherClosed, EncodeJob, QueueFull, RefineJob, RenderJob,
                                   RenderResult, WorkerCrashed)
from id3pm.serving.inputs import decode_image
from id3pm.serving.limits import Limits
from id3pm.serving.schemas import one_line


def finite_or_none(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def b64png(img: np.ndarray, meta: dict) -> str:
    return base64.b64encode(png_bytes(img, meta, synthetic=True)).decode()


class Service:
    """The routes' link to the pipeline's worker, within the server's limits."""

    def __init__(self, pipe, batcher: Batcher, limits: Limits):
        self.batcher, self.limits = batcher, limits
        self.metric = pipe.template_distance  # with an adapter: the templates' encoder, not the model's
        self.encoder_name = str(pipe.template_encoder)
        self.upscaler = getattr(pipe, "upscaler", None)
        # A decoded upload may take max_pixels x 3 bytes: only a few at once, whatever the traffic.
        self.decode_slots = threading.BoundedSemaphore(2)

    def timed(self, route):
        """The route within the per-request timeout (queueing included): 504 after it. A job
        still queued when time runs out is dropped (its future is cancelled)."""
        @functools.wraps(route)
        async def wrapper(request: Request):
            try:
                async with asyncio.timeout(self.limits.timeout_s):
                    return await route(request)
            except TimeoutError:
                raise HTTPException(504, f"the model did not answer within {self.limits.timeout_s:g} s") from None

        return wrapper

    async def decode(self, b64: str, name: str) -> np.ndarray:
        def work():
            with self.decode_slots:
                return decode_image(b64, name, self.limits.max_pixels)

        return await run_in_threadpool(work)

    async def run(self, job):
        """Queue a job for the worker and wait for its result."""
        try:
            future = self.batcher.submit(job)
        except QueueFull as e:
            raise HTTPException(429, str(e) + "; retry later", headers={"retry-after": "1"}) from None
        except BatcherClosed as e:
            raise HTTPException(503, str(e)) from None
        try:
            return await asyncio.wrap_future(future)
        except BatcherClosed as e:
            raise HTTPException(503, str(e)) from None
        except WorkerCrashed as e:
            raise HTTPException(503, str(e), headers={"retry-after": "1"}) from None
        except ValueError as e:  # bad input the worker found (e.g. an image it cannot use)
            raise HTTPException(422, one_line(e)) from None

    async def identity(self, ident, name: str) -> tuple[np.ndarray, list[str]]:
        """(vector, warnings) of an Identity: as given, or the black box's vector of the photo."""
        if ident.vector is not None:
            return np.asarray(ident.vector, np.float32), []
        try:
            img = await self.decode(ident.image, name)
        except ImageError as e:
            raise HTTPException(422, one_line(e)) from None
        enc = await self.run(EncodeJob([img], aligned=ident.aligned, keys=[name]))
        if enc.errors[0] is not None:
            raise HTTPException(422, one_line(enc.errors[0]))
        return enc.vectors[0], [w for w in enc.warnings if w]

    def upscales(self, req) -> bool:
        """Whether a request's pictures are super-resolved: as it says, else when the server can."""
        return self.upscaler is not None if req.upscale is None else req.upscale

    async def render(self, req, vectors: np.ndarray, seeds: list[int]) -> RenderResult:
        """One picture per (vector, seed), with the request's sampling settings."""
        if req.upscale and self.upscaler is None:
            raise HTTPException(422, "this server has no upscaler: start it with --upscale")
        return await self.run(RenderJob(vectors, seeds, req.guidance, req.steps, req.sampler, self.upscales(req)))

    async def render_samples(self, req, vectors: np.ndarray, n: int) -> tuple[RenderResult, list[int]]:
        """(result, seeds): n samples of each vector, vector after vector, every vector with the
        seeds req.seed, req.seed + 1, ...: sample k of any vector starts from the same noise."""
        seeds = [req.seed + k for _ in range(len(vectors)) for k in range(n)]
        return await self.render(req, np.repeat(vectors, n, axis=0), seeds), seeds

    async def refine_samples(self, req, vector: np.ndarray) -> tuple[RenderResult, list[dict], dict]:
        """(result, labels, record): the n closest of req.queries images under the server's
        encoder (id3pm.refine). Labels carry each image's judged distance and the seed of the
        fresh sample it descends from; the record, the search's queries, curve and seeds."""
        if req.upscale:
            raise HTTPException(422, "queries work without upscale for now")
        result = await self.run(RefineJob(vector, req.queries, req.n, req.search, req.strength, req.guidance,
                                          req.steps, req.sampler, req.seed))
        record = result.to_json()
        record.pop("encoder")  # its spec may name server paths (an ONNX file); params name the encoder
        for field in ("queries", "seconds", "distances", "lineages"):  # one identity: its entries
            record[field] = record[field][0]
        record["curve"] = record.pop("curves")[0]
        labels = [{"seed": lineage[0], "distance": d} for lineage, d in zip(record["lineages"], record["distances"])]
        return RenderResult(result.images[0], np.empty((0, 0), np.float32)), labels, record

    def distances(self, encoded: np.ndarray, reference: np.ndarray) -> list[float | None]:
        return [finite_or_none(d) for d in identity_distance(encoded, reference[None], self.metric)]

    def params(self, req, **extra) -> dict:
        upscale = {"upscale": self.upscaler.label} if self.upscales(req) and not getattr(req, "queries", 0) else {}
        return {"guidance": req.guidance, "steps": req.steps, "sampler": req.sampler, "seed": req.seed,
                "encoder": self.encoder_name, **upscale, **extra}

    async def pictures(self, out: RenderResult, params: dict, labels: list[dict], references: dict, model) -> list:
        """One `model` per rendered picture i: its PNG (params and labels[i] in its metadata), the
        fields of labels[i], and per `references` entry (field -> vector) its identity distance."""
        def build():  # PNG encoding is CPU work: off the event loop
            distances = {field: self.distances(out.vectors, ref) for field, ref in references.items()}
            return [model(png=b64png(img, {**params, **label}), **label, **{f: d[i] for f, d in distances.items()})
                    for i, (img, label) in enumerate(zip(out.images, labels))]

        return await run_in_threadpool(build)
