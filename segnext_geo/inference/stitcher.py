"""Blending accumulators with a bounded working set (see :mod:`.grid` for the super-tile plan).

For the super-tile being processed, :class:`Stitcher` holds one int32 tensor of shape
``(K + 1, h, w)`` over the super-tile's extent on the model's device: ``K`` planes of
``sum(weight * probability)`` and one plane of ``sum(weight)``, and, on the host, a bool
validity plane (validity never travels to the device). When the super-tile is done its core is
finalised (class = argmax of the weighted sums, i.e. of the weighted mean; probability = sum /
weight sum) and the parts of the extent beyond the core are handed on as partial sums: kept on
the device for the next super-tile of the same row, and spilled to a scratch folder for
super-tiles of the next row, so nothing grows with the scene's width or height.

**Exact, order-free sums.** Each contribution ``weight * probability`` (float32, computed the
same way whatever the batch or the super-tile) is rounded (half up) to a fixed-point integer in
units of ``2**-27`` and summed in int32. Integer addition is associative, so a pixel's sums -- and hence
its class and probability bytes -- depend only on which tiles cover it, never on the order in
which they arrive: not on ``--working-set`` (super-tile boundaries), the batch size, or how the
scene is cut into horizontal bands. A contribution is at most 1 (``2**27`` units) and a pixel is
covered by at most 3 tiles per axis (9 in all; checked), so the sums stay below ``2**31``. The
rounding step (``2**-28`` at most) is finer than float32's spacing near 0.5 (``2**-25``).

Device work runs on the ops' ``blend`` queue; on CUDA that is a second stream, so the next
batch's forward runs while this batch is blended, and finished cores are copied to the host on a
third stream (the writer thread waits for the copy, never the main loop).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from .blend import BlendMode, axis_profiles
from .device import DeviceOps, HostCopy
from .grid import Rect, SuperTile, Tile, TileGrid

__all__ = ["FIXED_POINT_BITS", "FinishedCore", "FinishedSums", "PartialStore", "ProbsMode", "Stitcher", "max_cover"]

ProbsMode = Literal["classes", "confidence"]
NODATA = 255
#: Fractional bits of the fixed-point accumulators: one unit is ``2**-27``.
FIXED_POINT_BITS = 27
#: Elements of the float scratch used to quantise a tile's contributions (bounds that buffer).
QUANT_CHUNK = 1 << 22


def max_cover(starts: list[int], tile: int) -> int:
    """The largest number of tiles along one axis that cover one pixel."""
    events = sorted([(s, 1) for s in starts] + [(s + tile, -1) for s in starts])
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


@dataclass
class FinishedCore:
    """A finished core on its way to the writer.

    ``copy`` holds ``classes`` ``(h, w)`` uint8 and ``probs`` ``(B, h, w)`` uint8 (or ``None``),
    landing in host memory; ``valid`` ``(h, w)`` bool is already on the host.
    """

    rect: Rect
    copy: HostCopy
    valid: np.ndarray
    valid_pixels: int

    def numpy(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Wait for the device-to-host copies; ``(classes, probs, valid)`` with nodata applied."""
        classes_t, probs_t = self.copy.wait()
        assert classes_t is not None
        classes = classes_t.numpy()
        invalid = ~self.valid
        classes[invalid] = NODATA
        probs = None
        if probs_t is not None:
            probs = probs_t.numpy()
            probs[:, invalid] = 0
        return classes, probs, self.valid


@dataclass
class FinishedSums:
    """A super-tile's finished core as fixed-point sums: ``copy`` holds ``(K + 1, h, w)`` int32
    (``K`` planes of ``sum(weight * probability)`` and the weight sum, units of ``2**-27``) over
    ``supertile.core``, landing in host memory."""

    supertile: SuperTile
    copy: HostCopy

    def numpy(self) -> np.ndarray:
        """Wait for the device-to-host copy; the sums as ``(K + 1, h, w)`` int32."""
        (sums,) = self.copy.wait()
        assert sums is not None
        return sums.numpy()


class PartialStore:
    """Partial sums waiting for a later super-tile.

    ``put(target, rect, data, spill)``: ``data`` ``(K + 1, h, w)`` int32 on the device covering
    ``rect``. With ``spill`` it is copied to the host and written to a scratch folder by ``submit``
    (the writer thread, which waits for the copy) and read back by :meth:`take`; otherwise it
    stays on the device.
    """

    def __init__(self, scratch_parent: Path, submit: Callable[..., Future[None]], ops: DeviceOps) -> None:
        self._parent = scratch_parent
        self._submit = submit
        self._ops = ops
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
            # a copy first (on the blend queue): the accumulator buffer is zeroed for the next super-tile
            # while the device-to-host copy may still be pending
            copy = self._ops.download([data.clone()], "blend")
            self.spilled_bytes += data.numel() * data.element_size()
            self._items.setdefault(target, []).append((rect, (path, self._submit(_save, path, copy))))
        else:
            self._items.setdefault(target, []).append((rect, data.clone()))

    def take(self, target: int) -> list[tuple[Rect, Tensor]]:
        out: list[tuple[Rect, Tensor]] = []
        for rect, item in self._items.pop(target, []):
            if isinstance(item, Tensor):
                out.append((rect, item))
                continue
            path, done = item
            done.result()
            out.append((rect, self._ops.upload_tensor(torch.from_numpy(np.load(path)), "blend")))
            path.unlink()
        return out

    def close(self) -> None:
        """Forget pending partial sums and remove the spill folder (after the writer has stopped)."""
        self._items.clear()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


def _save(path: Path, copy: HostCopy) -> None:
    (data,) = copy.wait()
    assert data is not None
    np.save(path, data.numpy())


class Stitcher:
    """Weighted blending of tile probabilities, one super-tile at a time.

    Args:
        grid: the tile grid.
        num_classes: K.
        blend: ``hann`` | ``taper`` | ``none`` (see :mod:`.blend`).
        ops: the device operations (accumulators live on ``ops.tensor_device``).
        probs_mode: also produce probabilities: ``classes`` (K bands) or ``confidence`` (1 band).
        partials: where partial sums wait for later super-tiles.
        stop: hand partial sums on only to super-tiles before this index (default: all); a
            horizontal band of the scene (:mod:`.bands`) stops at its last super-tile.

    Call :meth:`start` for each super-tile in order, :meth:`add` for each of its tiles in
    order, then :meth:`finish`.
    """

    def __init__(
        self,
        grid: TileGrid,
        num_classes: int,
        blend: BlendMode,
        ops: DeviceOps,
        probs_mode: ProbsMode | None,
        partials: PartialStore,
        stop: int | None = None,
    ) -> None:
        self.grid = grid
        self.stop = len(grid.supertiles) if stop is None else int(stop)
        self.k = int(num_classes)
        self.ops = ops
        self.device = ops.tensor_device
        self.probs_mode = probs_mode
        self.partials = partials
        cover = max_cover(grid.ys, grid.th) * max_cover(grid.xs, grid.tw)
        if cover << FIXED_POINT_BITS >= 2**31:
            raise ValueError(f"{cover} tiles cover one pixel: the fixed-point sums could overflow")
        scale = float(2**FIXED_POINT_BITS)
        with ops.queue("blend"):
            # profiles pre-scaled by 2**27 (exact: a power of two) so that w * p lands in fixed-point units
            self.wy = [
                torch.from_numpy(p * scale).to(self.device)
                for p in axis_profiles(grid.ys, grid.th, grid.overlap, blend)
            ]
            self.wx = [
                torch.from_numpy(p).to(self.device) for p in axis_profiles(grid.xs, grid.tw, grid.overlap, blend)
            ]
            h, w = grid.max_extent
            # one buffer for every super-tile: zeroing it is ~10x cheaper than faulting in fresh pages
            self._acc_buffer = torch.empty((self.k + 1, h, w), dtype=torch.int32, device=self.device)
            # the same for the quantisation scratch of one chunk of classes of one tile
            chunk = min(self.k, max(1, QUANT_CHUNK // (grid.th * grid.tw))) * grid.th * grid.tw
            self._float_scratch = torch.empty(chunk, dtype=torch.float32, device=self.device)
            self._int_scratch = torch.empty(chunk, dtype=torch.int32, device=self.device)
            self._half = torch.tensor(0.5, dtype=torch.float32, device=self.device)
        self._valid_buffer = np.empty((h, w), dtype=bool)
        self.st: SuperTile | None = None
        self.acc: Tensor | None = None
        self.valid: np.ndarray | None = None

    def start(self, st: SuperTile) -> None:
        """Clear the accumulators for ``st`` and add the partial sums left for it."""
        e = st.extent
        self.st = st
        self.valid = self._valid_buffer[: e.height, : e.width]
        self.valid[:] = False
        with self.ops.queue("blend"):
            self.acc = self._acc_buffer[:, : e.height, : e.width].zero_()
            for rect, data in self.partials.take(st.index):
                y0, x0 = rect.y0 - e.y0, rect.x0 - e.x0
                self.acc[:, y0 : y0 + rect.height, x0 : x0 + rect.width].add_(data)

    def add(self, tile: Tile, probs: Tensor | None, valid: np.ndarray) -> None:
        """Add one tile: ``probs`` ``(K, th, tw)`` float32 on the device, produced on the ``compute``
        queue (``None`` for a skipped, all-nodata tile), and its host validity ``valid`` ``(h, w)``
        bool over ``tile.rect``."""
        assert self.st is not None and self.acc is not None and self.valid is not None
        e, r = self.st.extent, tile.rect
        y0, x0 = r.y0 - e.y0, r.x0 - e.x0
        h, w = r.height, r.width
        self.valid[y0 : y0 + h, x0 : x0 + w] = valid
        if probs is None:
            return
        self.ops.hand_over(probs, "compute", "blend")
        with self.ops.queue("blend"):
            weight = self.wy[tile.row][:h, None] * self.wx[tile.col][None, :w]  # (h, w) in 2**-27 units
            region = self.acc[:, y0 : y0 + h, x0 : x0 + w]
            step = max(1, self._float_scratch.numel() // (h * w))
            for k0 in range(0, self.k, step):
                k1 = min(self.k, k0 + step)
                f = self._float_scratch[: (k1 - k0) * h * w].view(k1 - k0, h, w)
                q = self._int_scratch[: (k1 - k0) * h * w].view(k1 - k0, h, w)
                torch.addcmul(self._half, probs[k0:k1, :h, :w], weight, out=f)  # p * w + 0.5
                q.copy_(f)  # truncation of a non-negative p * w + 0.5: round half up, below 2**31
                region[k0:k1].add_(q)
            region[self.k].add_(weight.add_(0.5).to(torch.int32))  # the weight sum, rounded the same way

    def finish(self) -> FinishedCore:
        """Finalise the core of the current super-tile and hand the rest of its extent on."""
        assert self.st is not None and self.acc is not None and self.valid is not None
        st, acc = self.st, self.acc
        c = st.core
        h, w = c.height, c.width
        valid = self.valid[:h, :w].copy()
        with self.ops.queue("blend"):
            self._hand_on(st, acc)
            sums, wsum = acc[: self.k, :h, :w], acc[self.k, :h, :w]
            best, index = torch.max(sums, dim=0)  # on ties the lowest class (the first maximum)
            classes = index.to(torch.uint8).masked_fill_(wsum <= 0, NODATA)
            del index
            probs = self._probabilities(sums, wsum, best) if self.probs_mode is not None else None
            copy = self.ops.download([classes, probs], "blend")
        self.st = self.acc = self.valid = None
        return FinishedCore(c, copy, valid, int(valid.sum()))

    def finish_sums(self) -> FinishedSums:
        """Like :meth:`finish`, but hand the core's final int32 sums ``(K + 1, h, w)`` on as they are
        (for ``--gsd``: they are mapped back to the scene's grid before the argmax)."""
        assert self.st is not None and self.acc is not None and self.valid is not None
        st, acc = self.st, self.acc
        c = st.core
        with self.ops.queue("blend"):
            self._hand_on(st, acc)
            # a copy first: the accumulator buffer is zeroed for the next super-tile
            copy = self.ops.download([acc[:, : c.height, : c.width].clone()], "blend")
        self.st = self.acc = self.valid = None
        return FinishedSums(st, copy)

    def _probabilities(self, sums: Tensor, wsum: Tensor, best: Tensor) -> Tensor:
        """uint8 ``round(255 * sum / wsum)``: ``(K, h, w)`` (``classes``) or ``(1, h, w)`` (``confidence``)."""
        denom = wsum.clamp_min(1).double()
        if self.probs_mode == "confidence":
            return _to_byte(best.double().div_(denom))[None]
        out = torch.empty(sums.shape, dtype=torch.uint8, device=self.device)
        step = max(1, QUANT_CHUNK // max(1, sums.shape[1] * sums.shape[2]))
        for k0 in range(0, self.k, step):
            k1 = min(self.k, k0 + step)
            out[k0:k1] = _to_byte(sums[k0:k1].double().div_(denom))
        return out

    def _hand_on(self, st: SuperTile, acc: Tensor) -> None:
        e = st.extent
        for later in self.grid.supertiles[st.index + 1 : self.stop]:
            part = later.core.intersect(e)
            if part.empty:
                continue
            y0, x0 = part.y0 - e.y0, part.x0 - e.x0
            data = acc[:, y0 : y0 + part.height, x0 : x0 + part.width]
            self.partials.put(later.index, part, data, spill=later.grow != st.grow)


def _to_byte(p: Tensor) -> Tensor:
    """Probabilities in [0, 1] (float64) -> uint8 ``round(p * 255)``."""
    return p.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
