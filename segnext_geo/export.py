"""ONNX export of a SegNeXt checkpoint, verified against PyTorch with onnxruntime.

The exported graph has the NMF's fixed step count (7, eval) and its deterministic bases baked in
as a constant: no random op, no device-specific call. BatchNorm and layer scales are folded.
Inputs are normalised ``image`` ``(N, 3, H, W)`` float32; outputs are ``logits`` ``(N, K, H, W)``.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError
from .inference import InferenceRunner
from .models import load_model
from .outputs import atomic_output

__all__ = ["ExportResult", "export_onnx"]


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how well onnxruntime agreed with PyTorch."""

    path: Path
    tile_size: int
    dynamic: bool
    max_abs_diff: float
    max_rel_diff: float
    label_agreement: float
    onnx_ms: float
    torch_ms: float
    ops: list[str]


def export_onnx(
    checkpoint: str | Path,
    out: str | Path,
    *,
    tile_size: int = 1024,
    dynamic: bool = False,
    opset: int = 17,
    overwrite: bool = False,
    verify: bool = True,
) -> ExportResult:
    """Export ``checkpoint`` to ONNX at ``out`` and verify it with onnxruntime.

    Args:
        checkpoint: any checkpoint :func:`segnext_geo.models.load_model` reads.
        out: the ``.onnx`` file (written to a temporary file, then renamed).
        tile_size: the input side in pixels (a multiple of 32) used for tracing and verification.
        dynamic: export with dynamic batch, height and width axes.
        opset: the ONNX opset.
        overwrite: replace an existing ``out``.
        verify: run onnxruntime on a random tile and compare with PyTorch.
    """
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out: {out}: the output must end in .onnx")
    if tile_size < 32 or tile_size % 32:
        raise UserError(f"--tile-size: {tile_size} must be a positive multiple of 32")
    model = load_model(checkpoint)
    # the runner's folded fp32 model, NCHW, without CPU-only kernels: one graph for the whole batch
    net = InferenceRunner(model, "cpu", precision="fp32", channels_last=False, compile="off", fuse_kernels=False).model
    x = torch.randn(1, len(model.meta.bands) or 3, tile_size, tile_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net(x)  # also fills the NMF bases cache, so tracing sees a constant
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}}
    with atomic_output(out, overwrite=overwrite) as tmp:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (x,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes=axes if dynamic else None,
                do_constant_folding=True,
            )
        result = _verify(tmp, x, ref, net) if verify else (float("nan"),) * 5 + ([],)
    diff, rel, agree, t_onnx, t_torch, ops = result
    if "RandomUniform" in ops or "RandomUniformLike" in ops:
        raise RuntimeError("the exported graph contains a random op")  # guarded by tests
    return ExportResult(out, tile_size, dynamic, diff, rel, agree, t_onnx, t_torch, ops)


def _verify(path: Path, x: torch.Tensor, ref: torch.Tensor, net: torch.nn.Module) -> tuple:
    try:
        import onnx
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - the onnx extra is part of the dev setup
        raise UserError(
            f"onnx verification needs onnx and onnxruntime ({e}); pip install 'segnext-geo[onnx]'"
        ) from None
    ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = min(4, os.cpu_count() or 1)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    y = torch.from_numpy(sess.run(None, {"image": x.numpy()})[0])
    t_onnx = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    with torch.no_grad():
        net(x)
    t_torch = (time.perf_counter() - t) * 1e3
    diff = float((y - ref).abs().max())
    rel = diff / float(ref.abs().max())
    agree = float((y.argmax(1) == ref.argmax(1)).float().mean())
    return diff, rel, agree, t_onnx, t_torch, ops
