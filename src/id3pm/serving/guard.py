"""The guard in front of the app: checks that need no request body, made before FastAPI reads it.

    app.add_middleware(Guard, token=token, limits=limits)

In this order: the declared body size (every path), then on /v1 the rate limit per client
IP (first, so that it also slows token guessing) and the Bearer token. The body stream
itself is counted as the app reads it, so a client without Content-Length cannot exceed
the limit either, and it must arrive within `body_timeout_s` (408): a client trickling a
body cannot hold a request open (the connection's own deadlines are in deadlines.py).
Every response also gets the security headers.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import time

from starlette.exceptions import HTTPException

from id3pm.serving.limits import Limits

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                  b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")),
]


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
    """Raised from inside the app's body reads; the app's HTTPException handler answers 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body too large (limit {limit} bytes)")


class BodyTimeout(HTTPException):
    """Raised from inside the app's body reads when the body is late: 408, and the connection closes."""

    def __init__(self, seconds: float):
        super().__init__(408, f"request body not received within {seconds:g} s", headers={"connection": "close"})


class BodyReader:
    """The request's `receive` as the app gets it: the body is counted against the size
    limit (413) and due within timeout_s of the request's start (408). Once the body is
    complete, reads (a wait for the client's disconnect) are passed through untimed."""

    def __init__(self, receive, limit: int, timeout_s: float):
        self.receive, self.limit, self.timeout_s = receive, limit, timeout_s
        self.deadline = asyncio.get_running_loop().time() + timeout_s
        self.seen, self.complete = 0, False

    async def __call__(self):
        if self.complete:
            return await self.receive()
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self.receive()
        except TimeoutError:
            raise BodyTimeout(self.timeout_s) from None
        if message["type"] != "http.request":  # the client is gone
            self.complete = True
            return message
        self.seen += len(message.get("body", b""))
        if self.seen > self.limit:
            raise BodyTooLarge(self.limit)
        self.complete = not message.get("more_body", False)
        return message

    async def drain(self) -> None:
        """Read and drop the body, until its end, the size limit or the deadline."""
        try:
            while not self.complete:
                await self()
        except (BodyTooLarge, BodyTimeout):
            return


class Guard:
    """Pure ASGI middleware (see the module docstring)."""

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
            return await send_error(send_with_headers, 400, "invalid Content-Length header")
        if declared is not None and int(declared) > limit:  # refused unread: the connection closes
            return await send_error(send_with_headers, 413,
                                    f"request body too large ({declared} bytes > limit {limit} bytes)")
        body = BodyReader(receive, limit, self.limits.body_timeout_s)
        if scope["path"].startswith("/v1/"):
            refusal = self._refusal(scope, headers)
            if refusal is not None:
                # Read (and drop) a body within the size limit first: a client still sending
                # when the server answers and closes gets a broken pipe instead of the reason.
                await body.drain()
                return await send_error(send_with_headers, *refusal)
        await self.app(scope, body, send_with_headers)

    def _refusal(self, scope, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
        """(status, detail, headers) when a /v1 request may not go on: rate limited or unauthorized."""
        if self.buckets is not None:
            wait = self.buckets.take((scope.get("client") or ("unknown",))[0])
            if wait:
                return (429, f"rate limit exceeded ({self.limits.rate:g} requests/s per client); retry in {wait:.1f} s",
                        {"retry-after": str(math.ceil(wait))})
        if self.token is not None and not self._authorized(headers.get("authorization", "")):
            return 401, "missing or wrong token: send 'Authorization: Bearer <token>'", {"www-authenticate": "Bearer"}
        return None

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right. The
        # header's text was decoded as latin-1, so encoding it so gives back the bytes sent;
        # a client sends a non-ASCII token as its UTF-8 bytes.
        given_bytes = given.strip(" \t").encode("latin-1")
        return scheme.lower() == "bearer" and hmac.compare_digest(given_bytes, self.token.encode("utf-8"))


async def send_error(send, status: int, detail: str, headers: dict | None = None) -> None:
    """A whole {"detail": ...} JSON response, sent before the app ever runs."""
    body = json.dumps({"detail": detail}).encode()
    extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + extra})
    await send({"type": "http.response.body", "body": body})
