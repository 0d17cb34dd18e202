"""Raster I/O for large scenes: windowed reading with masks and band selection, scene-wide
normalisation, and streamed COG writing."""

from .normalize import Normalization, compute_normalization
from .source import SceneInfo, SceneSource, open_scene, parse_bands
from .writer import RasterSpec, StreamedGeoTIFF, class_colormap

__all__ = [
    "Normalization",
    "RasterSpec",
    "SceneInfo",
    "SceneSource",
    "StreamedGeoTIFF",
    "class_colormap",
    "compute_normalization",
    "open_scene",
    "parse_bands",
]
