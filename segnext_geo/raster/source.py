"""Window-by-window reading of any raster GDAL opens, with band selection and validity masks.

A :class:`SceneSource` never reads the whole scene. Each thread that reads gets its own
rasterio dataset handle (rasterio datasets are not thread-safe), so a thread pool can read
windows while the model runs.

Validity follows GDAL's mask model, per selected band:

- ``nodata``: a band value equal to the band's nodata value (NaN included) is invalid;
- a per-dataset mask (internal or external ``.msk``) or an alpha band: 0 is invalid;
- float bands: NaN and infinity are always invalid.

A pixel is valid when any selected band is valid there (GDAL's dataset-mask rule, so one
band that happens to equal nodata does not erase a pixel); invalid values inside valid
pixels are filled later, after normalisation.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

from ..errors import UserError

__all__ = ["SceneInfo", "SceneSource", "check_scene", "open_scene", "parse_bands"]

MaskKind = Literal["none", "nodata", "dataset"]


def parse_bands(bands: str | Sequence[int] | None, option: str = "--bands") -> tuple[int, ...] | None:
    """``"3,2,1"`` or ``[3, 2, 1]`` -> ``(3, 2, 1)`` (1-based band numbers); ``None`` stays ``None``.

    Raises:
        UserError: not a comma-separated list of positive integers.
    """
    if bands is None:
        return None
    if isinstance(bands, str):
        parts = [p.strip() for p in bands.split(",") if p.strip()]
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            raise UserError(f"{option}: {bands!r} is not a comma-separated list of band numbers like 1,2,3") from None
    else:
        try:
            values = tuple(int(b) for b in bands)
        except (TypeError, ValueError):
            raise UserError(f"{option}: {bands!r} is not a list of band numbers") from None
    if not values:
        raise UserError(f"{option}: no band numbers given")
    bad = [b for b in values if b < 1]
    if bad:
        raise UserError(f"{option}: band numbers start at 1, got {bad[0]}")
    return values


@dataclass(frozen=True)
class SceneInfo:
    """What the pipeline needs to know about a scene (no pixel data).

    ``bands`` are the selected 1-based band numbers, in model order. ``mask_kind`` says how
    validity is read: ``none`` (all valid, NaN aside), ``nodata`` (compare with ``nodata``) or
    ``dataset`` (per-dataset mask or alpha band, read with ``read_masks``). ``gcps`` are set
    only for scenes georeferenced by ground control points alone (no CRS, identity transform).
    """

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    gcps: tuple[GroundControlPoint, ...]
    gcp_crs: CRS | None
    bands: tuple[int, ...]
    nodata: tuple[float | None, ...]
    mask_kind: MaskKind
    has_overviews: bool
    block_shape: tuple[int, int]

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"


def _is_local(path: str) -> bool:
    return "://" not in path and not path.startswith("/vsi")


def _mask_kind(src: rasterio.DatasetReader, bands: Sequence[int]) -> MaskKind:
    flags = [src.mask_flag_enums[b - 1] for b in bands]
    if any(MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags):
        return "dataset"
    if any(MaskFlags.nodata in f for f in flags):
        return "nodata"
    return "none"


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open any raster GDAL reads, or raise one clear line: missing, a directory, or unreadable."""
    p = str(path)
    if _is_local(p):
        fp = Path(p)
        if not fp.exists():
            raise UserError(f"{p}: no such file")
        if fp.is_dir():
            raise UserError(f"{p}: is a directory, not a raster")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(p)
    except RasterioIOError as e:
        raise UserError(f"{p}: not a raster GDAL can read ({_first_line(e)})") from None
    except RasterioError as e:
        raise UserError(f"{p}: cannot open ({_first_line(e)})") from None


def _probe_last_block(src: rasterio.DatasetReader, band: int, p: str) -> None:
    """Read the bottom-right block, so a truncated file fails now, before any work, not mid-run."""
    bh, bw = src.block_shapes[band - 1]
    row, col = (src.height - 1) // bh * bh, (src.width - 1) // bw * bw
    window = Window(col, row, min(bw, src.width - col), min(bh, src.height - row))
    try:
        src.read(band, window=window)
    except RasterioError as e:
        raise UserError(f"{p}: cannot read its last block (corrupt or truncated file?): {_first_line(e)}") from None


def check_scene(path: str | Path) -> None:
    """Fail early, before a model is loaded, when ``path`` is missing or not a raster.

    Raises:
        UserError: missing file, a directory, or a file GDAL cannot open.
    """
    open_raster(path).close()


def open_scene(path: str | Path, bands: Sequence[int] | None, default_bands: Sequence[int], needed: int) -> SceneInfo:
    """Open ``path``, check it and the band selection, and describe it.

    Args:
        path: any raster GDAL opens (GeoTIFF, COG, VRT, JP2, ``/vsi...`` paths).
        bands: 1-based band numbers chosen by the user, or ``None`` for ``default_bands``.
        default_bands: the model's bands (from its checkpoint), used when ``bands`` is ``None``.
        needed: the number of bands the model takes.

    Raises:
        UserError: missing file, not a raster, a band selection that does not fit the scene
            or the model.
    """
    p = str(path)
    src = open_raster(p)
    with src:
        if src.count < 1 or src.width < 1 or src.height < 1:
            raise UserError(f"{p}: has no pixels or no bands")
        if bands is None:
            chosen = tuple(int(b) for b in default_bands)
            missing = [b for b in chosen if b > src.count]
            if missing:
                raise UserError(
                    f"{p}: has {src.count} band(s) but the model reads bands {_fmt(chosen)}; choose {needed} "
                    f"with --bands"
                )
        else:
            chosen = tuple(int(b) for b in bands)
            missing = [b for b in chosen if b > src.count]
            if missing:
                raise UserError(f"--bands: band {missing[0]} does not exist in {p} (it has {src.count} band(s))")
        if len(chosen) != needed:
            raise UserError(f"--bands: the model takes {needed} band(s), got {len(chosen)} ({_fmt(chosen)})")
        nodata = tuple(src.nodatavals[b - 1] for b in chosen)
        dtypes = {src.dtypes[b - 1] for b in chosen}
        if len(dtypes) != 1:
            raise UserError(f"--bands: bands {_fmt(chosen)} of {p} mix data types {sorted(dtypes)}")
        dtype = dtypes.pop()
        if np.dtype(dtype).kind == "c":
            raise UserError(f"{p}: complex-valued bands are not supported")
        _probe_last_block(src, chosen[0], p)
        gcps, gcp_crs = src.gcps
        block = src.block_shapes[chosen[0] - 1]
        return SceneInfo(
            path=p,
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=dtype,
            crs=src.crs,
            transform=src.transform,
            gcps=tuple(gcps) if src.crs is None and gcps else (),
            gcp_crs=gcp_crs if src.crs is None and gcps else None,
            bands=chosen,
            nodata=nodata,
            mask_kind=_mask_kind(src, chosen),
            has_overviews=bool(src.overviews(chosen[0])),
            block_shape=(int(block[0]), int(block[1])),
        )


def _fmt(bands: Sequence[int]) -> str:
    return ",".join(str(b) for b in bands)


def _first_line(e: BaseException) -> str:
    """One line of an exception, with its cause (GDAL's own message) when rasterio chained one."""
    parts = [" ".join(str(x).split()) for x in (e, e.__cause__ or e.__context__) if x is not None and str(x).strip()]
    text = "; ".join(dict.fromkeys(parts))
    return (text or type(e).__name__)[:240]


class SceneSource:
    """Thread-safe windowed reader of the selected bands of a scene.

    Every calling thread lazily opens its own dataset handle; :meth:`close` closes them all.
    Read errors (a truncated or corrupt file) become a one-line :class:`UserError`.
    """

    def __init__(self, info: SceneInfo) -> None:
        self.info = info
        self._local = threading.local()
        self._handles: list[rasterio.DatasetReader] = []
        self._lock = threading.Lock()

    def __enter__(self) -> SceneSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dataset(self) -> rasterio.DatasetReader:
        ds = getattr(self._local, "ds", None)
        if ds is None:
            ds = rasterio.open(self.info.path)
            self._local.ds = ds
            with self._lock:
                self._handles.append(ds)
        return ds

    def close(self) -> None:
        with self._lock:
            for ds in self._handles:
                ds.close()
            self._handles.clear()
        self._local = threading.local()

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Read the selected bands in ``window`` (optionally decimated to ``out_shape``).

        Returns:
            ``(data, band_valid)``: ``data`` is ``(C, h, w)`` in the raster's dtype;
            ``band_valid`` is a ``(C, h, w)`` bool array, or ``None`` when every value is valid.
        """
        info = self.info
        ds = self._dataset()
        shape = None if out_shape is None else (len(info.bands), *out_shape)
        try:
            data = ds.read(info.bands, window=window, out_shape=shape)
            masks = None
            if info.mask_kind == "dataset":
                m = ds.read_masks(info.bands[0], window=window, out_shape=out_shape)
                masks = np.broadcast_to(m[None] > 0, data.shape)
        except RasterioError as e:
            w = window
            raise UserError(
                f"{info.path}: read error at rows {int(w.row_off)}-{int(w.row_off + w.height)}, "
                f"cols {int(w.col_off)}-{int(w.col_off + w.width)} (corrupt or truncated file?): {_first_line(e)}"
            ) from None
        valid = masks
        if info.mask_kind == "nodata":
            valid = np.ones(data.shape, dtype=bool)
            for i, nd in enumerate(info.nodata):
                if nd is None:
                    continue
                valid[i] = ~np.isnan(data[i]) if np.isnan(nd) else data[i] != nd
        if info.is_float:
            finite = np.isfinite(data)
            if not finite.all():
                valid = finite if valid is None else (valid & finite)
        return data, valid
