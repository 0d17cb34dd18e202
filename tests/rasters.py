"""Helpers for the raster/inference tests: small GeoTIFF writers and a translation-equivariant model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from torch import Tensor, nn

from segnext_geo.models import ModelMeta

UTM = "EPSG:32632"


def write_tif(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = UTM,
    transform: object = None,
    nodata: float | None = None,
    mask: np.ndarray | None = None,
    overviews: list[int] | None = None,
    **profile: object,
) -> Path:
    """Write ``data`` ``(C, H, W)`` as a GeoTIFF; ``mask`` ``(H, W)`` bool becomes an internal mask."""
    c, h, w = data.shape
    prof: dict[str, object] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": c,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform if transform is not None else from_origin(500_000.0, 6_000_000.0, 0.5, 0.5),
    }
    if nodata is not None:
        prof["nodata"] = nodata
    prof.update(profile)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
        if mask is not None:
            dst.write_mask(mask.astype(np.uint8) * 255)
        if overviews:
            dst.build_overviews(overviews)
    return path


def corrupt_middle_block(path: Path) -> None:
    """Overwrite the compressed bytes of block (1, 1) so that decoding it fails."""
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(bytes(range(256)) * (size // 256) + b"\xff" * (size % 256))


def textured(shape: tuple[int, int, int], dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    """Smooth random texture ``(C, H, W)`` spanning the dtype's useful range."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    coarse = rng.uniform(0, 1, (c, h // 8 + 2, w // 8 + 2))
    yi = np.linspace(0, coarse.shape[1] - 1.001, h).astype(int)
    xi = np.linspace(0, coarse.shape[2] - 1.001, w).astype(int)
    base = coarse[:, yi][:, :, xi] * 0.7 + rng.uniform(0, 0.3, (c, h, w))
    if dtype == "uint8":
        return (base * 250 + 3).astype(np.uint8)
    if dtype == "uint16":
        return (base * 3000 + 200).astype(np.uint16)
    return (base * 0.4 - 0.05).astype(dtype)


class PixelLinear(nn.Module):
    """A per-pixel linear classifier (a 1x1 convolution written as element-wise ops).

    Unlike ``nn.Conv2d``, whose kernels change the summation order with the image size, every
    output value is computed by the same sequence of exactly rounded element-wise operations, so
    the model is exactly translation-equivariant: ``f(crop(x)) == crop(f(x))`` bit for bit.
    ``forward``: ``(N, C, H, W) -> (N, K, H, W)``.
    """

    def __init__(self, in_channels: int, num_classes: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(num_classes, in_channels, generator=g) * 2)
        self.bias = nn.Parameter(torch.randn(num_classes, generator=g) * 0.5)
        self.seen: list[Tensor] = []
        self.record = False

    def forward(self, x: Tensor) -> Tensor:
        if self.record:
            self.seen.append(x.detach().clone())
        k = self.weight.shape[0]
        out = self.bias.view(1, k, 1, 1).expand(x.shape[0], k, *x.shape[2:]).clone()
        for c in range(x.shape[1]):
            out = out + self.weight[:, c].view(1, k, 1, 1) * x[:, c : c + 1]
        return out


def pixel_meta(num_classes: int = 5, bands: tuple[int, ...] = (1, 2, 3)) -> ModelMeta:
    """Metadata for :class:`PixelLinear`: named classes, ImageNet-like statistics."""
    n = len(bands)
    return ModelMeta(
        variant="pixel-linear",
        num_classes=num_classes,
        class_names=[f"c{i}" for i in range(num_classes)],
        mean=(120.0,) * n,
        std=(60.0,) * n,
        bands=bands,
    )
