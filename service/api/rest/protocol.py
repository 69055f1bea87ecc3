"""The REST connection guard: uvicorn's httptools HTTP/1.1 protocol with limits enforced before
any application work (``gnbsched serve`` selects it: ``uvicorn.Config(http=...)``).

uvicorn bounds neither the size of a request's headers (httptools / llhttp accumulates them
without limit, and uvicorn concatenates the pieces: a 48 MiB header stalled the event loop)
nor the time they take to arrive (a slow-loris connection was held for ever). Per connection,
from ``Settings`` (``configure``):

* ``max_header_bytes``: bytes of a request received before its headers are complete (request
  line + headers) are counted as they arrive; one byte beyond the limit and the client gets
  ``431 Request Header Fields Too Large`` and the connection is closed, before the application
  (authentication included) sees the request;
* ``header_timeout_s``: a request's line and headers must be complete within this many seconds
  of the connection's accept (the first request) or of the request's first byte (a later
  request on a kept-alive connection; the idle time between requests is uvicorn's keep-alive
  timeout): ``408 Request Timeout`` and closed otherwise. A connection that sent nothing is
  closed without an answer;
* ``body_timeout_s``: once the headers are in, the body must be complete within this many
  seconds: 408 and closed (just closed when the application already answered);
* ``max_body_bytes``: a request whose ``Content-Length`` declares more is answered ``413`` as
  soon as its headers are in, before the application is started; a chunked body is counted as
  it is parsed and answered ``413`` at the first byte beyond the limit. Either way the body is
  never handed to the application, and the connection is closed. The answer is the JSON error
  body of the application's own 413 (``{"error": "body_too_large", "field": "body", ...}``);
* ``max_connections``: a connection accepted while this process holds as many is answered
  ``503 Service Unavailable`` at once and closed; it never reaches the parser.

An application that answers before reading the whole body (413, 401) gets its connection
closed after the answer instead of parsing the rest of the body for nothing. Every refusal is
closed gracefully: the answer, then the write side shut down, then up to ``LINGER_BYTES`` /
``LINGER_S`` of what the client is still sending are read and dropped, so that a client that
writes its whole request before reading gets the status instead of a connection reset.

A client that goes away mid-request (during the headers or the body, or before its answer) is a
DEBUG line and ``gnbsched_client_disconnects_total{transport="rest"}``; the application's
``ClientDisconnect`` (raised by a body read that finds the client gone) is answered quietly,
never logged as an error (``service.api.rest.app``). Refusals are DEBUG lines and
``gnbsched_connections_refused_total{transport="rest", reason}``.

The cost on the hot path is a few attribute reads per ``data_received`` and per parser
callback: a request whose headers and body arrive in one read (a small ``POST /schedule``)
arms no timer at all; timers are armed only while a request is incomplete after a read.

The limits are per process (module state, set by ``configure`` when the application is built:
``service.api.serve.build_app``, in every worker of ``--workers N`` too). WebSocket upgrades are
not served (the service has none).

Not covered here: over TLS (``rest_tls_cert``) the protocol starts once the TLS handshake is
done, so the handshake itself is bounded by asyncio's default (60 s) rather than
``header_timeout_s``, and connections still in their handshake do not count towards
``max_connections``. Connections that fill ``max_connections`` with slow headers are each cut
after ``header_timeout_s``; until then new connections get 503 (kept-alive ones keep serving).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import get_remote_addr
from uvicorn.server import ServerState

from service.api.contract import error_body
from service.errors import ErrorKind

log = logging.getLogger("gnbsched.rest.connections")

TRANSPORT = "rest"
#: import string of the protocol class (uvicorn's ``http=``; worker processes import it)
PROTOCOL = "service.api.rest.protocol:GuardedHttpProtocol"
#: a refused connection reads and drops at most this much more of the client's request ...
LINGER_BYTES = 256 * 1024
#: ... for at most this long, then closes
LINGER_S = 1.0

# request phases of a connection
_IDLE, _HEAD, _BODY = 0, 1, 2

_REASONS = {
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    408: "Request Timeout",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits every new connection of this process gets (``Settings`` names and defaults)."""

    max_header_bytes: int = 64 * 1024
    header_timeout_s: float = 5.0
    body_timeout_s: float = 10.0
    max_connections: int = 1024
    max_body_bytes: int = 16 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Any) -> ConnectionLimits:
        return cls(
            max_header_bytes=int(settings.max_header_bytes),
            header_timeout_s=float(settings.header_timeout_s),
            body_timeout_s=float(settings.body_timeout_s),
            max_connections=int(settings.max_connections),
            max_body_bytes=int(settings.max_body_bytes),
        )


_limits = ConnectionLimits()
_metrics: Any = None  # a service.metrics.Metrics (client_disconnect, connection_refused), or None


def configure(limits: ConnectionLimits, metrics: Any = None) -> None:
    """Set the limits (and the metrics to count into) of the connections accepted from now on."""
    global _limits, _metrics
    _limits = limits
    _metrics = metrics


def limits() -> ConnectionLimits:
    """The limits in force."""
    return _limits


def _count_refused(reason: str) -> None:
    if _metrics is not None:
        _metrics.connection_refused(TRANSPORT, reason)


def _count_disconnect() -> None:
    if _metrics is not None:
        _metrics.client_disconnect(TRANSPORT)


def status_response(status: int, message: str) -> bytes:
    """A minimal complete HTTP/1.1 answer that closes the connection: the service's JSON error
    body for 413 (as the application answers it), plain text otherwise."""
    if status == 413:
        body = orjson.dumps(error_body(ErrorKind.BODY_TOO_LARGE, "body", message))
        ctype = "application/json"
    else:
        body = message.encode("ascii", "replace")
        ctype = "text/plain; charset=utf-8"
    return (
        f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\ncontent-type: {ctype}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


class _Lingering(asyncio.Protocol):
    """A refused connection after its answer: the write side is shut down, what the client still
    sends is dropped (at most ``LINGER_BYTES``), and the connection closes after ``LINGER_S``,
    at the client's end of stream, or once the budget is spent."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.left = LINGER_BYTES
        self.timer: asyncio.TimerHandle | None = loop.call_later(LINGER_S, self._close)

    def start(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        if not transport.can_write_eof():  # TLS: close (close_notify) after the answer
            transport.close()
            return
        try:
            transport.write_eof()
            transport.resume_reading()
        except (OSError, RuntimeError):
            transport.close()

    def _close(self) -> None:
        self.timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self._close()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class GuardedHttpProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with the header size, header and body timeouts and connection limit
    of ``configure`` (module doc)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        lim = _limits
        self._max_head = lim.max_header_bytes
        self._header_timeout = lim.header_timeout_s
        self._body_timeout = lim.body_timeout_s
        self._max_connections = lim.max_connections
        self._max_body = lim.max_body_bytes
        #: bytes of the current request's body parsed so far
        self._body_bytes = 0
        #: bytes the current request's head may still take (None: its headers are complete)
        self._head_room: int | None = lim.max_header_bytes
        self._phase = _IDLE
        self._seq = 0  # requests begun on this connection
        # the timer running: for which phase of which request
        self._timer: asyncio.TimerHandle | None = None
        self._armed = _IDLE
        self._armed_seq = 0
        self._closed_by_us = False

    # -- connection ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self._max_connections:
            self.transport = transport
            self.client = get_remote_addr(transport)
            self._refuse(
                503, "too_many_connections", f"too many connections (limit {self._max_connections}); retry later"
            )
            return
        super().connection_made(transport)
        # the first request's line and headers must be in within header_timeout_s of the accept
        self._armed, self._armed_seq = _HEAD, 1
        self._timer = self.loop.call_later(self._header_timeout, self._expired)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._closed_by_us:
            cycle = self.cycle
            if self._phase != _IDLE or (cycle is not None and not cycle.response_complete):
                where = (
                    "during its headers"
                    if self._phase == _HEAD
                    else "during its body"
                    if self._phase == _BODY
                    else "before its answer"
                )
                log.debug("client %s went away %s", _peer(self.client), where)
                _count_disconnect()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        room = self._head_room
        if room is not None and len(data) > room:
            self._head_overflow(data, room)
        else:
            if room is not None:
                self._head_room = room - len(data)
            super().data_received(data)
        if self._phase != self._armed or self._seq != self._armed_seq:
            self._rearm()

    def _head_overflow(self, data: bytes, room: int) -> None:
        """``data`` is more than the current head may still take: feed what fits; if the headers
        are still incomplete the request is refused (431), else the rest is fed as usual."""
        self._head_room = 0
        if room:
            super().data_received(data[:room])
            if self.transport.is_closing() or self._closed_by_us:
                return
        if self._head_room == 0:  # still no end of the headers
            self._refuse(
                431, "header_too_large", f"request line and headers exceed the limit of {self._max_head} bytes"
            )
            return
        self.data_received(data[room:])

    def _rearm(self) -> None:
        """Start the timer the request's phase wants (cancel the running one)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        phase = self._phase
        self._armed, self._armed_seq = phase, self._seq
        if self._closed_by_us or self.transport.is_closing():
            return
        if phase == _HEAD:
            self._timer = self.loop.call_later(self._header_timeout, self._expired)
        elif phase == _BODY:
            self._timer = self.loop.call_later(self._body_timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._closed_by_us or self.transport.is_closing():
            return
        phase = self._phase
        if phase == _BODY:
            self._refuse(408, "body_timeout", f"request body not received within {self._body_timeout:g} s")
        elif phase == _HEAD:
            self._refuse(
                408, "header_timeout", f"request line and headers not received within {self._header_timeout:g} s"
            )
        else:  # an accepted connection that sent nothing
            self._refuse(0, "header_timeout", "")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer ``status`` (0: nothing; nothing either once the application began its answer),
        count it, and close the connection gracefully (``_Lingering``). Called from a parser
        callback, the callbacks for the rest of that read see ``_closed_by_us`` and do nothing."""
        log.debug("refusing %s (%s): %s", _peer(self.client), reason, message or "sent nothing")
        _count_refused(reason)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if cycle.response_started:
                status = 0
            cycle.disconnected = True  # the application reads a disconnect and its answer is dropped
            cycle.message_event.set()
        if status:
            self.transport.write(status_response(status, message))
        self._linger()

    def _linger(self) -> None:
        """Hand the connection to ``_Lingering``: this protocol is done with it."""
        self._closed_by_us = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._unset_keepalive_if_required()
        self.connections.discard(self)
        if self.flow is not None:
            self.flow.read_paused = False
        lingering = _Lingering(self.transport, self.loop)
        self.transport.set_protocol(lingering)
        lingering.start()

    # -- parser callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._phase = _HEAD
        self._seq += 1
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._head_room = None
        self._body_bytes = 0
        declared = _content_length(self.headers)
        if declared is not None and declared > self._max_body:
            self._refuse(413, "body_too_large", f"body of {declared} bytes exceeds the limit of {self._max_body}")
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._closed_by_us:  # refused: the rest of this read is dropped
            return
        size = self._body_bytes + len(body)
        self._body_bytes = size
        if size > self._max_body:
            self._refuse(413, "body_too_large", f"body exceeds the limit of {self._max_body} bytes")
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._closed_by_us:
            return
        self._phase = _IDLE
        self._head_room = self._max_head
        super().on_message_complete()

    # -- uvicorn callbacks ---------------------------------------------------------------
    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase == _BODY and not self._closed_by_us and not self.transport.is_closing():
            # answered before the body was read whole (413, 401): drop the rest, close
            self._linger()

    def send_400_response(self, msg: str) -> None:
        self._closed_by_us = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().send_400_response(msg)

    def handle_websocket_upgrade(self) -> None:
        self._closed_by_us = True  # the connection is the WebSocket protocol's from here
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self._closed_by_us = True
        super().shutdown()

    def timeout_keep_alive_handler(self) -> None:
        self._closed_by_us = True
        super().timeout_keep_alive_handler()


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The declared ``Content-Length`` (the parser has refused malformed or repeated ones)."""
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def install(settings: Any, metrics: Any = None) -> None:
    """Configure this process's connection limits from ``settings`` (counted into ``metrics``)."""
    configure(ConnectionLimits.from_settings(settings), metrics)
