"""Hostile HTTP clients against a live `id3pm serve`: real uvicorn on loopback, run with the
options serve() gives it (`uvicorn_options`). Used small by tests/test_serve_abuse.py and
large by scripts/reliability.py (`http_abuse(root, scale)`).

Attacks: slow clients (request heads and bodies sent a byte at a time, idle connections,
bodies trickled after an early answer, answers never read), oversized and deeply nested JSON, odd JSON (huge
numbers, NaN, duplicate keys, bad UTF-8, a BOM), multipart bombs, decompression bombs,
CR/LF, quotes and unicode in file names, paths in every string field, wrong tokens, and
cross-origin requests. A probe is raw bytes on a fresh connection, so that what a client
library refuses to send (CR/LF in a part header, a body that never ends) is in reach.

A probe survives when its answer has the expected status, an error detail of one line,
and no header carrying what the client injected; an attack class survives when the server
still serves a normal request after it. Every open() of the process is watched (an audit
hook) while the probes run: a path a client named must never be opened.
"""

from __future__ import annotations

import base64
import io
import json
import random
import select
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
from faults import FaultRow, Live, live_server  # noqa: F401 (live_server: used by test_serve_abuse too)

DIM = 128  # the dlib black box's vector length
TOKEN = "tok-5b1f0c9e7a"
MARKER = "INJECTED"  # in every header a client tries to smuggle: must never come back
ERRORS = (400, 408, 413, 415, 422)  # a refusal of the input


# -- a server to attack -------------------------------------------------------------------------
def tiny_model(out: Path) -> Path:
    """An untrained 16x16 model conditioned on the real dlib black box (as in test_serve)."""
    import torch

    from id3pm.modeldir import save_model_dir
    from id3pm.models import IDConditionedUNet

    torch.manual_seed(0)
    net = IDConditionedUNet(sample_size=16, block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=16,
                            norm_num_groups=4, attention_resolutions=(8,), id_dim=DIM, dropout=0.0)
    info = {"task": "base", "image_size": 16, "diffusion": {"schedule": "cosine", "num_timesteps": 1000},
            "encoder": {"name": "dlib"}, "distance": "euclidean", "id_dim": DIM}
    return save_model_dir(out, net, info)


def tiny_pipe(root: Path):
    from id3pm.pipeline import ID3PMPipeline

    return ID3PMPipeline.from_pretrained(tiny_model(root / "model"), device="cpu")


def directions() -> dict:
    from id3pm.controls import Direction

    return {"age": Direction("age", np.full(DIM, 0.01, np.float32), {"kind": "continuous"})}


# -- raw HTTP ------------------------------------------------------------------------------------
def request(method: str, path: str, body: bytes = b"", headers: list[tuple] = (), token: str | None = TOKEN) -> bytes:
    """The bytes of an HTTP/1.1 request; Content-Length is added unless headers give a length."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    if token is not None:
        lines.append(b"Authorization: Bearer " + token.encode())
    names = set()
    for name, value in headers:
        name, value = as_bytes(name), as_bytes(value)
        names.add(name.lower())
        lines.append(name + b": " + value)
    if not names & {b"content-length", b"transfer-encoding"}:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def as_bytes(x) -> bytes:
    return x if isinstance(x, bytes) else str(x).encode()


def json_request(path: str, body, token: str | None = TOKEN) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request("POST", path, data, [("Content-Type", "application/json")], token)


@dataclass
class Part:
    """One part of a multipart body, its Content-Disposition written as given (raw bytes)."""
    disposition: bytes
    data: bytes
    headers: bytes = b""  # more header lines, each ending in CRLF


def multipart(parts: list[Part], boundary: bytes = b"b0undary", final: bool = True) -> bytes:
    out = b""
    for p in parts:
        out += b"--" + boundary + b"\r\nContent-Disposition: " + p.disposition + b"\r\n" + p.headers + b"\r\n"
        out += p.data + b"\r\n"
    return out + (b"--" + boundary + b"--\r\n" if final else b"")


def form_request(path: str, parts: list[Part], boundary: bytes = b"b0undary", final: bool = True,
                 content_type: bytes | None = None) -> bytes:
    ctype = content_type if content_type is not None else b"multipart/form-data; boundary=" + boundary
    return request("POST", path, multipart(parts, boundary, final), [("Content-Type", ctype)])


def field_part(name: str, value: bytes | str) -> Part:
    return Part(b'form-data; name="' + name.encode() + b'"', as_bytes(value))


def file_part(name: str, data: bytes, filename: bytes = b"face.png", headers: bytes = b"") -> Part:
    return Part(b'form-data; name="' + name.encode() + b'"; filename="' + filename + b'"', data,
                headers + b"Content-Type: image/png\r\n")


@dataclass
class Reply:
    status: int  # 0: no answer at all (closed or reset)
    head: bytes  # status line and header lines, as received
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    def detail(self) -> str | None:
        try:
            detail = json.loads(self.body)["detail"]
        except (ValueError, KeyError, TypeError):
            return None
        return detail if isinstance(detail, str) else None


def exchange(host: str, port: int, data: bytes, timeout: float = 60.0) -> Reply:
    """Send a request and read its answer (a server may answer and close before all is sent)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early: the answer may still be there to read
        return read_reply(sock)


def read_reply(sock: socket.socket) -> Reply:
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 "):
            return Reply(0, head, body)
        reply = Reply(int(head.split(b" ")[1]), head, body)
        length = reply.header("content-length")
        while length is None or len(reply.body) < int(length):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply.body += chunk
        return reply
    except (ConnectionResetError, TimeoutError):
        return Reply(0, buf, b"")


# -- probes ------------------------------------------------------------------------------------
@dataclass
class Probe:
    name: str
    data: bytes  # the whole request
    expect: tuple[int, ...] = ERRORS
    detail: str = ""  # the error detail starts with this
    absent: tuple[str, ...] = ()  # no response header (name or value) contains these

    def problem(self, reply: Reply) -> str | None:
        """None when the answer is right, else what is wrong with it."""
        if reply.status not in self.expect:
            return f"{self.name}: HTTP {reply.status} (expected {self.expect}): {reply.body[:160]!r}"
        head = reply.head.decode("latin-1").lower()
        for word in (MARKER.lower(), *self.absent):
            if word.lower() in head:
                return f"{self.name}: {word!r} in the response headers"
        if reply.status >= 400 and "application/json" in (reply.header("content-type") or ""):
            detail = reply.detail()
            if detail is None or "\n" in detail or "\r" in detail:
                return f"{self.name}: the error is not a one-line detail: {reply.body[:160]!r}"
            if not detail.startswith(self.detail):
                return f"{self.name}: detail {detail[:160]!r} does not start with {self.detail!r}"
        elif reply.status >= 400 and b"\n" in reply.body.strip():
            return f"{self.name}: a plain-text error of more than one line: {reply.body[:160]!r}"
        return None


def vec(seed: int = 0) -> list[float]:
    return np.random.default_rng(seed).normal(size=DIM).round(4).tolist()


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


# A picture without a face. Only where it fails before face detection: on a faceless picture
# the detector falls back to its CNN, seconds of CPU (tens on a loaded machine) per probe.
BLANK_PNG = png(np.full((16, 16, 3), 200, np.uint8))
NOT_AN_IMAGE = b"GIF89a but not really"  # 422 "cannot read image", at once


def zeros_png(width: int, height: int) -> bytes:
    """A real zip bomb of a PNG: width x height black pixels, a few kB on the wire."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height pixels (10 G pixels: Pillow's own guard)."""
    import struct
    import zlib

    data = bytearray(png(np.zeros((1, 1, 3), np.uint8)))
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def oversized_probes(limit: int, rng: random.Random) -> list[Probe]:
    extra = rng.randint(1, 1 << 20)
    chunk = b"[" + b"0," * 4000 + b"0]"
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // len(chunk) + 2)) + b"0\r\n\r\n"
    return [
        Probe("declared Content-Length over the limit", request("POST", "/v1/generate", b"{}", [
            ("Content-Type", "application/json"), ("Content-Length", limit + extra)]), (413,), "request body too large"),
        Probe("chunked body over the limit, no Content-Length", request("POST", "/v1/generate", chunked, [
            ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]), (413,), "request body too large"),
        Probe("a Content-Length that is not a number", request("POST", "/v1/generate", b"{}", [
            ("Content-Type", "application/json"), ("Content-Length", "12abc")]), (400,)),
        # h11 bounds what it buffers of an unfinished head (16 kB): a head that arrives whole
        # in one read may be larger, one that takes several reads may not.
        # uvicorn answers 400 and closes while the client still sends: the client may see a reset (0).
        Probe("a request head of 100 kB-1 MB", request("GET", "/v1/model", headers=[
            ("X-Pad", "a" * (100_000 + extra % 900_000))]), (400, 0)),
    ]


def nested_probes(rng: random.Random) -> list[Probe]:
    depth = rng.randint(20_000, 100_000)
    arrays = ("[" * depth + "]" * depth).encode()
    objects = ('{"a":' * depth + "1" + "}" * depth).encode()
    invalid = "Invalid JSON: recursion limit exceeded"
    return [
        Probe(f"{depth} nested arrays as the body", json_request("/v1/generate", arrays), (422,), invalid),
        Probe(f"{depth} nested objects as the body", json_request("/v1/generate", objects), (422,), invalid),
        Probe(f"{depth} nested arrays in images", json_request("/v1/embed", b'{"images": ' + arrays + b"}"), (422,),
              invalid),
        Probe(f"{depth} nested arrays in a.vector", json_request(
            "/v1/interpolate", b'{"a": {"vector": ' + arrays + b'}, "b": {"vector": [0]}}'), (422,), invalid),
        Probe(f"{depth} unclosed arrays", json_request("/v1/generate", b"[" * depth), (422,), "Invalid JSON"),
        # A form field is parsed as JSON where it parses: Python's json would recurse out.
        Probe(f"{depth} nested arrays in a multipart field", form_request("/v1/generate", [
            file_part("image", BLANK_PNG), field_part("n", arrays)]), (422,), "n: Input should be a valid integer"),
        Probe(f"{depth} nested objects in a multipart field", form_request("/v1/generate", [
            file_part("image", BLANK_PNG), field_part("steps", objects)]), (422,), "steps: Input should be"),
    ]


def odd_json_probes(rng: random.Random) -> list[Probe]:
    digits = rng.randint(4301, 20_000)
    big = ("9" * digits).encode()
    v = json.dumps(vec(1))[1:-1].encode()
    good = b'{"vector": [' + v + b'], "steps": 2, "n": 1'
    return [
        Probe(f"n with {digits} digits", json_request("/v1/generate", good + b', "n": ' + big + b"}"), (422,),
              "Invalid JSON: number out of range"),
        Probe(f"seed with {digits} digits in a multipart field", form_request("/v1/generate", [
            file_part("image", BLANK_PNG), field_part("seed", big)]), (422,), "seed: Input should be a valid integer"),
        Probe("guidance 1e999", json_request("/v1/generate", good + b', "guidance": 1e999}'), (422,), "guidance:"),
        Probe("guidance NaN", json_request("/v1/generate", good + b', "guidance": NaN}'), (422,), "guidance:"),
        Probe("guidance Infinity", json_request("/v1/generate", good + b', "guidance": Infinity}'), (422,), "guidance:"),
        Probe("a vector entry -Infinity", json_request("/v1/generate", b'{"vector": [-Infinity' + b", 0" * (DIM - 1)
                                                       + b"]}"), (422,), "vector.0: Input should be a finite number"),
        Probe("guidance NaN in a multipart field", form_request("/v1/generate", [
            file_part("image", BLANK_PNG), field_part("guidance", "NaN")]), (422,), "guidance:"),
        Probe("seed 1e308 (a float for an integer)", json_request("/v1/generate", good + b', "seed": 1e308}'), (422,),
              "seed:"),
        Probe("duplicate keys, the last one too large", json_request("/v1/generate", good + b', "n": 1, "n": 99}'),
              (422,), "n: Input should be less than or equal to"),
        Probe("duplicate keys, the last one valid", json_request("/v1/embed", b'{"images": ["' + b64(BLANK_PNG).encode()
                                                                  + b'"], "aligned": 3, "aligned": true}'), (200,)),
        Probe("invalid UTF-8 in a string", json_request("/v1/embed", b'{"images": ["\xff\xfe\xc3("]}'), (422,),
              "Invalid JSON"),
        Probe("a lone surrogate escape", json_request("/v1/embed", b'{"images": ["\\ud800"]}'), (200, 422)),
        Probe("a UTF-8 BOM before the JSON", json_request("/v1/generate", b"\xef\xbb\xbf" + good + b"}"), (422,),
              "Invalid JSON"),
        Probe("UTF-16 JSON", json_request("/v1/generate", (good + b"}").decode().encode("utf-16")), (422,),
              "Invalid JSON"),
        Probe("NUL after the JSON", json_request("/v1/generate", good + b"}\x00"), (422,), "Invalid JSON"),
        Probe("an empty body", json_request("/v1/generate", b""), (422,), "Invalid JSON"),
        Probe("a JSON array for an object", json_request("/v1/generate", b"[]"), (422,)),
    ]


def multipart_probes(rng: random.Random) -> list[Probe]:
    many = rng.randint(1000, 20_000)
    huge = rng.randint(1 << 20, 4 << 20)
    image = file_part("image", NOT_AN_IMAGE)
    nested = (b"--inner\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n\r\n"
              + BLANK_PNG + b"\r\n--inner--\r\n")
    return [
        Probe(f"{many} text fields", form_request("/v1/generate", [field_part("n", "1")] * many), (400,),
              "Too many fields"),
        Probe(f"{many} files", form_request("/v1/embed", [image] * many), (400,), "Too many files"),
        Probe("5 files where 4 may come", form_request("/v1/embed", [image] * 5), (400,), "Too many files"),
        # python-multipart allows 8 header lines of 4224 bytes per part
        Probe(f"a part header of {huge} bytes", form_request("/v1/generate", [
            file_part("image", NOT_AN_IMAGE, headers=b"X-Pad: " + b"a" * huge + b"\r\n")]), (400,),
              "Invalid multipart data"),
        Probe(f"a file name of {huge} bytes", form_request("/v1/generate", [
            file_part("image", NOT_AN_IMAGE, filename=b"a" * huge)]), (400,), "Invalid multipart data"),
        Probe("a file name of 4000 bytes", form_request("/v1/generate", [
            file_part("image", NOT_AN_IMAGE, filename=b"a" * 4000)]), (422,), "input: cannot read image"),
        Probe("a part with 9 header lines", form_request("/v1/generate", [
            file_part("image", NOT_AN_IMAGE, headers=b"X-A: 1\r\n" * 8)]), (400,), "Invalid multipart data"),
        Probe("a text field over 1 MB", form_request("/v1/generate", [image, field_part("sampler", "a" * huge)]),
              (400,), "Part exceeded maximum size"),
        Probe("no boundary", form_request("/v1/generate", [image], content_type=b"multipart/form-data"), (400,),
              "Missing boundary"),
        Probe("no final boundary", form_request("/v1/generate", [image], final=False), (400, 422)),
        Probe("a 2000-byte boundary", form_request("/v1/generate", [image], boundary=b"x" * 2000), (400, 422)),
        Probe("a boundary that never occurs", request("POST", "/v1/generate", multipart([image]), [
            ("Content-Type", "multipart/form-data; boundary=elsewhere")]), (400, 422)),
        Probe("a part without a name", form_request("/v1/generate", [Part(b"form-data", BLANK_PNG)]), (400,),
              'The Content-Disposition header field "name" must be provided'),
        Probe("a multipart/mixed inside a part", form_request("/v1/generate", [
            Part(b'form-data; name="image"; filename="n.png"', nested,
                 b"Content-Type: multipart/mixed; boundary=inner\r\n")]), (422,), "input: cannot read image"),
        Probe("an upload in a field that takes none", form_request("/v1/generate", [file_part("sampler", BLANK_PNG)]),
              (422,), "unexpected file field 'sampler'"),
        Probe(f"{huge} bytes of preamble", request("POST", "/v1/generate", b"\r\n" * (huge // 2) + multipart([image]),
                                                   [("Content-Type", "multipart/form-data; boundary=b0undary")]),
              (400, 422)),
    ]


def bomb_probes(limits) -> list[Probe]:
    side = int((limits.max_pixels * 1.25) ** 0.5) + 1  # 25 % over the pixel limit
    bomb, huge = zeros_png(side, side), png_claiming(100_000, 100_000)
    too_large = f"image too large ({side}x{side} > {limits.max_pixels} pixels)"
    return [
        Probe(f"{len(bomb)}-byte PNG of {side}x{side} as JSON", json_request("/v1/generate", {"image": b64(bomb)}),
              (413,), "input: " + too_large),
        Probe(f"{len(bomb)}-byte PNG of {side}x{side} uploaded", form_request("/v1/generate", [
            file_part("image", bomb)]), (413,), "input: " + too_large),
        Probe("the bomb second in /v1/embed's list", json_request("/v1/embed", {"images": [b64(BLANK_PNG), b64(bomb)]}),
              (413,), "image 1: " + too_large),
        Probe("the bomb among /v1/embed uploads", form_request("/v1/embed", [
            file_part("image", BLANK_PNG), file_part("image", bomb)]), (413,), "image 1: " + too_large),
        Probe("the bomb as interpolate's b", json_request("/v1/interpolate", {
            "a": {"vector": vec()}, "b": {"image": b64(bomb)}}), (413,), "b: " + too_large),
        Probe("a PNG header claiming 10 G pixels", json_request("/v1/embed", {"images": [b64(huge)]}), (413,),
              "image 0: image too large"),
        Probe("a PNG header claiming 10 G pixels, uploaded", form_request("/v1/generate", [
            file_part("image", huge)]), (413,), "input: image too large"),
    ]


def filename_probes() -> list[Probe]:
    names = [b'a.png"\r\nX-' + MARKER.encode() + b': 1\r\nSet-Cookie: ' + MARKER.encode() + b"=1",
             b"a\r\n\r\n" + MARKER.encode(), b'a\\"b".png', b'a"b.png', b"\xd1\x84\xd0\xbe\xd1\x82\xd0\xbe\xe2\x80\xae.png",
             b"\xff\xfe\x00" + MARKER.encode(), b"../../../../etc/passwd", b"/etc/passwd", b"C:\\Windows\\win.ini",
             b"%0d%0aSet-Cookie:%20" + MARKER.encode(), b"", b"a\x00b.png"]
    probes = [Probe(f"file name {n[:24]!r}", form_request("/v1/generate", [
        file_part("image", NOT_AN_IMAGE, filename=n)]), (400, 422), absent=("set-cookie",)) for n in names]
    star = Part(b"form-data; name=\"image\"; filename*=UTF-8''%0D%0AX-" + MARKER.encode() + b"%3A%201", NOT_AN_IMAGE)
    probes.append(Probe("filename* with an encoded CR/LF", form_request("/v1/generate", [star]), (400, 422)))
    return probes


def traversal_values(secret: Path) -> list[str]:
    """Strings that name a file, every way a careless server might follow one."""
    s = str(secret)
    return [s, "file://" + s, "../" * 12 + s.lstrip("/"), "..\\" * 6 + s.lstrip("/"), s + "\x00.png",
            "%2e%2e%2f" * 8 + s.lstrip("/"), "data:image/png;base64,../../" + s, "/etc/passwd", "/proc/self/environ",
            "\\\\server\\share\\" + secret.name, "~/" + secret.name]


def traversal_probes(secret: Path) -> list[Probe]:
    probes = []
    v = vec()
    for value in traversal_values(secret):
        short = value[:28]
        probes += [
            Probe(f"sampler {short!r}", json_request("/v1/generate", {"vector": v, "sampler": value}), (422,),
                  "sampler: Input should be"),
            Probe(f"direction {short!r}", json_request("/v1/edit", {"vector": v, "direction": value}), (422,),
                  "unknown direction"),
            Probe(f"image {short!r}", json_request("/v1/generate", {"image": value}), (422,), "input: "),
            Probe(f"a.image {short!r}", json_request("/v1/interpolate", {"a": {"image": value}, "b": {"vector": v}}),
                  (422,), "a: "),
            Probe(f"images[0] {short!r}", json_request("/v1/embed", {"images": [value]}), (200,)),
            Probe(f"form direction {short!r}", form_request("/v1/edit", [
                file_part("image", BLANK_PNG), field_part("direction", value)]), (422,), "unknown direction"),
            Probe(f"a field named {short!r}", json_request("/v1/generate", {"vector": v, value: 1}), (422,)),
        ]
    for path in ("/static/..%2f..%2fapp.py", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/" + str(secret),
                 "/../../../etc/passwd", "/static/app.js%00.py", "/v1/model?file=/etc/passwd"):
        probes.append(Probe(f"GET {path[:40]}", request("GET", path), (200, 404) if "?" in path else (404,)))
    return probes


def token_probes() -> list[Probe]:
    wrong = "x" * len(TOKEN)
    variants = [("a wrong token of the same length", b"Bearer " + wrong.encode()),
                ("all but the last character", b"Bearer " + TOKEN[:-1].encode() + b"_"),
                ("a prefix", b"Bearer " + TOKEN[:-3].encode()), ("a longer one", b"Bearer " + TOKEN.encode() + b"0"),
                ("non-ASCII UTF-8", "Bearer tök€n".encode()), ("a latin-1 byte", b"Bearer \xff" + TOKEN[1:].encode()),
                ("an empty one", b"Bearer "), ("the scheme alone", b"Bearer"), ("another scheme", b"Basic " + TOKEN.encode()),
                ("the token twice", b"Bearer " + TOKEN.encode() * 2), ("no header", None)]
    probes = []
    for name, header in variants:
        headers = [] if header is None else [("Authorization", header)]
        probes.append(Probe(f"token: {name}", request("GET", "/v1/model", headers=headers, token=None), (401,),
                            "missing or wrong token"))
        probes.append(Probe(f"token on POST: {name}", request("POST", "/v1/generate", json.dumps({"vector": vec()}).encode(),
                                                               headers + [("Content-Type", "application/json")], None),
                            (401,), "missing or wrong token"))
    nul = b"Bearer " + TOKEN[:4].encode() + b"\x00" + TOKEN[5:].encode()  # h11 refuses the header: 400
    probes.append(Probe("token: a NUL inside", request("GET", "/v1/model", headers=[("Authorization", nul)], token=None),
                        (400, 401)))
    probes.append(Probe("the right token, scheme in lower case", request("GET", "/v1/model", headers=[
        ("Authorization", "bearer " + TOKEN)], token=None), (200,)))
    return probes


def cors_probes() -> list[Probe]:
    """A server started without --cors-origin gives no Access-Control-Allow-* header to anyone."""
    evil = ("Origin", "https://evil.example")
    preflight = [evil, ("Access-Control-Request-Method", "POST"),
                 ("Access-Control-Request-Headers", "authorization, content-type")]
    no_cors = ("access-control-",)
    return [
        Probe("cross-origin GET", request("GET", "/v1/model", headers=[evil]), (200,), absent=no_cors),
        Probe("cross-origin POST", request("POST", "/v1/generate", json.dumps({"vector": [0]}).encode(),
                                           [evil, ("Content-Type", "application/json")]), (422,), absent=no_cors),
        Probe("preflight without a token", request("OPTIONS", "/v1/generate", headers=preflight, token=None), (401,),
              absent=no_cors),
        Probe("preflight with a token", request("OPTIONS", "/v1/generate", headers=preflight), (405,), absent=no_cors),
        Probe("null origin", request("GET", "/v1/model", headers=[("Origin", "null")]), (200,), absent=no_cors),
        Probe("cross-origin GET /", request("GET", "/", headers=[evil], token=None), (200,), absent=no_cors),
    ]


# -- slow clients ---------------------------------------------------------------------------------
SLOW_KINDS = {
    # what is sent at once, then dribbled a byte at a time
    "head": (b"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", b"a"),
    "body": (None, b"["),  # a whole head declaring 100000 bytes (made in SlowClients)
    "idle": (b"", b""),  # connects and sends nothing
    "after an early answer": (None, b"a"),  # declares more than the limit: 413 at once, then the body trickles
}


@dataclass
class SlowClient:
    sock: socket.socket
    closed_after: float | None = None  # seconds from the start until the server closed it
    answer: bytes = b""


class SlowClients:
    """n connections that send a request one byte every `interval` s (a thread does it),
    until the server closes them or give_up_s passes: a slowloris."""

    def __init__(self, live: Live, n: int, kind: str, token: str | None = TOKEN, interval: float = 0.2,
                 give_up_s: float = 60.0, max_body_bytes: int = 8 << 20):
        self.live, self.n, self.kind, self.interval, self.give_up_s = live, n, kind, interval, give_up_s
        start, self.drip = SLOW_KINDS[kind]
        auth = [("Authorization", "Bearer " + token)] if token else []
        if kind == "body":
            start = request("POST", "/v1/generate", headers=auth + [("Content-Type", "application/json"),
                                                                    ("Content-Length", 100_000)], token=None)
        elif kind == "after an early answer":
            start = request("POST", "/v1/generate", headers=auth + [("Content-Type", "application/json"),
                                                                    ("Content-Length", max_body_bytes + 1)], token=None)
        self.start_bytes = start
        self.clients: list[SlowClient] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Self:
        for _ in range(self.n):
            sock = socket.create_connection((self.live.host, self.live.port), timeout=10)
            sock.sendall(self.start_bytes)
            sock.setblocking(False)
            self.clients.append(SlowClient(sock))
        self.t0 = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)
        for c in self.clients:
            c.sock.close()

    def still_open(self) -> int:
        return sum(c.closed_after is None for c in self.clients)

    def wait_closed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.still_open() and time.monotonic() < deadline:
            time.sleep(0.05)

    def run(self) -> None:
        while not self.stop.is_set() and self.still_open() and time.monotonic() - self.t0 < self.give_up_s:
            for c in self.clients:
                if c.closed_after is None:
                    self.step(c)
            self.stop.wait(self.interval)

    def step(self, c: SlowClient) -> None:
        try:
            while select.select([c.sock], [], [], 0)[0]:
                data = c.sock.recv(65536)
                if not data:
                    c.closed_after = time.monotonic() - self.t0
                    return
                c.answer += data
            if self.drip:
                c.sock.send(self.drip)
        except (BrokenPipeError, ConnectionResetError):
            c.closed_after = time.monotonic() - self.t0
        except BlockingIOError:
            pass  # the server stopped reading (flow control): still held


# -- watching file opens ----------------------------------------------------------------------------
class OpenWatch:
    """Records every file the process opens whose path contains one of `needles`, while
    active (an audit hook: builtins.open, io.open and os.open all raise the 'open' event)."""

    active: OpenWatch | None = None
    installed = False

    def __init__(self, needles: list[str]):
        self.needles, self.opened = needles, []

    def __enter__(self) -> Self:
        if not OpenWatch.installed:  # an audit hook cannot be removed: one for the process
            sys.addaudithook(OpenWatch.hook)
            OpenWatch.installed = True
        OpenWatch.active = self
        return self

    def __exit__(self, *exc) -> None:
        OpenWatch.active = None

    @staticmethod
    def hook(event: str, args) -> None:
        watch = OpenWatch.active
        if watch is None or event != "open" or not args:
            return
        path = args[0]
        text = path.decode("latin-1") if isinstance(path, bytes) else str(path)
        if any(n in text for n in watch.needles):
            watch.opened.append(text)


class PeakMemory:
    """The process's peak resident memory above where it started, sampled every 10 ms."""

    def __init__(self):
        self.base = self.peak = rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, rss())

    @property
    def grew_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def rss() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the harness ----------------------------------------------------------------------------------
def wait_for_connections(live: Live, at_most: int, timeout: float = 5.0) -> int:
    """The server's open connections, once at most `at_most` or after timeout seconds."""
    deadline = time.monotonic() + timeout
    while live.open_connections() > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return live.open_connections()


def normal_request(live: Live) -> Reply:
    """A request the model worker answers at once: the embedding of an aligned crop (a photo
    would go through face detection, and a generated picture too, for its distance)."""
    return exchange(live.host, live.port, json_request("/v1/embed", {"images": [b64(BLANK_PNG)], "aligned": True}))


@dataclass
class Tally:
    fault: str
    tried: int = 0
    survived: int = 0
    lost: int = 0  # answers 5xx or none at all, and normal requests not served after
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self) -> FaultRow:
        note = "; ".join(self.notes + ([f"{len(self.problems)} wrong, first: {self.problems[0][:200]}"]
                                       if self.problems else []))
        return FaultRow(self.fault, self.tried, self.survived, self.lost, note)


def run_probes(live: Live, fault: str, probes: list[Probe]) -> Tally:
    tally = Tally(fault)
    with PeakMemory() as memory:
        for probe in probes:
            reply = exchange(live.host, live.port, probe.data)
            problem = probe.problem(reply)
            tally.tried += 1
            tally.survived += problem is None
            tally.lost += reply.status >= 500 or (reply.status == 0 and 0 not in probe.expect)
            if problem:
                tally.problems.append(problem)
    after = normal_request(live)
    if after.status != 200:
        tally.lost += 1
        tally.survived = 0
        tally.problems.insert(0, f"a normal request after them got HTTP {after.status}")
    tally.notes.append(f"peak memory +{memory.grew_mb:.0f} MB")
    return tally


def slow_clients(live: Live, limits, kind: str, n: int, slack_s: float = 3.0) -> Tally:
    """n slow clients of one kind: survived = closed by the server within its deadline +
    slack_s, while a normal request made among them was answered before any was closed."""
    bound = {"body": limits.body_timeout_s}.get(kind, limits.header_timeout_s) + slack_s
    tally = Tally(f"slow clients: {kind} (slowloris)")
    with SlowClients(live, n, kind, max_body_bytes=limits.max_body_bytes) as slow:
        t0 = time.monotonic()
        reply = normal_request(live)
        took = time.monotonic() - t0
        held = slow.still_open()
        slow.wait_closed(bound + 5)
    closed = [c.closed_after for c in slow.clients if c.closed_after is not None]
    tally.tried = n
    tally.survived = sum(c.closed_after is not None and c.closed_after <= bound for c in slow.clients)
    answered = reply.status == 200 and held == n
    if not answered:
        tally.survived, tally.lost = 0, 1
        tally.problems.append(f"a normal request among them: HTTP {reply.status} after {took:.1f} s, "
                              f"{held} of {n} slow clients still held")
    if len(closed) < n:
        tally.problems.append(f"{n - len(closed)} never closed by the server")
    answers = {c.answer.split(b"\r\n")[0].decode("latin-1") or "no answer" for c in slow.clients}
    when = f"closed after {min(closed):.1f}-{max(closed):.1f} s" if closed else "none closed"
    tally.notes.append(f"{when} (bound {bound:g} s); a normal request among them took {took:.2f} s; "
                       f"they got: {', '.join(sorted(answers))}")
    return tally


def stalled_reader(live: Live, total_bytes: int) -> socket.socket:
    """A connection that asks for total_bytes of answers (pipelined GET /openapi.json) and
    reads none of them, through a small receive window: the server's write buffer fills."""
    ask = request("GET", "/openapi.json", token=None)
    one = len(exchange(live.host, live.port, ask).body)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((live.host, live.port))
    sock.sendall(ask * (total_bytes // one + 1))
    return sock


def slow_readers(live: Live, limits, n: int, slack_s: float = 3.0) -> Tally:
    """n clients that stop reading their answers: a normal request is served among them, and
    the server drops every one within its stall deadline (seen from the server's side: its
    open connections)."""
    bound = limits.header_timeout_s + slack_s
    tally = Tally("slow clients: reading nothing of the answers")
    socks = [stalled_reader(live, 16 << 20) for _ in range(n)]
    try:
        t0 = time.monotonic()
        reply = normal_request(live)
        took, held = time.monotonic() - t0, live.open_connections()
        while live.open_connections() and time.monotonic() - t0 < bound:
            time.sleep(0.05)
        dropped_after, left = time.monotonic() - t0, live.open_connections()
    finally:
        for sock in socks:
            sock.close()
    tally.tried, tally.survived = n, n - left
    if reply.status != 200 or held < n:
        tally.survived, tally.lost = 0, 1
        tally.problems.append(f"a normal request among them: HTTP {reply.status} after {took:.1f} s, "
                              f"{held} of {n} still held")
    tally.notes.append(f"{n - left} dropped within {dropped_after:.1f} s (bound {bound:g} s); a normal request "
                       f"among them took {took:.2f} s")
    return tally


def token_timing(live: Live, reps: int) -> Tally:
    """Median time of a 401 for a wrong token sharing no leading character with the right
    one, and for one sharing all but the last: reported, not judged (loopback noise is
    far larger than what compare_digest could leak). One kept-alive connection without
    Nagle's delay, guesses alternating."""
    far = "#" * len(TOKEN)
    near = TOKEN[:-1] + "#"
    times: dict[str, list[float]] = {far: [], near: []}
    tally = Tally("wrong tokens, timed (0 vs all-but-one leading characters right)")
    with socket.create_connection((live.host, live.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(2 * reps):
            guess = far if i % 2 == 0 else near
            ask = request("GET", "/v1/model", token=guess)
            t0 = time.perf_counter()
            sock.sendall(ask)
            reply = read_reply(sock)
            times[guess].append(time.perf_counter() - t0)
            tally.tried += 1
            tally.survived += reply.status == 401
            tally.lost += reply.status >= 500 or reply.status == 0
    a, b = statistics.median(times[far]) * 1e6, statistics.median(times[near]) * 1e6
    tally.notes.append(f"median {a:.0f} us (0 right) vs {b:.0f} us (all but one right), {reps} each")
    return tally


def http_abuse(root: Path, scale: int = 1, seed: int = 0) -> list[FaultRow]:
    """Every attack class scale x its base count against live loopback servers."""
    from id3pm.serving import Limits, create_app

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pipe = tiny_pipe(root)
    limits = Limits(rate=0, max_pixels=1_000_000, header_timeout_s=3.0, body_timeout_s=4.0)
    secret = root / f"secret-{rng.getrandbits(32):08x}.txt"
    secret.write_text("must never be read by the server\n")
    app = create_app(pipe, directions(), token=TOKEN, limits=limits)
    rows = []
    with live_server(app, limits) as live:
        groups = [
            ("body over the size limit", lambda: oversized_probes(limits.max_body_bytes, rng)),
            ("deeply nested JSON (20k-100k levels)", lambda: nested_probes(rng)),
            ("odd JSON: huge numbers, NaN/Infinity, duplicate keys, bad UTF-8, BOM", lambda: odd_json_probes(rng)),
            ("multipart bombs: many parts/files, huge headers/names, bad boundaries", lambda: multipart_probes(rng)),
            ("decompression bombs (JSON, upload, in embed's list)", lambda: bomb_probes(limits)),
            ("CR/LF, quotes, unicode in upload file names", filename_probes),
            ("paths in every string field and in URLs", lambda: traversal_probes(secret)),
            ("wrong tokens (equal length, prefix, longer, non-ASCII, empty)", token_probes),
            ("cross-origin requests, no --cors-origin", cors_probes),
        ]
        with OpenWatch([secret.name, "passwd", "environ", "win.ini"]) as watch:
            for fault, make in groups:
                probes = [p for _ in range(scale) for p in make()]
                rows.append(run_probes(live, fault, probes))
        paths = next(t for t in rows if t.fault.startswith("paths"))
        if watch.opened:
            paths.lost += len(watch.opened)
            paths.survived = 0
            paths.problems.insert(0, f"the server opened {watch.opened[:3]}")
        paths.notes.append(f"files opened that a client named: {len(watch.opened)}")
        for kind in SLOW_KINDS:
            rows.append(slow_clients(live, limits, kind, n=8 * scale))
        rows.append(slow_readers(live, limits, n=4 * scale))
        rows.append(token_timing(live, reps=100 * scale))
        connections = wait_for_connections(live, at_most=0)
        rows[-1].notes.append(f"connections still open at the end: {connections}")
    app.state.batcher.close()
    return [t.row() for t in rows]
