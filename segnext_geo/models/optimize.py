"""The fast inference path: fused weights, channels_last, inference_mode and mixed precision.

:class:`InferenceRunner` wraps a :class:`~segnext_geo.models.SegNeXt` for eval-only use::

    runner = InferenceRunner(model, device="cuda", precision="auto")
    logits = runner(x)  # (N, C, H, W) normalised float -> (N, K, H, W) float32

``precision="auto"`` uses bf16 autocast where the device has native bf16 (CUDA with compute
capability >= 8, CPUs with AVX512-BF16/AMX), else fp32. The NMF always stays in fp32.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

import torch
from torch import Tensor

from .fuse import fuse_for_inference
from .segnext import SegNeXt

__all__ = ["InferenceRunner", "bf16_supported", "resolve_device"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; validates ``cuda:N``.

    Raises:
        ValueError: unknown device string or a CUDA device that does not exist.
    """
    if isinstance(device, torch.device):
        return device
    d = device.strip().lower()
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(d)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device: unsupported device {device!r} (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device: {device!r} requested but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device: {device!r} does not exist ({torch.cuda.device_count()} CUDA device(s))")
    return dev


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 convolutions natively (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


class InferenceRunner:
    """Eval-only, optimised forward pass of a SegNeXt.

    Args:
        model: the model (not modified; a fused copy is made when ``fuse``).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        precision: ``auto`` (bf16 where native, else fp32), ``fp32``, ``bf16`` or ``fp16``.
        channels_last: NHWC memory layout (faster convs on CPU oneDNN and on tensor cores).
        fuse: fold BN and layer scales into convs (:func:`fuse_for_inference`).
        compile: wrap in ``torch.compile`` (pays a one-off compile cost per input shape).

    ``__call__``: ``(N, C, H, W)`` float on any device -> float32 logits ``(N, K, H, W)`` on ``device``.
    """

    def __init__(
        self,
        model: SegNeXt,
        device: str | torch.device = "auto",
        precision: Precision = "auto",
        channels_last: bool = True,
        fuse: bool = True,
        compile: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        if precision == "auto":
            precision = "bf16" if bf16_supported(self.device) else "fp32"
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, not {precision!r}")
        self.precision: str = precision
        self.channels_last = channels_last
        self.meta = model.meta
        net = fuse_for_inference(model) if fuse else model.eval()
        net = net.to(self.device)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.model = net
        self._fn = torch.compile(net, dynamic=False) if compile else net

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)

    def __call__(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = self.autocast_dtype
        ctx = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with torch.inference_mode(), ctx:
            out = self._fn(x)
        return out.float()
