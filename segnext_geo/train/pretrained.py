"""Initialising a new model from pretrained weights: ImageNet MSCAN backbones or segmentation checkpoints."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..models import SegNeXt, inspect_checkpoint, load_model

__all__ = ["init_from_pretrained"]


def init_from_pretrained(model: SegNeXt, path: str | Path) -> str:
    """Copy pretrained weights into ``model``; returns what was loaded.

    An ImageNet MSCAN file fills the backbone (the decoder stays freshly
    initialised). A segmentation checkpoint (official, mmseg or own) fills the
    backbone and the decoder, except ``conv_seg`` when its class count differs.
    """
    p = Path(path)
    family = inspect_checkpoint(p).family
    pre = load_model(p, num_classes=model.num_classes) if family == "mscan-imagenet" else load_model(p)
    if pre.meta.variant != model.meta.variant:
        raise UserError(f"{p}: holds {pre.meta.variant} weights but model.variant is {model.meta.variant}")
    try:
        model.backbone.load_state_dict(pre.backbone.state_dict())
        if family == "mscan-imagenet":
            return f"backbone from ImageNet {p.name}"
        head = pre.decode_head.state_dict()
        if pre.num_classes != model.num_classes:
            head = {k: v for k, v in head.items() if not k.startswith("conv_seg.")}
        model.decode_head.load_state_dict(head, strict=False)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{p}: weights do not fit the model ({' '.join(first[:2])[:200]})") from None
    kept = "" if pre.num_classes == model.num_classes else " (classifier re-initialised)"
    return f"backbone and decoder from {p.name}{kept}"
