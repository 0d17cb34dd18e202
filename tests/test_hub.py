"""The weights cache against a real HTTP server on 127.0.0.1: download, verify, rename, and every failure.

Every test gets its own ``$SEGNEXT_GEO_HOME`` and points ``$SEGNEXT_GEO_WEIGHTS_MIRROR`` at the
loopback server; the published hosts are never contacted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from http_server import HttpServer
from weights_files import (
    jittor_arrays,
    jittor_bytes,
    malicious_jittor_bytes,
    random_model,
    run_cli,
    write_jittor,
    write_mmseg,
)

from segnext_geo.errors import UserError
from segnext_geo.models import CheckpointError, SegNeXt, get_weights, load_model, register_weights
from segnext_geo.models.hub import (
    DownloadError,
    cache_dir,
    cached_path,
    default_model,
    fetch_url,
    fetch_weights,
    import_weights,
    is_cached,
)
from segnext_geo.models.meta import ISAID_CLASSES, ISAID_PALETTE
from segnext_geo.models.weights import unregister_weights

NAME = "segnext_t_isaid"
FILE = "segnext_tiny_896x896_isaid_160k.pkl"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEGNEXT_GEO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SEGNEXT_GEO_MODEL", raising=False)
    return tmp_path / "home"


@pytest.fixture
def server(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpServer]:
    with HttpServer() as s:
        monkeypatch.setenv("SEGNEXT_GEO_WEIGHTS_MIRROR", s.url)
        yield s


@pytest.fixture(scope="module")
def isaid_t() -> SegNeXt:
    return random_model("tiny", 16, seed=11)


@pytest.fixture(scope="module")
def isaid_bytes(isaid_t: SegNeXt) -> bytes:
    return jittor_bytes(jittor_arrays(isaid_t))


def _cache_files(home: Path) -> list[str]:
    """Every file in the cache except the lock files."""
    root = home / "weights"
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".locks" not in p.parts)


def _x() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))


def _assert_one_line_download_error(msg: str, url: str, home: Path, name: str = NAME) -> None:
    assert "\n" not in msg
    assert msg.startswith(f"{name}: ")
    assert url in msg
    assert str(cached_path(name)) in msg and str(home) in str(cached_path(name))
    assert f"segnext-geo models import {name} FILE" in msg


# --- the happy path ---------------------------------------------------------------------------


def test_download_shows_progress_verifies_and_renames(
    home: Path, server: HttpServer, isaid_t: SegNeXt, isaid_bytes: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    server.files[FILE] = isaid_bytes
    path = fetch_weights(NAME, progress=True)
    err = capfd.readouterr().err
    assert path == home / "weights" / FILE and path.read_bytes() == isaid_bytes
    assert NAME in err and "100%" in err  # the tqdm bar, finished
    assert _cache_files(home) == [FILE]  # no .part left behind
    assert server.gets[FILE] == 1

    model = load_model(NAME)  # from the cache: no second request
    assert server.gets[FILE] == 1
    with torch.no_grad():
        assert torch.equal(model(_x()), isaid_t(_x()))
    assert model.meta.class_names == list(ISAID_CLASSES)
    assert model.meta.palette == list(ISAID_PALETTE)
    assert model.meta.extra["weights"] == NAME and model.meta.extra["dataset"] == "iSAID"
    assert "research" in model.meta.extra["licence"] and model.meta.extra["gsd_m"] is None
    assert model.meta.family == "official" and model.nmf.rank == 16

    # a path to the cached file works the same way (its name says which entry it is)
    assert load_model(path).meta.class_names == list(ISAID_CLASSES)


def test_a_url_downloads_like_a_name(home: Path, server: HttpServer, isaid_bytes: bytes) -> None:
    server.files[FILE] = isaid_bytes
    model = load_model(f"{server.url}/{FILE}")
    assert model.meta.extra["weights"] == NAME  # the cached file name is the catalogue's
    assert _cache_files(home) == [FILE] and server.gets[FILE] == 1


def test_a_url_outside_the_catalogue_checks_its_hash_suffix(
    home: Path, server: HttpServer, isaid_t: SegNeXt, tmp_path: Path
) -> None:
    data = write_mmseg(tmp_path / "m.pth", isaid_t).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    good, bad = f"mine-{sha[:8]}.pth", f"mine-{'0' * 8 if sha[:8] != '0' * 8 else '1' * 8}.pth"
    server.files[good] = server.files[bad] = data
    path, entry = fetch_url(f"{server.url}/{good}")
    assert entry is None and path == home / "weights" / good
    with pytest.raises(DownloadError, match=r"failed verification \(SHA-256 [0-9a-f]{16}\.\.\. does not start with"):
        fetch_url(f"{server.url}/{bad}")
    assert _cache_files(home) == [good]


def test_a_file_url_mirror_works_for_shared_folders(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isaid_bytes: bytes
) -> None:
    share = tmp_path / "share"
    share.mkdir()
    (share / FILE).write_bytes(isaid_bytes)
    monkeypatch.setenv("SEGNEXT_GEO_WEIGHTS_MIRROR", share.as_uri())
    assert fetch_weights(NAME).read_bytes() == isaid_bytes


# --- the SHA-256 prefix of mmseg names: a test entry named with the real prefix of the served bytes ------


@pytest.fixture
def mmseg_entry(server: HttpServer, isaid_t: SegNeXt, tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    data = write_mmseg(tmp_path / "m.pth", isaid_t).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    base = get_weights("segnext_t_ade20k")
    good = dataclasses.replace(
        base,
        name="test_mmseg_t",
        filename=f"test_mmseg_t_20240101-{sha[:8]}.pth",
        url=f"https://example.invalid/test_mmseg_t_20240101-{sha[:8]}.pth",
        sha256_prefix=sha[:8],
        num_classes=16,
        class_names=ISAID_CLASSES,
        palette=ISAID_PALETTE,
    )
    wrong = dataclasses.replace(
        good, name="test_mmseg_t_wrong", filename="test_mmseg_t_20240101-deadbeef.pth", sha256_prefix="deadbeef"
    )
    register_weights(good)
    register_weights(wrong)
    try:
        yield sha, data
    finally:
        unregister_weights(good.name)
        unregister_weights(wrong.name)


def test_sha256_prefix_is_checked(
    home: Path, server: HttpServer, mmseg_entry: tuple[str, bytes], isaid_t: SegNeXt
) -> None:
    sha, data = mmseg_entry
    server.files[f"test_mmseg_t_20240101-{sha[:8]}.pth"] = data
    server.files["test_mmseg_t_20240101-deadbeef.pth"] = data
    model = load_model("test_mmseg_t")
    with torch.no_grad():
        assert torch.equal(model(_x()), isaid_t(_x()))
    assert model.nmf.rank == 16 and model.meta.family == "mmseg"
    if sha.startswith("deadbeef"):  # pragma: no cover - one file in 4 billion
        pytest.skip("the served bytes happen to start with deadbeef")
    with pytest.raises(DownloadError) as e:
        fetch_weights("test_mmseg_t_wrong")
    assert f"SHA-256 {sha[:16]}... does not start with the published deadbeef" in str(e.value)
    assert "nothing was cached" in str(e.value)
    assert _cache_files(home) == [f"test_mmseg_t_20240101-{sha[:8]}.pth"]


def test_import_checks_the_published_sha256_prefix(home: Path, isaid_t: SegNeXt, tmp_path: Path) -> None:
    file = write_mmseg(tmp_path / "ade.pth", random_model("tiny", 150, seed=2))
    with pytest.raises(UserError, match=r"ade\.pth: is not segnext_t_ade20k \(SHA-256 .* the published 05bd8466\)"):
        import_weights("segnext_t_ade20k", file)
    assert _cache_files(home) == []


# --- failures: nothing is cached, one line names model, URL, cache path and the import command ------


def test_http_404(home: Path, server: HttpServer) -> None:
    with pytest.raises(DownloadError) as e:
        load_model(NAME)
    _assert_one_line_download_error(str(e.value), f"{server.url}/{FILE}", home)
    assert "HTTP 404" in str(e.value)
    assert _cache_files(home) == []


def test_truncated_response(home: Path, server: HttpServer, isaid_bytes: bytes) -> None:
    server.files[FILE] = isaid_bytes
    server.modes[FILE] = "truncated"
    with pytest.raises(DownloadError) as e:
        fetch_weights(NAME)
    _assert_one_line_download_error(str(e.value), f"{server.url}/{FILE}", home)
    assert "connection dropped" in str(e.value) or "IncompleteRead" in str(e.value)
    assert _cache_files(home) == []


def test_body_failing_the_sha1_trailer(home: Path, server: HttpServer, isaid_bytes: bytes) -> None:
    data = bytearray(isaid_bytes)
    data[1000] ^= 0x01
    server.files[FILE] = bytes(data)
    with pytest.raises(DownloadError) as e:
        fetch_weights(NAME)
    _assert_one_line_download_error(str(e.value), f"{server.url}/{FILE}", home)
    assert "failed verification (Jittor SHA-1 check failed" in str(e.value)
    assert _cache_files(home) == []


def test_structurally_wrong_file_is_refused(home: Path, server: HttpServer) -> None:
    server.files[FILE] = jittor_bytes(jittor_arrays(random_model("tiny", 150, seed=1)))  # an ADE20K head
    with pytest.raises(DownloadError, match=r"failed verification \(has 150 classes but 16 were asked for\)"):
        fetch_weights(NAME)
    server.files[FILE] = jittor_bytes(jittor_arrays(random_model("small", 16, seed=1)))
    with pytest.raises(DownloadError, match=r"\(holds segnext_s weights, but segnext_t_isaid is a segnext_t model\)"):
        fetch_weights(NAME)
    assert _cache_files(home) == []


def test_malicious_pickle_never_runs(home: Path, server: HttpServer, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    server.files[FILE] = malicious_jittor_bytes(marker)
    with pytest.raises(DownloadError) as e:
        fetch_weights(NAME)
    assert "refused pickle global" in str(e.value) and "system" in str(e.value)
    assert not marker.exists()
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(server.files[FILE])
    with pytest.raises(UserError, match="refused pickle global"):
        import_weights(NAME, evil)
    assert not marker.exists() and _cache_files(home) == []


def test_no_server_fails_at_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGNEXT_GEO_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(DownloadError) as e:
        load_model(NAME)
    _assert_one_line_download_error(str(e.value), f"http://127.0.0.1:9/{FILE}", home)
    assert "Connection refused" in str(e.value)


def test_a_server_that_never_answers_times_out(
    home: Path, server: HttpServer, isaid_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGNEXT_GEO_DOWNLOAD_TIMEOUT", "0.5")
    server.files[FILE] = isaid_bytes
    server.modes[FILE] = "stall"
    t = time.monotonic()
    with pytest.raises(DownloadError, match=r"\(no data for 0\.5 s\)"):
        fetch_weights(NAME)
    assert time.monotonic() - t < 30  # bounded by the timeout, not by the server
    assert _cache_files(home) == []


# --- import, names, cache location ----------------------------------------------------------------


def test_import_verifies_and_copies_under_the_published_name(
    home: Path, tmp_path: Path, isaid_bytes: bytes, isaid_t: SegNeXt
) -> None:
    src = tmp_path / "from_usb_stick.pkl"
    src.write_bytes(isaid_bytes)
    path = import_weights(NAME, src)
    assert path == home / "weights" / FILE and path.read_bytes() == isaid_bytes and src.exists()
    assert is_cached(NAME)
    with pytest.raises(UserError, match="already in the cache; pass --overwrite"):
        import_weights(NAME, src)
    assert import_weights(NAME, src, overwrite=True) == path
    assert import_weights(NAME, path) == path  # the cached file itself: verified in place
    with pytest.raises(UserError, match=r"segnext_x_isaid: no pretrained model of that name; did you mean"):
        import_weights("segnext_x_isaid", src)
    with pytest.raises(UserError, match=r"nope\.pkl: no such file"):
        import_weights(NAME, tmp_path / "nope.pkl")
    mmseg = write_mmseg(tmp_path / "isaid_as_pth.pth", isaid_t)
    with pytest.raises(UserError, match="a PyTorch file, but segnext_t_isaid is published as a Jittor pickle"):
        import_weights(NAME, mmseg, overwrite=True)
    assert _cache_files(home) == [FILE] and path.read_bytes() == isaid_bytes


def test_unknown_names_and_missing_paths(home: Path) -> None:
    with pytest.raises(CheckpointError, match=r"segnext_t_isiad: no such checkpoint file and no pretrained model"):
        load_model("segnext_t_isiad")
    with pytest.raises(CheckpointError, match="did you mean segnext_t_isaid"):
        load_model("segnext_t_isiad")
    with pytest.raises(CheckpointError, match=r"runs/x/best\.ckpt: checkpoint not found"):
        load_model("runs/x/best.ckpt")


def test_cache_location_and_default_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGNEXT_GEO_HOME", str(tmp_path / "h"))
    assert cache_dir() == tmp_path / "h" / "weights"
    monkeypatch.delenv("SEGNEXT_GEO_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "segnext-geo" / "weights"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert cache_dir() == tmp_path / "user" / ".cache" / "segnext-geo" / "weights"
    monkeypatch.delenv("SEGNEXT_GEO_MODEL", raising=False)
    assert default_model() == "segnext_t_isaid"
    monkeypatch.setenv("SEGNEXT_GEO_MODEL", "segnext_b_isaid")
    assert default_model() == "segnext_b_isaid"


# --- processes: SIGKILL, SIGTERM, two at once ---------------------------------------------------------


def _download_process(home: Path, server: HttpServer) -> subprocess.Popen[str]:
    env = {**os.environ, "SEGNEXT_GEO_HOME": str(home), "SEGNEXT_GEO_WEIGHTS_MIRROR": server.url}
    return subprocess.Popen(
        [sys.executable, "-m", "segnext_geo.cli", "models", "download", NAME, "-q"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_part(home: Path, proc: subprocess.Popen[str], timeout: float = 120) -> Path:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        parts = list((home / "weights").glob(f".{FILE}.*.part")) if (home / "weights").exists() else []
        if parts and parts[0].stat().st_size > 0:
            return parts[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the download never started")


@pytest.mark.slow
def test_sigkill_during_a_download_leaves_nothing_that_loads(
    home: Path, server: HttpServer, isaid_bytes: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.files[FILE] = isaid_bytes
    server.modes[FILE] = "slow"
    proc = _download_process(home, server)
    part = _wait_for_part(home, proc)
    proc.kill()  # SIGKILL: no clean-up code runs
    proc.wait()
    assert 0 < part.stat().st_size < len(isaid_bytes)  # killed mid-download
    assert not (home / "weights" / FILE).exists()
    monkeypatch.setenv("SEGNEXT_GEO_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    with pytest.raises(DownloadError):
        load_model(NAME)  # the partial file is never taken for the model
    monkeypatch.setenv("SEGNEXT_GEO_WEIGHTS_MIRROR", server.url)
    server.modes.pop(FILE)
    assert fetch_weights(NAME).read_bytes() == isaid_bytes
    assert _cache_files(home) == [FILE]  # the stale .part was removed


@pytest.mark.slow
def test_sigterm_during_a_download_cleans_up(home: Path, server: HttpServer, isaid_bytes: bytes) -> None:
    server.files[FILE] = isaid_bytes
    server.modes[FILE] = "slow"
    proc = _download_process(home, server)
    _wait_for_part(home, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().endswith("error: interrupted"), err
    assert _cache_files(home) == []


@pytest.mark.slow
def test_two_processes_download_once(home: Path, server: HttpServer, isaid_bytes: bytes) -> None:
    server.files[FILE] = isaid_bytes
    server.modes[FILE] = "slow"
    server.slow_pause = 0.04  # ~10 s for the 17 MB file: the second process arrives while it runs
    procs = [_download_process(home, server) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert server.gets[FILE] == 1
    assert any("waiting for another process" in err for _, err in results), results
    assert _cache_files(home) == [FILE] and (home / "weights" / FILE).read_bytes() == isaid_bytes


def test_models_command_line(
    home: Path, tmp_path: Path, isaid_bytes: bytes, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from segnext_geo.models.weights import list_weights

    src = write_jittor(tmp_path / "t.pkl", {})  # an empty dict: refused

    def cli(*args: str) -> tuple[int, str, str]:
        return run_cli(["models", *args], capfd, monkeypatch)

    code, _, err = cli("import", NAME, str(src))
    assert code == 2 and err.strip().startswith(f"error: {src}: is not {NAME}"), err
    src.write_bytes(isaid_bytes)
    code, out, err = cli("import", NAME, str(src))
    assert code == 0, err
    assert f"imported {src} as {home / 'weights' / FILE}" in out and "Jittor SHA-1 trailer" in out
    code, out, err = cli("list")
    assert code == 0, err
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line and not line.startswith("*")}
    assert set(rows) == {w.name for w in list_weights()}
    assert rows[NAME].split()[-1] == "yes" and rows["segnext_s_isaid"].split()[-1] == "no"
    assert "68.3" in rows[NAME] and " 16 " in rows[NAME] and "44.16" in rows["segnext_s_ade20k"]
    assert f"{len(isaid_bytes) / 1e6:.0f} MB" in rows[NAME]  # the real size once cached
    code, out, _ = cli("download", NAME)
    assert code == 0 and "already cached" in out
    monkeypatch.setenv("SEGNEXT_GEO_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    code, _, err = cli("download", "segnext_s_isaid", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "segnext-geo models import" in err
    code, _, err = cli("download", "segnext_q_isaid")
    assert code == 2 and "segnext_q_isaid" in err and "did you mean" in err, err
    code, out, _ = cli("info", NAME)
    assert "licence" in out and "research" in out and "Ground_Track_Field" in out
    code, out, _ = cli("list", "--json")
    entries = {e["name"]: e for e in json.loads(out)}
    assert entries[NAME]["cached"] is True and entries[NAME]["sha1_trailer"] is True
    assert entries["segnext_t_ade20k"]["sha256_prefix"] == "05bd8466"


def test_progress_bar_is_hidden_when_asked(
    home: Path, server: HttpServer, isaid_bytes: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    server.files[FILE] = isaid_bytes
    fetch_weights(NAME, progress=False)
    assert capfd.readouterr().err == ""
