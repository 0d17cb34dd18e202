"""PNG pictures: the training curve (loss, learning rate, val mIoU) and per-class IoU/accuracy bars."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_per_class", "plot_training_curve"]


def _save(fig: Any, path: Path) -> None:
    """Save a figure atomically (temp file next to ``path``, then rename) and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def plot_training_curve(
    train: Sequence[dict[str, float]], val: Sequence[dict[str, float]], path: str | Path, title: str = ""
) -> Path:
    """Three panels over optimiser steps: training loss, learning rate (base group) and validation mIoU (%).

    ``train`` rows hold ``step``, ``loss``, ``lr``; ``val`` rows hold ``step``, ``mIoU`` (fraction).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], color="tab:blue", lw=1.2)
    axes[0].set_title("training loss")
    axes[1].plot(steps, [r["lr"] for r in train], color="tab:orange", lw=1.2)
    axes[1].set_title("learning rate (backbone)")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    vsteps = [r["step"] for r in val]
    vals = [100 * r["mIoU"] for r in val]
    axes[2].plot(vsteps, vals, marker="o", color="tab:green", lw=1.2)
    axes[2].set_title("validation mIoU (%)")
    finite = [v for v in vals if not math.isnan(v)]
    if finite:
        best = max(finite)
        axes[2].axhline(best, color="grey", ls=":", lw=1)
        axes[2].annotate(f"best {best:.1f}", xy=(0.02, 0.92), xycoords="axes fraction", fontsize=9)
    for ax in axes:
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    p = Path(path)
    _save(fig, p)
    return p


def plot_per_class(metrics: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Horizontal bars of per-class IoU and accuracy (%), with the mIoU as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = metrics["per_class"]
    names = [r["name"] for r in rows]
    iou = [0.0 if math.isnan(r["IoU"]) else 100 * r["IoU"] for r in rows]
    acc = [0.0 if math.isnan(r["Acc"]) else 100 * r["Acc"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    y = list(range(len(rows)))
    ax.barh([v - 0.2 for v in y], iou, height=0.4, label="IoU", color="tab:blue")
    ax.barh([v + 0.2 for v in y], acc, height=0.4, label="Acc", color="tab:orange", alpha=0.7)
    for yi, (v, r) in enumerate(zip(iou, rows, strict=True)):
        ax.text(v + 0.8, yi - 0.2, "n/a" if math.isnan(r["IoU"]) else f"{v:.1f}", va="center", fontsize=7)
    ax.axvline(100 * metrics["mIoU"], color="k", ls="--", lw=1, label=f"mIoU {100 * metrics['mIoU']:.1f}")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("%")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    summary = f"mIoU {100 * metrics['mIoU']:.2f}, mAcc {100 * metrics['mAcc']:.2f}, aAcc {100 * metrics['aAcc']:.2f}"
    ax.set_title(f"{title}\n{summary}" if title else summary, fontsize=10)
    fig.tight_layout()
    p = Path(path)
    _save(fig, p)
    return p
