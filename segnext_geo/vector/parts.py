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

    ``pixels`` counts each polygon's pixels and ``conf_sum`` sums their confidence (0-1), so
    the mean confidence of a polygon merged from several parts is ``sum(conf_sum) / sum(pixels)``.
    ``conf_sum`` is ``None`` when no probabilities were given.
    """

    geoms: NDArray[np.object_]
    class_id: NDArray[np.int32]
    pixels: NDArray[np.int64]
    conf_sum: NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.geoms)

    @classmethod
    def empty(cls, with_conf: bool) -> Parts:
        return cls(
            geoms=np.empty(0, dtype=object),
            class_id=np.empty(0, np.int32),
            pixels=np.empty(0, np.int64),
            conf_sum=np.empty(0, np.float64) if with_conf else None,
        )

    def take(self, idx: NDArray[np.bool_] | NDArray[np.intp]) -> Parts:
        """The parts selected by a boolean mask or an index array."""
        return Parts(
            geoms=self.geoms[idx],
            class_id=self.class_id[idx],
            pixels=self.pixels[idx],
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
            conf_sum=np.concatenate([p.conf_sum for p in items]) if with_conf else None,
        )
