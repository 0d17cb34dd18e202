"""The options of vectorization, typed and validated once: :class:`VectorOptions`.

``vectorize``, ``predict`` (vector outputs) and ``batch`` all build one :class:`VectorOptions`
and hand it down unchanged, so every layer sees the same checked values. This module imports
only the standard library and :mod:`segnext_geo.errors`: worker processes and ``predict``
import it without loading shapely, pyogrio or rasterio.

Every error names the command-line flag (``--min-area: ...``), never the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from ..errors import UserError
from ..validate import as_bool, as_int, as_number

__all__ = ["VectorOptions", "parse_tolerance"]

_TOLERANCE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(px|m)?\s*$")


def parse_tolerance(value: str | float | None, option: str = "--simplify") -> tuple[float, str] | None:
    """``"2.5"``/``"2.5m"``/``2.5`` -> ``(2.5, "m")``; ``"1.5px"`` -> ``(1.5, "px")``.

    ``None`` and zero (``0``, ``"0"``, ``"0px"``) mean "off" and give ``None``.

    Raises:
        UserError: not a non-negative number with an optional ``m`` or ``px`` suffix.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise UserError(f"{option}: {value!r} is not a tolerance; give metres like 2.5 or pixels like 1.5px")
    if isinstance(value, int | float):
        number, unit = float(value), "m"
    elif isinstance(value, str):
        m = _TOLERANCE.match(value)
        if not m:
            raise UserError(f"{option}: {value!r} is not a tolerance; give metres like 2.5 or pixels like 1.5px")
        number, unit = float(m.group(1)), m.group(2) or "m"
    else:
        raise UserError(f"{option}: {value!r} is not a tolerance; give metres like 2.5 or pixels like 1.5px")
    if not math.isfinite(number) or number < 0:
        raise UserError(f"{option}: the tolerance must be 0 (off) or positive, got {value!r}")
    if number == 0:
        return None
    return number, unit


@dataclass(frozen=True)
class VectorOptions:
    """How a class raster becomes polygons (every field checked in ``__post_init__``).

    Attributes:
        classes: only these class ids (overrides ``keep_background``); ``None``: every class
            but 0 (and 0 too with ``keep_background``). ``--classes``.
        keep_background: also write class 0. ``--keep-background``.
        min_area: drop polygons smaller than this many m² (after the seam merge); ``None`` or
            0: off. ``--min-area``.
        fill_holes_below: fill holes smaller than this many m² (what lies in them is dropped);
            ``None`` or 0: off. ``--fill-holes-below``.
        simplify: coverage-simplification tolerance, metres (``2.5``, ``"2.5"``, ``"2.5m"``) or
            pixels (``"1.5px"``); ``None`` or 0: off. ``--simplify``.
        connectivity: 4 (pixels sharing an edge) or 8 (also a corner). ``--connectivity``.
        block_size: block side in pixels (memory grows with its square; the output does not
            depend on it). ``--block-size``.
        workers: processes polygonizing blocks (the output does not depend on it). ``--workers``.
        to_wgs84: write EPSG:4326 lon/lat instead of the raster's CRS. ``--to-wgs84``.
        nodata: a value to treat as nodata, overriding the raster's own nodata value (masks
            and alpha bands still apply). ``--nodata``.
        force_classes: vectorize a raster even though it does not look like a class raster (a
            float raster of whole numbers, or more than 1,000 distinct values and no
            ``class_names`` tag). ``--force-classes``.
    """

    classes: tuple[int, ...] | None = None
    keep_background: bool = False
    min_area: float | None = None
    fill_holes_below: float | None = None
    simplify: str | float | None = None
    connectivity: int = 4
    block_size: int = 2048
    workers: int = 1
    to_wgs84: bool = False
    nodata: int | float | None = None
    force_classes: bool = False

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.classes is not None:
            if isinstance(self.classes, str | bytes) or not hasattr(self.classes, "__iter__"):
                raise UserError(f"--classes: {self.classes!r} is not a list of class ids like 1,3")
            ids = tuple(as_int(c, "--classes", "a class id (an integer)") for c in self.classes)
            if not ids:
                raise UserError("--classes: no class ids given")
            put("classes", ids)
        put("keep_background", as_bool(self.keep_background, "--keep-background"))
        for name, flag in (("min_area", "--min-area"), ("fill_holes_below", "--fill-holes-below")):
            v = getattr(self, name)
            if v is None:
                continue
            x = as_number(v, flag, "an area in m²")
            if not math.isfinite(x) or x < 0:
                raise UserError(f"{flag}: must be 0 (off) or a positive area in m², got {v!r}")
            put(name, x)
        parse_tolerance(self.simplify)
        conn = as_int(self.connectivity, "--connectivity", "4 or 8")
        if conn not in (4, 8):
            raise UserError(f"--connectivity: must be 4 or 8, got {self.connectivity!r}")
        put("connectivity", conn)
        block = as_int(self.block_size, "--block-size", "a number of pixels")
        if block < 1:
            raise UserError(f"--block-size: must be a positive number of pixels, got {self.block_size!r}")
        put("block_size", block)
        workers = as_int(self.workers, "--workers", "a number of processes")
        if workers < 1:
            raise UserError(f"--workers: must be at least 1, got {self.workers!r}")
        put("workers", workers)
        put("to_wgs84", as_bool(self.to_wgs84, "--to-wgs84"))
        if self.nodata is not None and not (isinstance(self.nodata, int) and not isinstance(self.nodata, bool)):
            put("nodata", as_number(self.nodata, "--nodata", "a number"))  # ints stay exact (int64 class ids)
        put("force_classes", as_bool(self.force_classes, "--force-classes"))

    @property
    def tolerance(self) -> tuple[float, str] | None:
        """``simplify`` parsed: ``(value, "m" | "px")``, or ``None`` when off."""
        return parse_tolerance(self.simplify)

    @property
    def min_area_m2(self) -> float | None:
        """``min_area`` with 0 as ``None`` (off)."""
        return self.min_area or None

    @property
    def fill_holes_m2(self) -> float | None:
        """``fill_holes_below`` with 0 as ``None`` (off)."""
        return self.fill_holes_below or None
