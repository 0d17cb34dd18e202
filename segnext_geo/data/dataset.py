"""The training/validation dataset wrapper and the epoch- and rank-aware sampler.

A *source* is anything with ``len()``, ``load(key) -> (image (H, W, C), label (H, W))``
and ``describe(key) -> str`` (the file or chip, for messages); sources that draw
new samples every epoch (random geo chips) also have ``epoch_keys(epoch, seed)``.

:class:`EpochSampler` yields ``(key, epoch, ident)`` triples and
:class:`SegDataset` seeds each sample's augmentation with ``(seed, epoch, ident)``,
so a sample is augmented identically whatever the worker, the rank, or whether
the run was resumed. With ``world_size > 1`` each rank gets a disjoint share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from ..errors import UserError
from .palette import IGNORE_INDEX
from .transforms import EvalPipeline, TrainPipeline

__all__ = ["EpochSampler", "SegDataset", "SegSource"]


class SegSource(Protocol):
    """What :class:`SegDataset` reads from (iSAID patches, torchgeo datasets, GeoTIFF chips, synthetic shapes)."""

    def __len__(self) -> int: ...

    def load(self, key: Any) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self, key: Any) -> str: ...


def epoch_keys(source: SegSource, epoch: int, seed: int) -> Sequence[Any]:
    """The sample keys of one epoch: ``source.epoch_keys`` when it draws per epoch, else ``range(len)``."""
    fn = getattr(source, "epoch_keys", None)
    return fn(epoch, seed) if fn is not None else range(len(source))


class EpochSampler(Sampler[tuple[Any, int, int]]):
    """Yields ``(key, epoch, ident)`` for this rank's share of one epoch.

    ``keys_for_epoch(epoch)`` gives the epoch's keys (all ranks get the same list).
    With ``shuffle`` the order is a permutation seeded by ``(seed, epoch)``. For
    training (``even=True``) the list is cut to a multiple of ``world_size`` so every
    rank runs the same number of steps; validation keeps every sample once.
    ``ident`` is the key itself for integer keys and the position in the epoch's
    list otherwise. :meth:`skip_next` drops the first samples of the next epoch
    iterated (used to continue a resumed epoch where it stopped).
    """

    def __init__(
        self,
        keys_for_epoch: Callable[[int], Sequence[Any]],
        length: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        even: bool = True,
    ) -> None:
        self.keys_for_epoch = keys_for_epoch
        self.total = int(length)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.even = even
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every epoch."""
        self.epoch = int(epoch)

    def skip_next(self, n: int) -> None:
        self._skip = max(int(n), 0)

    def __len__(self) -> int:
        if self.even:
            return self.total // self.world_size
        return len(range(self.rank, self.total, self.world_size))

    def __iter__(self) -> Iterator[tuple[Any, int, int]]:
        keys = self.keys_for_epoch(self.epoch)
        n = len(keys)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.even:
            order = order[: (n // self.world_size) * self.world_size]
        mine = order[self.rank :: self.world_size][self._skip :]
        self._skip = 0
        for i in mine:
            key = keys[int(i)]
            ident = int(key) if isinstance(key, (int, np.integer)) else int(i)
            yield key, self.epoch, ident


class SegDataset(Dataset[dict[str, Tensor]]):
    """Reads a source and applies the training or evaluation pipeline.

    Items are ``{"image": (C, h, w) float32, "mask": (h, w) int64, "id": int}``.
    ``bands`` (1-based) selects and orders the source's bands. Label values other
    than ``0..num_classes-1`` and ``ignore_index`` are an error naming the sample.
    """

    def __init__(
        self,
        source: SegSource,
        pipeline: TrainPipeline | EvalPipeline,
        num_classes: int,
        bands: Sequence[int] | None = None,
        seed: int = 0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.source = source
        self.pipeline = pipeline
        self.num_classes = int(num_classes)
        self.bands = tuple(bands) if bands else None
        self.seed = int(seed)
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.source)

    def _load(self, key: Any) -> tuple[np.ndarray, np.ndarray]:
        try:
            image, label = self.source.load(key)
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"{self.source.describe(key)}: cannot read sample ({type(e).__name__}: {e})") from None
        if image.ndim == 2:
            image = image[:, :, None]
        if self.bands is not None:
            if max(self.bands) > image.shape[2]:
                raise UserError(
                    f"{self.source.describe(key)}: has {image.shape[2]} bands; data.bands asks for {list(self.bands)}"
                )
            image = image[:, :, [b - 1 for b in self.bands]]
        bad = ((label < 0) | (label >= self.num_classes)) & (label != self.ignore_index)
        if bad.any():
            raise UserError(
                f"{self.source.describe(key)}: label value {int(label[bad].flat[0])} is not a class id "
                f"(0..{self.num_classes - 1}) or the ignore index {self.ignore_index}"
            )
        return image, label.astype(np.uint8, copy=False)

    def __getitem__(self, item: tuple[Any, int, int] | int) -> dict[str, Tensor]:
        key, epoch, ident = item if isinstance(item, tuple) else (item, 0, int(item))
        image, label = self._load(key)
        if isinstance(self.pipeline, TrainPipeline):
            rng = np.random.default_rng([self.seed, int(epoch), int(ident)])
            img, lab = self.pipeline(image, label, rng)
        else:
            img, lab = self.pipeline(image, label)
        return {"image": img, "mask": lab, "id": torch.tensor(ident)}
