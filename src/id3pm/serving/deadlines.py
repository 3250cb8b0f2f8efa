"""Read deadlines for uvicorn's HTTP/1.1 connections: a slow client cannot hold one forever.

    uvicorn.run(app, http=DeadlineH11Protocol.with_timeouts(header_s=10, linger_s=10, stall_s=10), ...)

uvicorn's h11 protocol has a keep-alive timer, but any byte received cancels it and
nothing re-arms it until the next response: a client that sends a request head one byte
every few seconds ("slowloris"), or that keeps trickling a body the server has already
answered, holds its connection, and its slot of `limit_concurrency`, for ever; so does
a client that stops reading its answers. This protocol adds deadlines while the server
waits on the client:

  head    from the connection's start (or the end of the previous response) until a whole
          request head arrived: 408 when bytes of a head came, else a silent close.
  linger  after a response sent before the request body was read (413, 401, 408): the
          rest is read and dropped for at most linger_s, then the connection closes.
  stall   while the client reads nothing of a response the server has more of to send
          (the write buffer stays full): after stall_s the connection is dropped.

While the app reads a body, the guard's body deadline applies instead (guard.py).
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def timeout_response(detail: str) -> bytes:
    """A whole 408 response, written straight to the socket: no request exists for h11 to answer."""
    body = json.dumps({"detail": detail}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the head and linger deadlines of the module docstring."""

    header_s = 10.0
    linger_s = 10.0
    stall_s = 10.0

    @classmethod
    def with_timeouts(cls, header_s: float, linger_s: float, stall_s: float) -> type[DeadlineH11Protocol]:
        """The protocol class to give uvicorn (it makes one instance per connection)."""
        return type(cls.__name__, (cls,), {"header_s": header_s, "linger_s": linger_s, "stall_s": stall_s})

    def connection_made(self, transport) -> None:
        self.deadline, self.waiting_for, self.stall = None, None, None
        super().connection_made(transport)
        self.update_deadline()

    def connection_lost(self, exc) -> None:
        self.set_deadline(None)
        self.cancel_stall()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self.cancel_stall()
        # abort, not close: close() would wait for the buffer to be sent, i.e. for ever
        self.stall = self.loop.call_later(self.stall_s, self.transport.abort)

    def resume_writing(self) -> None:
        self.cancel_stall()
        super().resume_writing()

    def cancel_stall(self) -> None:
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def handle_events(self) -> None:
        super().handle_events()
        self.update_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.update_deadline()

    def update_deadline(self) -> None:
        if self.conn.their_state is h11.IDLE:
            self.set_deadline("head")
        elif self.conn.their_state is h11.SEND_BODY and self.conn.our_state in (h11.DONE, h11.MUST_CLOSE):
            self.set_deadline("linger")
        else:  # the app has the request: its own deadlines apply
            self.set_deadline(None)

    def set_deadline(self, waiting_for: str | None) -> None:
        """Arm the deadline for what the server now waits for; one that already runs for the
        same wait keeps running (a byte received does not restart it)."""
        if waiting_for == self.waiting_for:
            return
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline, self.waiting_for = None, waiting_for
        if waiting_for is not None and self.transport is not None and not self.transport.is_closing():
            seconds = self.header_s if waiting_for == "head" else self.linger_s
            self.deadline = self.loop.call_later(seconds, self.deadline_passed)

    def deadline_passed(self) -> None:
        if self.transport.is_closing():
            return
        partial_head = self.waiting_for == "head" and bool(self.conn.trailing_data[0])
        if partial_head:
            self.transport.write(timeout_response(f"request head not received within {self.header_s:g} s"))
        self.transport.close()
