"""LightHamHead: the SegNeXt decoder with the NMF "Hamburger" (Geng et al., 2021).

The NMF runs Lee-Seung multiplicative updates on the non-negative feature map,
always in float32 (fp16 overflows on post-ReLU features of magnitude ~10).

Random bases. The reference draws fresh ``torch.rand(B*S, D, R)`` bases from the
global CPU generator on every forward pass, in eval too, so its output depends on
the RNG state and on how images were batched. :class:`NMF2D` offers:

- ``init="deterministic"`` (default): one set of bases, ``rand((1, D, R))`` from a
  private CPU generator seeded with ``seed``, L2-normalised along D and shared by
  every image of the batch. An image's output is then independent of the call, of
  the batch size and of its batch neighbours. With ``seed=0`` and a batch of one
  it equals the reference run right after ``torch.manual_seed(0)``.
- ``init="reference"``: the reference's exact RNG use (global generator, one draw
  of shape (B*S, D, R) per forward, moved to the input's device).

``train_init`` chooses the bases in training mode separately (default: ``init``).
Training as the paper does is ``train_init="reference"`` with the default
``init``: new random bases on every training forward (drawn from the global CPU
generator, so seeding and checkpointed RNG state reproduce them), the
deterministic bases in eval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NMF2D", "ConvModule", "Hamburger", "LightHamHead"]

NMFInit = Literal["deterministic", "reference"]
NMFGrad = Literal["full", "one_step"]


class NMF2D(nn.Module):
    """Non-negative matrix factorisation of a feature map, ``(B, C, H, W) -> (B, C, H, W)``.

    Args:
        rank: R, the number of bases (16 for T/S; 64 for B/L in the official repo).
        spatial_groups: S (``MD_S``); the channels are split into S groups of D = C/S.
        train_steps: multiplicative updates in training mode (6).
        eval_steps: multiplicative updates in eval mode (7).
        init: ``"deterministic"`` or ``"reference"`` bases (see the module docstring).
        train_init: the bases in training mode; ``None`` = ``init``.
        seed: seed of the deterministic bases.
        grad: ``"full"`` backpropagates through every iteration (as the reference);
            ``"one_step"`` runs the loop without gradient (HamNet's one-step trick).
    """

    def __init__(
        self,
        rank: int = 16,
        spatial_groups: int = 1,
        train_steps: int = 6,
        eval_steps: int = 7,
        init: NMFInit = "deterministic",
        seed: int = 0,
        grad: NMFGrad = "full",
        train_init: NMFInit | None = None,
    ) -> None:
        super().__init__()
        for value in (init, train_init if train_init is not None else init):
            if value not in ("deterministic", "reference"):
                raise ValueError(f"nmf_init must be 'deterministic' or 'reference', not {value!r}")
        if grad not in ("full", "one_step"):
            raise ValueError(f"nmf_grad must be 'full' or 'one_step', not {grad!r}")
        self.rank = int(rank)
        self.spatial_groups = int(spatial_groups)
        self.train_steps = int(train_steps)
        self.eval_steps = int(eval_steps)
        self.init = init
        self.train_init: NMFInit = train_init if train_init is not None else init
        self.seed = int(seed)
        self.grad = grad
        self.inv_t = 1.0  # NMF2D forces inv_t = 1 whatever the config says.
        self._bases_cache: dict[tuple[int, int, str], Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, S={self.spatial_groups}, steps={self.train_steps}/{self.eval_steps}, "
            f"init={self.init!r}, train_init={self.train_init!r}, seed={self.seed}, grad={self.grad!r}"
        )

    def initial_bases(self, batch: int, dim: int, device: torch.device) -> Tensor:
        """Initial bases ``(batch * S, D, R)``, float32, unit L2 norm along D (``train_init`` in training mode)."""
        s, r = self.spatial_groups, self.rank
        if (self.train_init if self.training else self.init) == "reference":
            bases = torch.rand((batch * s, dim, r))  # the global CPU generator, as the reference
            if device.type == "cuda":  # same values; a pinned copy does not stall the host
                return F.normalize(bases.pin_memory().to(device, non_blocking=True), dim=1)
            return F.normalize(bases.to(device), dim=1)
        key = (int(dim), r, str(device))  # int(): under tracing dim is a tensor
        cached = self._bases_cache.get(key)
        if cached is None:
            gen = torch.Generator().manual_seed(self.seed)
            cached = F.normalize(torch.rand((s, dim, r), generator=gen), dim=1).to(device)
            self._bases_cache[key] = cached
        return cached.repeat(batch, 1, 1)

    @staticmethod
    def _update_coef(x: Tensor, bases: Tensor, coef: Tensor) -> Tensor:
        numerator = torch.bmm(x.transpose(1, 2), bases)
        denominator = coef.bmm(bases.transpose(1, 2).bmm(bases))
        return coef * numerator / (denominator + 1e-6)

    @staticmethod
    def _update_bases(x: Tensor, bases: Tensor, coef: Tensor) -> Tensor:
        numerator = torch.bmm(x, coef)
        denominator = bases.bmm(coef.transpose(1, 2).bmm(coef))
        return bases * numerator / (denominator + 1e-6)

    def _iterate(self, x: Tensor, bases: Tensor) -> tuple[Tensor, Tensor]:
        coef = F.softmax(self.inv_t * torch.bmm(x.transpose(1, 2), bases), dim=-1)
        steps = self.train_steps if self.training else self.eval_steps
        for _ in range(steps):
            coef = self._update_coef(x, bases, coef)
            bases = self._update_bases(x, bases, coef)
        return bases, coef

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s = self.spatial_groups
        d = c // s
        dtype = x.dtype
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.float().reshape(b * s, d, h * w)
            bases = self.initial_bases(b, d, x.device)
            if self.grad == "one_step":
                with torch.no_grad():
                    bases, coef = self._iterate(xf, bases)
            else:
                bases, coef = self._iterate(xf, bases)
            coef = self._update_coef(xf, bases, coef)
            out = torch.bmm(bases, coef.transpose(1, 2)).reshape(b, c, h, w)
        return out.to(dtype)


class ConvModule(nn.Module):
    """1x1 conv, optional GroupNorm(32) and optional ReLU, with mmcv key names.

    By default the conv has a bias only when there is no norm (mmcv ``bias="auto"``);
    ``bias=True`` forces one (JSeg code of Sept 2022 built its GroupNorm'd head convs so).
    """

    def __init__(
        self, in_channels: int, out_channels: int, norm: bool, act: bool, groups: int = 32, bias: bool | None = None
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=(not norm) if bias is None else bias)
        self.gn = nn.GroupNorm(groups, out_channels) if norm else None
        self.act = nn.ReLU() if act else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.gn is not None:
            x = self.gn(x)
        if self.act is not None:
            x = self.act(x)
        return x


class Hamburger(nn.Module):
    """``ReLU(x + ham_out(NMF(ReLU(ham_in(x)))))``, shape-preserving ``(B, C, H, W)``."""

    def __init__(self, channels: int, nmf: NMF2D, conv_bias: bool = False) -> None:
        super().__init__()
        self.ham_in = ConvModule(channels, channels, norm=False, act=False)
        self.ham = nmf
        self.ham_out = ConvModule(channels, channels, norm=True, act=False, bias=conv_bias or None)

    def forward(self, x: Tensor) -> Tensor:
        enjoy = F.relu(self.ham_in(x))
        enjoy = self.ham_out(self.ham(enjoy))
        return F.relu(x + enjoy)


class LightHamHead(nn.Module):
    """The SegNeXt decoder.

    Takes the stride-8/16/32 stage outputs, resizes them bilinearly to stride 8,
    concatenates, squeezes to ``ham_channels``, applies the Hamburger, aligns to
    ``channels`` and classifies.

    ``forward``: list of 4 encoder maps -> logits ``(N, num_classes, H/8, W/8)``.

    ``conv_bias=True`` gives exactly the three GroupNorm'd convs (``squeeze``, ``hamburger.ham_out``,
    ``align``) a bias, as JSeg's head of Sept 2022 had (a bias before GroupNorm(32) changes the
    output and cannot be folded away).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        ham_channels: int = 256,
        channels: int = 256,
        nmf: NMF2D | None = None,
        in_index: Sequence[int] = (1, 2, 3),
        dropout_ratio: float = 0.1,
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.in_index = tuple(in_index)
        self.num_classes = num_classes
        self.conv_bias = bool(conv_bias)
        bias = True if conv_bias else None
        self.squeeze = ConvModule(sum(in_channels), ham_channels, norm=True, act=True, bias=bias)
        self.hamburger = Hamburger(ham_channels, nmf if nmf is not None else NMF2D(), conv_bias=self.conv_bias)
        self.align = ConvModule(ham_channels, channels, norm=True, act=True, bias=bias)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv defaults: kaiming convs, GN 1/0; ``conv_seg`` normal(0, 0.01), bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        if self.conv_seg.bias is not None:
            nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        inputs = [features[i] for i in self.in_index]
        size = inputs[0].shape[2:]
        inputs = [
            t if t.shape[2:] == size else F.interpolate(t, size=size, mode="bilinear", align_corners=False)
            for t in inputs
        ]
        x = self.squeeze(torch.cat(inputs, dim=1))
        x = self.align(self.hamburger(x))
        return self.conv_seg(self.dropout(x))
