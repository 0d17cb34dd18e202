"""A column store of polygons in pixel coordinates, with the class and confidence sums they carry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["Parts"]


@dataclass
class Parts:
    """``n`` polygons in pixel coordinates (col, row of pixel corners).

    ``key`` is each polygon's first pixel in row-major order (:func:`.canonical.first_pixel_keys`),
    the order in which polygons are simplified and written. ``pixels`` counts each polygon's
    pixels and ``conf_sum`` sums their confidence as integers in quanta of the probability
    raster (:attr:`.source.ProbsSource.quantum`), so sums over pieces are exact whatever the
    blocks, and the mean confidence of a merged polygon is ``sum(conf_sum) * quantum /
    sum(pixels)``; -1 marks an unknown confidence (a pixel without one). ``conf_sum`` is
    ``None`` when no probabilities were given.
    """

    geoms: NDArray[np.object_]
    class_id: NDArray[np.int32]
    pixels: NDArray[np.int64]
    key: NDArray[np.int64]
    conf_sum: NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return len(self.geoms)

    @classmethod
    def empty(cls, with_conf: bool) -> Parts:
        return cls(
            geoms=np.empty(0, dtype=object),
            class_id=np.empty(0, np.int32),
            pixels=np.empty(0, np.int64),
            key=np.empty(0, np.int64),
            conf_sum=np.empty(0, np.int64) if with_conf else None,
        )

    def take(self, idx: NDArray[np.bool_] | NDArray[np.intp]) -> Parts:
        """The parts selected by a boolean mask or an index array."""
        return Parts(
            geoms=self.geoms[idx],
            class_id=self.class_id[idx],
            pixels=self.pixels[idx],
            key=self.key[idx],
            conf_sum=None if self.conf_sum is None else self.conf_sum[idx],
        )

    @classmethod
    def concat(cls, items: Sequence[Parts], with_conf: bool) -> Parts:
        """All parts of ``items`` in order (an empty store when there are none)."""
        items = [p for p in items if len(p)]
        if not items:
            return cls.empty(with_conf)
        return cls(
            geoms=np.concatenate([p.geoms for p in items]),
            class_id=np.concatenate([p.class_id for p in items]),
            pixels=np.concatenate([p.pixels for p in items]),
            key=np.concatenate([p.key for p in items]),
            conf_sum=np.concatenate([p.conf_sum for p in items]) if with_conf else None,
        )
