"""Lightning callbacks: the run folder's config copy and the training-curve PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from .config import Config
from .plots import plot_training_curve

__all__ = ["TrainingCurve", "ValidateAtEnd"]


class TrainingCurve(pl.Callback):
    """Records mean loss and learning rate every ``log_interval`` steps and val mIoU, and draws ``png``.

    Writes ``out_dir/config.yaml`` (the resolved config) when fitting starts, and
    ``out_dir/training_curve.png`` after every validation and at the end. The
    history is part of the checkpoint (callback state), so a resumed run keeps
    drawing the whole curve.
    """

    def __init__(self, out_dir: str | Path, cfg: Config, log_interval: int) -> None:
        self.out_dir = Path(out_dir)
        self.cfg = cfg
        self.log_interval = int(log_interval)
        self.train: list[dict[str, float]] = []
        self.val: list[dict[str, float]] = []
        self._sum = 0.0
        self._count = 0

    @property
    def png(self) -> Path:
        return self.out_dir / "training_curve.png"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            target = self.out_dir / "config.yaml"
            tmp = target.with_name(".config.yaml.tmp")
            try:
                tmp.write_text(f"# resolved config of this run (from {self.cfg.source})\n" + self.cfg.to_yaml())
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
            for logger in trainer.loggers:
                logger.log_hyperparams(self.cfg.to_dict())

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, Tensor):
            self._sum += float(loss.detach())
            self._count += 1
        step = trainer.global_step
        if self._count and (step % self.log_interval == 0 or step >= trainer.max_steps):
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            if not self.train or self.train[-1]["step"] != step:
                self.train.append({"step": step, "loss": self._sum / self._count, "lr": lr})
            self._sum, self._count = 0.0, 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/mIoU")
        if value is not None:
            self.val.append({"step": trainer.global_step, "mIoU": float(value)})
        self._draw(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._draw(trainer)

    def _draw(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero and (self.train or self.val):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            title = f"{self.cfg.model.variant} on {self.cfg.data.dataset}"
            plot_training_curve(self.train, self.val, self.png, title=title)

    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train, "val": self.val}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = list(state_dict.get("train", []))
        self.val = list(state_dict.get("val", []))


class ValidateAtEnd(pl.Callback):
    """Validate (and so checkpoint) after the last step too, as mmengine's iteration loop does.

    Setting ``should_stop`` after the final step makes Lightning run the validation
    loop before it leaves the epoch, whatever ``val_interval`` is.
    """

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True
