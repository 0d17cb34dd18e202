"""Block-wise vectorization equals whole-array ``rasterio.features.shapes``, for 4- and 8-connectivity.

Every mask is polygonized with tiny blocks (so classes cross many seams) and compared, per
class, with ``shapes`` on the whole array: the same number of polygons, each matched one to
one with a symmetric difference of area exactly 0 (coordinates are exact: pixel corners go
through the same affine formula). The output must also be valid, free of overlaps, and its
union must be exactly the selected pixels (checked against unit squares, independently of GDAL).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from rasterio.features import shapes
from rasterio.transform import from_origin

from segnext_geo.vector import VectorOptions, vectorize_raster
from segnext_geo.vector.polygonize import shapes_to_polygons

TRANSFORM = from_origin(500_000.5, 4_000_000.25, 0.3, 0.3)  # not a power of two: exactness is not luck


def write_mask(path: Path, a: np.ndarray, transform: Affine = TRANSFORM, crs: str | None = "EPSG:32633") -> Path:
    """Write ``a`` (H, W) uint8 as a tiled GeoTIFF with nodata 255."""
    h, w = a.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "uint8", "nodata": 255}
    profile.update(crs=crs, transform=transform, tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(a, 1)
    return path


def whole_array(a: np.ndarray, valid: np.ndarray, connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: ``shapes`` on the whole array (self-touching 8-connected rings made valid)."""
    geoms, values, _ = shapes_to_polygons(shapes(a, mask=valid, connectivity=connectivity, transform=TRANSFORM))
    bad = ~shapely.is_valid(geoms)
    geoms[bad] = shapely.make_valid(geoms[bad], method="structure", keep_collapsed=False)
    return geoms, values


def pixel_union(valid: np.ndarray) -> shapely.Geometry:
    """The selected pixels as unit squares in CRS coordinates (independent of GDAL)."""
    rows, cols = np.nonzero(valid)
    t = TRANSFORM
    boxes = shapely.box(t.c + cols * t.a, t.f + (rows + 1) * t.e, t.c + (cols + 1) * t.a, t.f + rows * t.e)
    return shapely.union_all(boxes)


def check_exact(a: np.ndarray, valid: np.ndarray, connectivity: int, out: Path) -> int:
    """Assert the written layer equals whole-array ``shapes``; return the polygon count."""
    df = gpd.read_file(out)
    mine, mine_cls = np.asarray(df.geometry.values), df["class_id"].to_numpy()
    assert shapely.is_valid(mine).all()
    ref, ref_cls = whole_array(a, valid, connectivity)
    assert sorted(np.unique(mine_cls).tolist()) == sorted(np.unique(ref_cls).tolist())
    for c in np.unique(ref_cls):
        m, r = mine[mine_cls == c], ref[ref_cls == c]
        assert len(m) == len(r), f"class {c}: {len(m)} polygons, whole array has {len(r)}"
        # pair each polygon with the reference polygon holding one of its interior points
        pi, ri = shapely.STRtree(r).query(shapely.point_on_surface(m), predicate="within")
        assert len(pi) == len(m) and len(np.unique(ri)) == len(r)
        assert (shapely.area(shapely.symmetric_difference(m[pi], r[ri])) == 0).all()
    # no overlaps (areas add up to the union) and the union is exactly the selected pixels
    union = shapely.union_all(mine)
    assert shapely.area(mine).sum() == pytest.approx(union.area, rel=1e-12)
    assert union.symmetric_difference(pixel_union(valid)).area == 0
    return len(mine)


def run(tmp_path: Path, a: np.ndarray, connectivity: int, block: int, **kw: Any) -> tuple[Path, np.ndarray]:
    mask = write_mask(tmp_path / "mask.tif", a)
    out = tmp_path / f"out_{connectivity}_{block}.gpkg"
    opts = VectorOptions(connectivity=connectivity, block_size=block, **kw)
    vectorize_raster(mask, out, opts, progress=False, overwrite=True)
    valid = (a != 255) & ((a != 0) | opts.keep_background)
    return out, valid


# -- masks --------------------------------------------------------------------------------------------
def blocky(rng: np.random.Generator, h: int, w: int, k: int, cell: int, speckle: float) -> np.ndarray:
    small = rng.integers(0, k, (h // cell + 1, w // cell + 1)).astype(np.uint8)
    a = np.kron(small, np.ones((cell, cell), np.uint8))[:h, :w].copy()
    noise = rng.random((h, w)) < speckle
    a[noise] = rng.integers(0, k, int(noise.sum()))
    a[rng.random((h, w)) < 0.04] = 255
    return a


def snake(h: int, w: int) -> np.ndarray:
    """A 1-px class-1 serpentine crossing every block edge many times, on class 2."""
    a = np.full((h, w), 2, np.uint8)
    for r in range(1, h - 1, 4):
        a[r, 1 : w - 1] = 1
        side = w - 2 if (r // 4) % 2 == 0 else 1
        a[r : min(r + 5, h - 1), side] = 1
    return a


def rings(h: int, w: int, cy: int, cx: int) -> np.ndarray:
    """Concentric square rings of classes 1, 2, 3 around (cy, cx): holes that touch block edges."""
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.maximum(abs(yy - cy), abs(xx - cx))
    return (1 + (d // 2) % 3).astype(np.uint8)


def diagonals(h: int, w: int) -> np.ndarray:
    """Single pixels joined only at corners (staircases, checkerboards) across seams, plus isolated pixels."""
    a = np.zeros((h, w), np.uint8)
    n = min(h, w)
    idx = np.arange(n)
    a[idx, idx] = 1  # main diagonal: one polygon with 8-connectivity, n with 4
    a[idx, n - 1 - idx] = 2  # anti-diagonal, crossing the first one
    a[n // 2, n // 2] = 3
    a[0:4, w - 4 : w] = np.array([[1, 2, 1, 2], [2, 1, 2, 1], [1, 2, 1, 2], [2, 1, 2, 1]])  # checkerboard
    a[h - 1, 0] = 3  # one-pixel features in the corners
    a[0, 0] = 3
    return a


def corner_checkers(h: int, w: int, block: int) -> np.ndarray:
    """A 2x2 checkerboard centred on every 4-block corner, and a C-ring whose gap closes across a seam."""
    a = np.zeros((h, w), np.uint8)
    for r in range(block, h, block):
        for c in range(block, w, block):
            a[r - 1, c - 1] = a[r, c] = 1
            a[r - 1, c] = a[r, c - 1] = 2
    # a ring of class 3 around a class-4 pixel, closed only at a corner that sits on a block corner
    r, c = block, 2 * block
    a[r - 2 : r + 1, c - 2 : c + 1] = 3
    a[r - 1, c - 1] = 4
    a[r, c] = 3
    a[r, c - 1] = 0
    return a


# -- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("connectivity", [4, 8])
def test_random_blocky_masks_match_whole_array(tmp_path: Path, connectivity: int) -> None:
    rng = np.random.default_rng(connectivity)
    total = 0
    for h, w, block, cell in [(61, 47, 7, 3), (40, 64, 8, 2), (33, 29, 5, 4), (50, 50, 13, 1)]:
        a = blocky(rng, h, w, k=4, cell=cell, speckle=0.15)
        out, valid = run(tmp_path, a, connectivity, block)
        total += check_exact(a, valid, connectivity, out)
    assert total > 200  # the masks are not trivial


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("name", ["snake", "rings", "diagonals", "corner_checkers"])
def test_structures_across_seams_match_whole_array(tmp_path: Path, connectivity: int, name: str) -> None:
    block = 6
    a = {
        "snake": lambda: snake(45, 37),
        "rings": lambda: rings(41, 43, 18, 17),
        "diagonals": lambda: diagonals(37, 40),
        "corner_checkers": lambda: corner_checkers(31, 38, block),
    }[name]()
    out, valid = run(tmp_path, a, connectivity, block)
    n = check_exact(a, valid, connectivity, out)
    df = gpd.read_file(out)
    if name == "snake":  # one serpentine polygon, whatever the blocks
        assert (df["class_id"] == 1).sum() == 1
    if name == "diagonals":  # a diagonal line is one polygon only with 8-connectivity
        assert ((df["class_id"] == 1).sum() < 10) == (connectivity == 8)
    assert n > 0


@pytest.mark.parametrize("connectivity", [4, 8])
def test_every_block_size_gives_the_same_polygons(tmp_path: Path, connectivity: int) -> None:
    rng = np.random.default_rng(7)
    a = blocky(rng, 23, 19, k=3, cell=2, speckle=0.3)
    counts = set()
    for block in (1, 2, 3, 4, 19, 64):
        out, valid = run(tmp_path, a, connectivity, block, keep_background=True)
        counts.add(check_exact(a, valid, connectivity, out))
    assert len(counts) == 1


def test_classes_and_background_selection(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a = blocky(rng, 30, 30, k=4, cell=3, speckle=0.1)
    out, _ = run(tmp_path, a, 4, 7, classes=[0, 2])
    check_exact(a, (a == 0) | (a == 2), 4, out)
    out, valid = run(tmp_path, a, 4, 7, keep_background=True)
    check_exact(a, valid, 4, out)
    assert 0 in set(gpd.read_file(out)["class_id"])


def test_workers_give_the_same_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    a = blocky(rng, 64, 56, k=4, cell=3, speckle=0.1)
    mask = write_mask(tmp_path / "mask.tif", a)
    for conn, post in ((4, {}), (8, {"fill_holes_below": 0.5, "min_area": 0.1})):
        opts = VectorOptions(block_size=9, connectivity=conn, **post)
        one = gpd.read_file(vectorize_raster(mask, tmp_path / f"one{conn}.gpkg", opts, progress=False).path)
        two_opts = dataclasses.replace(opts, workers=2)
        two = gpd.read_file(vectorize_raster(mask, tmp_path / f"two{conn}.gpkg", two_opts, progress=False).path)
        # same features in the same order, bit for bit
        assert one.geometry.to_wkb().tolist() == two.geometry.to_wkb().tolist()
        assert one.drop(columns="geometry").equals(two.drop(columns="geometry"))
        if not post:
            check_exact(a, (a != 255) & (a != 0), conn, tmp_path / "two4.gpkg")
