"""Hostile and careless HTTP/1.1 clients on raw sockets, for ``test_hostile.py``.

Each attack opens its connections, misbehaves, and reports per connection what the server did:
``Outcome(kind, status, closed, elapsed_s, sent, error)`` -- ``status`` is the first HTTP status
the server answered (None: none), ``closed`` whether the server closed (or reset) the connection
before the attack gave up, ``elapsed_s`` seconds from the connection's start to that close (or
to giving up).

Run as a script (``python hostile_clients.py PORT JSON``) the attacks named in the JSON run
concurrently in this separate process (so that their CPU and GIL use does not land in the
measuring test process); it prints ``started`` once every connection is open, then one JSON
line with every outcome. Every loop is bounded in count and time.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

LOOPBACK = "127.0.0.1"
MIB = 1024 * 1024


@dataclass
class Outcome:
    kind: str
    status: int | None = None
    closed: bool = False
    elapsed_s: float = 0.0
    sent: int = 0
    error: str = ""
    statuses: list[int] = field(default_factory=list)


def connect(port: int, timeout_s: float = 5.0) -> socket.socket:
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout_s)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _statuses(data: bytes) -> list[int]:
    out = []
    for line in data.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 ") and len(line) >= 12 and line[9:12].isdigit():
            out.append(int(line[9:12]))
    return out


def read_until_closed(
    sock: socket.socket, out: Outcome, t0: float, deadline: float, received: bytearray | None = None
) -> Outcome:
    """Read what the server sends until it closes the connection (``out.closed``) or ``deadline``."""
    buf = received if received is not None else bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            ready, _, _ = select.select([sock], [], [], min(left, 0.2))
            if not ready:
                continue
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError, OSError) as exc:
            out.closed, out.error = True, out.error or type(exc).__name__
            break
        if not chunk:
            out.closed = True
            break
        buf += chunk
    out.elapsed_s = time.monotonic() - t0
    out.statuses = _statuses(bytes(buf))
    out.status = out.statuses[0] if out.statuses else None
    return out


def _poll_closed(sock: socket.socket, buf: bytearray) -> bool:
    """Whether the server closed ``sock`` (reads what it sent into ``buf``), without blocking."""
    try:
        while select.select([sock], [], [], 0)[0]:
            chunk = sock.recv(65536)
            if not chunk:
                return True
            buf += chunk
    except OSError:
        return True
    return False


def send_then_read(
    port: int, kind: str, head: bytes, payload_bytes: int, chunk: bytes, *, pause_s: float = 0.0, max_s: float = 15.0
) -> Outcome:
    """Send ``head``, then ``chunk`` repeatedly up to ``payload_bytes`` (every ``pause_s``) until the
    server stops it, then read its answer until it closes."""
    t0 = time.monotonic()
    out = Outcome(kind)
    buf = bytearray()
    try:
        sock = connect(port)
    except OSError as exc:
        out.error, out.closed = f"connect: {exc}", True
        return out
    with sock:
        try:
            sock.sendall(head)
            out.sent = len(head)
            while out.sent < payload_bytes + len(head) and time.monotonic() - t0 < max_s:
                sock.sendall(chunk)
                out.sent += len(chunk)
                if pause_s:
                    select.select([sock], [], [], pause_s)
                    if _poll_closed(sock, buf):
                        out.closed = True
                        break
        except (ConnectionResetError, BrokenPipeError, OSError) as exc:
            out.error = f"send: {type(exc).__name__}"
        return read_until_closed(sock, out, t0, t0 + max_s, buf)


# ----------------------------------------------------------------------------- the attacks


def header_flood(port: int, total: int = 48 * MIB) -> Outcome:
    """One huge header value, sent as fast as the server takes it."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: "
    return send_then_read(port, "header_flood", head, total, b"a" * (256 * 1024))


def header_lines_flood(port: int, total: int = 48 * MIB) -> Outcome:
    """Many 1 KiB header lines, sent as fast as the server takes them."""
    head = b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    line = b"X-Fill: " + b"b" * 1014 + b"\r\n"
    return send_then_read(port, "header_lines_flood", head, total, line * 64)


def slow_header_flood(port: int) -> Outcome:
    """Headers growing by 4 KiB every 50 ms (80 KiB/s): too large before too slow."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    return send_then_read(
        port, "slow_header_flood", head, 48 * MIB, (b"X-Slow: " + b"c" * 4086 + b"\r\n"), pause_s=0.05
    )


def slow_loris(
    port: int, conns: int, interval_s: float = 1.0, max_s: float = 15.0, started: threading.Event | None = None
) -> list[Outcome]:
    """``conns`` connections that send a request line, then one header byte every ``interval_s``."""
    t0 = time.monotonic()
    socks: list[tuple[socket.socket, Outcome, bytearray, float]] = []
    for _ in range(conns):
        out = Outcome("slow_loris")
        try:
            sock = connect(port)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            out.sent = 23
            socks.append((sock, out, bytearray(), time.monotonic()))
        except OSError as exc:
            out.error, out.closed = f"connect: {exc}", True
            socks.append((socket.socket(), out, bytearray(), time.monotonic()))
    if started is not None:
        started.set()
    open_ = [s for s in socks if not s[1].closed]
    next_send = time.monotonic() + interval_s
    while open_ and time.monotonic() - t0 < max_s:
        ready, _, _ = select.select([s[0] for s in open_], [], [], max(0.0, min(0.1, next_send - time.monotonic())))
        now = time.monotonic()
        for sock, out, buf, ts in open_:
            if sock in ready and _poll_closed(sock, buf):
                out.closed, out.elapsed_s = True, now - ts
        if now >= next_send:
            next_send = now + interval_s
            for sock, out, _, _ in open_:
                if not out.closed:
                    try:
                        sock.send(b"X")
                        out.sent += 1
                    except OSError as exc:
                        out.error = f"send: {type(exc).__name__}"
        open_ = [s for s in open_ if not s[1].closed]
    for sock, out, buf, ts in socks:
        if not out.closed:
            out.elapsed_s = time.monotonic() - ts
        out.statuses = _statuses(bytes(buf))
        out.status = out.statuses[0] if out.statuses else None
        sock.close()
    return [s[1] for s in socks]


def overlong_body(port: int) -> Outcome:
    """Declares a 10-byte body, then sends 1 MiB more (read as garbage requests)."""
    head = b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    return send_then_read(port, "overlong_body", head + b"{" * 10, MIB, b'{"junk": 1}' * 4096)


def chunked_flood(port: int, total: int = 48 * MIB) -> Outcome:
    """A chunked body of ``total`` bytes, sent as fast as the server takes it."""
    head = b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = 256 * 1024
    return send_then_read(port, "chunked_flood", head, total, b"%x\r\n" % piece + b" " * piece + b"\r\n")


def declared_huge_body(port: int) -> Outcome:
    """Declares 100 MiB and starts sending it."""
    head = b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
        100 * MIB
    )
    return send_then_read(port, "declared_huge_body", head, 100 * MIB, b" " * (256 * 1024))


def slow_body(port: int) -> Outcome:
    """Declares 1000 bytes and sends 10 a second."""
    head = b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    return send_then_read(port, "slow_body", head, 990, b" " * 10, pause_s=1.0)


def disconnect_mid_body(port: int) -> Outcome:
    """Declares 1000 bytes, sends 100, waits for the server to start reading, goes away."""
    out = Outcome("disconnect_mid_body")
    with contextlib.closing(connect(port)) as sock:
        sock.sendall(
            b"POST /schedule HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"cell_id": ' + b" " * 88
        )
        out.sent = 100
        time.sleep(0.2)
    out.closed = True
    return out


ATTACKS = {
    "header_flood": header_flood,
    "header_lines_flood": header_lines_flood,
    "slow_header_flood": slow_header_flood,
    "overlong_body": overlong_body,
    "chunked_flood": chunked_flood,
    "declared_huge_body": declared_huge_body,
    "slow_body": slow_body,
    "disconnect_mid_body": disconnect_mid_body,
}


def run(port: int, plan: dict[str, float]) -> list[Outcome]:
    """Every attack of ``plan`` at once: {name: connections}, ``slow_loris``: that many slow-loris
    connections; every other attack is repeated by each of its connections (a new connection every
    round, ``pause_s`` apart) until ``duration_s`` has passed (once when 0)."""
    results: list[Outcome] = []
    lock = threading.Lock()
    loris_started = threading.Event()
    duration_s = float(plan.get("duration_s", 0.0))
    pause_s = float(plan.get("pause_s", 0.1))
    t_start = time.monotonic()

    def loris(count: int) -> None:
        got = slow_loris(port, count, 1.0, 15.0, loris_started)
        with lock:
            results.extend(got)

    def repeat(name: str) -> None:
        while True:
            got = ATTACKS[name](port)
            with lock:
                results.append(got)
            if time.monotonic() - t_start >= duration_s:
                return
            time.sleep(pause_s)

    threads = []
    if plan.get("slow_loris"):
        threads.append(threading.Thread(target=loris, args=(int(plan["slow_loris"]),)))
    else:
        loris_started.set()
    for name, count in plan.items():
        if name in ATTACKS:
            threads += [threading.Thread(target=repeat, args=(name,)) for _ in range(int(count))]
    for t in threads:
        t.start()
    loris_started.wait(10)
    print("started", flush=True)
    for t in threads:
        t.join(60)
    return results


if __name__ == "__main__":
    outcomes = run(int(sys.argv[1]), json.loads(sys.argv[2]))
    print(json.dumps([asdict(o) for o in outcomes]), flush=True)
