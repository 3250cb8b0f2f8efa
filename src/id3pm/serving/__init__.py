"""Serving a model over HTTP: `id3pm serve --model DIR`.

    from id3pm.serving import create_app, serve
    app = create_app(pipe, directions, token=None, limits=Limits())   # any ASGI server
    serve("runs/x/model", host="127.0.0.1", port=8000)                 # uvicorn, blocking

Safe by default: loopback only unless a token is set (see `check_bind`).
"""

from __future__ import annotations

import ipaddress

from id3pm.serving.app import check_origins, create_app
from id3pm.serving.batching import Batcher, EncodeJob, QueueFull, RefineJob, RenderJob, render
from id3pm.serving.limits import Limits


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # any other host name may resolve to a public address
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token: anyone who could reach the
    port could otherwise turn the service into a face generator for any template."""
    if not is_loopback(host) and not token:
        raise ValueError(f"refusing to listen on {host} without a token: anyone who can reach this machine "
                         "could use the model. Pass --token T (or set ID3PM_TOKEN), or bind 127.0.0.1")


def uvicorn_options(limits: Limits) -> dict:
    """How uvicorn runs the app (serve() and the tests' live servers use the same)."""
    from id3pm.serving.deadlines import DeadlineH11Protocol

    return {
        # proxy_headers=False: the rate limit keys on the real peer address, never on a
        # client-supplied X-Forwarded-For.
        "proxy_headers": False, "server_header": False,
        # h11 with read deadlines, never httptools: a slow client cannot hold a connection.
        "http": DeadlineH11Protocol.with_timeouts(header_s=limits.header_timeout_s, linger_s=limits.header_timeout_s,
                                                  stall_s=limits.header_timeout_s),
        "h11_max_incomplete_event_size": 16 * 1024,  # request line + headers (400 beyond)
        # An idle kept-alive connection closes by the head deadline, not at uvicorn's 5 s:
        # httpx also drops idle connections at 5 s, and with both at 5 s a request sent on a
        # connection the server is closing got no answer (11 of 5,220 in the soak, ReadError).
        "timeout_keep_alive": max(limits.header_timeout_s, 5.0) + 1.0,
        # Connections beyond this get 503 at once; the deadlines above bound how long one is held.
        "limit_concurrency": 4 * limits.max_queue + 32,
    }


def serve(model=None, directions=None, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          device: str | None = None, limits: Limits | None = None, log_level: str = "info",
          upscale: str | None = "default", cors_origins: list[str] | None = None, encoder: str | None = None,
          adapter: str | None = None) -> None:
    """Load the model and run the API with uvicorn until interrupted. cors_origins: the web
    origins whose pages may call the API from a browser (none by default). encoder +
    adapter: serve another FR model's templates through an adapter (`id3pm adapt`)."""
    check_bind(host, token)  # before the (slow) model load
    check_origins(cors_origins or [])
    import uvicorn

    from id3pm.controls import load_directions
    from id3pm.pipeline import ID3PMPipeline

    from id3pm.superres import make_upscaler

    pipe = ID3PMPipeline.from_pretrained(model, device=device, encoder=encoder, adapter=adapter, upscale=None)
    pipe.upscaler = make_upscaler(upscale, device=device, base_info=pipe.info)  # requests may say "upscale": false
    limits = limits or Limits()
    app = create_app(pipe, load_directions(directions) if directions else None, token=token, limits=limits,
                     cors_origins=cors_origins)
    uvicorn.run(app, host=host, port=port, log_level=log_level, **uvicorn_options(limits))


__all__ = ["Batcher", "EncodeJob", "Limits", "QueueFull", "RefineJob", "RenderJob", "check_bind", "check_origins", "create_app",
           "is_loopback", "render", "serve", "uvicorn_options"]
