"""ONNX export: no random op, onnxruntime agrees with PyTorch, atomic and refusing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from segnext_geo.errors import UserError
from segnext_geo.export import export_onnx
from segnext_geo.models import load_model

ort = pytest.importorskip("onnxruntime")


def test_export_dynamic_matches_pytorch_on_other_shapes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    r = export_onnx(tiny_checkpoint, out, tile_size=64, dynamic=True)
    assert out.exists() and r.max_rel_diff < 1e-4
    assert not {"RandomUniform", "RandomUniformLike", "RandomNormal", "Multinomial"} & set(r.ops)
    assert "BatchNormalization" not in r.ops  # folded
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = load_model(tiny_checkpoint)
    x = torch.randn(2, 3, 96, 160)
    y = sess.run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x).numpy()
    assert y.shape == (2, 4, 96, 160)
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-4
    # same input twice: identical (no randomness in the graph)
    assert np.array_equal(y, sess.run(None, {"image": x.numpy()})[0])


def test_export_refuses_existing_output_and_bad_suffix(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(UserError, match="already exists"):
        export_onnx(tiny_checkpoint, out, tile_size=64)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(UserError, match=r"must end in \.onnx"):
        export_onnx(tiny_checkpoint, tmp_path / "m.pt", tile_size=64)
    with pytest.raises(UserError, match="--tile-size"):
        export_onnx(tiny_checkpoint, tmp_path / "x.onnx", tile_size=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_export_cli(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.onnx"
    cmd = [
        sys.executable,
        "-m",
        "segnext_geo.cli",
        "export",
        str(tiny_checkpoint),
        "--out",
        str(out),
        "--tile-size",
        "64",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime vs PyTorch" in r.stdout and out.exists()
