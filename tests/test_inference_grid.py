"""Tile grid, super-tiles and blend windows (pure geometry, no model)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from segnext_geo.inference.blend import axis_profiles, effective_mode, profile
from segnext_geo.inference.grid import TileGrid, axis_starts, round_tile_size
from segnext_geo.inference.options import auto_working_set
from segnext_geo.inference.tta import tta_transforms


@pytest.mark.parametrize(
    ("length", "tile", "overlap"), [(1000, 256, 64), (256, 256, 64), (257, 256, 128), (90, 256, 0)]
)
def test_axis_starts_cover_every_pixel_and_end_at_the_edge(length: int, tile: int, overlap: int) -> None:
    starts = axis_starts(length, tile, overlap)
    covered = np.zeros(length, dtype=int)
    for s in starts:
        covered[s : s + tile] += 1
    assert covered.min() >= 1
    assert starts == sorted(set(starts)) and starts[0] == 0
    if length > tile:
        assert starts[-1] == length - tile  # pulled back, never beyond the scene
        assert all(b - a == tile - overlap for a, b in itertools.pairwise(starts[:-1]))
    else:
        assert starts == [0]


def test_tile_size_rounds_to_a_multiple_of_32() -> None:
    assert [round_tile_size(v) for v in (64, 80, 100, 1000, 1024, 1040)] == [64, 96, 96, 992, 1024, 1056]


@pytest.mark.parametrize(("h", "w", "tile", "overlap", "ws"), [(700, 1300, 128, 32, 300), (90, 500, 256, 64, 256)])
def test_supertile_cores_partition_the_scene(h: int, w: int, tile: int, overlap: int, ws: int) -> None:
    grid = TileGrid(h, w, tile, overlap, ws)
    owner = np.zeros((h, w), dtype=int)
    for st in grid.supertiles:
        c, e = st.core, st.extent
        owner[c.y0 : c.y1, c.x0 : c.x1] += 1
        assert (e.y0, e.x0) == (c.y0, c.x0) and e.y1 >= c.y1 and e.x1 >= c.x1  # extent only reaches right/down
        for t in (grid.tiles[i] for i in st.tiles):
            assert t.supertile == st.index
            assert e.y0 <= t.rect.y0 and t.rect.y1 <= e.y1 and e.x0 <= t.rect.x0 and t.rect.x1 <= e.x1
    assert (owner == 1).all()
    assert [t.index for t in grid.tiles] == list(range(len(grid)))
    # the tiles of each super-tile cover its core, so a finished core never misses a pixel
    for st in grid.supertiles:
        cov = np.zeros((h, w), dtype=bool)
        for t in (grid.tiles[i] for i in st.tiles):
            cov[t.rect.y0 : t.rect.y1, t.rect.x0 : t.rect.x1] = True
        assert cov[st.core.y0 : st.core.y1, st.core.x0 : st.core.x1].all()


def test_working_set_does_not_grow_with_the_scene() -> None:
    mid = TileGrid(8192, 8192, 1024, 256, 2560)
    huge = TileGrid(100_000, 100_000, 1024, 256, 2560)
    assert huge.max_extent == mid.max_extent == (2560, 2560)
    assert len(huge) == 130 * 130  # ceil((100000 - 1024) / 768) + 1 per axis
    assert auto_working_set(16) == 1930 and auto_working_set(2) == 4096
    assert auto_working_set(150) >= 64


@pytest.mark.parametrize("mode", ["hann", "taper"])
def test_windows_are_positive_and_flat_at_scene_borders(mode: str) -> None:
    n, ov = 128, 48
    inner = profile(n, ov, mode, at_start=False, at_end=False)  # type: ignore[arg-type]
    assert inner.min() > 0 and inner[0] < 0.01 and inner[n // 2] > 0.99
    left = profile(n, ov, mode, at_start=True, at_end=False)  # type: ignore[arg-type]
    assert (left[: n // 2] == left[n // 2]).all() and left[-1] < 0.01
    both = profile(n, ov, mode, at_start=True, at_end=True)  # type: ignore[arg-type]
    assert np.ptp(both) == 0
    if mode == "taper":
        assert (inner[ov : n - ov] == 1).all()


def test_hann_becomes_a_taper_for_small_overlaps() -> None:
    assert effective_mode("hann", 1024, 256) == "hann"
    assert effective_mode("hann", 1024, 64) == "taper"
    assert effective_mode("none", 1024, 512) == "none"


def test_centre_crop_gives_every_pixel_to_exactly_one_tile() -> None:
    length, tile, overlap = 1000, 256, 100
    starts = axis_starts(length, tile, overlap)
    total = np.zeros(length)
    for s, w in zip(starts, axis_profiles(starts, tile, overlap, "none"), strict=True):
        assert set(np.unique(w)) <= {0.0, 1.0}
        total[s : s + tile] += w
    assert (total == 1).all()


@pytest.mark.parametrize("mode", ["none", "flip", "d4"])
def test_tta_transforms_invert_exactly(mode: str) -> None:
    import torch

    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    transforms = tta_transforms(mode)  # type: ignore[arg-type]
    assert len(transforms) == {"none": 1, "flip": 3, "d4": 8}[mode]
    seen = set()
    for fwd, inv in transforms:
        y = fwd(x)
        seen.add(y.flatten().numpy().tobytes())
        assert torch.equal(inv(y), x)
    assert len(seen) == len(transforms)  # all transforms differ
