"""A static file server on 127.0.0.1 for the remote-streaming tests and benchmarks: Range requests,
byte and request counts per path, and injectable faults (dropped connections, 503s, stalls,
corrupted bytes, ignored ranges, 404s). It serves one folder and binds to loopback only."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RepoServer:
    """Serve ``folder`` at ``http://127.0.0.1:<port>/``.

    ``faults[path]`` is a list of actions, one used up per request to that path (path relative to
    the folder, e.g. ``"BIOSCAN-5M-wds/cropped_256/val/...tar"``): ``"503"``, ``"429"``,
    ``("drop", n)`` (send n body bytes, then cut the connection), ``("stall", seconds)``,
    ``"ignore-range"`` (answer 200 with the whole file). ``corrupt[path] = offset`` flips that byte in
    every response covering it.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[float, str]] = []  # (time.perf_counter(), path) of every request
        self.bytes: Counter[str] = Counter()
        self.faults: dict[str, list] = defaultdict(list)
        self.corrupt: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _serve(self, head: bool):
                rel = self.path.split("?", 1)[0].lstrip("/")
                with server.lock:
                    server.requests[rel] += 1
                    server.log.append((time.perf_counter(), rel))
                    fault = server.faults[rel].pop(0) if server.faults.get(rel) else None
                if fault in ("503", "429"):
                    self.send_response(int(fault))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if isinstance(fault, tuple) and fault[0] == "stall":
                    time.sleep(fault[1])
                path = server.folder / rel
                if not path.is_file() or ".." in rel.split("/"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = path.stat().st_size
                start, end, status = 0, size, 200
                m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if m and fault != "ignore-range":
                    start = int(m.group(1))
                    end = min(size, int(m.group(2)) + 1) if m.group(2) else size
                    status = 206
                with open(path, "rb") as f:  # only the bytes asked for
                    f.seek(start)
                    body = bytearray(f.read(max(0, end - start)))
                if rel in server.corrupt and start <= server.corrupt[rel] < end:
                    body[server.corrupt[rel] - start] ^= 0xFF
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.end_headers()
                if head:
                    return
                if isinstance(fault, tuple) and fault[0] == "drop":
                    body = body[: fault[1]]
                    self.close_connection = True
                with server.lock:
                    server.bytes[rel] += len(body)
                try:
                    self.wfile.write(bytes(body))
                    if isinstance(fault, tuple) and fault[0] == "drop":
                        self.wfile.flush()
                        self.connection.shutdown(2)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # clients hanging up are not news
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RepoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset_counts(self) -> None:
        with self.lock:
            self.requests.clear()
            self.bytes.clear()
            self.log.clear()

    def shard_requests(self) -> int:
        return sum(n for p, n in self.requests.items() if p.endswith((".tar", ".parquet")))

    def shard_bytes(self) -> int:
        return sum(n for p, n in self.bytes.items() if p.endswith((".tar", ".parquet")))
