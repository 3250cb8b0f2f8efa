"""A face-recognition model behind an HTTP service: the purest black box.

Protocol (what `id3pm serve` speaks at /v1/embed):
  POST <url>  {"images": [<base64 PNG>, ...], "aligned": false}
  200         {"vectors": [[float, ...] | null, ...], "errors": [null | "reason", ...]}
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np

from id3pm.encoders.base import EncodeResult, Encoder
from id3pm.images import ImageError, check_rgb, png_bytes


class RemoteError(RuntimeError):
    pass


class ServiceDown(RemoteError):
    """Several batches in a row got no valid reply: stop rather than mark every image failed."""


class RemoteEncoder(Encoder):
    name = "remote"
    crop = None  # the service finds and crops faces itself

    def __init__(
        self,
        url: str,  # endpoint, e.g. http://127.0.0.1:8000/v1/embed
        dim: int | None = None,  # expected vector length (None: learn it from the first reply)
        timeout: float = 30.0,  # seconds per request
        retries: int = 3,  # extra attempts on connection errors, 429 and 5xx
        backoff: float = 0.5,  # seconds before the first retry, doubled each time
        token: str | None = None,  # Bearer token
        batch_size: int = 16,  # images per request
        distance: str = "euclidean",
        max_reply_bytes: int = 32 * 2**20,  # a reply's size limit: 16 vectors of 1,024 floats take ~0.3 MB
        max_failed_batches: int = 3,  # consecutive batches without a valid reply before giving up
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.url, self.timeout, self.retries, self.backoff = url, timeout, retries, backoff
        self.token, self.batch_size, self.distance = token, batch_size, distance
        self.max_reply_bytes, self.max_failed_batches = max_reply_bytes, max_failed_batches
        self.dim = int(dim) if dim else 0

    def spec(self) -> dict:
        return {"name": self.name, "url": self.url, "dim": self.dim, "timeout": self.timeout, "distance": self.distance}

    def encode_crops(self, crops):  # pragma: no cover - encode() is overridden
        raise NotImplementedError

    def _post(self, payload: dict) -> dict:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        delay, last = self.backoff, None
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = self._read(resp)
                try:
                    return json.loads(raw)
                except ValueError:
                    raise RemoteError(f"{self.url}: reply is not JSON ({raw[:80]!r})") from None
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read(200).decode(errors='replace')}"
                if e.code in (401, 403, 404, 405):  # wrong token or URL: every batch would fail alike
                    raise ServiceDown(f"{self.url}: {last}") from None
                if e.code != 429 and e.code < 500:
                    raise RemoteError(f"{self.url}: {last}") from None
            # a closed connection, a truncated body (IncompleteRead), a hang (socket timeout)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < self.retries:
                time.sleep(delay)
                delay *= 2
        raise RemoteError(f"{self.url}: no valid reply after {self.retries + 1} attempts ({last})")

    def _read(self, resp) -> bytes:
        """The body, within max_reply_bytes and within timeout in all: the socket timeout
        alone bounds each read, so a service that trickles bytes would never time out."""
        deadline, parts, size = time.monotonic() + self.timeout, [], 0
        while block := resp.read(1 << 16):
            size += len(block)
            if size > self.max_reply_bytes:
                raise RemoteError(f"{self.url}: reply larger than {self.max_reply_bytes} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(f"reply not complete after {self.timeout:g} s")
            parts.append(block)
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and size < int(declared):  # read(n) ends quietly at a closed socket
            raise http.client.IncompleteRead(b"", int(declared) - size)
        return b"".join(parts)

    def _check_reply(self, reply, n: int) -> tuple[list, list]:
        if not isinstance(reply, dict) or not isinstance(reply.get("vectors"), list):
            raise RemoteError(f"{self.url}: reply has no 'vectors' list")
        vectors = reply["vectors"]
        errors = reply.get("errors") or [None] * len(vectors)
        if len(vectors) != n or len(errors) != n:
            raise RemoteError(f"{self.url}: asked for {n} vectors, got {len(vectors)}")
        for v in vectors:
            if v is None:
                continue
            if not isinstance(v, list) or not all(isinstance(x, (int, float)) for x in v):
                raise RemoteError(f"{self.url}: a vector is not a list of numbers")
            if not self.dim:
                self.dim = len(v)
            if len(v) != self.dim:
                raise RemoteError(f"{self.url}: vector of length {len(v)}, expected {self.dim}")
        return vectors, errors

    def encode(self, images: Sequence[np.ndarray], aligned: bool = False, keys: Sequence[str] | None = None):
        names = list(keys) if keys is not None else [f"image {i}" for i in range(len(images))]
        rows: list = [None] * len(images)
        errors: list = [None] * len(images)
        todo = []
        for i, img in enumerate(images):
            try:
                check_rgb(img, names[i])
                todo.append(i)
            except ImageError as e:
                errors[i] = str(e)
        failed = 0
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            payload = {
                "images": [base64.b64encode(png_bytes(images[i], synthetic=False)).decode() for i in chunk],
                "aligned": aligned,
            }
            try:
                vectors, errs = self._check_reply(self._post(payload), len(chunk))
                failed = 0
            except ServiceDown:  # a wrong token or URL: every batch would fail alike
                raise
            except RemoteError as e:  # this batch's items get the error; the next batch is tried
                failed += 1
                if failed >= self.max_failed_batches:
                    raise ServiceDown(f"{e} ({failed} batches in a row; stopping)") from None
                for i in chunk:
                    errors[i] = f"{names[i]}: {e}"
                continue
            for i, v, e in zip(chunk, vectors, errs):
                if v is None:
                    errors[i] = f"{names[i]}: {e or 'the service returned no vector'}"
                elif not np.isfinite(v).all():
                    errors[i] = f"{names[i]}: the service returned a non-finite vector"
                else:
                    rows[i] = v
        out = np.full((len(images), self.dim), np.nan, dtype=np.float32)
        for i, v in enumerate(rows):
            if v is not None:
                out[i] = v
        return EncodeResult(out, errors, [None] * len(images))
