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
size-checked before decoding; no endpoint touches a path the client names. All errors
are {"detail": "<one line>"}.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import io
import json
import logging
import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from PIL import Image
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from id3pm.controls import interpolate as interpolate_vectors
from id3pm.controls import walk
from id3pm.encoders import identity_distance
from id3pm.images import SYNTHETIC_NOTICE, ImageError, load_image, png_bytes
from id3pm.sampling import SAMPLERS
from id3pm.serving.batching import Batcher, BatcherClosed, EncodeJob, QueueFull, RenderJob

log = logging.getLogger("id3pm.serve")
API_VERSION = "1"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024  # whole request body (413)
    max_pixels: int = 16_000_000  # decoded image size, checked from the header before decoding (413)
    max_embed_images: int = 16  # images per /v1/embed call
    max_n: int = 16  # samples per generate / per strength in edit
    max_images: int = 32  # images one request may ask for in total
    max_steps: int = 100
    max_guidance: float = 20.0
    max_frames: int = 16
    max_strengths: int = 9
    max_strength: float = 10.0
    rate: float = 5.0  # requests per second per client IP on /v1 (0: no rate limit)
    burst: int = 20  # bucket size: requests a client may send at once
    timeout_s: float = 120.0  # per request, queueing included (504)
    max_batch: int = 16  # images per batched forward pass
    window_s: float = 0.015  # how long the worker waits to fill a batch
    max_queue: int = 64  # requests waiting for the model; more get 429 at once


def one_line(text: Any, limit: int = 400) -> str:
    return " ".join(str(text).split())[:limit]


# -- request and response models -------------------------------------------------------
# Built per app because the limits and the vector length are the server's own: the
# OpenAPI schema then tells clients the real bounds.
Finite = Annotated[float, Field(allow_inf_nan=False)]
MAX_ENTRY = 1000.0


def request_models(limits: Limits, id_dim: int, max_steps: int, direction_names: list[str]):
    def right_length(v: list[float] | None) -> list[float] | None:
        if v is not None and len(v) != id_dim:
            raise ValueError(f"expected an identity vector of {id_dim} numbers, got {len(v)}")
        return v

    # Entries bounded so that float32 cannot overflow (identity vectors are O(1) anyway).
    Entry = Annotated[float, Field(ge=-MAX_ENTRY, le=MAX_ENTRY, allow_inf_nan=False)]
    Vector = Annotated[list[Entry], AfterValidator(right_length),
                       Field(json_schema_extra={"minItems": id_dim, "maxItems": id_dim})]
    Sampler = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]

    class Identity(BaseModel):
        """One identity: its vector, or a photo (base64, any format Pillow reads) to embed."""
        model_config = ConfigDict(extra="forbid", strict=True,
                                  json_schema_extra={"oneOf": [{"required": ["vector"]}, {"required": ["image"]}]})
        # Absent means not given (the schema does not offer null: give the other one instead).
        vector: Vector = Field(None, description=f"identity vector ({id_dim} numbers)")
        image: str = Field(None, description="base64 image (a data: URL prefix is allowed)")
        aligned: bool = Field(False, description="the image is already a canonical face crop")

        @model_validator(mode="after")
        def exactly_one(self):
            if (self.vector is None) == (self.image is None):
                raise ValueError("give exactly one of 'vector' or 'image'")
            return self

    class Sampling(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        guidance: Finite = Field(2.0, ge=0, le=limits.max_guidance, description="classifier-free guidance scale")
        # 2 at least: a one-step respaced schedule breaks GaussianDiffusion (no previous step).
        steps: int = Field(min(25, max_steps), ge=2, le=max_steps)
        sampler: Sampler = "dpmpp_2m"
        seed: int = Field(0, ge=0, le=2**31 - 1)

    # Defaults never exceed the limits (pydantic does not check defaults).
    max_n = min(limits.max_n, limits.max_images)
    max_frames = min(limits.max_frames, limits.max_images)
    k = min(5, limits.max_strengths, limits.max_images)
    default_strengths = np.linspace(-2, 2, k).tolist() if k > 1 else [1.0]

    class GenerateRequest(Sampling, Identity):
        n: int = Field(min(4, max_n), ge=1, le=max_n)

    class InterpolateRequest(Sampling):
        a: Identity
        b: Identity
        frames: int = Field(min(7, max_frames), ge=2, le=max_frames)

    class EditRequest(Sampling, Identity):
        direction: str = Field(..., max_length=200, json_schema_extra={"enum": direction_names} if direction_names else None)
        strengths: list[Annotated[float, Field(ge=-limits.max_strength, le=limits.max_strength,
                                               allow_inf_nan=False)]] = Field(
            default_factory=lambda: list(default_strengths), min_length=1, max_length=limits.max_strengths)
        n: int = Field(1, ge=1, le=limits.max_n)

        @model_validator(mode="after")
        def bounded_total(self):
            if len(self.strengths) * self.n > limits.max_images:
                raise ValueError(f"{len(self.strengths)} strengths x n={self.n} images exceeds the limit of "
                                 f"{limits.max_images} images per request")
            return self

    class EmbedRequest(BaseModel):
        """The remote-encoder protocol of id3pm.encoders.remote."""
        model_config = ConfigDict(extra="forbid", strict=True)
        images: list[str] = Field(..., min_length=1, max_length=limits.max_embed_images,
                                  description="base64 images")
        aligned: bool = False

    return GenerateRequest, InterpolateRequest, EditRequest, EmbedRequest


class ImageOut(BaseModel):
    png: str = Field(..., description="base64 PNG, marked synthetic in its text chunks")
    seed: int
    distance: float | None = Field(None, description="identity distance to the input (null: not measurable)")


class GenerateResponse(BaseModel):
    images: list[ImageOut]
    vector: list[float] = Field(..., description="the identity vector generated from")
    distance_metric: str
    params: dict[str, Any]
    warnings: list[str] = []
    synthetic: bool = True


class FrameOut(BaseModel):
    png: str
    t: float
    distance_a: float | None
    distance_b: float | None


class InterpolateResponse(BaseModel):
    frames: list[FrameOut]
    distance_metric: str
    params: dict[str, Any]
    warnings: list[str] = []
    synthetic: bool = True


class EditImageOut(ImageOut):
    strength: float


class EditResponse(BaseModel):
    images: list[EditImageOut]
    direction: str
    distance_metric: str
    params: dict[str, Any]
    warnings: list[str] = []
    synthetic: bool = True


class EmbedResponse(BaseModel):
    vectors: list[list[float] | None]
    errors: list[str | None]
    warnings: list[str | None] = []
    dim: int
    encoder: str


class ErrorOut(BaseModel):
    detail: str


# -- the guard in front of everything -----------------------------------------------------
class TokenBuckets:
    """Per-client token buckets: `rate` requests/s on average, bursts of `burst`."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000):
        self.rate, self.burst, self.max_clients = rate, max(1, burst), max_clients
        self.buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last time)

    def take(self, client: str) -> float:
        """0 when the request may go, else seconds until it could."""
        now = time.monotonic()
        tokens, last = self.buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self.buckets[client] = (tokens - 1, now)
            wait = 0.0
        else:
            self.buckets[client] = (tokens, now)
            wait = (1 - tokens) / self.rate
        if len(self.buckets) > self.max_clients:  # forget clients whose buckets have refilled
            full = [c for c, (t, at) in self.buckets.items() if t + (now - at) * self.rate >= self.burst]
            for c in full:
                del self.buckets[c]
        return wait


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body too large (limit {limit} bytes)")


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
]


class Guard:
    """Pure ASGI middleware: checks that need no body run before the app reads it.
    Order: declared body size, rate limit (also slows token guessing), token; then the
    body stream itself is counted, so a client without Content-Length cannot exceed it."""

    def __init__(self, app, token: str | None, limits: Limits):
        self.app, self.token, self.limits = app, token, limits
        self.buckets = TokenBuckets(limits.rate, limits.burst) if limits.rate > 0 else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + SECURITY_HEADERS}
            await send(message)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        limit = self.limits.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            return await error(send_with_headers, 400, "invalid Content-Length header")
        if declared is not None and int(declared) > limit:  # refused unread: the connection closes
            return await error(send_with_headers, 413, f"request body too large ({declared} bytes > limit {limit} bytes)")
        if scope["path"].startswith("/v1/"):
            refusal = None
            if self.buckets is not None:
                wait = self.buckets.take((scope.get("client") or ("unknown",))[0])
                if wait:
                    refusal = (429, f"rate limit exceeded ({self.limits.rate:g} requests/s per client); retry in "
                                    f"{wait:.1f} s", {"retry-after": str(int(np.ceil(wait)))})
            if refusal is None and self.token is not None and not self._authorized(headers.get("authorization", "")):
                refusal = (401, "missing or wrong token: send 'Authorization: Bearer <token>'", {"www-authenticate": "Bearer"})
            if refusal is not None:
                # Read (and drop) a body within the size limit first: a client still sending
                # when the server answers and closes gets a broken pipe instead of the reason.
                await drain(receive, limit)
                return await error(send_with_headers, *refusal)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted_receive, send_with_headers)

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())


async def drain(receive, limit: int) -> None:
    seen, more = 0, True
    while more and seen <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        more = message.get("more_body", False)


async def error(send, status: int, detail: str, headers: dict | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())] + extra})
    await send({"type": "http.response.body", "body": body})


# -- reading requests -------------------------------------------------------------------------
def validation_message(e: ValidationError | RequestValidationError) -> str:
    """The first problem as one line: 'n: Input should be less than or equal to 16'."""
    errs = e.errors()
    if not errs:
        return "invalid request"
    first = errs[0]
    loc = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body",))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
    return one_line(f"{loc}: {msg}{more}" if loc else f"{msg}{more}")


def form_value(text: str):
    """A multipart text field: JSON where it parses (4, 2.5, true, [..], {..}), else the text."""
    if text.lower() in ("true", "false"):  # what form encoders write for booleans varies
        return text.lower() == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


async def read_body(request: Request, model, files: dict[str, str]):
    """A request model from a JSON body, or from a multipart form where `files` maps
    upload fields to how they enter the model ("b64": a base64 string; "identity":
    {"image": base64}; "append:FIELD": appended to a list field). Both go through the
    same strict JSON validation: true is not a number, "4" is not an integer."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        data: dict[str, Any] = {}
        try:
            form = await request.form(max_files=4, max_fields=32)
        except HTTPException:
            raise
        except Exception as e:  # malformed multipart
            raise HTTPException(422, one_line(f"invalid multipart form: {e}")) from None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in files:
                    raise HTTPException(422, f"unexpected file field {key!r}; files go in {sorted(files) or 'none'}")
                b64 = base64.b64encode(await value.read()).decode()
                how = files[key]
                if how == "identity":
                    data[key] = {"image": b64}
                elif how.startswith("append:"):
                    data.setdefault(how.split(":", 1)[1], []).append(b64)
                else:
                    data[key] = b64
            else:
                data[key] = form_value(value)
        try:
            return model.model_validate_json(json.dumps(data))
        except ValidationError as e:
            raise HTTPException(422, validation_message(e)) from None
    if ctype not in ("application/json", ""):
        raise HTTPException(415, f"unsupported content type {ctype!r}: send application/json or multipart/form-data")
    body = await request.body()
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise HTTPException(422, validation_message(e)) from None


DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


def decode_image(b64: str, name: str, max_pixels: int) -> np.ndarray:
    """base64 -> uint8 RGB. A picture over max_pixels is refused from its header, before
    any decoding (413); anything else unreadable is an ImageError naming the item."""
    try:
        data = base64.b64decode(DATA_URL.sub("", b64.strip()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{name}: not valid base64") from None
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            w, h = im.size
    except Image.DecompressionBombError:  # Pillow's own guard, far above ours
        raise HTTPException(413, f"{name}: image too large (a decompression bomb; limit {max_pixels} pixels)") from None
    except Exception:
        w = h = 0  # not an image Pillow knows: load_image says why
    if w * h > max_pixels:
        raise HTTPException(413, f"{name}: image too large ({w}x{h} > {max_pixels} pixels)")
    try:
        return load_image(data, name=name, max_pixels=max_pixels)
    except ImageError as e:
        if "too large" in str(e):
            raise HTTPException(413, one_line(e)) from None
        raise ImageError(re.sub(r" <_io\.BytesIO object at 0x[0-9a-f]+>", "", str(e))) from None  # no addresses


# -- the service ------------------------------------------------------------------------------
PATH_KEYS = {"path", "from", "url", "init_from", "root", "out", "dir", "file", "samples"}


def looks_like_path(v: Any) -> bool:
    return isinstance(v, str) and (v.startswith(("/", "~", "./", "../", "\\\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", v)))


def scrub(obj: Any) -> Any:
    """A model card without file paths (and without bulky training samples)."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items()
                if k not in PATH_KEYS and not k.endswith(("_path", "_dir", "_file", "_url")) and not looks_like_path(v)}
    if isinstance(obj, list):
        return [scrub(v) for v in obj if not looks_like_path(v)]
    if isinstance(obj, float) and not np.isfinite(obj):  # JSON has no NaN
        return None
    return obj


def finite_or_none(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def b64png(img: np.ndarray, meta: dict) -> str:
    return base64.b64encode(png_bytes(img, meta, synthetic=True)).decode()


class Service:
    """What the routes share: the pipeline, its worker, the directions and the limits."""

    def __init__(self, pipe, batcher: Batcher, directions: dict, limits: Limits):
        self.pipe, self.batcher, self.directions, self.limits = pipe, batcher, directions, limits
        self.metric = pipe.info.get("distance", "euclidean")
        self.encoder_name = str(pipe.info.get("encoder", {}).get("name", "unknown"))
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

    def distances(self, encoded: np.ndarray, reference: np.ndarray) -> list[float | None]:
        return [finite_or_none(d) for d in identity_distance(encoded, reference[None], self.metric)]

    def params(self, req, **extra) -> dict:
        return {"guidance": req.guidance, "steps": req.steps, "sampler": req.sampler, "seed": req.seed,
                "encoder": self.encoder_name, **extra}

    def model_card(self) -> dict:
        info = self.pipe.info
        return {
            "task": info.get("task"), "image_size": self.pipe.image_size, "id_dim": self.pipe.id_dim,
            "encoder": {"name": self.encoder_name, "distance": self.metric},
            "samplers": sorted(SAMPLERS),
            "directions": [{"name": d.name, **scrub({k: v for k, v in d.provenance.items()
                                                      if k in ("kind", "label", "component", "encoder")})}
                           for d in self.directions.values()],
            "limits": {k: v for k, v in asdict(self.limits).items() if k not in ("window_s",)},
            "synthetic_notice": SYNTHETIC_NOTICE,
            "info": scrub({k: v for k, v in info.items() if k != "format"}),
        }


# -- the app ------------------------------------------------------------------------------------
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
            413: "body or image too large", 415: "unsupported content type", 422: "invalid input",
            429: "rate limited or queue full", 503: "shutting down", 504: "timed out"}
    return {c: {"model": ErrorOut, "description": text[c]} for c in codes}


def create_app(pipe, directions: dict | None = None, token: str | None = None, limits: Limits | None = None,
               batcher: Batcher | None = None) -> FastAPI:
    """The API for a loaded pipeline. batcher: a worker to use (the caller starts and closes
    it); by default the app makes one, starts it now and closes it at shutdown."""
    limits = limits or Limits()
    directions = dict(directions or {})
    for d in directions.values():
        if np.asarray(d.vector).shape != (pipe.id_dim,):
            raise ValueError(f"direction {d.name!r} has length {np.asarray(d.vector).size}, the model needs {pipe.id_dim}")
    if token is not None and not token.strip():
        raise ValueError("the token must not be empty")
    owns_batcher = batcher is None
    batcher = batcher or Batcher(pipe, limits.max_batch, limits.window_s, limits.max_queue).start()
    service = Service(pipe, batcher, directions, limits)
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

    # Routes that parse their bodies themselves (JSON or multipart): model, upload fields, required form fields.
    bodies = {"/v1/embed": (EmbedRequest, {"image": "append:images"}, ["image"]),
              "/v1/generate": (GenerateRequest, {"image": "b64"}, ["image"]),
              "/v1/interpolate": (InterpolateRequest, {"a": "identity", "b": "identity"}, ["a", "b"]),
              "/v1/edit": (EditRequest, {"image": "b64"}, ["image", "direction"])}

    async def parse(request: Request, path: str):
        model, files, _ = bodies[path]
        return await read_body(request, model, files)

    @app.post("/v1/embed", response_model=EmbedResponse, responses=error_responses(400, 401, 413, 415, 422, 429, 504))
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
            enc = await service.run(EncodeJob([images[i] for i in ok], aligned=req.aligned, keys=[names[i] for i in ok]))
            for j, i in enumerate(ok):
                errors[i] = enc.errors[j]
                warnings[i] = enc.warnings[j] if enc.warnings else None
                if enc.errors[j] is None:
                    vectors[i] = [float(x) for x in enc.vectors[j]]
        return EmbedResponse(vectors=vectors, errors=errors, warnings=warnings, dim=pipe.id_dim, encoder=service.encoder_name)

    @app.post("/v1/generate", response_model=GenerateResponse, responses=error_responses(400, 401, 413, 415, 422, 429, 504))
    @service.timed
    async def generate(request: Request):
        """n samples of one identity (a vector, or the black box's vector of a photo), each
        with its identity distance to that vector."""
        req = await parse(request, "/v1/generate")
        vector, warnings = await service.identity(req, "input")
        seeds = [req.seed + j for j in range(req.n)]
        out = await service.run(RenderJob(np.repeat(vector[None], req.n, 0), seeds, req.guidance, req.steps, req.sampler))
        params = service.params(req, n=req.n)

        def build():
            dist = service.distances(out.vectors, vector)
            return [ImageOut(png=b64png(img, {**params, "seed": s}), seed=s, distance=d)
                    for img, s, d in zip(out.images, seeds, dist)]

        return GenerateResponse(images=await run_in_threadpool(build), vector=[float(x) for x in vector],
                                distance_metric=service.metric, params=params, warnings=warnings)

    @app.post("/v1/interpolate", response_model=InterpolateResponse,
              responses=error_responses(400, 401, 413, 415, 422, 429, 504))
    @service.timed
    async def interpolate(request: Request):
        """Frames from identity a to identity b, all with one seed."""
        req = await parse(request, "/v1/interpolate")
        (va, wa), (vb, wb) = await service.identity(req.a, "a"), await service.identity(req.b, "b")
        vectors = interpolate_vectors(va, vb, req.frames)
        out = await service.run(RenderJob(vectors, [req.seed] * req.frames, req.guidance, req.steps, req.sampler))
        params = service.params(req, frames=req.frames)
        ts = np.linspace(0.0, 1.0, req.frames)

        def build():
            da, db = service.distances(out.vectors, va), service.distances(out.vectors, vb)
            return [FrameOut(png=b64png(img, {**params, "t": float(t)}), t=float(t), distance_a=x, distance_b=y)
                    for img, t, x, y in zip(out.images, ts, da, db)]

        return InterpolateResponse(frames=await run_in_threadpool(build), distance_metric=service.metric,
                                   params=params, warnings=wa + wb)

    @app.post("/v1/edit", response_model=EditResponse, responses=error_responses(400, 401, 404, 413, 415, 422, 429, 504))
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
        vectors = np.repeat(walked, req.n, axis=0)  # strength-major: s0 seeds..., s1 seeds...
        seeds = [req.seed + k for _ in req.strengths for k in range(req.n)]
        out = await service.run(RenderJob(vectors, seeds, req.guidance, req.steps, req.sampler))
        params = service.params(req, direction=req.direction, n=req.n)
        strengths = [s for s in req.strengths for _ in range(req.n)]

        def build():
            dist = service.distances(out.vectors, vector)
            return [EditImageOut(png=b64png(img, {**params, "seed": s, "strength": st}), seed=s, strength=st, distance=d)
                    for img, s, st, d in zip(out.images, seeds, strengths, dist)]

        return EditResponse(images=await run_in_threadpool(build), direction=req.direction,
                            distance_metric=service.metric, params=params, warnings=warnings)

    @app.get("/v1/model", responses=error_responses(401, 429))
    async def model_card() -> dict[str, Any]:
        """The model card: task, sizes, encoder, training summary, directions, limits; no file paths."""
        return service.model_card()

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
    return app
