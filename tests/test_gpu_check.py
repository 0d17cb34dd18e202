"""benchmarks/gpu_check.py is ready for a GPU machine: its CPU part runs here and prints its one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_part_and_prints_one_table() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-only"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    table = [ln for ln in lines if ln.startswith("|")]
    assert table[0] == "| check | result |" and len([ln for ln in lines if ln.startswith("| check")]) == 1
    rows = dict(ln.strip("|").split(" | ", 1) for ln in table[2:])
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert not [v for v in rows.values() if v.startswith("FAILED")], rows
    assert float(rows["fp32 cpu vs CPU fp32 logits, max rel diff"].split()[1]) < 1e-4
    assert rows["predict batch 1 vs 8, --deterministic"] == "byte-identical"
    assert rows["cuda:1 vs cuda:0, --deterministic"].startswith("skipped")
    assert (
        "MPix/s" in rows["predict T tile 128, fp32 eager"] and "predict/bare" in rows["predict T tile 128, fp32 eager"]
    )
