"""Window-by-window reading of any raster GDAL opens, with band selection and validity masks.

A :class:`SceneSource` never reads the whole scene. Each thread that reads gets its own
rasterio dataset handle (rasterio datasets are not thread-safe), so a thread pool can read
windows while the model runs.

Validity follows GDAL's own masks (``read_masks``), whatever the band order
(:class:`Validity`, :func:`validity_of`, :func:`read_validity`; ``vectorize`` uses the same):

- a per-dataset mask (internal, or an external ``.msk`` sidecar) or an alpha band applies to
  every band, selected or not (so ``--bands 4,1,2`` on an RGBA scene keeps the alpha);
  GDAL gives such a mask precedence over a nodata value, and so does this module;
- otherwise each selected band's nodata value (NaN included) marks that band's value
  invalid, and a pixel is invalid only where *every selected band* is nodata (GDAL's
  dataset-mask rule over the selected bands: one band that happens to equal nodata does not
  erase a pixel; such a value is filled after normalisation);
- float bands: NaN and +-infinity are always invalid, even without a nodata value;
- a nodata override (``--nodata``) replaces the bands' own nodata value; masks and alpha
  still apply.
"""

from __future__ import annotations

import logging
import math
import re
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
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

from ..errors import UserError
from .cloud import align_window, is_remote

__all__ = [
    "SceneInfo",
    "SceneSource",
    "Validity",
    "check_nodata",
    "check_scene",
    "open_raster",
    "open_scene",
    "parse_bands",
    "read_validity",
    "validity_of",
]

log = logging.getLogger(__name__)

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
class Validity:
    """How the validity of some bands of a dataset is read (no pixel data; picklable).

    Attributes:
        bands: the 1-based bands, in the order their data is read.
        dataset_band: a band whose GDAL mask is the per-dataset mask (internal or ``.msk``
            mask, or alpha band), read once and applied to every band; ``None`` if there is none.
        gdal_nodata: per band, whether GDAL's own nodata mask is read (``read_masks``).
        nodata: per band, a value compared here instead (the ``--nodata`` override), or ``None``.
        finite: float bands: NaN and +-infinity are invalid.
    """

    bands: tuple[int, ...]
    dataset_band: int | None
    gdal_nodata: tuple[bool, ...]
    nodata: tuple[float | None, ...]
    finite: bool

    @property
    def kind(self) -> MaskKind:
        """``dataset`` (a per-dataset mask or alpha), ``nodata`` (nodata values) or ``none``."""
        if self.dataset_band is not None:
            return "dataset"
        if any(self.gdal_nodata) or any(v is not None for v in self.nodata):
            return "nodata"
        return "none"

    @property
    def always_valid(self) -> bool:
        """No pixel can be invalid (no mask, no nodata, not float)."""
        return self.kind == "none" and not self.finite


def check_nodata(value: float, dtype: str, path: str, option: str = "--nodata") -> float:
    """``value`` as a nodata value of ``dtype`` data; it must be one of the type's values.

    Raises:
        UserError: NaN, a fraction or an out-of-range value for integer data.
    """
    dt = np.dtype(dtype)
    v = float(value)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not math.isfinite(v) or not v.is_integer() or not info.min <= int(v) <= info.max:
            raise UserError(f"{option}: {value!r} is not a value of {dtype} data ({path} holds {info.min}..{info.max})")
        return int(v)
    if dt.kind == "f" and math.isfinite(v) and abs(v) > float(np.finfo(dt).max):
        raise UserError(f"{option}: {value!r} is out of the range of {dtype} data ({path})")
    return v


def validity_of(src: rasterio.DatasetReader, bands: Sequence[int], nodata: float | None = None) -> Validity:
    """GDAL's mask model for ``bands`` of ``src`` (see the module docstring).

    Args:
        src: the open dataset.
        bands: 1-based bands whose data is read.
        nodata: a value that replaces every selected band's own nodata value (already checked
            with :func:`check_nodata`); masks and alpha bands still apply.
    """
    flags = src.mask_flag_enums
    dataset_band = next((b + 1 for b in range(src.count) if MaskFlags.per_dataset in flags[b]), None)
    gdal_nodata = tuple(nodata is None and MaskFlags.nodata in flags[b - 1] for b in bands)
    override = tuple(nodata for _ in bands)
    finite = any(np.dtype(src.dtypes[b - 1]).kind == "f" for b in bands)
    return Validity(tuple(int(b) for b in bands), dataset_band, gdal_nodata, override, finite)


def _differs(a: np.ndarray, value: float) -> np.ndarray:
    """``a != value`` in ``a``'s own type (NaN equals NaN), as GDAL compares with nodata."""
    if isinstance(value, float) and math.isnan(value):
        return ~np.isnan(a)
    if a.dtype.kind in "iu":
        return a != int(value)
    return a != np.asarray(value, dtype=a.dtype)


def read_validity(
    ds: rasterio.DatasetReader,
    rule: Validity,
    data: np.ndarray,
    window: Window,
    out_shape: tuple[int, int] | None = None,
) -> np.ndarray | None:
    """Per-band validity of ``data`` (``(C, h, w)``, the bands of ``rule`` read in ``window``).

    Returns:
        ``(C, h, w)`` bool (a pixel is valid where any band is), or ``None`` when every value is
        valid. GDAL read errors propagate as :class:`rasterio.errors.RasterioError`.
    """
    if rule.always_valid:
        return None
    valid = np.ones(data.shape, bool)
    if rule.dataset_band is not None:
        valid &= ds.read_masks(rule.dataset_band, window=window, out_shape=out_shape)[None] > 0
    for i, band in enumerate(rule.bands):
        if rule.gdal_nodata[i]:
            valid[i] &= ds.read_masks(band, window=window, out_shape=out_shape) > 0
        nd = rule.nodata[i]
        if nd is not None:
            valid[i] &= _differs(data[i], nd)
    if rule.finite and data.dtype.kind == "f":
        valid &= np.isfinite(data)
    return valid


@dataclass(frozen=True)
class SceneInfo:
    """What the pipeline needs to know about a scene (no pixel data).

    ``bands`` are the selected 1-based band numbers, in model order. ``nodata`` are their
    nodata values (the override, when one was given). ``validity`` says how invalid pixels are
    found (GDAL's masks; ``mask_kind`` summarises it). ``gcps`` are set only for scenes
    georeferenced by ground control points alone (no CRS, identity transform). ``notes`` are
    one-line remarks for the user (already logged once by :func:`open_scene`), such as which
    bands were chosen when the file did not say.
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
    validity: Validity
    has_overviews: bool
    block_shape: tuple[int, int]
    notes: tuple[str, ...] = ()

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"

    @property
    def mask_kind(self) -> MaskKind:
        return self.validity.kind


def _is_local(path: str) -> bool:
    """Whether ``path`` names a local file (not a URL, a ``/vsi...`` path or VRT XML text)."""
    return "://" not in path and not path.startswith("/vsi") and not path.lstrip().startswith("<VRTDataset")


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open any raster GDAL reads, or raise one clear line: missing, a directory, empty, or unreadable."""
    p = str(path)
    if _is_local(p):
        fp = Path(p)
        if not fp.exists():
            raise UserError(f"{p}: no such file")
        if fp.is_dir():
            raise UserError(f"{p}: is a directory, not a raster")
        if fp.is_file() and fp.stat().st_size == 0:
            raise UserError(f"{p}: is empty (0 bytes), not a raster")
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


def open_scene(
    path: str | Path,
    bands: Sequence[int] | None,
    default_bands: Sequence[int],
    needed: int,
    *,
    nodata: float | None = None,
) -> SceneInfo:
    """Open ``path``, check it and the band selection, and describe it.

    Band choice without ``bands``: the model's ``default_bands`` (its checkpoint's). A model on
    bands ``1,2,3`` is an RGB model: when the file says which bands are red, green and blue
    (colour interpretation, else band descriptions such as ``Red``), those are used; when it
    has more bands than the model takes and does not say, bands ``1..needed`` are used and a
    warning naming the file says so once (logged, and kept in :attr:`SceneInfo.notes`).

    Args:
        path: any raster GDAL opens (GeoTIFF, COG, VRT, JP2, ``/vsi...`` paths).
        bands: 1-based band numbers chosen by the user, or ``None`` (see above).
        default_bands: the model's bands (from its checkpoint).
        needed: the number of bands the model takes.
        nodata: a value that replaces the selected bands' own nodata value (``--nodata``);
            masks and alpha bands still apply.

    Raises:
        UserError: missing or empty file, not a raster, a band selection that does not fit the
            scene or the model, or a ``nodata`` value the data type cannot hold.
    """
    p = str(path)
    src = open_raster(p)
    notes: list[str] = []
    with src:
        if src.count < 1 or src.width < 1 or src.height < 1:
            raise UserError(f"{p}: has no pixels or no bands")
        if bands is None:
            chosen, note = _default_bands(src, p, tuple(int(b) for b in default_bands), needed)
            if note:
                notes.append(note)
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
        dtypes = {src.dtypes[b - 1] for b in chosen}
        if len(dtypes) != 1:
            raise UserError(f"--bands: bands {_fmt(chosen)} of {p} mix data types {sorted(dtypes)}")
        dtype = dtypes.pop()
        if np.dtype(dtype).kind == "c":
            raise UserError(f"{p}: complex-valued bands are not supported")
        if nodata is not None:
            nodata = check_nodata(nodata, dtype, p)
            nodata_vals: tuple[float | None, ...] = tuple(nodata for _ in chosen)
        else:
            nodata_vals = tuple(src.nodatavals[b - 1] for b in chosen)
        _probe_last_block(src, chosen[0], p)
        gcps, gcp_crs = src.gcps
        block = src.block_shapes[chosen[0] - 1]
        info = SceneInfo(
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
            nodata=nodata_vals,
            validity=validity_of(src, chosen, nodata),
            has_overviews=bool(src.overviews(chosen[0])),
            block_shape=(int(block[0]), int(block[1])),
            notes=tuple(notes),
        )
    for n in notes:
        log.warning(n)
    return info


_COLOURS = (("red", ColorInterp.red), ("green", ColorInterp.green), ("blue", ColorInterp.blue))
#: words that make "red"/"blue" another band: red edge, coastal/deep blue
_NOT_RGB = {"edge", "rededge", "coastal", "deep", "aerosol", "nir", "infrared"}


def _rgb_of(src: rasterio.DatasetReader) -> tuple[tuple[int, ...], str] | None:
    """The red, green, blue bands the file names (colour interpretation, else descriptions), if it names all three."""
    interp = list(src.colorinterp)
    by_interp = [[b + 1 for b, c in enumerate(interp) if c == ci] for _, ci in _COLOURS]
    if all(len(found) == 1 for found in by_interp):
        return tuple(found[0] for found in by_interp), "colour interpretation"
    words = [set(re.findall(r"[a-z]+", (d or "").lower())) for d in src.descriptions]
    by_desc = [[b + 1 for b, w in enumerate(words) if name in w and not (w & _NOT_RGB)] for name, _ in _COLOURS]
    if all(len(found) == 1 for found in by_desc):
        return tuple(found[0] for found in by_desc), "band descriptions"
    return None


def _default_bands(
    src: rasterio.DatasetReader, p: str, default: tuple[int, ...], needed: int
) -> tuple[tuple[int, ...], str | None]:
    """The bands to read without ``--bands``, and a note when the choice is a guess."""
    generic = default == tuple(range(1, len(default) + 1))
    if not generic:
        return default, None  # the checkpoint names its own bands
    if needed == 3 and len(default) == 3:
        rgb = _rgb_of(src)
        if rgb is not None:
            return rgb[0], None
        if src.count > needed:
            return default, (
                f"{p}: has {src.count} bands and does not say which are red, green and blue (no colour "
                f"interpretation or band descriptions); using bands {_fmt(default)} as red, green, blue; "
                "choose others with --bands (e.g. --bands 3,2,1 for blue, green, red)"
            )
    elif src.count > needed:
        return default, (
            f"{p}: has {src.count} bands; the model takes {needed} and its checkpoint does not name them: "
            f"using bands {_fmt(default)}; choose others with --bands"
        )
    return default, None


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
    A remote scene (``/vsicurl/`` and other network file systems, also behind a VRT) is read
    through one shared handle, one read at a time: handles do not share GDAL's block cache, so
    two threads would each download the COG tiles their overlapping windows share (measured in
    ``benchmarks/remote_cog_reads.py``: 2.0x the bytes with a handle per thread).
    Read errors (a truncated or corrupt file) become a one-line :class:`UserError`.
    """

    def __init__(self, info: SceneInfo) -> None:
        self.info = info
        self._local = threading.local()
        self._handles: list[rasterio.DatasetReader] = []
        self._lock = threading.Lock()
        self.shared = is_remote(info.path)
        self._read_lock = threading.Lock()
        self._shared_ds: rasterio.DatasetReader | None = None

    def __enter__(self) -> SceneSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dataset(self) -> rasterio.DatasetReader:
        if self.shared:
            with self._lock:
                if self._shared_ds is None:
                    self._shared_ds = rasterio.open(self.info.path)
                    self._handles.append(self._shared_ds)
                return self._shared_ds
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
            self._shared_ds = None
        self._local = threading.local()

    def read(self, window: Window, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Read the selected bands in ``window`` (optionally decimated to ``out_shape``).

        Returns:
            ``(data, band_valid)``: ``data`` is ``(C, h, w)`` in the raster's dtype;
            ``band_valid`` is a ``(C, h, w)`` bool array, or ``None`` when every value is valid.
        """
        if self.shared:
            with self._read_lock:
                if out_shape is not None:
                    return self._read(window, out_shape)
                # whole COG tiles, so GDAL fetches each tile in one range request and serves
                # overlapping windows from its block cache; the window is cut out in memory
                ds = self._dataset()
                big = align_window(window, ds.block_shapes[0], ds.width, ds.height)
                data, valid = self._read(big, None)
                r, c = int(window.row_off - big.row_off), int(window.col_off - big.col_off)
                h, w = int(window.height), int(window.width)
                data = data[:, r : r + h, c : c + w]
                return data, None if valid is None else valid[:, r : r + h, c : c + w]
        return self._read(window, out_shape)

    def _read(self, window: Window, out_shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | None]:
        info = self.info
        ds = self._dataset()
        shape = None if out_shape is None else (len(info.bands), *out_shape)
        try:
            data = ds.read(info.bands, window=window, out_shape=shape)
            valid = read_validity(ds, info.validity, data, window, out_shape)
        except RasterioError as e:
            w = window
            raise UserError(
                f"{info.path}: read error at rows {int(w.row_off)}-{int(w.row_off + w.height)}, "
                f"cols {int(w.col_off)}-{int(w.col_off + w.width)} (corrupt or truncated file?): {_first_line(e)}"
            ) from None
        return data, valid
