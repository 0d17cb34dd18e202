"""Inference-time folding of SegNeXt: BatchNorm into convs, layer scales into projections.

Exact algebra (results differ from the unfused model only by float rounding, ~1e-6):

- stem and downsampling: ``BN(conv(x))`` -> one conv.
- block attention: ``x + ls1 * (proj_2(f(proj_1(BN1 x))) + BN1 x)`` with ``BN1 x = a*x + b``
  becomes ``x * (1 + ls1*a) + ls1*b + proj_2'(f(proj_1'(x)))`` where ``proj_1'`` absorbs BN1 and
  ``proj_2'`` absorbs ``ls1``.
- block MLP: ``x + ls2 * fc2(g(fc1(BN2 x)))`` -> ``x + fc2'(g(fc1'(x)))``.

The GroupNorms of the decoder depend on the data and stay as they are.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import Tensor, nn

from .mscan import Mlp, MSCABlock, OverlapPatchEmbed, SpatialAttention, StemConv
from .segnext import SegNeXt

__all__ = ["fuse_for_inference"]


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """BN in eval as ``a * x + b``; returns (a, b), each (C,)."""
    assert bn.running_var is not None and bn.running_mean is not None
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    b = bn.bias - bn.running_mean * a
    return a, b


def _fold_bn_after(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one conv."""
    a, b = _bn_affine(bn)
    fused = copy.deepcopy(conv)
    fused.weight.data = conv.weight * a[:, None, None, None]
    bias = conv.bias if conv.bias is not None else torch.zeros_like(a)
    fused.bias = nn.Parameter(bias * a + b)
    return fused


def _fold_affine_before(conv: nn.Conv2d, a: Tensor, b: Tensor) -> nn.Conv2d:
    """``conv(a*x + b)`` for a dense 1x1 conv, as one conv."""
    fused = copy.deepcopy(conv)
    w = conv.weight  # (Co, Ci, 1, 1)
    fused.weight.data = w * a[None, :, None, None]
    bias = conv.bias if conv.bias is not None else torch.zeros(w.shape[0])
    fused.bias = nn.Parameter(bias + (w[:, :, 0, 0] @ b))
    return fused


def _scale_out(conv: nn.Conv2d, s: Tensor) -> nn.Conv2d:
    """``s * conv(x)`` (per output channel) as one conv."""
    fused = copy.deepcopy(conv)
    fused.weight.data = conv.weight * s[:, None, None, None]
    if conv.bias is not None:
        fused.bias = nn.Parameter(conv.bias * s)
    return fused


class FusedBlock(nn.Module):
    """An :class:`MSCABlock` with BN and layer scale folded away (eval only). ``(N,C,H,W)`` in and out."""

    skip_scale: Tensor
    skip_shift: Tensor

    def __init__(self, block: MSCABlock) -> None:
        super().__init__()
        a1, b1 = _bn_affine(block.norm1)
        a2, b2 = _bn_affine(block.norm2)
        ls1, ls2 = block.layer_scale_1.detach(), block.layer_scale_2.detach()
        attn: SpatialAttention = block.attn
        self.proj_1 = _fold_affine_before(attn.proj_1, a1, b1)
        self.act = nn.GELU()
        self.spatial_gating_unit = attn.spatial_gating_unit
        self.proj_2 = _scale_out(attn.proj_2, ls1)
        self.register_buffer("skip_scale", (1.0 + ls1 * a1)[None, :, None, None].clone())
        self.register_buffer("skip_shift", (ls1 * b1)[None, :, None, None].clone())
        mlp: Mlp = block.mlp
        self.fc1 = _fold_affine_before(mlp.fc1, a2, b2)
        self.dwconv = mlp.dwconv
        self.fc2 = _scale_out(mlp.fc2, ls2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj_2(self.spatial_gating_unit(self.act(self.proj_1(x))))
        x = torch.addcmul(self.skip_shift + y, x, self.skip_scale)
        return x + self.fc2(self.act(self.dwconv(self.fc1(x))))


class _FusedStem(nn.Module):
    def __init__(self, stem: StemConv) -> None:
        super().__init__()
        p = stem.proj
        convs = cast(list[nn.Conv2d], [p[0], p[3]])
        norms = cast(list[nn.BatchNorm2d], [p[1], p[4]])
        self.proj = nn.Sequential(_fold_bn_after(convs[0], norms[0]), nn.GELU(), _fold_bn_after(convs[1], norms[1]))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


@torch.no_grad()
def fuse_for_inference(model: SegNeXt) -> SegNeXt:
    """Return an eval-only copy of ``model`` with BN and layer scales folded into convs.

    The copy keeps ``meta`` and the NMF settings; it has no ``norm1``/``norm2`` keys, so
    save the original model, not the fused one.
    """
    fused = copy.deepcopy(model).eval()
    bb = fused.backbone
    bb.patch_embed1 = _FusedStem(cast(StemConv, bb.patch_embed1))
    for i in range(2, 5):
        pe: OverlapPatchEmbed = getattr(bb, f"patch_embed{i}")
        setattr(bb, f"patch_embed{i}", _fold_bn_after(pe.proj, pe.norm))
    for i in range(1, 5):
        blocks: nn.ModuleList = getattr(bb, f"block{i}")
        for j, blk in enumerate(blocks):
            blocks[j] = FusedBlock(cast(MSCABlock, blk))
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused
