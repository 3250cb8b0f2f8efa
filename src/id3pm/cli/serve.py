"""`id3pm serve`."""

from __future__ import annotations

from id3pm.cli.registry import command, flags_of


@command("serve", "a REST API and web page for inversion (loopback only unless --token is given)")
def cmd_serve(args):
    import os

    from id3pm.serving import Limits, serve

    token = args.token or os.environ.get("ID3PM_TOKEN") or None  # the environment keeps it out of `ps`
    limits = Limits(max_batch=args.max_batch, window_s=args.batch_window_ms / 1000, max_queue=args.max_queue,
                    timeout_s=args.timeout, rate=args.rate, burst=args.burst,
                    max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_pixels=args.max_pixels,
                    header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                    max_queries=args.max_queries)
    serve(args.model, directions=args.directions, host=args.host, port=args.port, token=token, device=args.device,
          limits=limits, log_level=args.log_level, upscale=args.upscale, cors_origins=args.cors_origin,
          encoder=args.encoder, adapter=args.adapter)
    return 0


@flags_of("serve")
def _serve_flags(p):
    p.add_argument("--model", help="model folder (default: the shipped reference model)")
    p.add_argument("--encoder", help="serve another FR model's templates (needs --adapter; default: the model's own)")
    p.add_argument("--adapter", help="adapter folder from `id3pm adapt` for --encoder")
    p.add_argument("--directions", help="directions file (from `id3pm directions`) for /v1/edit")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on; anything but loopback needs --token")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /v1 (or set ID3PM_TOKEN)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--max-batch", type=int, default=16, help="images per batched forward pass")
    p.add_argument("--batch-window-ms", type=float, default=15, help="how long to wait to fill a batch")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests; more are refused with 429")
    p.add_argument("--timeout", type=float, default=120, help="seconds per request (504 after)")
    p.add_argument("--rate", type=float, default=5, help="requests/s per client IP (0: no limit)")
    p.add_argument("--burst", type=int, default=20, help="requests a client may send at once")
    p.add_argument("--max-body-mb", type=float, default=8, help="largest request body")
    p.add_argument("--max-pixels", type=int, default=16_000_000, help="largest input image (width x height)")
    p.add_argument("--max-queries", type=int, default=64,
                   help="black-box queries a generate request may spend on refinement (0: none allowed)")
    p.add_argument("--header-timeout", type=float, default=10, help="seconds a client has to send a request head")
    p.add_argument("--body-timeout", type=float, default=60, help="seconds a client has to send a request body")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="let web pages of this origin (scheme://host[:port]) call the API; repeat for more "
                        "(default: none, browsers block other sites' pages)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--upscale", nargs="?", const="auto", default="default",
                   help="super-resolution for requests (on unless a request says \"upscale\": false): SR model "
                        "folder, 'lanczos', 'none', or no value for the shipped SR model (Lanczos when none is "
                        "shipped). Default: the shipped SR model when one fits the model, else none")
