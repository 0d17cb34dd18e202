"""The stitcher stage alone: fixed-point sums, ties, probabilities, validity on the host."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
import torch

from segnext_geo.inference.blend import axis_profiles
from segnext_geo.inference.device import CpuOps
from segnext_geo.inference.grid import TileGrid
from segnext_geo.inference.stitcher import FIXED_POINT_BITS, PartialStore, Stitcher


def _done(fn: object, *args: object) -> Future[None]:
    f: Future[None] = Future()
    f.set_result(fn(*args))  # type: ignore[operator]
    return f


def test_two_tiles_blend_exactly_and_ties_keep_the_lower_class(tmp_path: Path) -> None:
    grid = TileGrid(64, 96, 64, 32, 4096)  # one row of two tiles overlapping by 32 px
    ops = CpuOps(torch.device("cpu"))
    st = Stitcher(grid, 3, "hann", ops, "classes", PartialStore(tmp_path, _done, ops))
    a = torch.tensor([0.5, 0.5, 0.0])[:, None, None].expand(3, 64, 64).contiguous()  # a tie of classes 0 and 1
    b = torch.tensor([0.1, 0.3, 0.6])[:, None, None].expand(3, 64, 64).contiguous()
    valid = np.ones((64, 64), bool)
    valid[5, 5] = False
    st.start(grid.supertiles[0])
    st.add(grid.tiles[0], a, valid)
    st.add(grid.tiles[1], b, np.ones((64, 64), bool))
    classes, probs, v = st.finish().numpy()
    assert probs is not None
    assert classes[0, 0] == 0 and classes[5, 5] == 255 and not v[5, 5]  # the tie keeps class 0
    assert probs[:, 5, 5].tolist() == [0, 0, 0]
    # the expected weighted mean, in float64 from the same window profiles
    wy = axis_profiles(grid.ys, 64, 32, "hann")
    wx = axis_profiles(grid.xs, 64, 32, "hann")
    unit = 2.0**FIXED_POINT_BITS
    col = 48  # covered by both tiles
    w0 = float(np.float32(wy[0][20] * unit) * wx[0][col])
    w1 = float(np.float32(wy[0][20] * unit) * wx[1][col - 32])
    for k in range(3):
        num = int(float(np.float32(float(a[k, 0, 0]) * np.float32(w0))) + 0.5) + int(
            float(np.float32(float(b[k, 0, 0]) * np.float32(w1))) + 0.5
        )
        want = round(255 * num / (int(w0 + 0.5) + int(w1 + 0.5)))
        assert int(probs[k, 20, col]) == want, (k, probs[k, 20, col], want)
    assert classes[20, 95] == 2  # only tile b: class 2
