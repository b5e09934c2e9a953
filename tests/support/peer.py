"""A small HTTP peer for the simulator tests: serves the input image and audio, records every webhook it receives."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Hook:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        payload = json.loads(self.body)
        assert isinstance(payload, dict)
        return payload


class Peer:
    """Serves /image.png and /audio.mp3, and records every POST (a webhook) with its headers and raw body."""

    def __init__(self, image: bytes, audio: bytes) -> None:
        self.image, self.audio = image, audio
        self.hooks: list[Hook] = []
        self.fail_first: dict[str, int] = {}  # path -> how many deliveries to answer 503 before accepting
        self.lock = threading.Lock()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                content = {"/image.png": peer.image, "/audio.mp3": peer.audio}.get(self.path)
                self.send_response(200 if content else 404)
                self.send_header("Content-Length", str(len(content or b"")))
                self.end_headers()
                self.wfile.write(content or b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with peer.lock:
                    refuse = peer.fail_first.get(self.path, 0)
                    if refuse:
                        peer.fail_first[self.path] = refuse - 1
                    else:
                        peer.hooks.append(Hook(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(503 if refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def new_hook_path(self) -> str:
        return f"/hooks/{uuid.uuid4().hex}"

    def hooks_at(self, path: str) -> list[Hook]:
        with self.lock:
            return [hook for hook in self.hooks if hook.path == path]

    def wait_for_hooks(self, path: str, count: int, timeout: float = 10.0) -> list[Hook]:
        deadline = time.monotonic() + timeout
        while len(self.hooks_at(path)) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.hooks_at(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
