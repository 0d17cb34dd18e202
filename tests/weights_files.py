"""Test files in each published weights format, written from the format descriptions, not by the library.

- Jittor ``.pkl`` (``../shared/docs/pretrained-weights.md`` section 2): ``pickle.dumps(obj, protocol=4)``
  + ``sha1(body)`` (20 bytes) + ``b"HCAJSLHD"``; official key names, float32 numpy arrays, no
  ``num_batches_tracked``; flat, or JSeg's ``{"meta", "model", "scheduler", "optimizer"}``.
- mmseg 1.x ``.pth``: ``{"meta": {"dataset_meta": {classes, palette}}, "state_dict": ...}``, ``mlp.dwconv.*``.
- official ``.pth`` (mmcv 1.x): ``{"meta": {"CLASSES", "PALETTE"}, "state_dict": ...}``, ``mlp.dwconv.dwconv.*``.
- ImageNet MSCAN: bare backbone keys plus a ``head.*`` classifier.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segnext_geo.models import SegNeXt, build_model

MARKER = b"HCAJSLHD"


def random_model(variant: str = "tiny", num_classes: int = 16, seed: int = 0, **options: Any) -> SegNeXt:
    """A SegNeXt whose every tensor matters: random BN statistics, GN affines, layer scales and head biases."""
    torch.manual_seed(seed)
    model = build_model(variant, num_classes, **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.GroupNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.Conv2d) and m.bias is not None and name.startswith("decode_head"):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.1)
    return model.eval()


def official_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This implementation's (mmseg 1.x) names -> the official SegNeXt / JSeg names."""
    return {k.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv."): v for k, v in sd.items()}


def jittor_arrays(model: SegNeXt, backbone_only: bool = False) -> dict[str, np.ndarray]:
    """``{official name: float32 ndarray}`` without ``num_batches_tracked``, as JSeg saves a model."""
    out: dict[str, np.ndarray] = {}
    for k, v in official_names(model.state_dict()).items():
        if k.endswith("num_batches_tracked"):
            continue
        if backbone_only:
            if not k.startswith("backbone."):
                continue
            k = k[len("backbone.") :]
        out[k] = v.detach().numpy().astype(np.float32).copy()
    return out


def jittor_bytes(obj: Any, trailer: bool = True) -> bytes:
    """``jt.save``: a protocol-4 pickle, then SHA-1 of it and the 8-byte marker."""
    body = pickle.dumps(obj, protocol=4)
    return body + hashlib.sha1(body).digest() + MARKER if trailer else body


def write_jittor(path: Path, obj: Any, trailer: bool = True) -> Path:
    path.write_bytes(jittor_bytes(obj, trailer))
    return path


def jseg_checkpoint(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """JSeg's training checkpoint layout around the weights."""
    return {
        "meta": {"jseg_version": "0.1", "iter": 160000},
        "model": arrays,
        "scheduler": {"last_epoch": 160000, "base_lr": 6e-5},
        "optimizer": {"lr": 6e-5, "momentum": np.zeros(3, np.float32)},
    }


class _Var:
    """Pickles as ``REDUCE(jittor.Var, (ndarray,))``, as Jittor releases after Dec 2023 do."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def __reduce__(self) -> tuple:
        return (_jittor_var, (self.data,))


def _jittor_var(data: np.ndarray) -> np.ndarray:
    return data


def jittor_var_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A Jittor file whose tensors are pickled as ``jittor.Var`` objects (needs no Jittor installed)."""
    fake = types.ModuleType("jittor")
    fake.Var = _jittor_var  # type: ignore[attr-defined]
    _jittor_var.__module__, _jittor_var.__qualname__ = "jittor", "Var"
    sys.modules["jittor"] = fake
    try:
        data = jittor_bytes({k: _Var(v) for k, v in arrays.items()})
    finally:
        del sys.modules["jittor"]
        _jittor_var.__module__, _jittor_var.__qualname__ = __name__, "_jittor_var"
    assert b"jittor" in data and b"Var" in data
    return data


def write_mmseg(path: Path, model: SegNeXt, classes: list[str] | None = None) -> Path:
    """An mmseg 1.x checkpoint: 1.x key names, ``meta.dataset_meta``."""
    meta: dict[str, Any] = {"mmseg_version": "1.0.0"}
    if classes is not None:
        meta["dataset_meta"] = {"classes": classes, "palette": [[i, i, i] for i in range(len(classes))]}
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)
    return path


def write_official(path: Path, model: SegNeXt, classes: list[str] | None = None) -> Path:
    """An official (mmcv 1.x) checkpoint: official key names, ``meta.CLASSES``/``PALETTE``."""
    meta: dict[str, Any] = {"mmcv_version": "1.5.0"}
    if classes is not None:
        meta["CLASSES"], meta["PALETTE"] = classes, [[i, 0, 0] for i in range(len(classes))]
    torch.save({"meta": meta, "state_dict": official_names(model.state_dict())}, path)
    return path


def write_mscan_pth(path: Path, model: SegNeXt) -> Path:
    """An ImageNet MSCAN file: bare official backbone keys plus the 1000-class classifier."""
    sd = {k[len("backbone.") :]: v for k, v in official_names(model.state_dict()).items() if k.startswith("backbone.")}
    last = model.backbone.norm4.weight.shape[0]
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, last), torch.randn(1000)
    torch.save({"state_dict": sd}, path)
    return path


class Gadget:
    """Pickles as ``os.system(command)``: code execution if an unpickler lets it through."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (self.command,))


def malicious_jittor_bytes(marker: Path, arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """A Jittor file with a valid SHA-1 trailer whose pickle would run ``touch marker``."""
    obj: dict[str, Any] = dict(arrays or {})
    obj["backbone.patch_embed1.proj.0.weight"] = Gadget(f"touch {marker}")
    return jittor_bytes(obj)


def run_cli(argv: list[str], capfd: Any, monkeypatch: Any) -> tuple[int, str, str]:
    """Run ``segnext-geo ARGV`` in this process through the real entry point; ``(exit code, stdout, stderr)``."""
    from segnext_geo.cli.app import main

    monkeypatch.setattr(sys, "argv", ["segnext-geo", *argv])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capfd.readouterr()
    return code, out, err
