"""A scripted FR service on loopback: it answers `/v1/embed` like a remote black box
(vector = mean colour of each image) or misbehaves as its script says. Used by
tests/test_encoders.py and by the counted harness in tests/remote_faults.py."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

class FakeService(BaseHTTPRequestHandler):
    """Vectors = mean colour of each image; scripted failures."""

    script: list = []

    def do_POST(self):
        try:
            self.answer()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (a hang or a trickle past its deadline): as intended

    def answer(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        action = self.script.pop(0) if self.script else "ok"
        if action in ("503", "500"):
            self.send_response(int(action))
            self.end_headers()
            return
        if action == "close":  # no reply at all
            self.close_connection = True
            return
        if action == "hang":
            time.sleep(1.5)
        vectors = []
        for b64 in body["images"]:
            img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), np.float32)
            vectors.append(img.mean(axis=(0, 1)).tolist())
        if action == "short":
            vectors = [v[:2] for v in vectors]
        if action in ("nan", "inf"):
            vectors = [[float(action)] * 3 for _ in vectors]
        reply = json.dumps({"vectors": vectors, "errors": [None] * len(vectors)}).encode()
        if action == "garbage":
            reply = b"<html>oops</html>"
        if action == "huge":
            reply = b" " * 100_000 + reply
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply) + (1000 if action == "truncated" else 0)))
        self.end_headers()
        if action == "trickle":  # every byte within the socket timeout, the whole far beyond it
            for k in range(0, len(reply), 8):
                self.wfile.write(reply[k : k + 8])
                self.wfile.flush()
                time.sleep(0.1)
            return
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def running_service() -> Iterator[str]:
    """The service on a free loopback port; yields its /v1/embed URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/embed"
    finally:
        server.shutdown()
