"""Segmentation metrics from a confusion matrix, as mmseg's ``IoUMetric`` computes them.

``confusion[t, p]`` counts pixels of true class ``t`` predicted as ``p`` (ignored
pixels excluded). Per class: IoU = TP / (TP + FP + FN), Acc = TP / (TP + FN);
aAcc = trace / total; mIoU and mAcc are means over classes whose value is defined
(a class absent from both truth and prediction has IoU NaN and is left out).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "metrics_from_confusion"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """``(K, K)`` int64 counts from predicted and true id maps of any matching shape."""
    valid = target != ignore_index
    t = target[valid].long()
    p = pred[valid].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def metrics_from_confusion(confusion: Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """``{"mIoU", "mAcc", "aAcc", "per_class": [{"name", "IoU", "Acc", "pixels"}], "confusion_matrix"}``.

    Ratios are fractions in [0, 1]; undefined values are ``NaN``.
    """
    c = confusion.double().cpu()
    tp = c.diag()
    gt = c.sum(1)
    pred = c.sum(0)
    union = gt + pred - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    total = float(c.sum())
    per_class = [
        {"name": str(name), "IoU": float(iou[i]), "Acc": float(acc[i]), "pixels": int(gt[i])}
        for i, name in enumerate(class_names)
    ]
    return {
        "mIoU": _nanmean([float(v) for v in iou]),
        "mAcc": _nanmean([float(v) for v in acc]),
        "aAcc": float(tp.sum()) / total if total > 0 else float("nan"),
        "per_class": per_class,
        "confusion_matrix": confusion.long().cpu().tolist(),
    }
