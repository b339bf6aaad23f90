"""Real HTTP servers on 127.0.0.1 for fault and bad-input tests: image hosts that 404, hang,
redirect in loops or answer HTML, and a stand-in for Label Studio's API (a forwarding proxy to
the real one) that can answer 5xx or be stopped and started again on the same port."""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

from PIL import Image

import requests

from freesel_backend.server.redis_server import free_port

Reply = tuple[int, dict[str, str], bytes]
Route = Callable[["Request"], Reply]


class Request:
    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.received_at = time.monotonic()


def content(data: bytes, content_type: str = "application/octet-stream") -> Route:
    return lambda request: (200, {"Content-Type": content_type}, data)


def status(code: int, body: bytes = b"") -> Route:
    return lambda request: (code, {"Content-Type": "text/plain"}, body)


def redirect(location: str) -> Route:
    return lambda request: (302, {"Location": location}, b"")


def hang(seconds: float) -> Route:
    def reply(request: Request) -> Reply:
        time.sleep(seconds)
        return 200, {"Content-Type": "image/png"}, b""

    return reply


class LocalHttpServer:
    """``routes`` maps a path (without query) to a reply; ``fallback`` answers the rest (404)."""

    def __init__(self, routes: Optional[dict[str, Route]] = None, fallback: Optional[Route] = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.fallback: Route = fallback or status(404, b"not found")
        self.port = free_port()
        self.requests: list[tuple[str, str]] = []
        self.received: list[Request] = []  # the same requests with their bodies and times
        self._server: Optional[ThreadingHTTPServer] = None
        self._connections: set[socket.socket] = set()  # open keep-alive connections, closed by stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalHttpServer":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                owner._connections.add(self.connection)

            def finish(self) -> None:
                owner._connections.discard(self.connection)
                super().finish()

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Request(self.command, self.path, dict(self.headers), body)
                owner.requests.append((self.command, self.path))
                owner.received.append(request)
                route = owner.routes.get(self.path.split("?")[0], owner.fallback)
                try:
                    code, headers, payload = route(request)
                except requests.RequestException:
                    code, headers, payload = 502, {}, b"upstream unreachable"
                try:
                    self.send_response(code)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away (a killed worker, a timed-out download)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections too: a client's keep-alive connection would
        otherwise still be served, and the server would not look down to it."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in list(self._connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client

    def __enter__(self) -> "LocalHttpServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LabelStudioStandIn(LocalHttpServer):
    """Forwards everything to the real Label Studio at ``target``, except while ``failing`` says
    a request (method, path) should get an HTTP error instead; ``holding`` says for how many
    seconds to hold a request before forwarding it (Label Studio busy before it starts)."""

    forward_timeout_s = 60.0

    def __init__(self, target: str) -> None:
        super().__init__(fallback=self._forward)
        self.target = target.rstrip("/")
        self.failing: Callable[[str, str], Optional[int]] = lambda method, path: None
        self.failed: list[tuple[str, str, int]] = []
        self.holding: Callable[[str, str], float] = lambda method, path: 0.0

    def _forward(self, request: Request) -> Reply:
        code = self.failing(request.method, request.path)
        if code is not None:
            self.failed.append((request.method, request.path, code))
            return code, {"Content-Type": "text/html"}, b"<h1>Server Error</h1>"
        time.sleep(self.holding(request.method, request.path))
        skipped = {"host", "content-length", "connection", "accept-encoding"}
        response = requests.request(
            request.method,
            self.target + request.path,
            headers={k: v for k, v in request.headers.items() if k.lower() not in skipped},
            data=request.body or None,
            allow_redirects=False,
            timeout=self.forward_timeout_s,
        )
        headers = {k: v for k, v in response.headers.items() if k.lower() in ("content-type", "location")}
        return response.status_code, headers, response.content


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    """The image as the bytes of a file in ``fmt`` (PNG, JPEG, ...), to serve."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
