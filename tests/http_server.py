"""A real HTTP/1.1 server on 127.0.0.1 for tests (no internet, ever), in its own process.

It serves the bytes in ``files`` (name -> bytes, mutable while running) or, for names not
there, the files under ``root``. It answers ``GET`` and ``HEAD``, honours ``Range`` (one range
-> ``206`` with ``Content-Range``; several -> ``206 multipart/byteranges``; unsatisfiable ->
``416``), keeps connections alive, and answers ``404`` for unknown names. Per name it counts
requests, ``GET`` and ``HEAD`` requests, body bytes sent and the byte ranges asked for, so tests
can assert how much a client downloaded.

``modes[name]`` makes one name misbehave:

- ``"truncated"``: announces the full length, sends half of the body, closes the connection;
- ``"slow"``: sends 64 KiB chunks with ``slow_pause`` seconds between them;
- ``"stall"``: sends the headers, then nothing until the server stops;
- ``"no-range"``: ignores ``Range`` and always sends the whole file with ``200``.

``statuses[name] = 503`` (any code) answers that status with an empty body instead;
``types[name]`` sets the ``Content-Type`` (default: guessed from the name's extension).

Why a separate process: some GDAL calls made through rasterio keep Python's GIL while GDAL
waits on HTTP (opening ``/vsicurl/`` without ``GDAL_DISABLE_READDIR_ON_OPEN`` lists the
"directory" that way). A server thread in the same process then never runs and both wait
forever. So the server is ``python tests/http_server.py`` in a child process: ``files`` are
stored in a private temporary folder, ``modes``/``statuses``/``slow_pause`` in a control file
the child re-reads on every request, and the counters are fetched from the child (a control
URL under ``/__http_server__/``) whenever a test reads them. Counters are updated before the
bytes are written, so once a client has its data, the counters include it.

Usage::

    with HttpServer(files={"scene.tif": data}) as server:
        url = server.url_for("scene.tif")
        ...
        assert server.bytes_sent["scene.tif"] < len(data) // 10
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, MutableMapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

__all__ = ["HttpServer", "parse_ranges"]

_RANGE = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")
_CONTROL = "/__http_server__/"


def parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """``"bytes=0-99,200-"`` -> ``[(0, 100), (200, size)]`` (half-open), or ``None`` when unsatisfiable.

    Ranges past the end are clipped; ``"-n"`` is the last ``n`` bytes. A header that is not a
    ``bytes=`` range set gives ``[]`` (serve the whole file).
    """
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or not spec:
        return []
    out: list[tuple[int, int]] = []
    for part in spec.split(","):
        m = _RANGE.match(part)
        if m is None or (not m.group(1) and not m.group(2)):
            return []
        first, last = m.group(1), m.group(2)
        if not first:
            start, stop = max(0, size - int(last)), size
        else:
            start = int(first)
            stop = size if not last else min(size, int(last) + 1)
            if last and int(last) < start:
                return []
        if start < size and stop > start:
            out.append((start, stop))
    return out or None


def _safe_path(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it stays inside ``folder``, else ``None``."""
    path = (folder / name).resolve()
    return path if folder.resolve() in path.parents else None


class _FileStore(MutableMapping[str, bytes]):
    """name -> bytes, kept as files in a folder the server process reads."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        path = _safe_path(self.folder, name)
        if path is None or not name:
            raise KeyError(name)
        return path

    def __getitem__(self, name: str) -> bytes:
        path = self._path(name)
        if not path.is_file():
            raise KeyError(name)
        return path.read_bytes()

    def __setitem__(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp-upload")
        tmp.write_bytes(bytes(data))
        os.replace(tmp, path)

    def __delitem__(self, name: str) -> None:
        path = self._path(name)
        if not path.is_file():
            raise KeyError(name)
        path.unlink()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file()))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _ControlDict(MutableMapping[str, Any]):
    """A dict that calls ``on_change`` after every change (to rewrite the control file)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.data: dict[str, Any] = {}
        self.on_change = on_change

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.on_change()

    def __delitem__(self, key: str) -> None:
        del self.data[key]
        self.on_change()

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class HttpServer:
    """A loopback HTTP server in a child process, with byte accounting; a context manager.

    Args:
        files: name -> bytes to serve at ``/name`` (``server.files[name] = ...`` also works
            while running; names may contain ``/``).
        root: a folder whose files are served for names not in ``files``.
    """

    def __init__(self, files: dict[str, bytes] | None = None, root: Path | str | None = None) -> None:
        self._state = Path(tempfile.mkdtemp(prefix="segnext-http-"))
        self.root = Path(root).resolve() if root is not None else None
        self.files = _FileStore(self._state / "files")
        self.modes: MutableMapping[str, str] = _ControlDict(self._write_control)
        self.statuses: MutableMapping[str, int] = _ControlDict(self._write_control)
        self.types: MutableMapping[str, str] = _ControlDict(self._write_control)
        self._slow_pause = 0.05
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        self._write_control()
        for name, data in (files or {}).items():
            self.files[name] = data

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> HttpServer:
        cmd = [sys.executable, str(Path(__file__).resolve()), str(self._state)]
        if self.root is not None:
            cmd.append(str(self.root))
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self._stop()
            raise RuntimeError(f"test HTTP server did not start: {line!r}")
        self.url = line
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
            self._proc = None
        shutil.rmtree(self._state, ignore_errors=True)

    # --- control ---------------------------------------------------------------------------
    def url_for(self, name: str) -> str:
        """The URL of ``name`` (percent-encoded)."""
        return f"{self.url}/{quote(name)}"

    @property
    def slow_pause(self) -> float:
        return self._slow_pause

    @slow_pause.setter
    def slow_pause(self, seconds: float) -> None:
        self._slow_pause = float(seconds)
        self._write_control()

    def _write_control(self) -> None:
        if not hasattr(self, "types"):
            return
        control = {
            "modes": dict(self.modes),
            "statuses": dict(self.statuses),
            "types": dict(self.types),
            "slow_pause": self._slow_pause,
        }
        tmp = self._state / "control.json.tmp"
        tmp.write_text(json.dumps(control))
        os.replace(tmp, self._state / "control.json")

    def _call(self, what: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}{_CONTROL}{what}", timeout=30) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    # --- counters (fetched from the server process) ----------------------------------------
    def reset_counters(self) -> None:
        """Zero every counter (e.g. after a client opened a file, to count only its reads)."""
        self._call("reset")

    def _counter(self, key: str) -> Counter[str]:
        return Counter(self._call("stats")[key])

    @property
    def requests(self) -> Counter[str]:
        """Requests per name (``GET`` and ``HEAD``)."""
        return self._counter("requests")

    @property
    def gets(self) -> Counter[str]:
        return self._counter("gets")

    @property
    def heads(self) -> Counter[str]:
        return self._counter("heads")

    @property
    def bytes_sent(self) -> Counter[str]:
        """Body bytes sent per name."""
        return self._counter("bytes_sent")

    @property
    def ranges(self) -> dict[str, list[tuple[int, int]]]:
        """Half-open byte ranges served per name, in order (``(0, size)`` for a whole file)."""
        return {k: [(a, b) for a, b in v] for k, v in self._call("stats")["ranges"].items()}

    @property
    def total_bytes(self) -> int:
        """Body bytes sent for every name together."""
        return sum(self.bytes_sent.values())


# --- the server process ----------------------------------------------------------------------


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.gets: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.bytes_sent: Counter[str] = Counter()
        self.ranges: dict[str, list[tuple[int, int]]] = {}

    def as_json(self) -> bytes:
        with self.lock:
            return json.dumps(
                {
                    "requests": self.requests,
                    "gets": self.gets,
                    "heads": self.heads,
                    "bytes_sent": self.bytes_sent,
                    "ranges": self.ranges,
                }
            ).encode()


def _serve(state: Path, root: Path | None) -> None:
    stats = _Stats()
    stop = threading.Event()
    files = state / "files"

    def control() -> dict[str, Any]:
        result: dict[str, Any] = json.loads((state / "control.json").read_text())
        return result

    def content(name: str) -> bytes | None:
        for folder in (files, root):
            if folder is None or not name:
                continue
            path = _safe_path(folder, name)
            if path is not None and path.is_file():
                return path.read_bytes()
        return None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            path = urlparse(self.path).path
            if path.startswith(_CONTROL):
                self._control(path[len(_CONTROL) :])
                return
            name = unquote(path.lstrip("/"))
            with stats.lock:
                stats.requests[name] += 1
                (stats.heads if head else stats.gets)[name] += 1
            ctl = control()
            status = ctl["statuses"].get(name)
            if status is not None:
                self._empty(int(status))
                return
            data = content(name)
            if data is None:
                self._empty(404)
                return
            mode = ctl["modes"].get(name, "")
            header = self.headers.get("Range")
            ranges = parse_ranges(header, len(data)) if header and mode != "no-range" else []
            if ranges is None:
                self._empty(416, {"Content-Range": f"bytes */{len(data)}"})
                return
            if not head:
                with stats.lock:
                    stats.ranges.setdefault(name, []).extend(ranges or [(0, len(data))])
            ctype = ctl["types"].get(name) or mimetypes.guess_type(name)[0] or "application/octet-stream"
            if len(ranges) > 1:
                self._multipart(name, data, ranges, ctype, head)
                return
            start, stop_ = ranges[0] if ranges else (0, len(data))
            self.send_response(206 if ranges else 200)
            self.send_header("Content-Type", ctype)
            self.send_header("Accept-Ranges", "bytes")
            if ranges:
                self.send_header("Content-Range", f"bytes {start}-{stop_ - 1}/{len(data)}")
            self.send_header("Content-Length", str(stop_ - start))
            self.end_headers()
            if not head:
                self._body(name, data[start:stop_], mode, float(ctl["slow_pause"]))

        def _control(self, what: str) -> None:
            if what == "reset":
                with stats.lock:
                    stats.reset()
                body = b"{}"
            else:
                body = stats.as_json()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _multipart(self, name: str, data: bytes, ranges: list[tuple[int, int]], ctype: str, head: bool) -> None:
            boundary = "segnext-geo-test-boundary"
            head_fmt = "--{}\r\nContent-Type: {}\r\nContent-Range: bytes {}-{}/{}\r\n\r\n"
            parts = [
                head_fmt.format(boundary, ctype, a, b - 1, len(data)).encode() + data[a:b] + b"\r\n" for a, b in ranges
            ]
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            self.send_response(206)
            self.send_header("Content-Type", f"multipart/byteranges; boundary={boundary}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self._body(name, body, "", 0.0)

        def _body(self, name: str, body: bytes, mode: str, pause: float) -> None:
            try:
                if mode == "stall":
                    stop.wait()
                    self.close_connection = True
                    return
                if mode == "truncated":
                    body = body[: len(body) // 2]
                    self.close_connection = True
                step = 64 * 1024 if mode == "slow" else max(1, len(body))
                for i in range(0, len(body), step):
                    chunk = body[i : i + step]
                    with stats.lock:
                        stats.bytes_sent[name] += len(chunk)  # counted before the client can see it
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    if mode == "slow":
                        time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _empty(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    print(f"http://127.0.0.1:{httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever()
    finally:
        stop.set()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _serve(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
