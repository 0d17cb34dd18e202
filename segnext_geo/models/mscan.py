"""MSCAN: the multi-scale convolutional attention encoder of SegNeXt.

A single-file, checkpoint-compatible re-implementation of ``MSCAN`` from the
official SegNeXt repository and mmsegmentation 1.x. Parameter names follow
mmsegmentation 1.x (``mlp.dwconv.weight``); :mod:`segnext_geo.models.checkpoint`
maps the official names (``mlp.dwconv.dwconv.weight``) onto them.

Tensors are kept in NCHW layout throughout. The per-stage LayerNorm, which the
reference applies to (B, H*W, C) tokens, is applied over the channel dimension,
which is numerically the same operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["MSCAN", "MSCAN_CONFIGS", "MSCANConfig"]


@dataclass(frozen=True)
class MSCANConfig:
    """Hyper-parameters of one MSCAN variant (see the SegNeXt paper, Table 2)."""

    embed_dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int] = (8, 8, 4, 4)
    drop_path_rate: float = 0.1


MSCAN_CONFIGS: dict[str, MSCANConfig] = {
    "segnext_t": MSCANConfig((32, 64, 160, 256), (3, 3, 5, 2), drop_path_rate=0.1),
    "segnext_s": MSCANConfig((64, 128, 320, 512), (2, 2, 4, 2), drop_path_rate=0.1),
    "segnext_b": MSCANConfig((64, 128, 320, 512), (3, 3, 12, 3), drop_path_rate=0.1),
    "segnext_l": MSCANConfig((64, 128, 320, 512), (3, 5, 27, 3), drop_path_rate=0.3),
}


class DropPath(nn.Module):
    """Per-sample stochastic depth (as mmcv ``DropPath``); identity in eval."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class StemConv(nn.Module):
    """Stage-1 stem: two 3x3 stride-2 convs with BN and GELU (total stride 4).

    ``(N, 3, H, W) -> (N, C, ceil(H/4), ceil(W/4))``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, out_channels // 2, 3, 2, 1),
            nn.BatchNorm2d(out_channels // 2),
            nn.GELU(),
            nn.Conv2d(out_channels // 2, out_channels, 3, 2, 1),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class OverlapPatchEmbed(nn.Module):
    """Downsampling of stages 2-4: 3x3 stride-2 conv then BN. ``(N, Ci, H, W) -> (N, Co, H/2, W/2)``."""

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, 3, 2, 1)
        self.norm = nn.BatchNorm2d(embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class Mlp(nn.Module):
    """Conv MLP: fc1 (1x1) -> depthwise 3x3 -> GELU -> fc2 (1x1). The dwconv comes before GELU."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class MSCAAttention(nn.Module):
    """Multi-scale convolutional attention (MSCA), the ``spatial_gating_unit``.

    A 5x5 depthwise conv, three strip-conv branches (7, 11, 21) on its output,
    a dense 1x1 conv over their sum, and an element-wise product with the input.
    No sigmoid. Shape-preserving: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.conv0 = nn.Conv2d(c, c, 5, padding=2, groups=c)
        self.conv0_1 = nn.Conv2d(c, c, (1, 7), padding=(0, 3), groups=c)
        self.conv0_2 = nn.Conv2d(c, c, (7, 1), padding=(3, 0), groups=c)
        self.conv1_1 = nn.Conv2d(c, c, (1, 11), padding=(0, 5), groups=c)
        self.conv1_2 = nn.Conv2d(c, c, (11, 1), padding=(5, 0), groups=c)
        self.conv2_1 = nn.Conv2d(c, c, (1, 21), padding=(0, 10), groups=c)
        self.conv2_2 = nn.Conv2d(c, c, (21, 1), padding=(10, 0), groups=c)
        self.conv3 = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv0(x)
        b0 = self.conv0_2(self.conv0_1(a))
        b1 = self.conv1_2(self.conv1_1(a))
        b2 = self.conv2_2(self.conv2_1(a))
        return self.conv3(a + b0 + b1 + b2) * x


class SpatialAttention(nn.Module):
    """proj_1 -> GELU -> MSCA -> proj_2, plus the (already normalised) input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(channels, channels, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = MSCAAttention(channels)
        self.proj_2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x))))
        return y + x


class MSCABlock(nn.Module):
    """One MSCAN block with BN pre-norms, layer scale (1e-2) and stochastic depth."""

    def __init__(self, channels: int, mlp_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(channels)
        self.attn = SpatialAttention(channels)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(channels)
        self.mlp = Mlp(channels, channels * mlp_ratio)
        self.layer_scale_1 = nn.Parameter(1e-2 * torch.ones(channels))
        self.layer_scale_2 = nn.Parameter(1e-2 * torch.ones(channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W) -> (N, C, H, W)``."""
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))
        return x


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor (same weights as token-layout LN)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MSCAN(nn.Module):
    """The MSCAN encoder.

    Args:
        embed_dims: channels of the four stages.
        depths: blocks per stage.
        mlp_ratios: MLP expansion per stage.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0).
        in_channels: input bands (3 for every published checkpoint).

    ``forward``: ``(N, in_channels, H, W)`` -> list of 4 maps at strides 4, 8,
    16 and 32 with ``embed_dims`` channels (each side is ``ceil`` of the division).
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (3, 3, 5, 2),
        mlp_ratios: Sequence[int] = (8, 8, 4, 4),
        drop_path_rate: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        dpr = [float(r) for r in torch.linspace(0, drop_path_rate, sum(depths))]
        cur = 0
        for i in range(4):
            if i == 0:
                patch_embed: nn.Module = StemConv(in_channels, embed_dims[0])
            else:
                patch_embed = OverlapPatchEmbed(embed_dims[i - 1], embed_dims[i])
            block = nn.ModuleList(MSCABlock(embed_dims[i], mlp_ratios[i], dpr[cur + j]) for j in range(depths[i]))
            cur += depths[i]
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"block{i + 1}", block)
            setattr(self, f"norm{i + 1}", ChannelLayerNorm(embed_dims[i]))
        self.init_weights()

    def init_weights(self) -> None:
        """Reference initialisation: conv normal(0, sqrt(2/fan_out)), bias 0; norms 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        outs: list[Tensor] = []
        for i in range(1, 5):
            x = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x)
            x = getattr(self, f"norm{i}")(x)
            outs.append(x)
        return outs
