"""The loopback test server (tests/http_server.py): ranges, whole files, 404, misbehaving modes, counters."""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_server import HttpServer, parse_ranges

DATA = bytes(range(256)) * 40  # 10,240 bytes


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "on disk.bin").write_bytes(b"from the folder")
    with HttpServer(files={"a.bin": DATA}, root=tmp_path) as s:
        yield s


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_parse_ranges() -> None:
    assert parse_ranges("bytes=0-9", 100) == [(0, 10)]
    assert parse_ranges("bytes=90-", 100) == [(90, 100)]
    assert parse_ranges("bytes=-10", 100) == [(90, 100)]
    assert parse_ranges("bytes=95-200", 100) == [(95, 100)]
    assert parse_ranges("bytes=0-1, 5-6", 100) == [(0, 2), (5, 7)]
    assert parse_ranges("bytes=100-", 100) is None
    assert parse_ranges("bytes=5-2", 100) == []
    assert parse_ranges("items=0-1", 100) == []


def test_whole_file_range_and_counters(server: HttpServer) -> None:
    status, headers, body = _get(server.url_for("a.bin"))
    assert status == 200 and body == DATA and headers["Accept-Ranges"] == "bytes"
    status, headers, body = _get(server.url_for("a.bin"), {"Range": "bytes=100-199"})
    assert status == 206 and body == DATA[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(DATA)}"
    assert server.gets["a.bin"] == 2 and server.bytes_sent["a.bin"] == len(DATA) + 100
    assert server.ranges["a.bin"] == [(0, len(DATA)), (100, 200)]
    server.reset_counters()
    assert server.total_bytes == 0 and server.requests["a.bin"] == 0


def test_head_sends_no_body(server: HttpServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=10)
    conn.request("HEAD", "/a.bin")
    r = conn.getresponse()
    assert r.status == 200 and int(r.headers["Content-Length"]) == len(DATA) and r.read() == b""
    # the connection stays open for the next request (keep-alive)
    conn.request("GET", "/a.bin", headers={"Range": "bytes=-5"})
    r = conn.getresponse()
    assert r.status == 206 and r.read() == DATA[-5:]
    conn.close()
    assert server.heads["a.bin"] == 1 and server.gets["a.bin"] == 1 and server.bytes_sent["a.bin"] == 5


def test_multirange_is_multipart(server: HttpServer) -> None:
    status, headers, body = _get(server.url_for("a.bin"), {"Range": "bytes=0-3,1000-1003"})
    assert status == 206 and headers["Content-Type"].startswith("multipart/byteranges; boundary=")
    assert f"Content-Range: bytes 0-3/{len(DATA)}".encode() in body and DATA[1000:1004] in body


def test_unsatisfiable_404_and_root(server: HttpServer) -> None:
    assert _get(server.url_for("a.bin"), {"Range": f"bytes={len(DATA)}-"})[0] == 416
    assert _get(server.url_for("missing.bin"))[0] == 404
    assert _get(server.url_for("../etc/passwd"))[0] == 404
    assert _get(server.url_for("sub/on disk.bin"))[2] == b"from the folder"
    assert server.requests["missing.bin"] == 1


def test_modes_and_statuses(server: HttpServer) -> None:
    server.modes["a.bin"] = "no-range"
    status, _, body = _get(server.url_for("a.bin"), {"Range": "bytes=0-9"})
    assert status == 200 and body == DATA
    server.modes["a.bin"] = "truncated"
    with pytest.raises(http.client.IncompleteRead):
        _get(server.url_for("a.bin"))
    assert server.bytes_sent["a.bin"] == len(DATA) + len(DATA) // 2
    server.modes["a.bin"] = "slow"
    server.slow_pause = 0.0
    assert _get(server.url_for("a.bin"))[2] == DATA
    server.statuses["a.bin"] = 503
    assert _get(server.url_for("a.bin"))[0] == 503
