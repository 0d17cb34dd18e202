"""Preview pictures: a scene with its polygons (or class raster) in class colours, optionally beside a truth.

The scene is read downsampled with rasterio's ``out_shape`` (which uses overviews when the
file has them), so a preview of a huge scene costs a few MB. Polygons are drawn with
matplotlib in the scene's pixel grid after reprojection to the scene CRS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .models.meta import default_palette
from .raster.source import open_raster

__all__ = ["render_preview"]


def _rgb01(colour: Sequence[int]) -> tuple[float, float, float]:
    """An 8-bit RGB colour as matplotlib's 0-1 floats."""
    return (colour[0] / 255, colour[1] / 255, colour[2] / 255)


def _read_rgb(src: Any, bands: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """(H', W', 3) float in [0, 1]: one 1-99 % stretch for all bands (keeps colours), nodata black."""
    from rasterio.enums import Resampling

    data = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.average, masked=True)
    out = np.zeros((*shape, 3), np.float32)
    valid = data.astype(np.float32).compressed()
    lo, hi = np.percentile(valid, [1, 99]) if valid.size else (0.0, 1.0)
    for i in range(min(3, data.shape[0])):
        band = data[i].astype(np.float32)
        out[..., i] = np.clip((band.filled(lo) - lo) / max(hi - lo, 1e-6), 0, 1)
    if data.shape[0] < 3:
        out[..., data.shape[0] :] = out[..., :1]
    mask = np.ma.getmaskarray(data).all(axis=0)
    out[mask] = 0
    return out


def _read_polygons(path: Path) -> Any:
    """A GeoDataFrame with a ``class_id`` column, or one clear line: missing, empty, not vector, no class_id."""
    import geopandas as gpd
    import pyogrio

    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise UserError(f"{path}: is empty (0 bytes)")
    try:
        gdf = gpd.read_file(path)
    except (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError, pyogrio.errors.FieldError) as e:
        raise UserError(f"{path}: not a vector file GDAL can read ({' '.join(str(e).split())[:120]})") from None
    if len(gdf) and "class_id" not in gdf:
        raise UserError(f"{path}: has no class_id column (write polygons with segnext-geo predict or vectorize)")
    return gdf


def _class_info(path: Path | None) -> tuple[list[str], list[tuple[int, int, int]]]:
    """Class names and colours from a class raster's tags and colour table, if any."""
    names: list[str] = []
    colours = default_palette(256)
    if path is None:
        return names, colours
    with open_raster(path) as src:
        tag = src.tags().get("class_names")
        if tag:
            try:
                names = list(json.loads(tag))
            except json.JSONDecodeError:
                names = []
        try:
            cmap = src.colormap(1)
            colours = [tuple(cmap.get(i, colours[i])[:3]) for i in range(256)]
        except ValueError:
            pass
    return names, colours


def _class_image(path: Path, shape: tuple[int, int], colours: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """RGBA (H', W', 4) of a class raster: nearest-neighbour downsample; nodata and class 0 transparent."""
    from rasterio.enums import Resampling

    with open_raster(path) as src:
        cls = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        nodata = src.nodata
    lut = np.zeros((256, 4), np.float32)
    lut[:, :3] = np.asarray(colours[:256], np.float32) / 255
    lut[:, 3] = 0.55
    lut[0, 3] = 0
    if nodata is not None and 0 <= nodata < 256:
        lut[int(nodata), 3] = 0
    return lut[cls.astype(np.int64).clip(0, 255)]


def render_preview(
    scene: str | Path,
    out: str | Path,
    *,
    polygons: str | Path | None = None,
    mask: str | Path | None = None,
    truth: str | Path | None = None,
    bands: Sequence[int] | None = None,
    max_size: int = 1600,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a PNG of ``scene`` with ``polygons`` (outlined and filled by class) or ``mask``.

    Args:
        scene: the raster that was segmented.
        out: the PNG to write (atomic; refused if it exists unless ``overwrite``).
        polygons: a vector file with ``class_id`` (and ``class_name``) columns.
        mask: a class raster (used when ``polygons`` is not given, and for colours/names).
        truth: a ground-truth class raster shown in a second panel.
        bands: 1-based bands to show as RGB (default 1,2,3 or the first band).
        max_size: the longest side of each panel in pixels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from .outputs import atomic_output

    scene = Path(scene)
    if polygons is None and mask is None:
        raise UserError("preview: give --polygons or --mask")
    for extra in (mask, truth):
        if extra is not None:
            open_raster(extra).close()  # missing, empty or not a raster: one line before any drawing
    gdf = _read_polygons(Path(polygons)) if polygons is not None else None
    with open_raster(scene) as src:
        scale = max(src.height, src.width) / max_size
        shape = (max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
        bands = list(bands or ([1, 2, 3] if src.count >= 3 else [1]))
        rgb = _read_rgb(src, bands, shape)
        transform, crs, (h, w) = src.transform, src.crs, (src.height, src.width)
    names, colours = _class_info(Path(mask) if mask else (Path(truth) if truth else None))
    panels = 2 if truth else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 7 * shape[0] / shape[1] + 0.8), squeeze=False)
    extent = (0, w, h, 0)
    ax = axes[0, 0]
    ax.imshow(rgb, extent=extent, interpolation="bilinear")
    present: set[int] = set()
    if gdf is not None:
        if len(gdf):
            if crs is not None and gdf.crs is not None and gdf.crs != crs:
                gdf = gdf.to_crs(crs)
            inv = ~transform
            gdf = gdf.set_geometry(gdf.geometry.affine_transform([inv.a, inv.b, inv.d, inv.e, inv.xoff, inv.yoff]))
            for cid, part in gdf.groupby("class_id"):
                colour = np.asarray(colours[int(cid) % 256]) / 255
                part.plot(ax=ax, facecolor=(*colour, 0.35), edgecolor=colour, linewidth=0.8)
                present.add(int(cid))
                if not names and "class_name" in part:
                    names = [""] * 256
                if "class_name" in part and len(names) > int(cid):
                    names[int(cid)] = str(part["class_name"].iloc[0])
        ax.set_title(f"{scene.name}: {len(gdf)} polygons")
    else:
        assert mask is not None
        ax.imshow(_class_image(Path(mask), shape, colours), extent=extent, interpolation="nearest")
        ax.set_title(f"{scene.name}: predicted classes")
    if truth:
        ax2 = axes[0, 1]
        ax2.imshow(rgb, extent=extent, interpolation="bilinear")
        ax2.imshow(_class_image(Path(truth), shape, colours), extent=extent, interpolation="nearest")
        ax2.set_title("ground truth")
        with open_raster(truth) as t:
            present |= {int(v) for v in np.unique(t.read(1, out_shape=shape)) if v not in (0, t.nodata)}
    for a in axes[0]:
        a.set_xlim(0, w)
        a.set_ylim(h, 0)
        a.set_axis_off()
    handles = [
        Patch(facecolor=_rgb01(colours[c]), label=names[c] if c < len(names) and names[c] else f"class {c}")
        for c in sorted(present)
    ]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 0.95 if title else 1))
    with atomic_output(out, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return Path(out)
