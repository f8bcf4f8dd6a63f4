"""Bounds on a request's head (request line and headers) for ``fedq serve``: its size and the
time it may take to arrive.

uvicorn's httptools protocol reads a head of any size (llhttp has no limit; uvicorn's only
bound, ``h11_max_incomplete_event_size``, is for its h11 protocol) and sets no timer before it
has sent a response (``timeout_keep_alive`` runs only between requests): the service read a
20 MB header in full (5 s), and 200 clients sending a header byte now and then held their
connections for as long as they liked. h11 would bound the size but not the time, and costs
throughput; this protocol keeps httptools and adds both bounds:

- a head larger than ``MAX_HEAD_BYTES`` is answered 431 and the connection closed (the part
  of a chunk past the head's end is not counted, so a body never counts against it);
- a head not complete ``HEAD_TIMEOUT`` seconds after the connection opened, or after its
  first byte on a kept-alive connection, is answered 408 and the connection closed.

Between requests, uvicorn's own ``timeout_keep_alive`` closes an idle connection.
"""

from __future__ import annotations

import asyncio
import http
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 32 * 1024  # request line and headers; a browser's are a few KB
HEAD_TIMEOUT = 10.0  # seconds for a whole head; a client on loopback or a WAN needs well under 1

log = logging.getLogger("uvicorn.error")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a size and a time bound on each request's head."""

    max_head_bytes = MAX_HEAD_BYTES
    head_timeout = HEAD_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes: int | None = None  # bytes of the head being read; None: not in one
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._begin_head()  # a connection that sends nothing is dropped too

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_bytes is None:  # a body, or the first bytes of a kept-alive request
            super().data_received(data)
            return
        room = self.max_head_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # the head must end within the room left: feed that much; a body after it is not head
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._head_bytes is not None:
            self._refuse(
                http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"request line and headers over {self.max_head_bytes} bytes",
            )
            return
        super().data_received(data[room:])

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begin_head()  # a kept-alive connection's next request (the first began already)

    def on_headers_complete(self) -> None:
        self._end_head()
        super().on_headers_complete()

    def _begin_head(self) -> None:
        if self._head_bytes is None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _end_head(self) -> None:
        self._head_bytes = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._head_bytes is not None and not self.transport.is_closing():
            self._refuse(
                http.HTTPStatus.REQUEST_TIMEOUT,
                f"request line and headers not sent within {self.head_timeout:g}s",
            )

    def _refuse(self, status: http.HTTPStatus, reason: str) -> None:
        """Answer ``status`` with a one-line reason and close; only close if a response of an
        earlier (pipelined) request is still being written, which the answer would corrupt."""
        self._end_head()
        log.warning("%s: %s", _client(self.client), reason)
        if self.cycle is None or self.cycle.response_complete:
            body = (reason + "\n").encode()
            head = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\n"
                "content-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
            )
            self.transport.write(head.encode() + body)
        self.transport.close()


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"
