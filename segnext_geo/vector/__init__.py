"""Seam-free, block-wise vectorization of class rasters into georeferenced polygons.

``vectorize_raster(mask, out, VectorOptions(...))`` is the entry point (``segnext-geo vectorize`` on the
command line); see :mod:`segnext_geo.vector.vectorize` for the pipeline. The names are
imported lazily so that worker processes, which only import :mod:`.polygonize`, do not load
the vector-writing stack (pyogrio brings its own GDAL, about 90 MB of memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import VectorOptions

if TYPE_CHECKING:
    from .vectorize import VectorizeResult, vectorize_raster

__all__ = ["VectorOptions", "VectorizeResult", "vectorize_raster"]


def __getattr__(name: str) -> Any:
    if name in ("VectorizeResult", "vectorize_raster"):
        from . import vectorize

        return getattr(vectorize, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
