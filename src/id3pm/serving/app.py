"""The HTTP face of a pipeline: a FastAPI app, safe by default.

    app = create_app(pipe, directions=None, token=None, limits=Limits())

Endpoints (OpenAPI at /openapi.json):
  POST /v1/embed        the remote-encoder protocol (JSON base64 images, or one multipart upload)
  POST /v1/generate     n samples of one identity (vector or photo) + identity distances
  POST /v1/interpolate  frames from identity a to b with one seed
  POST /v1/edit         one identity walked along a named direction (--directions file)
  GET  /v1/model        the model card, without file paths
  GET  /healthz         liveness + batching counters
  GET  /                a small self-contained web page

Safety: every request goes through `Guard` (body size; on /v1 also a rate limit per client IP
and the Bearer token) before FastAPI sees it; request models bound every number; images are
size-checked before decoding; no endpoint touches a path the client names; no CORS
headers unless origins are given (cors_origins). All errors are {"detail": "<one line>"}.

This module holds the routes; the pieces they use live beside it:
  limits.py      Limits, the server's bounds
  guard.py       the ASGI middleware in front of everything
  schemas.py     request and response models, the one-line error
  inputs.py      request bodies (JSON or multipart) and base64 images
  service.py     what the routes share: timeout, worker, identities, pictures
  model_card.py  GET /v1/model, without file paths
  batching.py    the worker thread that owns the model
"""

from __future__ import annotations

import logging
import re
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from id3pm.controls import interpolate as interpolate_vectors
from id3pm.controls import walk
from id3pm.images import ImageError
from id3pm.serving.batching import Batcher, EncodeJob
from id3pm.serving.guard import Guard
from id3pm.serving.inputs import read_body
from id3pm.serving.limits import Limits
from id3pm.serving.model_card import build_model_card
from id3pm.serving.schemas import (
    EditImageOut,
    EditResponse,
    EmbedResponse,
    ErrorOut,
    FrameOut,
    GenerateResponse,
    ImageOut,
    InterpolateResponse,
    one_line,
    request_models,
    validation_message,
)
from id3pm.serving.service import Service

log = logging.getLogger("id3pm.serve")
API_VERSION = "1"

# What can go wrong on every POST route: bad body, no token, body too slow, too large, wrong
# type, invalid, rate limit or full queue, timeout.
POST_ERRORS = (400, 401, 408, 413, 415, 422, 429, 504)
# A web origin as browsers send it: scheme://host[:port], nothing after.
ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def check_origins(origins: list[str]) -> None:
    """Refuse what a browser would never send as an Origin (a path, a trailing slash, a
    wildcard): such an entry would silently allow nothing."""
    for origin in origins:
        if not ORIGIN.match(origin):
            raise ValueError(f"invalid CORS origin {origin!r}: give scheme://host[:port], "
                             "e.g. https://example.org or http://localhost:3000")


def static_files() -> dict[str, tuple[bytes, str]]:
    """The web page, read once from the package: a fixed table, never a client-given path."""
    root = resources.files("id3pm.serving") / "static"
    kinds = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
             "style.css": "text/css; charset=utf-8"}
    return {name: ((root / name).read_bytes(), kind) for name, kind in kinds.items()}


def body_doc(model_schema: dict, files: dict[str, str], required: list[str]) -> dict:
    """OpenAPI requestBody of a route that reads JSON or multipart itself: the JSON model,
    or a form of its uploads plus its plain fields (same bounds; the API parses them as JSON)."""
    form: dict[str, Any] = {name: {"type": "string", "format": "binary"} for name in files}
    for name, prop in model_schema["properties"].items():
        if name not in form and ("enum" in prop or prop.get("type") in ("integer", "number", "boolean", "string")):
            form[name] = prop
    return {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model_schema['title']}"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": form, "required": required,
                                           "additionalProperties": False}},
    }}


def error_responses(*codes: int) -> dict:
    text = {400: "malformed request", 401: "missing or wrong token", 404: "not available on this server",
            408: "request head or body too slow",
            413: "body or image too large", 415: "unsupported content type", 422: "invalid input",
            429: "rate limited or queue full", 503: "shutting down", 504: "timed out"}
    return {c: {"model": ErrorOut, "description": text[c]} for c in sorted(codes)}


def create_app(pipe, directions: dict | None = None, token: str | None = None, limits: Limits | None = None,
               batcher: Batcher | None = None, cors_origins: list[str] | None = None) -> FastAPI:
    """The API for a loaded pipeline. batcher: a worker to use (the caller starts and closes
    it); by default the app makes one, starts it now and closes it at shutdown.
    cors_origins: the web origins (scheme://host[:port]) whose pages may call the API from a
    browser; none by default, so that no other site's page can read its answers."""
    limits = limits or Limits()
    check_origins(cors_origins or [])
    directions = dict(directions or {})
    for d in directions.values():
        if np.asarray(d.vector).shape != (pipe.id_dim,):
            raise ValueError(f"direction {d.name!r} has length {np.asarray(d.vector).size}, "
                             f"the model needs {pipe.id_dim}")
    if token is not None and not token.strip():
        raise ValueError("the token must not be empty")
    owns_batcher = batcher is None
    batcher = batcher or Batcher(pipe, limits.max_batch, limits.window_s, limits.max_queue).start()
    service = Service(pipe, batcher, limits)
    max_steps = min(limits.max_steps, pipe.diffusion.num_timesteps)
    models = request_models(limits, pipe.id_dim, max_steps, sorted(directions))
    GenerateRequest, InterpolateRequest, EditRequest, EmbedRequest = models
    page = static_files()

    @asynccontextmanager
    async def lifespan(app):
        if owns_batcher:
            batcher.start()  # again, if an earlier shutdown closed it
        yield
        if owns_batcher:
            await run_in_threadpool(batcher.close)

    # /docs and /redoc would load their scripts from a CDN: off; the schema is at /openapi.json.
    app = FastAPI(title="id3pm", version=API_VERSION, docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Controllable inversion of a black-box face recognition model. Every generated "
                              "image is synthetic and marked so in its PNG text chunks.")
    app.state.service, app.state.batcher = service, batcher

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse({"detail": one_line(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc: RequestValidationError):
        return JSONResponse({"detail": validation_message(exc)}, 422)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error (see the server log)"}, 500)

    # The POST routes parse their bodies themselves (JSON or multipart), so FastAPI does not
    # document them: per path, the model, where uploads go (see read_body) and the required
    # form fields, for `openapi` below.
    bodies = {"/v1/embed": (EmbedRequest, {"image": "append:images"}, ["image"]),
              "/v1/generate": (GenerateRequest, {"image": "b64"}, ["image"]),
              "/v1/interpolate": (InterpolateRequest, {"a": "identity", "b": "identity"}, ["a", "b"]),
              "/v1/edit": (EditRequest, {"image": "b64"}, ["image", "direction"])}

    async def parse(request: Request, path: str):
        model, files, _ = bodies[path]
        return await read_body(request, model, files)

    @app.post("/v1/embed", response_model=EmbedResponse, responses=error_responses(*POST_ERRORS))
    @service.timed
    async def embed(request: Request):
        """Identity vectors of face photos: the black box as a service (`--encoder remote`).
        A photo that cannot be used gets null and a reason; the others still get vectors."""
        req = await parse(request, "/v1/embed")
        names = [f"image {i}" for i in range(len(req.images))]
        images, errors = [], [None] * len(req.images)
        for i, b64 in enumerate(req.images):
            try:
                images.append(await service.decode(b64, names[i]))
            except ImageError as e:
                images.append(None)
                errors[i] = one_line(e)
        ok = [i for i, img in enumerate(images) if img is not None]
        vectors: list = [None] * len(images)
        warnings: list = [None] * len(images)
        if ok:
            job = EncodeJob([images[i] for i in ok], aligned=req.aligned, keys=[names[i] for i in ok])
            enc = await service.run(job)
            for j, i in enumerate(ok):
                errors[i] = enc.errors[j]
                warnings[i] = enc.warnings[j] if enc.warnings else None
                if enc.errors[j] is None:
                    vectors[i] = [float(x) for x in enc.vectors[j]]
        return EmbedResponse(vectors=vectors, errors=errors, warnings=warnings, dim=pipe.id_dim,
                             encoder=service.encoder_name)

    @app.post("/v1/generate", response_model=GenerateResponse, responses=error_responses(*POST_ERRORS))
    @service.timed
    async def generate(request: Request):
        """n samples of one identity (a vector, or the black box's vector of a photo), each
        with its identity distance to that vector. With queries: the n closest of that many
        images under the server's encoder, and the search's record."""
        req = await parse(request, "/v1/generate")
        vector, warnings = await service.identity(req, "input")
        if req.queries:
            out, labels, record = await service.refine_samples(req, vector)
            search = {"search": req.search, **({"strength": req.strength} if req.search == "renoise" else {})}
            params = service.params(req, n=req.n, queries=req.queries, **search)
            images = await service.pictures(out, params, labels, {}, ImageOut)
        else:
            out, seeds = await service.render_samples(req, vector[None], req.n)
            params, record = service.params(req, n=req.n), None
            images = await service.pictures(out, params, [{"seed": s} for s in seeds], {"distance": vector}, ImageOut)
        return GenerateResponse(images=images, vector=[float(x) for x in vector], refine=record,
                                distance_metric=service.metric, params=params, warnings=warnings)

    @app.post("/v1/interpolate", response_model=InterpolateResponse, responses=error_responses(*POST_ERRORS))
    @service.timed
    async def interpolate(request: Request):
        """Frames from identity a to identity b, all with one seed."""
        req = await parse(request, "/v1/interpolate")
        (va, wa), (vb, wb) = await service.identity(req.a, "a"), await service.identity(req.b, "b")
        out = await service.render(req, interpolate_vectors(va, vb, req.frames), [req.seed] * req.frames)
        params = service.params(req, frames=req.frames)
        labels = [{"t": float(t)} for t in np.linspace(0.0, 1.0, req.frames)]
        frames = await service.pictures(out, params, labels, {"distance_a": va, "distance_b": vb}, FrameOut)
        return InterpolateResponse(frames=frames, distance_metric=service.metric, params=params, warnings=wa + wb)

    @app.post("/v1/edit", response_model=EditResponse, responses=error_responses(404, *POST_ERRORS))
    @service.timed
    async def edit(request: Request):
        """One identity walked along a named direction of the server's --directions file:
        for each strength s, n samples of vector + s * direction."""
        if not directions:
            await request.body()  # read first: a client still sending would get a broken pipe, not the reason
            raise HTTPException(404, "this server has no directions (start it with --directions FILE)")
        req = await parse(request, "/v1/edit")
        if req.direction not in directions:
            raise HTTPException(422, f"unknown direction {req.direction[:40]!r}; this server has {sorted(directions)}")
        vector, warnings = await service.identity(req, "input")
        walked = walk(vector, directions[req.direction].vector, req.strengths)
        out, seeds = await service.render_samples(req, walked, req.n)  # strength-major: s0 seeds..., s1 seeds...
        params = service.params(req, direction=req.direction, n=req.n)
        strengths = [s for s in req.strengths for _ in range(req.n)]
        labels = [{"seed": s, "strength": st} for s, st in zip(seeds, strengths)]
        images = await service.pictures(out, params, labels, {"distance": vector}, EditImageOut)
        return EditResponse(images=images, direction=req.direction, distance_metric=service.metric,
                            params=params, warnings=warnings)

    @app.get("/v1/model", responses=error_responses(401, 429))
    async def model_card() -> dict[str, Any]:
        """The model card: task, sizes, encoder, training summary, directions, limits; no file paths."""
        return build_model_card(pipe, directions, limits, encoder=service.encoder_name, metric=service.metric)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness and the worker's counters (batches, forward passes, batch sizes)."""
        stats = batcher.snapshot()
        if not stats["alive"]:
            return JSONResponse({"detail": "the model worker is not running", **stats}, 503)
        return {"status": "ok", "version": API_VERSION, **stats}

    @app.get("/", include_in_schema=False)
    async def index():
        body, kind = page["index.html"]
        return Response(body, media_type=kind)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in page or name == "index.html":  # a fixed table: nothing else is ever read
            raise HTTPException(404, "not found")
        body, kind = page[name]
        return Response(body, media_type=kind)

    def openapi():
        """FastAPI's schema plus the request models of the routes that parse bodies themselves."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for path, (model, files, required) in bodies.items():
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
                schema["paths"][path]["post"]["requestBody"] = body_doc(js, files, required)
            if token is not None:  # every /v1 operation needs the Bearer token
                schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
                for path, ops in schema["paths"].items():
                    for op in ops.values() if path.startswith("/v1/") else ():
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(Guard, token=token, limits=limits)
    if cors_origins:  # outside the guard: a browser's preflight carries no token
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "content-type"], expose_headers=["retry-after"],
                           allow_credentials=False, max_age=600)
    return app


__all__ = ["API_VERSION", "Limits", "check_origins", "create_app"]
