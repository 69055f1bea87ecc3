"""A fake OpenAI-compatible LLM server on loopback for the teacher's unit paths.

It records every request (path, JSON body, headers), answers chat completions with
``reply(body) -> str`` (OpenAI shape, or Ollama's on ``/api/chat``), optionally after a delay or
with an HTTP error, and offers the llama-cpp-python (``/extras/tokenize/count``) or llama.cpp
(``/tokenize``) tokenizer when asked to.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class FakeLLM:
    reply: Callable[[dict[str, Any]], str] = lambda body: '{"owner": []}'
    delay_s: float = 0.0
    status: int = 200
    tokenizer: str | None = None  # "llama_cpp_python" | "llama_cpp" | None
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are separate writes

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (deadline)
                    self.close_connection = True

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.requests.append((self.path, body, dict(self.headers)))
                if self.path == "/extras/tokenize/count":
                    if fake.tokenizer != "llama_cpp_python":
                        return self._send(404, {"detail": "Not Found"})
                    return self._send(200, {"count": max(1, len(body["input"]) // 4)})
                if self.path == "/tokenize":
                    if fake.tokenizer != "llama_cpp":
                        return self._send(404, {"detail": "Not Found"})
                    return self._send(200, {"tokens": list(range(max(1, len(body["content"]) // 4)))})
                if self.path not in ("/v1/chat/completions", "/api/chat"):
                    return self._send(404, {"detail": "Not Found"})
                with fake._lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    if fake.delay_s:
                        time.sleep(fake.delay_s)
                    if fake.status != 200:
                        return self._send(fake.status, {"error": {"message": "fake failure"}})
                    text = fake.reply(body)
                    if self.path == "/api/chat":
                        return self._send(
                            200,
                            {
                                "model": body.get("model"),
                                "done": True,
                                "message": {"role": "assistant", "content": text},
                                "prompt_eval_count": 10,
                                "eval_count": 5,
                            },
                        )
                    return self._send(
                        200,
                        {
                            "id": "chatcmpl-fake",
                            "object": "chat.completion",
                            "model": body.get("model"),
                            "choices": [
                                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                            ],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                        },
                    )
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def chats(self) -> list[dict[str, Any]]:
        return [b for p, b, _ in self.requests if p in ("/v1/chat/completions", "/api/chat")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
