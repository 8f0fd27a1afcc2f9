"""Real misbehaving HTTP servers on 127.0.0.1 for the client tests: each request is answered by a function of
(path, headers, body) that returns the raw bytes to send, or a generator of (bytes, pause) pieces."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time


def response(code: int, payload, *, headers: dict | None = None, length: int | None = None) -> bytes:
    """An HTTP/1.1 response; ``length`` overrides Content-Length (to send a body shorter than announced)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(body) if length is None else length),
            "Connection": "close", **(headers or {})}
    reason = {200: "OK", 302: "Found", 307: "Temporary Redirect", 401: "Unauthorized"}.get(code, "X")
    return (f"HTTP/1.1 {code} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n").encode() \
        + body


def chat(content: str) -> bytes:
    return response(200, {"choices": [{"message": {"role": "assistant", "content": content}}]})


class Serving:
    """Runs ``self.server`` (a socketserver) on a thread while in a ``with`` block; it stops itself after 60 s."""

    def _serve(self, server) -> None:
        self.server = server
        self.port = server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.stopper = threading.Timer(60, server.shutdown)  # bounded: stops itself whatever happens
        self.stopper.daemon = True

    def __enter__(self):
        self.thread.start()
        self.stopper.start()
        return self

    def __exit__(self, *exc):
        self.stopper.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class RawServer(Serving):
    """Threaded TCP server speaking just enough HTTP: reads one request, sends what ``answer`` returns, closes.

    ``requests`` records ``(path, headers, body)`` of every request. Stops itself after 60 s whatever happens.
    """

    def __init__(self, answer):
        self.requests: list[tuple[str, dict, bytes]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                sock = self.request
                sock.settimeout(10)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        chunk = sock.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    head, _, body = data.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    path = lines[0].split(" ")[1]
                    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
                    need = int(headers.get("content-length", 0))
                    while len(body) < need:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        body += chunk
                    with outer.lock:
                        outer.requests.append((path, headers, body))
                    out = answer(path, headers, body)
                    pieces = [(out, 0.0)] if isinstance(out, bytes) else out
                    for piece, pause in pieces:
                        sock.sendall(piece)
                        if pause:
                            time.sleep(pause)
                except OSError:  # the client closed first (its deadline): nothing to do
                    pass

        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._serve(server)


def trickle(data: bytes, pause: float):
    """``data`` one byte at a time, ``pause`` seconds apart (a server that keeps every read alive)."""
    return ((data[i:i + 1], pause) for i in range(len(data)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
