"""A real HTTP server on 127.0.0.1 that serves weights files to the downloader (no internet, ever).

``WeightsServer.files`` maps a file name to its bytes; ``modes`` makes one name misbehave:
``"truncated"`` (announces the full length, sends half, closes), ``"slow"`` (64 KiB chunks with a
pause), ``"stall"`` (sends nothing after the headers). ``gets`` counts requests per name.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


class WeightsServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.gets: Counter[str] = Counter()
        self.slow_pause = 0.05
        self.stop_event = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                name = unquote(self.path.lstrip("/").split("?")[0])
                server.gets[name] += 1
                data = server.files.get(name)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                mode = server.modes.get(name, "")
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    if mode == "truncated":
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if mode == "stall":
                        server.stop_event.wait(60)
                        return
                    step = 64 * 1024 if mode == "slow" else len(data)
                    for i in range(0, len(data), step):
                        self.wfile.write(data[i : i + step])
                        self.wfile.flush()
                        if mode == "slow":
                            time.sleep(server.slow_pause)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WeightsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.httpd.shutdown()
        self.httpd.server_close()
