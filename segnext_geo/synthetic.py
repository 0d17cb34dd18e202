"""Synthetic georeferenced harbour scenes with ground truth, for the demo, tests and benchmarks.

A scene is textured ground with a harbour basin (water), quays and roads, buildings, and
small objects (vehicles on land, boats on water). It sits in a real projected CRS (UTM 32N,
0.5 m pixels) and, like a rotated satellite footprint, has nodata corners. Classes::

    0 background   1 building   2 road   3 water   4 vehicle   5 boat

The imagery is RGB uint8 with nodata 0 (valid pixels are >= 1); the truth raster is uint8 with
nodata 255 where the image is nodata.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DEMO_CLASSES", "DEMO_PALETTE", "SyntheticScene", "synthesize", "write_scene"]

DEMO_CLASSES: tuple[str, ...] = ("background", "building", "road", "water", "vehicle", "boat")
DEMO_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 25, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (60, 180, 75),
)
_BASE_RGB = {
    0: (118, 128, 84),
    1: (172, 96, 82),
    2: (92, 92, 96),
    3: (38, 72, 104),
    4: (220, 220, 210),
    5: (236, 236, 240),
}
CRS = "EPSG:32632"
RESOLUTION = 0.5  # metres per pixel


@dataclass
class SyntheticScene:
    """``image`` (3, H, W) uint8 RGB (0 = nodata), ``truth`` (H, W) uint8 (255 = nodata)."""

    image: np.ndarray
    truth: np.ndarray
    transform: object
    crs: str = CRS


def _noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth value noise in [-1, 1], (h, w) float32, features of about ``scale`` pixels."""
    gh, gw = h // scale + 2, w // scale + 2
    grid = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    ys = np.linspace(0, gh - 1.001, h, dtype=np.float32)
    xs = np.linspace(0, gw - 1.001, w, dtype=np.float32)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    a = grid[y0][:, x0]
    b = grid[y0][:, x0 + 1]
    c = grid[y0 + 1][:, x0]
    d = grid[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def synthesize(size: int | tuple[int, int] = 1024, seed: int = 0, nodata_corners: bool = True) -> SyntheticScene:
    """Make one scene of ``size`` pixels (an int for a square); deterministic for a given seed."""
    from rasterio.transform import from_origin

    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    # harbour basin: water below a wavy shoreline along a random side
    shore = (0.45 + 0.15 * rng.random()) * h + 0.06 * h * _noise(rng, 1, w, max(8, w // 6))[0]
    water = yy > shore[None, :]
    if rng.random() < 0.5:
        water = water[::-1]
    truth[water] = 3
    # roads: a few straight horizontal and vertical strips on land, 6-14 m wide
    for _ in range(rng.integers(2, 5)):
        width = int(rng.integers(12, 28))
        if rng.random() < 0.5:
            y = int(rng.integers(0, h - width))
            truth[y : y + width][~water[y : y + width]] = 2
        else:
            x = int(rng.integers(0, w - width))
            band = truth[:, x : x + width]
            band[~water[:, x : x + width]] = 2
    # buildings: rectangles on background land
    n_build = int(h * w / 9000)
    for _ in range(n_build):
        bh, bw = int(rng.integers(14, 60)), int(rng.integers(14, 60))
        y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        if (truth[y : y + bh, x : x + bw] == 0).all():
            truth[y : y + bh, x : x + bw] = 1
    # vehicles on roads and land, boats on water: small rectangles
    for cls, host, count in ((4, (0, 2), int(h * w / 6000)), (5, (3,), int(h * w / 12000))):
        for _ in range(count):
            oh, ow = (int(rng.integers(4, 7)), int(rng.integers(8, 12)))
            if rng.random() < 0.5:
                oh, ow = ow, oh
            if cls == 5:
                oh, ow = oh * 2, ow * 2
            y, x = int(rng.integers(0, h - oh)), int(rng.integers(0, w - ow))
            if np.isin(truth[y : y + oh, x : x + ow], host).all():
                truth[y : y + oh, x : x + ow] = cls
    # imagery: class colour + textures + illumination
    image = np.zeros((3, h, w), np.float32)
    base = np.array([_BASE_RGB[c] for c in range(6)], np.float32)  # (6, 3)
    for b in range(3):
        image[b] = base[truth, b]
    tex_fine = _noise(rng, h, w, 3)
    tex_coarse = _noise(rng, h, w, 48)
    image += 14 * tex_fine[None] + 10 * tex_coarse[None]
    image += rng.normal(0, 5, (3, h, w)).astype(np.float32)
    img = np.clip(image, 1, 255).astype(np.uint8)
    if nodata_corners:
        # a footprint rotated by ~12 degrees: the corners outside it are nodata
        ang = np.deg2rad(8 + 8 * rng.random())
        cy, cx = (h - 1) / 2, (w - 1) / 2
        u = (xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)
        v = -(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)
        outside = (np.abs(u) > 0.47 * w) | (np.abs(v) > 0.47 * h)
        img[:, outside] = 0
        truth[outside] = 255
    x0 = 500_000.0 + float(rng.integers(0, 100)) * 1000
    y0 = 5_000_000.0 + float(rng.integers(0, 100)) * 1000
    return SyntheticScene(img, truth, from_origin(x0, y0, RESOLUTION, RESOLUTION))


def write_scene(scene: SyntheticScene, image_path: str | Path | None, truth_path: str | Path | None = None) -> None:
    """Write the image (tiled, deflate, nodata 0) and/or the truth (nodata 255, colour table, class names)."""
    import json

    import rasterio

    _, h, w = scene.image.shape
    common = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "crs": scene.crs,
        "transform": scene.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    if image_path is not None:
        _write_image(scene, image_path, common)
    if truth_path is not None:
        with rasterio.open(truth_path, "w", count=1, dtype="uint8", nodata=255, **common) as dst:
            dst.write(scene.truth, 1)
            dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(DEMO_PALETTE)})
            dst.update_tags(class_names=json.dumps(list(DEMO_CLASSES)))


def _write_image(scene: SyntheticScene, path: str | Path, common: dict) -> None:
    import rasterio

    with rasterio.open(path, "w", count=3, dtype="uint8", nodata=0, photometric="RGB", **common) as dst:
        dst.write(scene.image)
