"""Serving a model over HTTP: `id3pm serve --model DIR`.

    from id3pm.serving import create_app, serve
    app = create_app(pipe, directions, token=None, limits=Limits())   # any ASGI server
    serve("runs/x/model", host="127.0.0.1", port=8000)                 # uvicorn, blocking

Safe by default: loopback only unless a token is set (see `check_bind`).
"""

from __future__ import annotations

import ipaddress

from id3pm.serving.app import create_app
from id3pm.serving.batching import Batcher, EncodeJob, QueueFull, RenderJob, render
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


def serve(model=None, directions=None, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          device: str | None = None, limits: Limits | None = None, log_level: str = "info",
          upscale: str | None = None) -> None:
    """Load the model and run the API with uvicorn until interrupted."""
    check_bind(host, token)  # before the (slow) model load
    import uvicorn

    from id3pm.controls import load_directions
    from id3pm.pipeline import ID3PMPipeline

    from id3pm.superres import make_upscaler

    pipe = ID3PMPipeline.from_pretrained(model, device=device)
    pipe.upscaler = make_upscaler(upscale, device=device)  # requests ask for it with "upscale": true
    app = create_app(pipe, load_directions(directions) if directions else None, token=token, limits=limits)
    # proxy_headers=False: the rate limit keys on the real peer address, never on a
    # client-supplied X-Forwarded-For.
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False,
                limit_concurrency=4 * (limits or Limits()).max_queue + 32)


__all__ = ["Batcher", "EncodeJob", "Limits", "QueueFull", "RenderJob", "check_bind", "create_app", "is_loopback",
           "render", "serve"]
