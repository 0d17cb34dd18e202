"""The LightningModule: SegNeXt under ``self.model``, mmseg's loss, validation mIoU and checkpoint metadata.

The module's ``state_dict`` holds only ``model.*`` keys, and every checkpoint it
writes carries ``checkpoint["segnext_geo"]`` (the model's
:class:`~segnext_geo.models.ModelMeta`), so ``load_model(best.ckpt)`` and
``predict`` need no extra flags. Checkpoints also carry the config and every
rank's RNG state; the RNG is restored just before training resumes.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor

from ..models import SegNeXt
from ..models.checkpoint import META_KEY
from .config import Config
from .evaluate import segment_logits
from .metrics import confusion_matrix, metrics_from_confusion
from .recipe import build_optimizer

__all__ = ["CONFIG_KEY", "RNG_KEY", "SegNeXtModule"]

CONFIG_KEY = "segnext_geo_config"
RNG_KEY = "segnext_geo_rng"


class SegNeXtModule(pl.LightningModule):
    """Trains ``model`` with the SegNeXt recipe of ``cfg``.

    Batches are ``{"image": (N, C, H, W) float, "mask": (N, H, W) int64, "id": (N,)}``.
    The loss is mmseg's ``CrossEntropyLoss``: per-pixel cross-entropy on logits
    upsampled to the label size, ignored pixels counted as zero in the mean
    (``avg_non_ignore=False``), computed in float32 under mixed precision.
    """

    def __init__(self, model: SegNeXt, cfg: Config) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.ignore_index = cfg.data.ignore_index
        self.last_metrics: dict[str, Any] | None = None
        self._confusion: Tensor | None = None
        self._pending_rng: dict[str, Any] | None = None

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.model(batch["image"])
        loss = F.cross_entropy(logits.float(), batch["mask"], ignore_index=self.ignore_index, reduction="none").mean()
        n = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        opt = self.optimizers()
        assert not isinstance(opt, list)
        self.log("train/lr", opt.param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        k = self.model.num_classes
        self._confusion = torch.zeros(k, k, dtype=torch.long, device=self.device)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        mask = batch["mask"]
        e = self.cfg.eval
        logits = segment_logits(self.model, batch["image"], mask.shape[-2:], e.mode, e.crop_size, e.stride)
        assert self._confusion is not None
        self._confusion += confusion_matrix(logits.argmax(1), mask, self.model.num_classes, self.ignore_index)

    def on_validation_epoch_end(self) -> None:
        assert self._confusion is not None
        conf = self._confusion
        if dist.is_available() and dist.is_initialized() and self.trainer.world_size > 1:
            dist.all_reduce(conf, op=dist.ReduceOp.SUM)
        if self.trainer.sanity_checking:
            return
        metrics = metrics_from_confusion(conf, self.model.meta.class_names)
        self.last_metrics = metrics
        self.log("val/mIoU", metrics["mIoU"], prog_bar=True, sync_dist=False)
        self.log("val/mAcc", metrics["mAcc"], sync_dist=False)
        self.log("val/aAcc", metrics["aAcc"], sync_dist=False)
        for row in metrics["per_class"]:
            self.log(f"val/IoU.{row['name']}", row["IoU"], sync_dist=False)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        opt, sched = build_optimizer(self.model, self.cfg.optim, self.cfg.schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add the model metadata, the config and every rank's RNG state (a collective under DDP)."""
        self.model.meta.extra["trained_iters"] = int(self.global_step)
        checkpoint[META_KEY] = self.model.meta.to_dict()
        checkpoint[CONFIG_KEY] = self.cfg.to_dict()
        states = _rng_states()
        if dist.is_available() and dist.is_initialized() and self.trainer.world_size > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states)
            checkpoint[RNG_KEY] = gathered
        else:
            checkpoint[RNG_KEY] = [states]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep this rank's RNG state to restore at :meth:`on_train_start` (after data loaders are set up)."""
        states = checkpoint.get(RNG_KEY) or []
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self._pending_rng = states[rank] if rank < len(states) else None

    def on_train_start(self) -> None:
        if self._pending_rng is not None:
            _restore_rng_states(self._pending_rng)
            self._pending_rng = None


def _rng_states() -> dict[str, Any]:
    """torch, CUDA, numpy and python RNG states as tensors and plain values (loadable with ``weights_only``)."""
    states = _collect_rng_states(include_cuda=torch.cuda.is_available())
    name, keys, pos, has_gauss, gauss = states["numpy"]
    states["numpy"] = (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss))
    return states


def _restore_rng_states(states: dict[str, Any]) -> None:
    states = dict(states)
    name, keys, pos, has_gauss, gauss = states["numpy"]
    states["numpy"] = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
    _set_rng_states(states)
