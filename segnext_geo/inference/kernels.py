"""Fused oneDNN kernels for SegNeXt on the CPU (fp32): a convolution and what follows it, in one pass.

After :func:`~segnext_geo.models.fuse.fuse_for_inference` has folded BatchNorm and layer scales
into the convolutions, what still costs memory passes is the element-wise work between them:
the GELU after ``proj_1``, after every MLP depthwise conv and in the stem (18 % of a SegNeXt-T
forward), the adds of the attention branches, the attention product and the MLP residual.
oneDNN applies these as post-ops of the convolution that produces the operand, so each is
computed while the convolution's output is still in registers. Every other convolution calls
oneDNN directly too (ATen would run the 1x1 ones as a slower GEMM on channels_last input). These are the same kernels
``torch.compile`` (inductor with ``freezing``) emits for this model on the CPU, called in eager
mode, so there is no compile time.

The arithmetic is the convolution's followed by the same fp32 element-wise operation; results
differ from the unfused model by float rounding only (the GELU post-op's erf differs by
< 1e-6 absolute). Every fused module falls back to the plain operations when its input is not
an fp32 CPU tensor (CUDA, autocast, float64), so a model with fused kernels runs anywhere.

:func:`fuse_cpu_kernels` swaps the modules of an already folded SegNeXt in place.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.fuse import FusedBlock, _FusedStem
from ..models.mscan import MSCAAttention
from ..models.segnext import SegNeXt

__all__ = ["fuse_cpu_kernels", "onednn_available"]


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN's fused convolution ops (x86 and arm64 builds do)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _fast(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


def _args(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    pad = conv.padding
    if isinstance(pad, str):
        raise ValueError(f"string padding {pad!r} is not supported by the fused kernels")
    return list(pad), list(conv.stride), list(conv.dilation), conv.groups


def conv_gelu(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``GELU(conv(x))`` (exact erf GELU), ``(N, Ci, H, W) -> (N, Co, H', W')``."""
    if not _fast(x):
        return F.gelu(conv(x))
    pad, stride, dil, groups = _args(conv)
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, pad, stride, dil, groups, "gelu", [], "none"
    )


def conv_binary(conv: nn.Conv2d, x: Tensor, other: Tensor, op: str) -> Tensor:
    """``conv(x) + other`` (``op="add"``) or ``conv(x) * other`` (``op="mul"``); ``other`` has the output's shape."""
    if not _fast(x) or not _fast(other):
        y = conv(x)
        return y + other if op == "add" else y * other
    pad, stride, dil, groups = _args(conv)
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other, conv.weight, conv.bias, pad, stride, dil, groups, op, None, None, [], None
    )


class OneDNNConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose fp32 CPU forward calls oneDNN directly: ATen sends 1x1 convolutions on
    channels_last input to its GEMM path instead, ~30 % slower here. Same weights, same result to rounding."""

    def forward(self, x: Tensor) -> Tensor:
        if not _fast(x):
            return super().forward(x)
        pad, stride, dil, groups = _args(self)
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, pad, stride, dil, groups, "none", [], None
        )

    @classmethod
    def of(cls, conv: nn.Conv2d) -> OneDNNConv2d:
        """The same convolution (sharing its parameters) as a :class:`OneDNNConv2d`."""
        new = cls.__new__(cls)
        new.__dict__ = conv.__dict__.copy()  # parameters, buffers, hooks and hyper-parameters
        return new


class FusedMSCA(nn.Module):
    """:class:`~segnext_geo.models.mscan.MSCAAttention` with the branch sums and the final product fused.

    ``conv3(a + b0 + b1 + b2) * x``: each strip branch's second conv adds the running sum as a
    post-op (``(a + b0) + b1 == b1 + (a + b0)`` exactly, so the order matches the plain module),
    and ``conv3`` multiplies by ``x`` as a post-op. ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, attn: MSCAAttention) -> None:
        super().__init__()
        self.conv0 = attn.conv0
        self.conv0_1, self.conv0_2 = attn.conv0_1, attn.conv0_2
        self.conv1_1, self.conv1_2 = attn.conv1_1, attn.conv1_2
        self.conv2_1, self.conv2_2 = attn.conv2_1, attn.conv2_2
        self.conv3 = attn.conv3

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv0(x)
        s = conv_binary(self.conv0_2, self.conv0_1(a), a, "add")
        s = conv_binary(self.conv1_2, self.conv1_1(a), s, "add")
        s = conv_binary(self.conv2_2, self.conv2_1(a), s, "add")
        return conv_binary(self.conv3, s, x, "mul")


class KernelFusedBlock(nn.Module):
    """A :class:`~segnext_geo.models.fuse.FusedBlock` whose GELUs, attention and residuals are post-ops.

    ``(N, C, H, W) -> (N, C, H, W)``; the same operations as ``FusedBlock``, except that the
    attention residual ``proj_2(a) + (x * scale + shift)`` is added by ``proj_2`` as a post-op
    (``FusedBlock`` adds ``shift`` first: the same sum in another order).
    """

    skip_scale: Tensor
    skip_shift: Tensor

    def __init__(self, block: FusedBlock) -> None:
        super().__init__()
        self.proj_1 = block.proj_1
        self.spatial_gating_unit = FusedMSCA(block.spatial_gating_unit)
        self.proj_2 = block.proj_2
        self.register_buffer("skip_scale", block.skip_scale)
        self.register_buffer("skip_shift", block.skip_shift)
        self.fc1 = block.fc1
        self.dwconv = block.dwconv
        self.fc2 = block.fc2

    def forward(self, x: Tensor) -> Tensor:
        a = self.spatial_gating_unit(conv_gelu(self.proj_1, x))
        x = conv_binary(self.proj_2, a, torch.addcmul(self.skip_shift, x, self.skip_scale), "add")
        return conv_binary(self.fc2, conv_gelu(self.dwconv, self.fc1(x)), x, "add")


class KernelFusedStem(nn.Module):
    """The folded stem with its GELU as a post-op: ``(N, 3, H, W) -> (N, C, H/4, W/4)``."""

    def __init__(self, stem: _FusedStem) -> None:
        super().__init__()
        self.conv1 = cast(nn.Conv2d, stem.proj[0])
        self.conv2 = cast(nn.Conv2d, stem.proj[2])

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(conv_gelu(self.conv1, x))


@torch.no_grad()
def fuse_cpu_kernels(model: SegNeXt) -> SegNeXt:
    """Swap the folded blocks and stem of ``model`` (output of ``fuse_for_inference``) in place and
    route every other convolution through oneDNN (:class:`OneDNNConv2d`); returns ``model``."""
    bb = model.backbone
    if isinstance(bb.patch_embed1, _FusedStem):
        bb.patch_embed1 = KernelFusedStem(bb.patch_embed1)
    for i in range(1, 5):
        blocks: nn.ModuleList = getattr(bb, f"block{i}")
        for j, blk in enumerate(blocks):
            if isinstance(blk, FusedBlock):
                blocks[j] = KernelFusedBlock(blk)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Conv2d:
                setattr(parent, name, OneDNNConv2d.of(child))
    return model
