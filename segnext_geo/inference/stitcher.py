"""Blending accumulators with a bounded working set (see :mod:`.grid` for the super-tile plan).

For the super-tile being processed, :class:`Stitcher` holds one float32 tensor of shape
``(K + 1, h, w)`` over the super-tile's extent: ``K`` planes of ``sum(weight * probability)``
and one plane of ``sum(weight)``, plus a bool validity plane. When the super-tile is done its
core is finalised (class = argmax of the weighted sums, i.e. of the weighted mean, since the
weight sum is positive; probability = sum / weight sum) and the parts of the extent beyond the
core are handed on as partial sums: kept in memory for the next super-tile of the same row, and
spilled to a scratch folder for super-tiles of the next row, so nothing grows with the scene's
width or height.

Contributions reach every pixel in a fixed order (super-tiles in raster order, tiles in raster
order within one), so the result does not depend on batching or threading.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .blend import BlendMode, axis_profiles
from .grid import Rect, SuperTile, Tile, TileGrid

__all__ = ["FinishedCore", "PartialStore", "ProbsMode", "Stitcher"]

ProbsMode = Literal["classes", "confidence"]
NODATA = 255


@dataclass
class FinishedCore:
    """A finished core: ``classes`` ``(h, w)`` uint8 (255 = nodata), ``probs`` ``(B, h, w)`` uint8 or
    ``None``, ``valid`` ``(h, w)`` bool; tensors are on the CPU once ``ready`` has been waited for."""

    rect: Rect
    classes: Tensor
    probs: Tensor | None
    valid: Tensor
    valid_pixels: int
    ready: Callable[[], None] = field(default=lambda: None)

    def numpy(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Wait for device-to-host copies and return ``(classes, probs, valid)`` arrays."""
        self.ready()
        probs = None if self.probs is None else self.probs.numpy()
        return self.classes.numpy(), probs, self.valid.numpy()


class PartialStore:
    """Partial sums waiting for a later super-tile.

    ``put(target, rect, data, spill)``: ``data`` ``(K + 1, h, w)`` float32 covering ``rect``.
    With ``spill`` it is written to a scratch folder by ``submit`` (the writer thread) and read
    back by :meth:`take`; otherwise it stays in memory (on the device).
    """

    def __init__(self, scratch_parent: Path, submit: Callable[..., Future[None]]) -> None:
        self._parent = scratch_parent
        self._submit = submit
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._items: dict[int, list[tuple[Rect, Tensor | tuple[Path, Future[None]]]]] = {}
        self._count = itertools.count()
        self.spilled_bytes = 0

    def _folder(self) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix=".segnext-spill-", dir=self._parent)
        return Path(self._dir.name)

    def put(self, target: int, rect: Rect, data: Tensor, spill: bool) -> None:
        if spill:
            path = self._folder() / f"partial-{next(self._count)}.npy"
            array = data.to("cpu", copy=True).contiguous().numpy()  # a copy: the accumulator buffer is reused
            self.spilled_bytes += array.nbytes
            self._items.setdefault(target, []).append((rect, (path, self._submit(np.save, path, array))))
        else:
            self._items.setdefault(target, []).append((rect, data.clone()))

    def take(self, target: int, device: torch.device) -> list[tuple[Rect, Tensor]]:
        out: list[tuple[Rect, Tensor]] = []
        for rect, item in self._items.pop(target, []):
            if isinstance(item, Tensor):
                out.append((rect, item))
                continue
            path, done = item
            done.result()
            out.append((rect, torch.from_numpy(np.load(path)).to(device)))
            path.unlink()
        return out

    def close(self) -> None:
        self._items.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


class Stitcher:
    """Weighted blending of tile probabilities, one super-tile at a time.

    Args:
        grid: the tile grid.
        num_classes: K.
        blend: ``hann`` | ``taper`` | ``none`` (see :mod:`.blend`).
        device: where the accumulators live (the model's device).
        probs_mode: also produce probabilities: ``classes`` (K bands) or ``confidence`` (1 band).
        partials: where partial sums wait for later super-tiles.

    Call :meth:`start` for each super-tile in order, :meth:`add` for each of its tiles in
    order, then :meth:`finish`.
    """

    def __init__(
        self,
        grid: TileGrid,
        num_classes: int,
        blend: BlendMode,
        device: torch.device,
        probs_mode: ProbsMode | None,
        partials: PartialStore,
    ) -> None:
        self.grid = grid
        self.k = int(num_classes)
        self.device = device
        self.probs_mode = probs_mode
        self.partials = partials
        self.wy = [torch.from_numpy(p).to(device) for p in axis_profiles(grid.ys, grid.th, grid.overlap, blend)]
        self.wx = [torch.from_numpy(p).to(device) for p in axis_profiles(grid.xs, grid.tw, grid.overlap, blend)]
        self.st: SuperTile | None = None
        self.acc: Tensor | None = None
        self.valid: Tensor | None = None
        # one buffer for every super-tile: zeroing it is ~10x cheaper than faulting in fresh pages
        h, w = grid.max_extent
        self._acc_buffer = torch.empty((self.k + 1, h, w), dtype=torch.float32, device=device)
        self._valid_buffer = torch.empty((h, w), dtype=torch.bool, device=device)

    def start(self, st: SuperTile) -> None:
        """Clear the accumulators for ``st`` and add the partial sums left for it."""
        e = st.extent
        self.st = st
        self.acc = self._acc_buffer[:, : e.height, : e.width].zero_()
        self.valid = self._valid_buffer[: e.height, : e.width].zero_()
        for rect, data in self.partials.take(st.index, self.device):
            y0, x0 = rect.y0 - e.y0, rect.x0 - e.x0
            self.acc[:, y0 : y0 + rect.height, x0 : x0 + rect.width].add_(data)

    def add(self, tile: Tile, probs: Tensor | None, valid: np.ndarray) -> None:
        """Add one tile: ``probs`` ``(K, th, tw)`` float32 on the device (``None`` for a skipped,
        all-nodata tile) and its validity ``valid`` ``(h, w)`` bool over ``tile.rect``."""
        assert self.st is not None and self.acc is not None and self.valid is not None
        e, r = self.st.extent, tile.rect
        y0, x0 = r.y0 - e.y0, r.x0 - e.x0
        h, w = r.height, r.width
        self.valid[y0 : y0 + h, x0 : x0 + w] = torch.from_numpy(valid).to(self.device)
        if probs is None:
            return
        weight = self.wy[tile.row][:h, None] * self.wx[tile.col][None, :w]
        self.acc[: self.k, y0 : y0 + h, x0 : x0 + w].addcmul_(probs[:, :h, :w], weight)
        self.acc[self.k, y0 : y0 + h, x0 : x0 + w].add_(weight)

    def finish(self) -> FinishedCore:
        """Finalise the core of the current super-tile and hand the rest of its extent on."""
        assert self.st is not None and self.acc is not None and self.valid is not None
        st, acc = self.st, self.acc
        self._hand_on(st, acc)
        c = st.core
        h, w = c.height, c.width
        sums, wsum = acc[: self.k, :h, :w], acc[self.k, :h, :w]
        valid = self.valid[:h, :w] & (wsum > 0)
        best = sums[0].clone()
        classes = torch.zeros((h, w), dtype=torch.uint8, device=self.device)
        for k in range(1, self.k):
            better = sums[k] > best  # strict: ties keep the lower class, like argmax
            torch.maximum(best, sums[k], out=best)
            classes.masked_fill_(better, k)
        classes.masked_fill_(~valid, NODATA)
        probs = None
        if self.probs_mode is not None:
            denom = wsum.clamp_min(torch.finfo(torch.float32).tiny)
            p = best.div_(denom).unsqueeze(0) if self.probs_mode == "confidence" else sums / denom
            probs = p.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
            probs.masked_fill_(~valid, 0)
        n_valid = int(valid.sum())
        self.st = self.acc = self.valid = None
        return _to_host(c, classes, probs, valid, n_valid)

    def _hand_on(self, st: SuperTile, acc: Tensor) -> None:
        e = st.extent
        for later in self.grid.supertiles[st.index + 1 :]:
            part = later.core.intersect(e)
            if part.empty:
                continue
            y0, x0 = part.y0 - e.y0, part.x0 - e.x0
            data = acc[:, y0 : y0 + part.height, x0 : x0 + part.width]
            self.partials.put(later.index, part, data, spill=later.grow != st.grow)


def _to_host(rect: Rect, classes: Tensor, probs: Tensor | None, valid: Tensor, n_valid: int) -> FinishedCore:
    """Start copying the results to (pinned) host memory; ``ready`` waits for the copies."""
    if classes.device.type == "cpu":
        return FinishedCore(rect, classes, probs, valid, n_valid)
    if classes.device.type != "cuda":  # e.g. mps: plain synchronous copies
        return FinishedCore(rect, classes.cpu(), None if probs is None else probs.cpu(), valid.cpu(), n_valid)

    def host(t: Tensor) -> Tensor:
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        out.copy_(t, non_blocking=True)
        return out

    hc, hv = host(classes), host(valid)
    hp = None if probs is None else host(probs)
    event = torch.cuda.Event()
    event.record()
    return FinishedCore(rect, hc, hp, hv, n_valid, ready=event.synchronize)
