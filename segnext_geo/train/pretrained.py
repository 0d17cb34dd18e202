"""Initialising a new model from pretrained weights: ImageNet MSCAN backbones or segmentation checkpoints.

``model.pretrained`` (``--pretrained``) is a file, a catalogue name (``mscan_t``, ``segnext_t_isaid``;
downloaded into the cache once) or a URL. Without it, a run on a real dataset starts from random
weights, which is the known trap behind SegNeXt runs stuck at 14-18 % mIoU: :func:`warn_if_from_scratch`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from ..errors import UserError
from ..models import SegNeXt, canonical_variant, inspect_checkpoint, load_model

if TYPE_CHECKING:
    from .config import Config

__all__ = ["fetch_pretrained", "init_from_pretrained", "warn_if_from_scratch"]

log = logging.getLogger("segnext_geo")


def fetch_pretrained(spec: str | Path) -> None:
    """Make sure ``spec`` is usable before a run starts: a file, or a name/URL fetched into the cache now.

    Raises:
        UserError: no such file or name, a download that failed, or a file that does not load.
    """
    inspect_checkpoint(spec)


def _enable_head_bias(model: SegNeXt) -> None:
    """Give the three GroupNorm'd head convs a (zero) bias, in place, so a JSeg Sept 2022 head loads fully."""
    head = model.decode_head
    for conv_module in (head.squeeze, head.hamburger.ham_out, head.align):
        conv = conv_module.conv
        if conv.bias is None:
            conv.bias = nn.Parameter(conv.weight.new_zeros(conv.out_channels))
    head.conv_bias = True


def init_from_pretrained(model: SegNeXt, spec: str | Path) -> str:
    """Copy pretrained weights into ``model``; returns what was loaded.

    ``spec`` is a file, a catalogue name or a URL. An ImageNet MSCAN file (``mscan_t``) fills the
    backbone (the decoder stays freshly initialised). A segmentation checkpoint (official, mmseg,
    Jittor or own) fills the backbone and the decoder, except ``conv_seg`` when its class count
    differs; a head with the three JSeg conv biases gives ``model`` those biases too.
    """
    ck = inspect_checkpoint(spec)
    label = ck.weights.name if ck.weights is not None else ck.path.name
    backbone_only = ck.family == "mscan-imagenet"
    pre = load_model(ck, num_classes=model.num_classes) if backbone_only else load_model(ck)
    if pre.meta.variant != model.meta.variant:
        raise UserError(f"{spec}: holds {pre.meta.variant} weights but model.variant is {model.meta.variant}")
    try:
        model.backbone.load_state_dict(pre.backbone.state_dict())
        if backbone_only:
            return f"backbone from ImageNet {label}"
        if pre.decode_head.conv_bias:
            _enable_head_bias(model)
        head = pre.decode_head.state_dict()
        if pre.num_classes != model.num_classes:
            head = {k: v for k, v in head.items() if not k.startswith("conv_seg.")}
        model.decode_head.load_state_dict(head, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{spec}: weights do not fit the model ({' '.join(first[:2])[:200]})") from None
    kept = "" if pre.num_classes == model.num_classes else " (classifier re-initialised)"
    return f"backbone and decoder from {label}{kept}"


def warn_if_from_scratch(cfg: Config) -> bool:
    """Warn when a run on a real dataset has no ``model.pretrained``; returns whether it warned.

    The paper's numbers (iSAID 68.3-70.3 mIoU) need ImageNet weights; SegNeXt trained from
    random weights is known to stall at 14-18 % mIoU. The synthetic smoke dataset is exempt.
    """
    if cfg.model.pretrained or cfg.data.dataset.lower() == "synthetic":
        return False
    try:
        short = canonical_variant(cfg.model.variant)[-1]
    except ValueError:
        return False  # the config check reports the variant
    log.warning(
        f"{cfg.source}: training {cfg.model.variant} on {cfg.data.dataset} from random weights "
        f"(model.pretrained is not set). The paper's results need ImageNet weights; from scratch SegNeXt is "
        f"known to stall at 14-18 % mIoU. Add --pretrained mscan_{short} (downloaded once)."
    )
    return True
