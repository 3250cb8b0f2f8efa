"""`id3pm serve` against hostile clients, on a real uvicorn on loopback run with serve()'s
options: slow clients, oversized, nested and odd JSON, multipart and decompression bombs,
injected file names, paths in string fields, wrong tokens, CORS. The probes and the live
server are in tests/http_abuse.py (also run large by scripts/reliability.py)."""

from __future__ import annotations

import asyncio
import json
import random
import select
import socket
import time

import http_abuse as abuse
import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from http_abuse import (
    TOKEN,
    OpenWatch,
    PeakMemory,
    SlowClients,
    exchange,
    json_request,
    live_server,
    normal_request,
    request,
    wait_for_connections,
)

from id3pm.serving import Limits, check_origins, create_app

torch.set_num_threads(1)
# Short deadlines so that the slow-client tests take seconds; bombs are over a 1 M pixel limit.
LIMITS = Limits(rate=0, max_pixels=1_000_000, header_timeout_s=3.0, body_timeout_s=3.0)
SLACK_S = 3.0  # a loaded 2-core machine may close a connection this late after its deadline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return abuse.tiny_pipe(tmp_path_factory.mktemp("abuse"))


@pytest.fixture(scope="module")
def live(pipe):
    app = create_app(pipe, abuse.directions(), token=TOKEN, limits=LIMITS)
    with live_server(app, LIMITS) as server:
        assert normal_request(server).status == 200  # loads the encoder's weights: later ones are quick
        yield server
    app.state.batcher.close()


@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    path = tmp_path_factory.mktemp("secret") / "secret-3c7d.txt"
    path.write_text("must never be read by the server\n")
    return path


def problems(live, probes) -> list[str]:
    found = [p.problem(exchange(live.host, live.port, p.data)) for p in probes]
    return [f for f in found if f]


# -- slow clients -----------------------------------------------------------------------------
SLOW = [("head", LIMITS.header_timeout_s, "HTTP/1.1 408", b"request head not received within 3 s"),
        ("body", LIMITS.body_timeout_s, "HTTP/1.1 408", b"request body not received within 3 s"),
        ("idle", LIMITS.header_timeout_s, "", b""),
        ("after an early answer", LIMITS.header_timeout_s, "HTTP/1.1 413", b"request body too large")]


@pytest.mark.parametrize("kind, deadline, status_line, detail", SLOW, ids=[s[0] for s in SLOW])
def test_slow_clients_are_cut_off_while_a_normal_request_is_served(live, kind, deadline, status_line, detail):
    """A slowloris: 16 connections sending a byte every 0.2 s (or nothing). A normal request
    among them is served while all of them are still held, and the server closes every one
    of them within its deadline (uvicorn alone would hold them for ever)."""
    n = 16
    with SlowClients(live, n, kind, max_body_bytes=LIMITS.max_body_bytes) as slow:
        reply = normal_request(live)
        held = slow.still_open()
        slow.wait_closed(deadline + SLACK_S + 5)
    assert reply.status == 200, reply.body[:200]
    assert held == n  # served among them, not after them
    closed = [c.closed_after for c in slow.clients]
    assert all(t is not None and t <= deadline + SLACK_S for t in closed), closed
    if kind != "after an early answer":  # that one is answered at once, then lingers
        assert min(closed) >= deadline - 0.5, closed  # the deadline, not an early hang-up
    for c in slow.clients:
        assert c.answer.decode("latin-1").startswith(status_line) and detail in c.answer, c.answer[:300]
    assert wait_for_connections(live, at_most=0) == 0  # every slot of limit_concurrency is free again


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after the answer is a close
    too); a server that never closes fails with the socket's timeout."""
    answer = b""
    while True:
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            return answer
        if not data:
            return answer
        answer += data


def test_a_kept_alive_connection_cannot_dribble_its_next_request(live):
    """uvicorn's keep-alive timer stops at the first byte of the next request and nothing
    restarts it: the head deadline covers that request too."""
    with socket.create_connection((live.host, live.port), timeout=30) as sock:
        sock.sendall(request("GET", "/healthz"))
        assert abuse.read_reply(sock).status == 200
        t0 = time.monotonic()
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 300:
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0.1)[0]:
                break  # the server answered or hung up: stop dribbling (a byte sent after its close draws a reset)
        answer = read_until_closed(sock)
        took = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"request head not received within 3 s" in answer
    assert LIMITS.header_timeout_s - 0.5 <= took <= LIMITS.header_timeout_s + SLACK_S


def test_clients_that_read_nothing_of_their_answers_are_dropped(live):
    """A "slow read": pipelined requests whose answers are never read fill the server's
    write buffer; uvicorn would wait on it for ever. The stall deadline drops them."""
    tally = abuse.slow_readers(live, LIMITS, n=3, slack_s=SLACK_S)
    assert not tally.problems and tally.survived == 3, tally.row()
    assert wait_for_connections(live, at_most=0) == 0


def test_a_slow_body_is_408_through_the_asgi_app_too(pipe):
    """The body deadline is the guard's, so any ASGI server gets it: a body that stops
    coming is 408 with Connection: close, and the route never runs."""
    app = create_app(pipe, limits=Limits(rate=0, body_timeout_s=0.5))

    async def stalled():
        yield b'{"vector": ['
        await asyncio.sleep(5)
        yield b"]}"

    async def scenario():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            t0 = time.perf_counter()
            r = await c.post("/v1/generate", content=stalled(), headers={"content-type": "application/json"})
            return r, time.perf_counter() - t0

    r, took = asyncio.run(scenario())
    app.state.batcher.close()
    assert r.status_code == 408 and r.json()["detail"] == "request body not received within 0.5 s"
    assert r.headers["connection"] == "close" and took < 3
    assert app.state.batcher.snapshot()["requests"] == 0


# -- hostile bodies -------------------------------------------------------------------------------
GROUPS = ["oversized", "nested", "odd_json", "multipart", "bombs", "filenames", "tokens", "cors"]


def probes_of(group: str, secret=None):
    rng = random.Random(0)
    return {"oversized": lambda: abuse.oversized_probes(LIMITS.max_body_bytes, rng),
            "nested": lambda: abuse.nested_probes(rng), "odd_json": lambda: abuse.odd_json_probes(rng),
            "multipart": lambda: abuse.multipart_probes(rng), "bombs": lambda: abuse.bomb_probes(LIMITS),
            "filenames": abuse.filename_probes, "tokens": abuse.token_probes, "cors": abuse.cors_probes}[group]()


@pytest.mark.parametrize("group", GROUPS)
def test_hostile_requests_get_a_one_line_4xx_and_the_server_lives_on(live, group):
    """Every probe of the group (see http_abuse.py): the expected status, a one-line detail
    that starts as expected, nothing injected in the response headers, no Access-Control
    header without --cors-origin; then a normal request is still served."""
    probes = probes_of(group)
    with PeakMemory() as memory:
        found = problems(live, probes)
    assert not found, "\n".join(found)
    assert normal_request(live).status == 200
    assert memory.grew_mb < 400, f"{group}: memory grew by {memory.grew_mb:.0f} MB"


def test_deeply_nested_json_in_a_form_field_was_a_500(live):
    """Python's json.loads raises RecursionError (not a ValueError) on 100k nested arrays:
    a multipart field holding them was an internal error before form_value caught it."""
    arrays = b"[" * 100_000 + b"]" * 100_000
    reply = exchange(live.host, live.port, abuse.form_request("/v1/generate", [
        abuse.file_part("image", abuse.BLANK_PNG), abuse.field_part("n", arrays)]))
    assert reply.status == 422 and reply.detail() == "n: Input should be a valid integer"


def test_no_file_a_client_names_is_ever_opened(live, secret):
    """Paths (absolute, ../, file://, NUL, %2e, UNC, ~) in every string field and in URLs:
    4xx, or per-image errors in /v1/embed, and no open() of them anywhere in the process."""
    probes = abuse.traversal_probes(secret)
    with OpenWatch([secret.name, "passwd", "environ", "win.ini"]) as watch:
        found = problems(live, probes)
        assert normal_request(live).status == 200
    assert not found, "\n".join(found)
    assert watch.opened == []
    with OpenWatch([secret.name]) as check:  # the watch itself sees an open()
        secret.read_text()
    assert check.opened == [str(secret)]


def test_embed_reports_a_path_as_an_unreadable_image(live, secret):
    reply = exchange(live.host, live.port, json_request("/v1/embed", {"images": [str(secret), "../../etc/passwd"]}))
    body = json.loads(reply.body)
    assert reply.status == 200 and body["vectors"] == [None, None]
    assert body["errors"][0].startswith("image 0: ") and body["errors"][1] == "image 1: not valid base64"


# -- the token ----------------------------------------------------------------------------------
def test_a_non_ascii_token_is_matched_on_its_utf8_bytes(pipe):
    """The header's text is latin-1 decoded; the token was compared as that text's UTF-8,
    so a server started with a non-ASCII token refused its own token."""
    token = "tök€n-ünïcode"
    app = create_app(pipe, token=token, limits=Limits(rate=0))
    with TestClient(app) as c:
        def status(value: bytes) -> int:
            return c.get("/v1/model", headers={"Authorization": value}).status_code

        assert status(b"Bearer " + token.encode("utf-8")) == 200
        assert status(b"Bearer " + token.encode("latin-1", "replace")) == 401
        assert status(b"Bearer " + token.encode("utf-8")[:-1]) == 401
        assert status("Bearer tök€n-ünïcodf".encode()) == 401
        assert status(b"Bearer \xff\xfe") == 401
        assert status(b"Bearer ") == 401


def test_a_wrong_token_takes_as_long_however_much_of_it_is_right(live):
    """Not a timing proof (loopback noise dwarfs what compare_digest could leak): every
    guess is a 401, and the two medians are printed for the record, not judged."""
    tally = abuse.token_timing(live, reps=60)
    print(tally.notes[0])
    assert tally.survived == tally.tried and tally.lost == 0


# -- CORS ---------------------------------------------------------------------------------------
def test_cors_allows_exactly_the_listed_origins(pipe):
    app = create_app(pipe, token="t", limits=Limits(rate=0), cors_origins=["https://app.example",
                                                                           "http://localhost:3000"])
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    with TestClient(app) as c:
        ok = c.get("/v1/model", headers={"Origin": "https://app.example", "Authorization": "Bearer t"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://app.example"
        other = c.get("/v1/model", headers={"Origin": "https://app.example.evil", "Authorization": "Bearer t"})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
        pre = c.options("/v1/generate", headers={"Origin": "http://localhost:3000", **preflight})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
        assert "POST" in pre.headers["access-control-allow-methods"]
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        bad = c.options("/v1/generate", headers={"Origin": "https://evil.example", **preflight})
        assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
        assert c.get("/v1/model", headers={"Origin": "https://app.example"}).status_code == 401  # still needs the token
    for wrong in ("*", "https://app.example/", "app.example", "https://app.example/path", "ftp://x.example"):
        with pytest.raises(ValueError, match="invalid CORS origin"):
            check_origins([wrong])
    check_origins(["http://[::1]:8000", "https://a-b.example:443"])


def test_serve_takes_cors_origins_and_timeouts_from_the_command_line(monkeypatch):
    import id3pm.serving
    from id3pm.cli import main

    seen = {}
    monkeypatch.setattr(id3pm.serving, "serve", lambda model, **kw: seen.update(kw))
    monkeypatch.delenv("ID3PM_TOKEN", raising=False)
    assert main(["serve", "--cors-origin", "https://a.example", "--cors-origin", "http://localhost:3000",
                 "--header-timeout", "4", "--body-timeout", "30"]) == 0
    assert seen["cors_origins"] == ["https://a.example", "http://localhost:3000"]
    assert seen["limits"].header_timeout_s == 4 and seen["limits"].body_timeout_s == 30
    seen.clear()
    assert main(["serve"]) == 0 and seen["cors_origins"] is None


def test_serve_refuses_a_bad_origin_before_loading_the_model(capsys):
    from id3pm.cli import main

    assert main(["serve", "--model", "/nonexistent/model", "--cors-origin", "https://a.example/"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid CORS origin 'https://a.example/'" in err[0]


def test_a_live_server_without_cors_origins_sends_no_cors_headers(pipe):
    """The default: a page of another site can neither read answers nor pass a preflight."""
    limits = Limits(rate=0)
    app = create_app(pipe, limits=limits)
    with live_server(app, limits) as server:
        r = httpx.get(f"{server.url}/v1/model", headers={"Origin": "https://evil.example"})
        pre = httpx.options(f"{server.url}/v1/generate", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    app.state.batcher.close()
    assert r.status_code == 200 and pre.status_code == 405
    assert not [h for h in (*r.headers, *pre.headers) if h.lower().startswith("access-control-")]
