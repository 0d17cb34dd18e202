"""SegNeXt = MSCAN encoder + LightHamHead decoder, and the variant factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ham import NMF2D, LightHamHead
from .meta import ModelMeta
from .mscan import MSCAN, MSCAN_CONFIGS

__all__ = ["HEAD_BIAS_KEYS", "HEAD_CONFIGS", "VARIANTS", "HeadConfig", "SegNeXt", "build_model", "canonical_variant"]

#: The biases of the three GroupNorm'd head convs that JSeg code of Sept 2022 had (``head_conv_bias=True``).
HEAD_BIAS_KEYS: tuple[str, ...] = (
    "decode_head.squeeze.conv.bias",
    "decode_head.hamburger.ham_out.conv.bias",
    "decode_head.align.conv.bias",
)


@dataclass(frozen=True)
class HeadConfig:
    """LightHamHead sizes of one variant. ``nmf_rank_official`` is the official repo's MD_R."""

    channels: int
    nmf_rank_official: int
    nmf_rank_mmseg: int = 16


HEAD_CONFIGS: dict[str, HeadConfig] = {
    "segnext_t": HeadConfig(256, 16),
    "segnext_s": HeadConfig(256, 16),
    "segnext_b": HeadConfig(512, 64),
    "segnext_l": HeadConfig(1024, 64),
}

VARIANTS: tuple[str, ...] = tuple(MSCAN_CONFIGS)
_ALIASES = {
    "t": "segnext_t",
    "tiny": "segnext_t",
    "s": "segnext_s",
    "small": "segnext_s",
    "b": "segnext_b",
    "base": "segnext_b",
    "l": "segnext_l",
    "large": "segnext_l",
}


def canonical_variant(variant: str) -> str:
    """Map ``"tiny"``, ``"T"``, ``"segnext-t"``, ``"mscan_t"`` ... to ``"segnext_t"``."""
    v = variant.strip().lower().replace("-", "_")
    for prefix in ("segnext_", "mscan_"):
        if v.startswith(prefix):
            v = v[len(prefix) :]
    v = _ALIASES.get(v, v)
    if v not in MSCAN_CONFIGS:
        raise ValueError(
            f"unknown SegNeXt variant {variant!r}; use one of {', '.join(VARIANTS)} (or tiny/small/base/large)"
        )
    return v


class SegNeXt(nn.Module):
    """SegNeXt semantic segmentation network.

    ``forward(x)``: normalised ``(N, C_in, H, W)`` float tensor of any H, W ->
    logits ``(N, num_classes, H, W)``, bilinearly upsampled (align_corners=False)
    from the decoder's stride-8 output. Attribute names match mmseg checkpoints
    (``backbone.*``, ``decode_head.*``).
    """

    def __init__(
        self, backbone: MSCAN, decode_head: LightHamHead, meta: ModelMeta, batch_invariant: bool = True
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.meta = meta
        #: In eval with deterministic NMF, run a batch image by image, so that an
        #: image's logits are bit-identical whatever its batch (oneDNN picks
        #: batch-size-dependent conv kernels; on 2 CPU cores this is also faster).
        self.batch_invariant = batch_invariant

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    @property
    def nmf(self) -> NMF2D:
        return self.decode_head.hamburger.ham

    def forward_logits_stride8(self, x: Tensor) -> Tensor:
        """``(N, C_in, H, W) -> (N, K, ceil(H/8), ceil(W/8))``, the head's own output."""
        return self.decode_head(self.backbone(x))

    def forward(self, x: Tensor) -> Tensor:
        if self.batch_invariant and not self.training and x.shape[0] > 1 and self.nmf.init == "deterministic":
            return torch.cat([self._forward(x[i : i + 1]) for i in range(x.shape[0])])
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        logits = self.forward_logits_stride8(x)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def build_model(variant: str, num_classes: int, **options: Any) -> SegNeXt:
    """Build a randomly initialised SegNeXt.

    Args:
        variant: ``segnext_t|s|b|l`` or an alias (``tiny``, ``small``, ``base``, ``large``).
        num_classes: K, the number of output classes.
        **options:
            ``nmf_rank`` (default: the official repo's 16 for T/S, 64 for B/L),
            ``nmf_init`` (``"deterministic"`` | ``"reference"``), ``nmf_train_init`` (the bases in
            training mode; default ``nmf_init``), ``nmf_seed`` (0),
            ``nmf_grad`` (``"full"`` | ``"one_step"``), ``nmf_train_steps`` (6),
            ``nmf_eval_steps`` (7), ``drop_path_rate`` (variant default),
            ``dropout_ratio`` (0.1), ``in_channels`` (3), ``batch_invariant`` (True),
            ``head_conv_bias`` (False: a bias on the three GroupNorm'd head convs, as JSeg's
            Sept 2022 head; see :data:`HEAD_BIAS_KEYS`), ``meta`` (:class:`ModelMeta`)
            or the ModelMeta fields ``class_names``, ``palette``, ``mean``, ``std``, ``bands``.
    """
    v = canonical_variant(variant)
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, not {num_classes}")
    opts = dict(options)
    enc_cfg = MSCAN_CONFIGS[v]
    head_cfg = HEAD_CONFIGS[v]
    rank = int(opts.pop("nmf_rank", None) or head_cfg.nmf_rank_official)
    nmf = NMF2D(
        rank=rank,
        train_steps=int(opts.pop("nmf_train_steps", 6)),
        eval_steps=int(opts.pop("nmf_eval_steps", 7)),
        init=opts.pop("nmf_init", "deterministic"),
        seed=int(opts.pop("nmf_seed", 0)),
        grad=opts.pop("nmf_grad", "full"),
        train_init=opts.pop("nmf_train_init", None),
    )
    in_channels = int(opts.pop("in_channels", 3))
    batch_invariant = bool(opts.pop("batch_invariant", True))
    backbone = MSCAN(
        enc_cfg.embed_dims,
        enc_cfg.depths,
        enc_cfg.mlp_ratios,
        drop_path_rate=float(opts.pop("drop_path_rate", enc_cfg.drop_path_rate)),
        in_channels=in_channels,
    )
    head = LightHamHead(
        in_channels=enc_cfg.embed_dims[1:],
        num_classes=int(num_classes),
        ham_channels=head_cfg.channels,
        channels=head_cfg.channels,
        nmf=nmf,
        dropout_ratio=float(opts.pop("dropout_ratio", 0.1)),
        conv_bias=bool(opts.pop("head_conv_bias", False)),
    )
    meta = opts.pop("meta", None)
    meta_fields = {k: opts.pop(k) for k in list(opts) if k in ModelMeta.__dataclass_fields__}
    if opts:
        raise TypeError(f"unknown model option(s): {', '.join(sorted(opts))}")
    if meta is None:
        meta_fields.pop("variant", None)
        meta_fields.pop("num_classes", None)
        meta_fields.pop("nmf_rank", None)
        meta = ModelMeta(variant=v, num_classes=int(num_classes), nmf_rank=rank, **meta_fields)
    else:
        meta.variant, meta.num_classes, meta.nmf_rank = v, int(num_classes), rank
    return SegNeXt(backbone, head, meta, batch_invariant=batch_invariant)
