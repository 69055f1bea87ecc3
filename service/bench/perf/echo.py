"""The echo floor of ``gnbsched bench perf``: what the transport alone costs on loopback.

A bare server, in its own process like ``gnbsched serve`` and on the same stack (uvicorn with
httptools on the default loop, a ``grpc.aio`` server started in the ASGI lifespan on that loop),
that does no work: every gRPC message and every HTTP request is answered with fixed bytes, the
pre-serialized real answer (``CellsDecision``, ``SlotDecision`` or JSON body) of the figure it is
the floor of, so the bytes on the wire are the same size both ways. The benchmark's clients
measure it exactly as they measure the service; a figure divided by its floor says how much the
service adds on top of the transport.

- gRPC: any method; the answer is the payload named by the call's ``x-gnbsched-echo`` metadata;
  ``StreamSlots`` / ``StreamTtis`` (a method ending in ``Stream...``) answer every message read, in
  lock-step (explicit ``read`` / ``write``, as the service's streams do), other methods are unary.
- HTTP: ``POST /echo/<key>`` answers the payload ``<key>`` (``application/json``); ``GET /readyz``
  answers 200.

``EchoProcess`` runs it (``python -m service.bench.perf.echo``) on free loopback ports with the
payloads in a temporary file, as ``ServeProcess`` runs the service.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from service.bench.server import ServeProcess

#: the gRPC metadata key that names the payload of a call
ECHO_KEY = "x-gnbsched-echo"
_MAX_MESSAGE = 64 * 1024 * 1024


def _grpc_handler(payloads: Mapping[str, bytes]) -> Any:
    import grpc

    class Echo(grpc.GenericRpcHandler):
        def service(self, handler_call_details: Any) -> Any:
            key = dict(handler_call_details.invocation_metadata or ()).get(ECHO_KEY)
            payload = payloads.get(str(key))
            if payload is None:
                return None  # UNIMPLEMENTED: no such payload
            if handler_call_details.method.rsplit("/", 1)[-1].startswith("Stream"):

                async def stream(_requests: Any, context: grpc.aio.ServicerContext) -> None:
                    while True:
                        raw = await context.read()
                        if raw is grpc.aio.EOF:
                            return
                        await context.write(payload)

                return grpc.stream_stream_rpc_method_handler(stream)

            async def unary(_raw: bytes, _context: grpc.aio.ServicerContext) -> bytes:
                return payload

            return grpc.unary_unary_rpc_method_handler(unary)

    return Echo()


def make_app(host: str, grpc_port: int, grpc_payloads: Mapping[str, bytes], http_payloads: Mapping[str, bytes]) -> Any:
    """The raw ASGI app: fixed HTTP answers; its lifespan starts and stops the gRPC echo."""
    import grpc

    server: list[Any] = []
    ready = b'{"ready":true}'

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    if grpc_port:
                        srv = grpc.aio.server(
                            options=[
                                ("grpc.max_receive_message_length", _MAX_MESSAGE),
                                ("grpc.max_send_message_length", _MAX_MESSAGE),
                            ]
                        )
                        srv.add_generic_rpc_handlers((_grpc_handler(grpc_payloads),))
                        srv.add_insecure_port(f"{host}:{grpc_port}")
                        await srv.start()
                        server.append(srv)
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    for srv in server:
                        await srv.stop(0)
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        more = True
        while more:  # read the whole body, as the service does
            msg = await receive()
            more = bool(msg.get("more_body", False))
        path = scope["path"]
        body = ready if path == "/readyz" else http_payloads.get(path.removeprefix("/echo/"))
        status = 200 if body is not None else 404
        body = body if body is not None else b'{"error":"no such payload"}'
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m service.bench.perf.echo", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--rest-port", type=int, required=True)
    p.add_argument("--grpc-port", type=int, default=0)
    p.add_argument("--payloads", type=Path, required=True, help='JSON {"grpc": {key: hex}, "http": {key: hex}}')
    args = p.parse_args(argv)
    doc = json.loads(args.payloads.read_text())
    grpc_payloads = {k: bytes.fromhex(v) for k, v in doc.get("grpc", {}).items()}
    http_payloads = {k: bytes.fromhex(v) for k, v in doc.get("http", {}).items()}
    app = make_app(args.host, args.grpc_port, grpc_payloads, http_payloads)
    config = uvicorn.Config(
        app, host=args.host, port=args.rest_port, http="httptools", lifespan="on", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    server.run()
    return 0 if server.started else 1


class EchoProcess(ServeProcess):
    """The echo server on free loopback ports (``rest_port``, ``grpc_port``), answering
    ``grpc_payloads[key]`` to a gRPC call with metadata ``ECHO_KEY: key`` and
    ``http_payloads[key]`` to ``POST /echo/<key>``; a context manager like ``ServeProcess``."""

    def __init__(self, grpc_payloads: Mapping[str, bytes], http_payloads: Mapping[str, bytes]) -> None:
        super().__init__(startup_timeout_s=30.0)
        fd, name = tempfile.mkstemp(prefix="gnbsched-bench-echo-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "grpc": {k: v.hex() for k, v in grpc_payloads.items()},
                    "http": {k: v.hex() for k, v in http_payloads.items()},
                },
                f,
            )
        self.payloads_path = Path(name)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "service.bench.perf.echo", "--rest-port", str(self.rest_port),
                "--grpc-port", str(self.grpc_port), "--payloads", str(self.payloads_path)]  # fmt: skip

    def stop(self) -> int | None:
        rc = super().stop()
        with contextlib.suppress(OSError):
            self.payloads_path.unlink()
        return rc


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
