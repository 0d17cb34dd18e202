"""Evaluation the way the paper does it: whole-image or sliding-window inference, mIoU/aAcc and per-class scores.

``segment_logits`` is shared with validation during training. ``evaluate``
runs a checkpoint over a config's validation split and writes a JSON report and
a per-class bar chart PNG, and returns the metrics (see
:func:`~segnext_geo.train.metrics.metrics_from_confusion`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .metrics import confusion_matrix, metrics_from_confusion

__all__ = ["evaluate", "format_table", "segment_logits"]


def _slide(
    model: Callable[[Tensor], Tensor], images: Tensor, num_classes: int, crop: Sequence[int], stride: Sequence[int]
) -> Tensor:
    """mmseg ``slide_inference``: logits of ``crop`` windows every ``stride`` px, averaged where they overlap."""
    n, _, h, w = images.shape
    (hc, wc), (hs, ws) = crop, stride
    h_grids = max(h - hc + hs - 1, 0) // hs + 1
    w_grids = max(w - wc + ws - 1, 0) // ws + 1
    preds = images.new_zeros((n, num_classes, h, w), dtype=torch.float32)
    count = images.new_zeros((n, 1, h, w), dtype=torch.float32)
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * hs, wi * ws
            y2, x2 = min(y1 + hc, h), min(x1 + wc, w)
            y1, x1 = max(y2 - hc, 0), max(x2 - wc, 0)
            logits = model(images[:, :, y1:y2, x1:x2]).float()
            preds[:, :, y1:y2, x1:x2] += logits
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


@torch.no_grad()
def segment_logits(
    model: nn.Module | Callable[[Tensor], Tensor],
    images: Tensor,
    out_size: Sequence[int],
    mode: str = "whole",
    crop: Sequence[int] = (896, 896),
    stride: Sequence[int] = (512, 512),
) -> Tensor:
    """Normalised ``(N, C, H, W)`` images -> float32 logits ``(N, K, *out_size)``.

    ``whole`` runs the model on the full image; ``slide`` averages the logits of
    ``crop``-sized windows placed every ``stride`` px (the last window pulled back
    to the edge). Logits are then resized bilinearly to ``out_size`` (the label's
    size), as mmseg does before the argmax.
    """
    if mode == "whole":
        logits = model(images).float()
    elif mode == "slide":
        k = getattr(model, "num_classes", None)
        if k is None:
            raise ValueError("slide mode needs a model with num_classes")
        logits = _slide(model, images, int(k), crop, stride)
    else:
        raise ValueError(f"mode must be 'whole' or 'slide', not {mode!r}")
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits, size=tuple(out_size), mode="bilinear", align_corners=False)
    return logits


def _json_safe(obj: Any) -> Any:
    """NaN (an undefined IoU/Acc) becomes ``null`` so that the file is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def format_table(metrics: dict[str, Any]) -> str:
    """The per-class table and the summary line, as text (percentages)."""

    def pct(v: float) -> str:
        return "   nan" if math.isnan(v) else f"{100 * v:6.2f}"

    width = max([len(r["name"]) for r in metrics["per_class"]] + [5])
    lines = [f"{'class':<{width}}    IoU    Acc", "-" * (width + 15)]
    lines += [f"{r['name']:<{width}} {pct(r['IoU'])} {pct(r['Acc'])}" for r in metrics["per_class"]]
    lines.append("-" * (width + 15))
    lines.append(f"mIoU {pct(metrics['mIoU'])}  mAcc {pct(metrics['mAcc'])}  aAcc {pct(metrics['aAcc'])}")
    return "\n".join(lines)


def _checkpoint_name(checkpoint: str | Path) -> str:
    """The last part of a file path, URL or catalogue name (``best.ckpt``, ``segnext_t_isaid``)."""
    return str(checkpoint).rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or "checkpoint"


def _default_out(checkpoint: str | Path, split: str, mode: str) -> Path:
    """``eval_{split}_{mode}.json`` next to a checkpoint file, else ``eval_{name}_…`` in the current folder."""
    if Path(checkpoint).is_file():
        return Path(checkpoint).parent / f"eval_{split}_{mode}.json"
    stem = _checkpoint_name(checkpoint).split(".", 1)[0]
    return Path(f"eval_{stem}_{split}_{mode}.json")


def evaluate(
    config: str | Path | None,
    checkpoint: str | Path,
    mode: str | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    device: str = "auto",
    overrides: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on the validation split of ``config`` and write ``out`` (JSON) and its PNG.

    ``checkpoint`` is whatever :func:`~segnext_geo.models.load_model` takes (a file, or
    a catalogue name or URL where the model code offers them); it is passed on as
    given. ``mode``/``split`` override ``eval.mode``/``data.val_split``. ``out``
    defaults to ``eval_{split}_{mode}.json`` next to a checkpoint file, or to
    ``eval_{name}_{split}_{mode}.json`` in the current folder for a name or URL; the
    bar chart goes to the same name with ``.png``. Normalisation and bands come from
    the checkpoint; the test-time resize from the config (``data.test_scale``,
    ``data.test_size_divisor``).

    Returns:
        The metrics dict (``mIoU``, ``mAcc``, ``aAcc``, ``per_class``,
        ``confusion_matrix``) plus ``checkpoint``, ``dataset``, ``split``, ``mode``,
        ``images``, ``json`` and ``png``.

    Raises:
        UserError: unreadable config/checkpoint, missing dataset, a class count that
            differs between checkpoint and dataset, or an existing output without
            ``overwrite``.
    """
    from torch.utils.data import DataLoader

    from ..data.build import build_data
    from ..data.dataset import EpochSampler, SegDataset, epoch_keys
    from ..data.transforms import EvalPipeline
    from ..models import load_model
    from .config import load_config
    from .plots import plot_per_class

    sets = list(overrides or [])
    if mode is not None:
        sets.append(f"eval.mode={mode}")
    if split is not None:
        sets.append(f"data.val_split={split}")
    cfg = load_config(config, sets)
    json_path = Path(out) if out is not None else _default_out(checkpoint, cfg.data.val_split, cfg.eval.mode)
    png_path = json_path.with_suffix(".png")
    for p in (json_path, png_path):
        if p.exists() and not overwrite:
            raise UserError(f"{p}: already exists (use --overwrite to replace it)")
    if not json_path.parent.is_dir():
        raise UserError(f"{json_path.parent}: output folder does not exist")

    model = load_model(str(checkpoint))  # a file, or a name/URL for load_model to resolve: never coerced to a Path
    bundle = build_data(cfg.data, roles=("val",))
    if model.num_classes != bundle.num_classes:
        raise UserError(
            f"{checkpoint}: has {model.num_classes} classes but dataset {bundle.dataset} ({cfg.source}) has "
            f"{bundle.num_classes}"
        )
    from ..inference import InferenceRunner

    runner = InferenceRunner(model, device, precision="fp32", deterministic=True)  # the one eval forward
    meta = model.meta
    scale = (int(cfg.data.test_scale[0]), int(cfg.data.test_scale[1])) if cfg.data.test_scale else None
    pipeline = EvalPipeline(meta.mean, meta.std, scale, cfg.data.test_size_divisor)
    source = bundle.sources["val"]
    ds = SegDataset(source, pipeline, model.num_classes, meta.bands, ignore_index=cfg.data.ignore_index)
    sampler = EpochSampler(lambda e: epoch_keys(source, e, 0), len(source), shuffle=False, even=False)
    loader = DataLoader(ds, batch_size=1, sampler=sampler, num_workers=cfg.data.num_workers)
    conf = torch.zeros(model.num_classes, model.num_classes, dtype=torch.long)
    from tqdm import tqdm

    n = 0
    for batch in tqdm(loader, desc=f"evaluate ({cfg.eval.mode})", unit="image", disable=not progress):
        mask = batch["mask"]
        logits = segment_logits(
            runner,
            batch["image"].to(runner.device),
            mask.shape[-2:],
            cfg.eval.mode,
            cfg.eval.crop_size,
            cfg.eval.stride,
        )
        conf += confusion_matrix(logits.argmax(1).cpu(), mask, model.num_classes, cfg.data.ignore_index)
        n += mask.shape[0]
    metrics = metrics_from_confusion(conf, meta.class_names)
    result = {
        "checkpoint": str(checkpoint),
        "dataset": bundle.dataset,
        "split": cfg.data.val_split,
        "mode": cfg.eval.mode,
        "test_scale": cfg.data.test_scale,
        "test_size_divisor": cfg.data.test_size_divisor,
        "images": n,
        **metrics,
        "json": str(json_path),
        "png": str(png_path),
    }
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    try:
        tmp.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False))
        title = f"{_checkpoint_name(checkpoint)} on {bundle.dataset} {cfg.data.val_split}"
        plot_per_class(metrics, png_path, title=title)
        tmp.replace(json_path)
    finally:
        tmp.unlink(missing_ok=True)
    return result
