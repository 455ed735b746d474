"""A static file server on 127.0.0.1 for the remote-streaming tests and benchmarks: Range requests,
byte and request counts per path, and injectable faults (dropped connections, 503s, stalls,
corrupted bytes, ignored ranges, 404s). It serves one folder and binds to loopback only. Its parts
(:class:`Traffic`, :func:`send_file`, :class:`LoopbackServer`) also serve the Hub-API server."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Traffic:
    """What a loopback server was asked for, and the faults it is told to inject.

    ``faults[key]`` is a list of actions, one used up per request for that key: ``"503"``, ``"429"``
    (``("429", headers)`` with response headers such as ``Retry-After``),
    ``("drop", n)`` (send n body bytes, then cut the connection), ``("stall", seconds)``,
    ``"ignore-range"`` (answer 200 with the whole file). ``corrupt[key] = offset`` flips that byte in
    every response covering it.
    """

    def __init__(self):
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[float, str]] = []  # (time.perf_counter(), key) of every request
        self.bytes: Counter[str] = Counter()
        self.faults: dict[str, list] = defaultdict(list)
        self.corrupt: dict[str, int] = {}
        self.lock = threading.Lock()

    def arrived(self, key: str):
        """Count a request for ``key``; returns the fault to inject, if any."""
        with self.lock:
            self.requests[key] += 1
            self.log.append((time.perf_counter(), key))
            return self.faults[key].pop(0) if self.faults.get(key) else None

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes.clear()
            self.log.clear()

    def shard_requests(self) -> int:
        return sum(n for p, n in self.requests.items() if p.endswith((".tar", ".parquet")))

    def shard_bytes(self) -> int:
        return sum(n for p, n in self.bytes.items() if p.endswith((".tar", ".parquet")))


def send_status(handler: BaseHTTPRequestHandler, status: int, headers: dict | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", "0")
    handler.end_headers()


def send_file(handler: BaseHTTPRequestHandler, traffic: Traffic, key: str, path: Path, head: bool,
              headers: dict | None = None) -> None:
    """Answer a GET or HEAD for the file at ``path`` (``key`` in ``traffic``): ``Range`` honoured,
    faults injected as ``traffic`` says, only the bytes asked for read from disk."""
    fault = traffic.arrived(key)
    if fault in ("503", "429"):
        send_status(handler, int(fault))
        return
    if isinstance(fault, tuple) and fault[0] in ("503", "429"):  # with headers: ("429", {"Retry-After": "2"})
        send_status(handler, int(fault[0]), fault[1])
        return
    if isinstance(fault, tuple) and fault[0] == "stall":
        time.sleep(fault[1])
    if not path.is_file():
        send_status(handler, 404, {"X-Error-Code": "EntryNotFound"})
        return
    size = path.stat().st_size
    start, end, status = 0, size, 200
    m = re.match(r"bytes=(\d+)-(\d*)", handler.headers.get("Range", ""))
    if m and fault != "ignore-range":
        start = int(m.group(1))
        end = min(size, int(m.group(2)) + 1) if m.group(2) else size
        status = 206
    with open(path, "rb") as f:
        f.seek(start)
        body = bytearray(f.read(max(0, end - start)))
    if key in traffic.corrupt and start <= traffic.corrupt[key] < end:
        body[traffic.corrupt[key] - start] ^= 0xFF
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Accept-Ranges", "bytes")
    if status == 206:
        handler.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
    handler.end_headers()
    if head:
        return
    drop = isinstance(fault, tuple) and fault[0] == "drop"
    if drop:
        body = body[: fault[1]]
        handler.close_connection = True
    with traffic.lock:
        traffic.bytes[key] += len(body)
    try:
        handler.wfile.write(bytes(body))
        if drop:
            handler.wfile.flush()
            handler.connection.shutdown(2)
    except (BrokenPipeError, ConnectionResetError, OSError):
        pass


class LoopbackServer(ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 (a free port), run in a thread while used as a context."""

    daemon_threads = True

    def __init__(self, handler):
        super().__init__(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    def handle_error(self, request, client_address):  # clients hanging up are not news
        pass

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall

    def log_message(self, *args):
        pass


class RepoServer(Traffic):
    """Serve ``folder`` at ``http://127.0.0.1:<port>/``; the keys of :class:`Traffic` are paths
    relative to the folder, e.g. ``"BIOSCAN-5M-wds/cropped_256/val/...tar"``."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)
        server = self

        class Handler(QuietHandler):
            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _serve(self, head: bool):
                rel = self.path.split("?", 1)[0].lstrip("/")
                if ".." in rel.split("/"):
                    send_status(self, 404)
                    return
                send_file(self, server, rel, server.folder / rel, head)

        self.httpd = LoopbackServer(Handler)
        self.url = self.httpd.url

    def __enter__(self) -> RepoServer:
        self.httpd.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.stop()
