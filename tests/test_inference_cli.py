"""``segnext-geo predict`` as a user runs it: one-line errors, refusal to overwrite, interruption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasters import textured, write_tif

# one intra-op thread: fast and stable on a small shared machine
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "segnext_geo.cli.app", "predict", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=120)


def _one_line_error(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_predict_writes_a_cog_and_refuses_to_overwrite(tmp_path: Path, tiny_checkpoint: Path) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 100, 130)))
    out = tmp_path / "c.tif"
    args = (scene, "-c", tiny_checkpoint, "-o", out, "--tile-size", "64", "--overlap", "16", "--quiet")
    ok = _cli(*args, "--probs-out", tmp_path / "p.tif", "--probs-mode", "confidence")
    assert ok.returncode == 0, ok.stderr
    assert f"wrote {out} (13,000 valid px" in ok.stdout and ok.stderr == ""
    with rasterio.open(out) as src, rasterio.open(tmp_path / "p.tif") as p:
        assert src.shape == (100, 130) and src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and p.count == 1
    before = out.read_bytes()
    _one_line_error(_cli(*args), f"--out: {out} already exists; pass --overwrite to replace it")
    assert out.read_bytes() == before
    again = _cli(*args, "--overwrite", "--workers", "0", "--batch-size", "3")
    assert again.returncode == 0 and out.read_bytes() == before  # same bytes with other batching


@pytest.mark.parametrize("case", ["missing", "not-a-raster", "truncated", "bad-band", "no-dir"])
def test_bad_input_is_a_one_line_error(tmp_path: Path, tiny_checkpoint: Path, case: str) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 128, 128)))
    out = tmp_path / "c.tif"
    extra: list[str] = []
    message = {
        "missing": "nope.tif: no such file",
        "not-a-raster": "notes.tif: not a raster GDAL can read",
        "truncated": "bad.tif: cannot read its last block (corrupt or truncated file?)",
        "bad-band": "--bands: band 9 does not exist",
        "no-dir": "the folder",
    }[case]
    if case == "missing":
        scene = tmp_path / "nope.tif"
    elif case == "not-a-raster":
        scene = tmp_path / "notes.tif"
        scene.write_text("hello")
    elif case == "truncated":
        data = scene.read_bytes()
        scene = tmp_path / "bad.tif"
        scene.write_bytes(data[: len(data) // 2])
    elif case == "bad-band":
        extra = ["--bands", "1,2,9"]
    else:
        out = tmp_path / "missing" / "c.tif"
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = _cli(scene, "-c", tiny_checkpoint, "-o", out, "--tile-size", "64", "--overlap", "16", "-q", *extra)
    _one_line_error(proc, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing left over


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_leaves_nothing_at_out(tmp_path: Path, tiny_checkpoint: Path, sig: signal.Signals) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 900, 900)))
    out = tmp_path / "c.tif"
    cmd = [sys.executable, "-m", "segnext_geo.cli.app", "predict", str(scene), "-c", str(tiny_checkpoint)]
    cmd += ["-o", str(out), "--probs-out", str(tmp_path / "p.tif"), "--tile-size", "64", "--overlap", "32", "-q"]
    # a shell's background jobs inherit SIGINT as ignored: give the child the default, like a terminal
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.name.startswith(".c.scratch") for p in tmp_path.iterdir()):  # tiles are being written
            assert proc.poll() is None and time.monotonic() < deadline, "predict ended before it could be stopped"
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGKILL:  # no cleanup is possible, but nothing half-written appears at OUT
        assert proc.returncode == -9 and not out.exists() and not (tmp_path / "p.tif").exists()
        return
    assert proc.returncode == 130, err
    assert "error: interrupted" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]  # no output, no temporary, no scratch


def test_help_teaches_with_an_example() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "segnext_geo.cli.app", "predict", "--help"],
        capture_output=True,
        text=True,
        env={**ENV, "COLUMNS": "200"},
    )
    assert proc.returncode == 0
    assert "Example: segnext-geo predict scene.tif" in proc.stdout and "--working-set" in proc.stdout
    assert np.all([opt in proc.stdout for opt in ("--probs-out", "--mask-out", "--min-area", "--tta", "--blend")])


def _help(command: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "segnext_geo.cli.app", command, "--help"],
        capture_output=True,
        text=True,
        env={**ENV, "COLUMNS": "220"},
    )
    assert proc.returncode == 0
    return proc.stdout


@pytest.mark.parametrize("command", ["predict", "batch"])
def test_help_shows_flags_without_types_and_the_memory_formula(command: str) -> None:
    text = _help(command)
    assert "<bool>" not in text  # --overwrite, --quiet, --deterministic, --help take no value
    assert "Vector output: Coverage-simplify (neighbours keep shared edges): tolerance in metres" in " ".join(
        text.split()
    )
    for flag in ("--max-memory", "--precision", "--compile", "--deterministic", "--nodata", "--keep-background"):
        assert flag in text
    if command == "predict":
        assert "E²·(4K + 20 + 3P)" in " ".join(text.split())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min-area", "5"], "--min-area: only apply to polygons"),
        (["--simplify", "2px", "--keep-background"], "--keep-background, --simplify: only apply to polygons"),
        (["--max-memory", "lots"], "--max-memory: 'lots' is not a size like 3G or 512M"),
        (["--working-set", "10"], "--working-set: must be at least 64 px"),
        (["--nodata", "x"], "--nodata"),
    ],
)
def test_option_errors_name_the_cli_flag(tmp_path: Path, tiny_checkpoint: Path, extra: list[str], message: str) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 40, 40)))
    proc = _cli(scene, "-c", tiny_checkpoint, "-o", tmp_path / "c.tif", "-q", *extra)
    _one_line_error(proc, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]
