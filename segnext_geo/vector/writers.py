"""Incremental, atomic writing of polygon features with pyogrio; the format follows the extension.

Features are appended in batches, as they are finished, to a scratch GeoPackage beside the
target (GeoPackage appends are cheap), with each polygon's first pixel as a ``_key`` column.
At the end ``_key`` is indexed and the features are streamed into the target in that order
(SQLite walks the index: no sort of the rows, flat memory) with pyogrio's Arrow interface
(no pyarrow needed); GeoParquet goes through geopandas and needs ``pyarrow``. So the file's
feature order, and with a fixed date its bytes, do not depend on block size or workers: the
GeoPackage ``last_change`` and the Shapefile DBF date are the ``timestamp`` given
(``vectorize`` passes the mask's modification time, or ``SOURCE_DATE_EPOCH``). The caller
renames the temporary output into place (:func:`segnext_geo.outputs.atomic_output`), so an
interrupted run leaves nothing at the target.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw

from ..errors import UserError
from .attributes import FeatureBatch

__all__ = ["DRIVERS", "FeatureWriter", "output_driver", "shapefile_companions"]

#: output extension -> OGR driver (``Parquet`` is written with geopandas + pyarrow)
DRIVERS: Mapping[str, str] = {
    ".gpkg": "GPKG",
    ".parquet": "Parquet",
    ".geoparquet": "Parquet",
    ".fgb": "FlatGeobuf",
    ".geojson": "GeoJSON",
    ".shp": "ESRI Shapefile",
}

#: Shapefile field names are limited to 10 characters
_SHAPEFILE_FIELDS = {"perimeter_m": "perim_m", "mean_confidence": "mean_conf"}

#: the scratch file's sort column: each polygon's first pixel (row-major)
_KEY = "_key"

_SHAPEFILE_SUFFIXES = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qmd")


@contextmanager
def _gdal_options(**options: str | None) -> Iterator[None]:
    """Set GDAL config options (pyogrio's GDAL) for the block, then restore them."""
    old = {k: pyogrio.get_gdal_config_option(k) for k in options}
    pyogrio.set_gdal_config_options(options)
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options(old)


@contextmanager
def _sqlite_unsynced() -> Iterator[None]:
    """Let SQLite skip fsync on each write (the files are temporary; the output is synced once at the end).

    Without this every append to a GeoPackage costs ~0.1 s of fsync, whatever its size.
    """
    with _gdal_options(OGR_SQLITE_SYNCHRONOUS="OFF"):
        yield


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def output_driver(path: str | Path, option: str = "--out") -> str:
    """The OGR driver for ``path``'s extension.

    Raises:
        UserError: an unknown extension, or ``.parquet`` without pyarrow installed.
    """
    suffix = Path(path).suffix.lower()
    driver = DRIVERS.get(suffix)
    if driver is None:
        known = ", ".join(DRIVERS)
        raise UserError(f"{option}: {path}: unknown output extension {suffix or '(none)'!r}; use one of {known}")
    if driver == "Parquet" and importlib.util.find_spec("pyarrow") is None:
        raise UserError(f"{option}: {path}: GeoParquet output needs pyarrow (pip install pyarrow); or use .gpkg")
    return driver


def shapefile_companions(path: Path) -> list[Path]:
    """Every sidecar file a Shapefile ``path`` may have (``.shx``, ``.dbf``, ...), ``.shp`` excluded."""
    return [path.with_suffix(s) for s in _SHAPEFILE_SUFFIXES[1:]]


class FeatureWriter:
    """Appends :class:`FeatureBatch` es to one layer and finishes it in the target format.

    Args:
        tmp: the temporary output path (same extension as the target).
        driver: from :func:`output_driver`.
        layer: layer name.
        crs_wkt: the features' CRS, or ``None``.
        geometry_type: ``"Polygon"`` or ``"MultiPolygon"``.
        class_names: ``{class_id: name}``; other ids are written as ``class_<id>``.
        source: the ``source`` column value.
        with_confidence: write a ``mean_confidence`` column.
        layer_metadata: key/value metadata for the layer (GeoPackage only).
        timestamp: the date the file records (GeoPackage ``last_change``, Shapefile DBF
            date); ``None``: now.
        flush_every: buffered features that trigger an append.
    """

    def __init__(
        self,
        tmp: Path,
        *,
        driver: str,
        layer: str,
        crs_wkt: str | None,
        geometry_type: str,
        class_names: Mapping[int, str],
        source: str,
        with_confidence: bool,
        layer_metadata: Mapping[str, str] | None = None,
        timestamp: datetime | None = None,
        flush_every: int = 25_000,
    ) -> None:
        self.tmp = Path(tmp)
        self.driver = driver
        self.layer = layer
        self.crs_wkt = crs_wkt
        self.geometry_type = geometry_type
        self.class_names = dict(class_names)
        self.source = source
        self.with_confidence = with_confidence
        self.layer_metadata = dict(layer_metadata or {})
        self.timestamp = timestamp
        self.flush_every = flush_every
        self.count = 0
        self.per_class: dict[int, int] = {}
        self._buffer: list[FeatureBatch] = []
        self._buffered = 0
        self._created = False
        self.scratch = self.tmp.with_name(self.tmp.name.removesuffix(self.tmp.suffix) + ".scratch.gpkg")
        rename = _SHAPEFILE_FIELDS if driver == "ESRI Shapefile" else {}
        self.field_names = [
            rename.get(n, n)
            for n in ("class_id", "class_name", "area_m2", "perimeter_m", "mean_confidence", "source")
            if with_confidence or n != "mean_confidence"
        ]
        self.renamed = {k: v for k, v in rename.items() if with_confidence or k != "mean_confidence"}

    # -- appending ---------------------------------------------------------------------------
    def write(self, batch: FeatureBatch | None) -> None:
        """Queue ``batch`` (``None`` or empty is fine); appends once enough features are queued."""
        if batch is None or len(batch) == 0:
            return
        if batch.key is None:
            raise ValueError("FeatureWriter.write: the batch has no key (each polygon's first pixel)")
        self._buffer.append(batch)
        self._buffered += len(batch)
        self.count += len(batch)
        ids, counts = np.unique(batch.class_id, return_counts=True)
        for c, n in zip(ids.tolist(), counts.tolist(), strict=True):
            self.per_class[c] = self.per_class.get(c, 0) + n
        if self._buffered >= self.flush_every:
            self.flush()

    def _name(self, c: int) -> str:
        return self.class_names.get(c, f"class_{c}")

    def _columns(self, batch: FeatureBatch) -> list[np.ndarray]:
        lut = {c: self._name(c) for c in np.unique(batch.class_id).tolist()}
        names = np.array([lut[c] for c in batch.class_id.tolist()], dtype=object)
        cols: list[np.ndarray] = [batch.class_id, names, batch.area_m2, batch.perimeter_m]
        if self.with_confidence:
            assert batch.mean_confidence is not None
            cols.append(batch.mean_confidence)
        cols.append(np.full(len(batch), self.source, dtype=object))
        assert batch.key is not None
        cols.append(batch.key)
        return cols

    def flush(self) -> None:
        """Append the queued features to the scratch GeoPackage (creating the layer if needed)."""
        if self._buffer:
            batch = FeatureBatch.concat(self._buffer)
        elif not self._created:  # an empty layer, with its fields
            empty = np.empty(0)
            batch = FeatureBatch(
                np.empty(0, dtype=object), np.empty(0, np.int32), empty, empty, empty, np.empty(0, np.int64)
            )
        else:
            return
        self._buffer, self._buffered = [], 0
        try:
            with _sqlite_unsynced(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)  # no CRS: said already
                pyogrio.raw.write(
                    self.scratch,
                    batch.wkb,
                    self._columns(batch),
                    [*self.field_names, _KEY],
                    layer=self.layer,
                    driver="GPKG",
                    geometry_type=self.geometry_type,
                    crs=self.crs_wkt,
                    append=self._created,
                    SPATIAL_INDEX="NO",  # the scratch file is only read back in order
                )
        except OSError as e:
            if getattr(e, "errno", None) == 28:
                raise UserError(f"--out: {self.tmp.parent}: no space left on the device") from None
            raise
        self._created = True

    # -- finishing ---------------------------------------------------------------------------
    def _ordered_sql(self) -> str:
        info = pyogrio.read_info(self.scratch, layer=self.layer)
        geom = info.get("geometry_name") or "geom"
        cols = ", ".join(f'"{c}"' for c in [geom, *self.field_names])
        return f'SELECT {cols} FROM "{self.layer}" ORDER BY "{_KEY}"'

    def _date_options(self) -> dict[str, str | None]:
        if self.timestamp is None:
            return {"OGR_CURRENT_DATE": None}
        return {"OGR_CURRENT_DATE": self.timestamp.strftime("%Y-%m-%dT%H:%M:%S.000Z")}

    def _index_key(self) -> None:
        """Index the scratch table on ``_key`` (SQLite then reads it in order without sorting the rows)."""
        import sqlite3

        with closing(sqlite3.connect(self.scratch)) as db:
            db.execute(f'CREATE INDEX "{self.layer}_key" ON "{self.layer}" ("{_KEY}")')
            db.commit()

    def finish(self) -> Path:
        """Write everything queued and produce the temporary output, in key order, in the target format."""
        self.flush()
        self._index_key()
        sql = self._ordered_sql()
        if self.driver == "Parquet":
            import geopandas

            gdf = geopandas.read_file(self.scratch, sql=sql, engine="pyogrio")
            gdf.to_parquet(self.tmp, index=False)
        else:
            options: dict[str, object] = {}
            if self.driver == "GPKG" and self.layer_metadata:
                options["layer_metadata"] = self.layer_metadata
            if self.driver == "ESRI Shapefile" and self.timestamp is not None:
                options["layer_options"] = {"DBF_DATE_LAST_UPDATE": self.timestamp.strftime("%Y-%m-%d")}
            with (
                _sqlite_unsynced(),
                _gdal_options(**self._date_options()),
                warnings.catch_warnings(),
                pyogrio.open_arrow(self.scratch, sql=sql, use_pyarrow=False, batch_size=8192) as (meta, reader),
            ):
                warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
                pyogrio.raw.write_arrow(
                    reader,
                    self.tmp,
                    layer=self.layer,
                    driver=self.driver,
                    geometry_name=meta["geometry_name"] or "geometry",
                    geometry_type=self.geometry_type,
                    crs=self.crs_wkt,
                    **options,
                )
        self.scratch.unlink(missing_ok=True)
        if self.tmp.is_file():
            _fsync(self.tmp)
        return self.tmp

    def cleanup(self) -> None:
        """Remove the scratch file (and a temporary Shapefile's sidecars); safe to call twice."""
        for p in (self.scratch, *(Path(f"{self.scratch}{s}") for s in ("-wal", "-shm", "-journal"))):
            p.unlink(missing_ok=True)
        if self.driver == "ESRI Shapefile":
            for p in shapefile_companions(self.tmp):
                p.unlink(missing_ok=True)

    def move_companions(self, target: Path) -> None:
        """Shapefile only: move the temporary sidecars next to ``target`` (before ``.shp`` is renamed)."""
        if self.driver != "ESRI Shapefile":
            return
        for old in shapefile_companions(target):
            old.unlink(missing_ok=True)
        for tmp, final in zip(shapefile_companions(self.tmp), shapefile_companions(target), strict=True):
            if tmp.exists():
                os.replace(tmp, final)
