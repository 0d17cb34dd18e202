"""The LightningDataModule: datasets, per-rank epoch samplers and loaders.

It hands each rank its own share (Lightning's sampler replacement is switched
off; see :class:`~segnext_geo.data.dataset.EpochSampler`) and, when resuming in
the middle of an epoch, skips the samples the interrupted run already used, so
``--resume`` continues with exactly the batches the run would have seen.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from ..data.build import DataBundle
from ..data.dataset import EpochSampler, SegDataset, SegSource, epoch_keys
from ..data.transforms import EvalPipeline, TrainPipeline
from ..errors import UserError
from .config import Config

__all__ = ["SegDataModule"]


class SegDataModule(pl.LightningDataModule):
    """Training and validation loaders for ``bundle``'s sources; ``per_device_batch`` images per step and device."""

    def __init__(self, cfg: Config, bundle: DataBundle, per_device_batch: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.bundle = bundle
        self.per_device_batch = int(per_device_batch)
        d = cfg.data
        self.train_pipeline = TrainPipeline(
            mean=bundle.mean,
            std=bundle.std,
            img_scale=(d.img_scale[0], d.img_scale[1]),
            ratio_range=(d.ratio_range[0], d.ratio_range[1]) if d.ratio_range else None,
            crop_size=(d.crop_size[0], d.crop_size[1]),
            cat_max_ratio=d.cat_max_ratio,
            flip_prob=d.flip_prob,
            photometric=d.photometric,
            ignore_index=d.ignore_index,
        )
        self.eval_pipeline = EvalPipeline(
            bundle.mean, bundle.std, (d.test_scale[0], d.test_scale[1]) if d.test_scale else None, d.test_size_divisor
        )

    def _dataset(self, role: str) -> tuple[SegSource, SegDataset]:
        source = self.bundle.sources[role]
        pipeline = self.train_pipeline if role == "train" else self.eval_pipeline
        ds = SegDataset(
            source,
            pipeline,
            self.bundle.num_classes,
            self.bundle.bands,
            seed=self.cfg.trainer.seed,
            ignore_index=self.cfg.data.ignore_index,
        )
        return source, ds

    def _loader_kwargs(self) -> dict[str, Any]:
        workers = self.cfg.data.num_workers
        return {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "pin_memory": self.trainer is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator",
            # a private generator: creating loader iterators never touches the global RNG (exact resume)
            "generator": torch.Generator().manual_seed(self.cfg.trainer.seed),
        }

    def train_dataloader(self) -> DataLoader:
        source, ds = self._dataset("train")
        seed = self.cfg.trainer.seed
        trainer = self.trainer
        assert trainer is not None
        sampler = EpochSampler(
            lambda e: epoch_keys(source, e, seed),
            len(source),
            shuffle=True,
            seed=seed,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            even=True,
        )
        if len(sampler) < self.per_device_batch:
            raise UserError(
                f"data.batch_size: {self.per_device_batch} images per device, but the training set has only "
                f"{len(sampler)} per device ({len(source)} in all)"
            )
        if trainer.ckpt_path:
            # batches of the checkpoint's epoch already trained on; a finished epoch restarts at the next one
            per_epoch = len(sampler) // self.per_device_batch
            current: Any = trainer.fit_loop.epoch_loop.batch_progress.current  # a _ProcessedTracker at run time
            done = int(current.processed) % per_epoch
            sampler.skip_next(done * self.per_device_batch)
        kwargs = self._loader_kwargs()
        return DataLoader(ds, batch_size=self.per_device_batch, sampler=sampler, drop_last=True, **kwargs)

    def val_dataloader(self) -> DataLoader:
        source, ds = self._dataset("val")
        trainer = self.trainer
        assert trainer is not None
        sampler = EpochSampler(
            lambda e: epoch_keys(source, 0, 0),
            len(source),
            shuffle=False,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            even=False,
        )
        return DataLoader(ds, batch_size=self.cfg.data.val_batch_size, sampler=sampler, **self._loader_kwargs())
