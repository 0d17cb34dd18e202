"""Streamed GeoTIFF writing: windowed writes into a tiled scratch file, then a COG with overviews.

GDAL's COG driver cannot take random windowed writes, so :class:`StreamedGeoTIFF` writes
windows into a tiled, lightly compressed scratch GTiff next to the target, and
:meth:`StreamedGeoTIFF.finish` copies it with the COG driver (DEFLATE, 512-px blocks, overviews
after the full-resolution IFD as the COG layout wants) to the path it was given. Memory stays
bounded by GDAL's block cache, whatever the raster size.

Every GDAL call on these files runs under settings this module sets itself
(:data:`SCRATCH_GDAL_OPTIONS`), whatever the user's environment says: masks are internal
(``GDAL_TIFF_INTERNAL_MASK``, so no ``.msk`` sidecar), no ``.aux.xml`` sidecar (PAM off), and
rasterio's error handler is installed in the calling thread (writes happen on a writer thread),
so GDAL and libtiff messages become exceptions and log records instead of raw stderr lines.
"""

from __future__ import annotations

import ctypes
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.windows import Window

__all__ = ["BLOCK_SIZE", "SCRATCH_GDAL_OPTIONS", "RasterSpec", "StreamedGeoTIFF", "class_colormap", "json_tag"]

BLOCK_SIZE = 512
#: GDAL configuration for the scratch and output files, overriding the environment.
SCRATCH_GDAL_OPTIONS: dict[str, object] = {"GDAL_TIFF_INTERNAL_MASK": True, "GDAL_PAM_ENABLED": False}


def gdal_env() -> rasterio.Env:
    """A rasterio environment with :data:`SCRATCH_GDAL_OPTIONS` for the calling thread."""
    return rasterio.Env(**SCRATCH_GDAL_OPTIONS)


@functools.cache
def quiet_libtiff() -> bool:
    """Stop libtiff's own default handlers from printing to stderr (process-wide, once).

    GDAL gives libtiff a per-file error handler that turns its messages into GDAL errors (and
    rasterio into exceptions and log records), but some failures, such as a full disk while a
    block is flushed, reach libtiff's global default handler, which prints a raw line
    (``_tiffWriteProc: No space left on device.``) before the tool's own error. The failure itself
    still propagates through GDAL's return codes. Returns whether the loaded libtiff was found.
    """
    found = False
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libtiff" in line and "/" in line}
    except OSError:
        paths = set()
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
            lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
            lib.TIFFSetWarningHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler(None)
            lib.TIFFSetWarningHandler(None)
            found = True
        except (OSError, AttributeError):
            continue
    return found


def class_colormap(palette: Sequence[Sequence[int]], nodata: int = 255) -> dict[int, tuple[int, int, int, int]]:
    """GDAL colour table ``{value: (r, g, b, a)}`` for classes ``0..K-1``; ``nodata`` transparent."""
    cmap = {i: (int(c[0]), int(c[1]), int(c[2]), 255) for i, c in enumerate(palette) if i < 255}
    cmap[nodata] = (0, 0, 0, 0)
    return cmap


@dataclass
class RasterSpec:
    """Grid and metadata of an output raster.

    ``count`` uint8 bands of ``height`` x ``width`` pixels on the scene's ``crs`` and
    ``transform`` (or ``gcps``). ``nodata`` is a value (class rasters) or ``None``; with
    ``mask=True`` validity goes into an internal per-dataset mask instead (probabilities, where
    every byte value is meaningful).
    """

    width: int
    height: int
    count: int
    crs: CRS | None
    transform: Affine
    gcps: tuple[GroundControlPoint, ...] = ()
    gcp_crs: CRS | None = None
    nodata: int | None = 255
    mask: bool = False
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    descriptions: Sequence[str] = ()
    overview_resampling: str = "NEAREST"


class StreamedGeoTIFF:
    """A uint8 raster written window by window, finished as a Cloud Optimized GeoTIFF.

    Usage: ``w = StreamedGeoTIFF(final_tmp, scratch, spec)``; ``w.write(array, window)`` any
    number of times (from one thread at a time); ``w.finish()`` builds ``final_tmp``; the caller
    renames it into place. :meth:`close` (also on error) removes the scratch file.
    """

    def __init__(self, path: Path, scratch: Path, spec: RasterSpec) -> None:
        quiet_libtiff()
        self.path = Path(path)
        self.scratch = Path(scratch)
        self.spec = spec
        profile: dict[str, object] = {
            "driver": "GTiff",
            "width": spec.width,
            "height": spec.height,
            "count": spec.count,
            "dtype": "uint8",
            "tiled": True,
            "blockxsize": BLOCK_SIZE,
            "blockysize": BLOCK_SIZE,
            "compress": "zstd",
            "zstd_level": 1,
            "bigtiff": "if_safer",
            "interleave": "pixel" if spec.count > 1 else "band",
        }
        if spec.gcps:
            profile["gcps"] = list(spec.gcps)
            profile["crs"] = spec.gcp_crs
        else:
            profile["crs"] = spec.crs
            profile["transform"] = spec.transform
        if spec.nodata is not None:
            profile["nodata"] = spec.nodata
        with gdal_env():
            self._ds = rasterio.open(self.scratch, "w", **profile)
            if spec.colormap:
                self._ds.write_colormap(1, dict(spec.colormap))
            if spec.tags:
                self._ds.update_tags(**dict(spec.tags))
            for i, d in enumerate(spec.descriptions[: spec.count], start=1):
                self._ds.set_band_description(i, d)

    def write(self, data: np.ndarray, window: Window, valid: np.ndarray | None = None) -> None:
        """Write ``data`` ``(count, h, w)`` uint8 at ``window``; ``valid`` ``(h, w)`` bool feeds the mask."""
        with gdal_env():
            self._ds.write(data, window=window)
            if self.spec.mask:
                m = np.full(data.shape[1:], 255, np.uint8) if valid is None else (valid.astype(np.uint8) * 255)
                self._ds.write_mask(m, window=window)

    def finish(self) -> Path:
        """Close the scratch file and write the COG to ``path``."""
        with gdal_env():
            self._ds.close()
            rasterio.shutil.copy(
                self.scratch,
                self.path,
                driver="COG",
                COMPRESS="DEFLATE",
                BLOCKSIZE=BLOCK_SIZE,
                OVERVIEW_RESAMPLING=self.spec.overview_resampling,
                BIGTIFF="IF_SAFER",
            )
        self.scratch.unlink(missing_ok=True)
        return self.path

    def close(self) -> None:
        """Release the scratch file (idempotent; safe after :meth:`finish`)."""
        with gdal_env():
            if not self._ds.closed:
                self._ds.close()
        self.scratch.unlink(missing_ok=True)


def json_tag(value: object) -> str:
    """Compact, key-sorted JSON for a GeoTIFF metadata tag (deterministic bytes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
