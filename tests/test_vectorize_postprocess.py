"""Post-processing keeps a coverage: filled holes, minimum area and simplification never make overlaps.

With 8-connectivity a polygon can leave a hole of another polygon through a corner where both
touch diagonally; filling that hole must not cover it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from segnext_geo.vector import VectorOptions, vectorize_raster

UTM_1M = from_origin(500_000.0, 4_000_000.0, 1.0, 1.0)


def write_mask(path: Path, a: np.ndarray) -> Path:
    h, w = a.shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 1, "dtype": "uint8", "nodata": 255}
    with rasterio.open(path, "w", crs="EPSG:32633", transform=UTM_1M, **profile) as dst:
        dst.write(a, 1)
    return path


def polygons(mask: Path, out: Path, **options: object) -> gpd.GeoDataFrame:
    r = vectorize_raster(mask, out, VectorOptions(**options), overwrite=True, progress=False)  # type: ignore[arg-type]
    return gpd.read_file(r.path)


def assert_coverage(df: gpd.GeoDataFrame, simplified: bool) -> None:
    """Valid geometries, no two overlapping (by area); simplified ones form a valid coverage.

    (Unsimplified pixel polygons have no vertex where a neighbour's edge ends (a T-junction), as
    whole-array ``shapes`` gives them, so GEOS's coverage check, which wants matching vertices,
    applies only after simplification, which nodes them.)
    """
    g = np.asarray(df.geometry.values)
    assert shapely.is_valid(g).all()
    for i, j in itertools.combinations(range(len(g)), 2):
        assert shapely.intersection(g[i], g[j]).area == 0, (df.iloc[i].class_id, df.iloc[j].class_id)
    assert shapely.union_all(g).area == pytest.approx(shapely.area(g).sum(), rel=1e-12)
    if simplified:
        assert shapely.coverage_is_valid(g)


ISSUE_8 = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [1, 0, 0, 0, 1, 0],
        [1, 0, 2, 1, 1, 0],
        [1, 1, 1, 2, 0, 0],
        [0, 0, 0, 0, 0, 0],
    ],
    np.uint8,
)


@pytest.mark.parametrize("simplify", [None, "0.4px"])
@pytest.mark.parametrize("block", [2, 3, 64])
def test_a_filled_hole_does_not_cover_a_polygon_that_leaves_it_at_a_corner(
    tmp_path: Path, simplify: str | None, block: int
) -> None:
    """Issue 11 item 8: class 2 (2,2)-(3,3) leaves class 1's hole through the corner (3,3)."""
    mask = write_mask(tmp_path / "m.tif", ISSUE_8)
    df = polygons(
        mask, tmp_path / "o.gpkg", connectivity=8, fill_holes_below=6, simplify=simplify, block_size=block
    ).sort_values("class_id")
    assert df["class_id"].tolist() == [1, 2]
    assert_coverage(df, simplified=simplify is not None)
    if simplify is None:
        # class 1 fills the 4 background pixels of its hole, not class 2's pixel in it
        assert df["area_m2"].tolist() == [13.0 + 4.0, 2.0]
        assert shapely.union_all(df.geometry.values).area == 19.0


def test_a_polygon_entirely_in_a_filled_hole_is_still_absorbed(tmp_path: Path) -> None:
    a = ISSUE_8.copy()
    a[3, 3] = 0  # class 2 is now only (2,2), inside the hole
    mask = write_mask(tmp_path / "m.tif", a)
    df = polygons(mask, tmp_path / "o.gpkg", connectivity=8, fill_holes_below=6)
    assert df["class_id"].tolist() == [1] and df["area_m2"].tolist() == [18.0]


def random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    a = rng.choice(np.array([0, 1, 2, 3], np.uint8), size=(h, w), p=[0.3, 0.45, 0.2, 0.05])
    a[rng.random((h, w)) < 0.03] = 255
    return a


@pytest.mark.parametrize("connectivity", [4, 8])
def test_post_processing_keeps_a_coverage_on_random_masks(tmp_path: Path, connectivity: int) -> None:
    rng = np.random.default_rng(80 + connectivity)
    for k in range(12):
        a = random_mask(rng, 14, 17)
        mask = write_mask(tmp_path / f"m{k}.tif", a)
        selected = int(((a != 0) & (a != 255)).sum())
        for opts in (
            {"fill_holes_below": 4.0},
            {"fill_holes_below": 9.0, "min_area": 2.0},
            {"fill_holes_below": 6.0, "simplify": "0.5px"},
        ):
            df = polygons(mask, tmp_path / "o.gpkg", connectivity=connectivity, block_size=5, **opts)
            assert_coverage(df, simplified="simplify" in opts)
            if "min_area" not in opts:  # filling only adds area
                assert df["area_m2"].sum() >= selected - 1e-9
