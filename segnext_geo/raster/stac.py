"""STAC input: an Item (file or http(s) URL) or an ItemCollection -> scenes GDAL can read.

:func:`resolve_stac` reads a STAC document with pystac and turns each Item into a
:class:`StacScene`: the GDAL path to read (``/vsicurl/`` for http(s) hrefs, relative hrefs
resolved against the Item's own location, local paths as they are), the bands to read, the
Item's id and datetime (for the output's tags and the polygons' ``source``).

Asset choice, per Item (:func:`scene_from_item`):

1. ``asset=NAME`` (``--asset``): that asset; its red/green/blue bands when its band metadata
   names them, else the caller's band choice;
2. the RGB ``visual`` asset (key ``visual``, else the first raster asset with role ``visual``),
   bands 1, 2, 3 unless its band metadata orders them otherwise;
3. bands by common name red/green/blue (``eo:bands`` of STAC 1.0, ``bands`` with
   ``eo:common_name`` of STAC 1.1): one asset that holds all three, else one asset per colour
   joined into a VRT (:func:`build_rgb_vrt`) so the reader sees one RGB raster;
4. otherwise one clear line that names the Item and lists its assets.

Among assets that qualify equally, Cloud-Optimized GeoTIFFs win over other GeoTIFFs, then
JPEG 2000, then the Item's own asset order.

Developer note: a VRT is carried as its XML text in :attr:`StacScene.path` (GDAL opens VRT XML
given as a file name), so a scene is self-contained and can be sent to a Dask worker; no file
is written. Code that checks local paths must let a path starting with ``<VRTDataset`` through,
and messages should name :attr:`StacScene.name`, never the XML. Building a VRT opens the
assets' headers (a few KiB per asset over HTTP); choosing a single asset reads nothing.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

import numpy as np
import pystac
import rasterio
from pystac.utils import datetime_to_str
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError

from ..errors import UserError
from .cloud import cloud_env, gdal_path

__all__ = [
    "RGB",
    "StacItem",
    "StacScene",
    "build_rgb_vrt",
    "is_stac",
    "load_items",
    "resolve_stac",
    "scene_from_item",
]

RGB = ("red", "green", "blue")
#: Media types of raster assets, best first (COG, GeoTIFF, JPEG 2000).
_RASTER_TYPES = ("image/tiff; application=geotiff; profile=cloud-optimized", "image/tiff", "image/jp2")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt", ".img")
_NOT_DATA_ROLES = {"thumbnail", "overview", "metadata"}
_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}
_TIMEOUT_S = 60


@dataclass(frozen=True)
class StacScene:
    """One STAC Item, ready to read (picklable: strings and tuples only).

    Attributes:
        item_id: the Item's ``id``.
        datetime: the Item's ``datetime`` (ISO 8601, UTC ``...Z``), ``"START/END"`` when the Item
            has only ``start_datetime``/``end_datetime``, or ``None``.
        item_href: where the Item was read from (its ``self`` link, else the document's path or URL).
        assets: the asset key(s) read: one, or the red, green and blue assets of a VRT.
        path: the GDAL path to open: a local path, a ``/vsicurl/...`` URL, or VRT XML text.
        bands: 1-based bands of ``path`` in red, green, blue order, or ``None`` when the asset does
            not say (then the caller's ``--bands`` or the checkpoint's bands apply).
        sources: the GDAL paths of the files behind ``path`` (for :func:`~.cloud.cloud_options`).
    """

    item_id: str
    datetime: str | None
    item_href: str
    assets: tuple[str, ...]
    path: str
    bands: tuple[int, ...] | None
    sources: tuple[str, ...]

    @property
    def name(self) -> str:
        """How messages name the scene: ``"STAC item ID asset(s) A (HREF)"``."""
        plural = "s" if len(self.assets) > 1 else ""
        return f"STAC item {self.item_id} asset{plural} {','.join(self.assets)} ({self.item_href})"

    @property
    def source_label(self) -> str:
        """The polygons' ``source`` value: ``"ITEM_ID@DATETIME"`` (``"ITEM_ID"`` without a datetime)."""
        return self.item_id if self.datetime is None else f"{self.item_id}@{self.datetime}"

    @property
    def tags(self) -> dict[str, str]:
        """GeoTIFF tags for the outputs: ``STAC_ITEM_ID``, ``STAC_DATETIME``, ``STAC_ASSETS``, ``STAC_ITEM``."""
        tags = {"STAC_ITEM_ID": self.item_id, "STAC_ASSETS": ",".join(self.assets), "STAC_ITEM": self.item_href}
        if self.datetime is not None:
            tags["STAC_DATETIME"] = self.datetime
        return tags

    @property
    def stem(self) -> str:
        """A file-name-safe stem for this Item's outputs (``batch``): the id with unsafe characters as ``_``."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.item_id).strip("._")
        return stem or "item"


@dataclass(frozen=True)
class StacItem:
    """A pystac Item and the location (path or URL) its relative asset hrefs resolve against."""

    item: pystac.Item
    base: str


@dataclass(frozen=True)
class _Source:
    """What a VRT needs to know about one band of one source file."""

    path: str
    name: str
    band: int
    crs: CRS | None
    res: tuple[float, float]
    bounds: tuple[float, float, float, float]
    size: tuple[int, int]
    dtype: str
    nodata: float | None
    block: tuple[int, int]
    dataset_mask: bool


def is_stac(ref: str | Path) -> bool:
    """Whether ``ref`` names a STAC document rather than a raster.

    - an http(s) URL: its path ends in ``.json``/``.geojson``; ends in a raster extension
      (``.tif``, ``.jp2``, ...): not STAC; otherwise (a STAC API item URL) the server is asked
      with one ``HEAD`` request whether it serves JSON (``application/json``,
      ``application/geo+json``); no answer: not STAC (GDAL then says what is wrong);
    - a local ``.json``/``.geojson`` file holding a GeoJSON ``Feature`` or ``FeatureCollection``
      with a ``stac_version`` (an unreadable local ``.json`` counts as STAC, so that
      :func:`resolve_stac` reports what is wrong with it).
    """
    text = str(ref)
    if _is_url(text):
        suffix = posixpath.splitext(urlparse(text).path.lower())[1]
        if suffix in (".json", ".geojson"):
            return True
        if suffix in _RASTER_SUFFIXES:
            return False
        return _serves_json(text)
    path = Path(text)
    if path.suffix.lower() not in (".json", ".geojson"):
        return False
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return path.suffix.lower() == ".json"
    if not isinstance(doc, dict):
        return False
    if doc.get("type") == "Feature":
        return "stac_version" in doc
    features = doc.get("features")
    return (
        doc.get("type") == "FeatureCollection"
        and isinstance(features, list)
        and any(isinstance(f, dict) and "stac_version" in f for f in features)
    )


def _serves_json(url: str) -> bool:
    """Whether a ``HEAD`` request for ``url`` answers with a JSON content type."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=_TIMEOUT_S) as r:
            ctype = (r.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return ctype in ("application/json", "application/geo+json")


def resolve_stac(ref: str | Path, asset: str | None = None) -> list[StacScene]:
    """A STAC Item or ItemCollection (file path or http(s) URL) -> one :class:`StacScene` per Item.

    Args:
        ref: a local file or an http(s) URL of an Item or an ItemCollection.
        asset: the asset key to read (``--asset``); ``None`` chooses as described in the module.

    Raises:
        UserError: the document cannot be read or is not an Item/ItemCollection, or an Item has
            no asset to read (the first such Item; use :func:`load_items` and
            :func:`scene_from_item` to handle Items one by one, as ``batch`` does).
    """
    return [scene_from_item(it.item, asset=asset, base=it.base) for it in load_items(ref)]


def load_items(ref: str | Path) -> list[StacItem]:
    """Read a STAC Item or ItemCollection; each Item comes with the href its assets resolve against.

    Raises:
        UserError: unreadable, not JSON, not an Item/ItemCollection, or an empty collection.
    """
    text = str(ref)
    loc = text if _is_url(text) else os.path.abspath(text)
    doc = _read_json(text)
    kind = doc.get("type") if isinstance(doc, dict) else None
    try:
        if kind == "Feature":
            item = pystac.Item.from_dict(doc, href=loc, preserve_dict=False)
            return [StacItem(item, item.get_self_href() or loc)]
        if kind == "FeatureCollection":
            collection = pystac.ItemCollection.from_dict(doc, preserve_dict=False)
            items = [StacItem(item, item.get_self_href() or loc) for item in collection.items]
            if not items:
                raise UserError(f"{text}: the STAC ItemCollection has no items")
            return items
    except (pystac.STACError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{text}: not a valid STAC {kind}: {_one_line(e)}") from None
    found = f"type {kind!r}" if kind else "no GeoJSON type"
    raise UserError(f"{text}: not a STAC Item or ItemCollection ({found})")


def scene_from_item(item: pystac.Item, asset: str | None = None, base: str | None = None) -> StacScene:
    """Choose what to read from one Item (see the module docstring for the order).

    Args:
        item: the STAC Item.
        asset: an asset key to read (``--asset``), or ``None`` to choose.
        base: where relative hrefs resolve from (default: the Item's ``self`` href).

    Raises:
        UserError: the asset does not exist, or nothing to read; the message names the Item
            and lists its assets.
    """
    base = base or item.get_self_href() or ""
    if asset is not None:
        if asset not in item.assets:
            raise UserError(f"--asset: {_describe(item, base)} has no asset {asset!r}; its assets: {_list(item)}")
        rgb = _rgb_indices(_band_names(item, item.assets[asset]))
        return _single(item, base, asset, rgb)
    visual = _visual_asset(item)
    if visual is not None:
        return _single(item, base, visual, _rgb_indices(_band_names(item, item.assets[visual])) or (1, 2, 3))
    whole = _one_rgb_asset(item)
    if whole is not None:
        return _single(item, base, whole[0], whole[1])
    per_colour = _rgb_assets(item)
    if per_colour is not None:
        hrefs = [(key, _gdal_href(item, base, key), band) for key, band in per_colour]
        xml = build_rgb_vrt([(p, b) for _, p, b in hrefs], names=[k for k, _, _ in hrefs], where=_describe(item, base))
        return StacScene(
            item_id=item.id,
            datetime=_datetime(item),
            item_href=base,
            assets=tuple(k for k, _, _ in hrefs),
            path=xml,
            bands=(1, 2, 3),
            sources=tuple(p for _, p, _ in hrefs),
        )
    raise UserError(
        f"{_describe(item, base)}: no asset to read (no --asset, no 'visual' asset, no red/green/blue bands "
        f"in eo:bands); its assets: {_list(item)}"
    )


def build_rgb_vrt(sources: Sequence[tuple[str, int]], names: Sequence[str], where: str) -> str:
    """VRT XML that stacks one band of each source file as bands 1, 2, 3, ... (red, green, blue).

    The VRT takes the union of the sources' extents at the finest pixel size; a coarser source
    is upsampled by GDAL's default (nearest neighbour). Each band keeps its source's nodata
    value and colour interpretation (red, green, blue for three bands); a per-dataset mask of
    the first source (internal or ``.msk``) becomes the VRT's mask. Bands of different data
    types are widened to a common type.

    Args:
        sources: ``(gdal_path, band)`` per output band, 1-based band numbers.
        names: one name per band (the asset keys), for the band descriptions and messages.
        where: how messages name the owner (the Item).

    Raises:
        UserError: a source cannot be opened, the sources have different CRSs, or one is rotated.
    """
    metas = []
    with cloud_env([p for p, _ in sources]):
        for (path, band), name in zip(sources, names, strict=True):
            metas.append(_source_meta(path, band, name, where))
    crs = metas[0].crs
    for m in metas[1:]:
        if m.crs != crs:
            raise UserError(f"{where}: assets {names[0]} and {m.name} have different CRSs ({crs} vs {m.crs})")
    res_x = min(m.res[0] for m in metas)
    res_y = min(m.res[1] for m in metas)
    left = min(m.bounds[0] for m in metas)
    top = max(m.bounds[3] for m in metas)
    right = max(m.bounds[2] for m in metas)
    bottom = min(m.bounds[1] for m in metas)
    width = round((right - left) / res_x)
    height = round((top - bottom) / res_y)
    dtype = np.result_type(*[np.dtype(m.dtype) for m in metas]).name
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs is not None:
        ET.SubElement(root, "SRS").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (left, res_x, 0, top, 0, -res_y))
    colours = ("Red", "Green", "Blue") if len(metas) == 3 else None
    for i, m in enumerate(metas, start=1):
        bh, bw = m.block
        vb = ET.SubElement(
            root, "VRTRasterBand", dataType=_GDAL_TYPES[dtype], band=str(i), blockXSize=str(bw), blockYSize=str(bh)
        )
        ET.SubElement(vb, "Description").text = m.name
        if colours is not None:
            ET.SubElement(vb, "ColorInterp").text = colours[i - 1]
        if m.nodata is not None:
            ET.SubElement(vb, "NoDataValue").text = repr(float(m.nodata))
        vb.append(_simple_source(m, m.band, left, top, res_x, res_y))
    masked = metas[0]
    if masked.dataset_mask:
        mask = ET.SubElement(root, "MaskBand")
        vb = ET.SubElement(mask, "VRTRasterBand", dataType="Byte")
        vb.append(_simple_source(masked, f"mask,{masked.band}", left, top, res_x, res_y))
    return ET.tostring(root, encoding="unicode")


def _simple_source(m: _Source, band: int | str, left: float, top: float, res_x: float, res_y: float) -> ET.Element:
    """A ``<SimpleSource>`` placing the whole source at its position on the VRT grid."""
    src = ET.Element("SimpleSource")
    ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = m.path
    ET.SubElement(src, "SourceBand").text = str(band)
    w, h = m.size
    x0, y0, x1, y1 = m.bounds
    ET.SubElement(src, "SrcRect", xOff="0", yOff="0", xSize=str(w), ySize=str(h))
    ET.SubElement(
        src,
        "DstRect",
        xOff=repr((x0 - left) / res_x),
        yOff=repr((top - y1) / res_y),
        xSize=repr((x1 - x0) / res_x),
        ySize=repr((y1 - y0) / res_y),
    )
    return src


def _source_meta(path: str, band: int, name: str, where: str) -> _Source:
    try:
        with rasterio.open(path) as src:
            if not 1 <= band <= src.count:
                raise UserError(f"{where}: asset {name} has {src.count} band(s), its metadata names band {band}")
            t = src.transform
            if t.b != 0 or t.d != 0 or t.e >= 0:
                raise UserError(f"{where}: asset {name} is rotated or not north-up; give --asset to read it alone")
            flags = src.mask_flag_enums[band - 1]
            bh, bw = src.block_shapes[band - 1]
            return _Source(
                path=path,
                name=name,
                band=band,
                crs=src.crs,
                res=(abs(t.a), abs(t.e)),
                bounds=(src.bounds.left, src.bounds.bottom, src.bounds.right, src.bounds.top),
                size=(src.width, src.height),
                dtype=src.dtypes[band - 1],
                nodata=src.nodatavals[band - 1],
                block=(int(bh), int(bw)),
                dataset_mask=MaskFlags.per_dataset in flags and MaskFlags.nodata not in flags,
            )
    except RasterioError as e:
        raise UserError(f"{where}: cannot open asset {name} ({path}): {_one_line(e)}") from None


def _single(item: pystac.Item, base: str, key: str, bands: tuple[int, ...] | None) -> StacScene:
    path = _gdal_href(item, base, key)
    return StacScene(
        item_id=item.id,
        datetime=_datetime(item),
        item_href=base,
        assets=(key,),
        path=path,
        bands=bands,
        sources=(path,),
    )


def _gdal_href(item: pystac.Item, base: str, key: str) -> str:
    """The GDAL path of asset ``key``: relative hrefs resolved against ``base``."""
    href = item.assets[key].href
    if not _is_absolute(href):
        if _is_url(base):
            href = urljoin(base, href)
        elif base:
            href = os.path.normpath(os.path.join(os.path.dirname(base), href))
    try:
        return gdal_path(href)
    except ValueError as e:
        raise UserError(f"{_describe(item, base)}: asset {key}: {e}") from None


def _visual_asset(item: pystac.Item) -> str | None:
    if "visual" in item.assets and _is_raster(item.assets["visual"]):
        return "visual"
    for key, asset in item.assets.items():
        if "visual" in (asset.roles or []) and _is_raster(asset):
            return key
    return None


def _one_rgb_asset(item: pystac.Item) -> tuple[str, tuple[int, ...]] | None:
    """The best raster asset holding red, green and blue bands, with their 1-based indices."""
    found = []
    for order, (key, asset) in enumerate(item.assets.items()):
        if _is_raster(asset):
            rgb = _rgb_indices(_band_names(item, asset))
            if rgb is not None:
                found.append((_rank(asset), order, key, rgb))
    if not found:
        return None
    _, _, key, rgb = min(found)
    return key, rgb


def _rgb_assets(item: pystac.Item) -> list[tuple[str, int]] | None:
    """For red, green and blue: the best raster asset with a band of that common name, and the band."""
    out = []
    for colour in RGB:
        found = []
        for order, (key, asset) in enumerate(item.assets.items()):
            if not _is_raster(asset):
                continue
            names = _band_names(item, asset)
            if colour in names:
                found.append((len(names), _rank(asset), order, key, names.index(colour) + 1))
        if not found:
            return None
        _, _, _, key, band = min(found)
        out.append((key, band))
    return out


def _band_names(item: pystac.Item, asset: pystac.Asset) -> list[str | None]:
    """Common names of an asset's bands, in band order (``None`` where unnamed); ``[]`` when unknown."""
    fields = asset.extra_fields
    bands = fields.get("eo:bands")
    if bands is None:
        bands = fields.get("bands")
    if not isinstance(bands, list):
        return []
    item_bands = item.properties.get("eo:bands")
    names: list[str | None] = []
    for b in bands:
        if isinstance(b, int) and isinstance(item_bands, list) and 0 <= b < len(item_bands):
            b = item_bands[b]  # STAC 0.9: an asset lists indices into the Item's eo:bands
        name = b.get("common_name", b.get("eo:common_name")) if isinstance(b, dict) else None
        names.append(name.lower() if isinstance(name, str) else None)
    return names


def _rgb_indices(names: list[str | None]) -> tuple[int, ...] | None:
    if all(c in names for c in RGB):
        return tuple(names.index(c) + 1 for c in RGB)
    return None


def _is_raster(asset: pystac.Asset) -> bool:
    roles = set(asset.roles or [])
    if roles and roles <= _NOT_DATA_ROLES:
        return False
    media = (asset.media_type or "").lower()
    if media:
        return media.startswith(("image/tiff", "image/jp2", "image/vnd.stac.geotiff"))
    return urlparse(asset.href).path.lower().endswith(_RASTER_SUFFIXES)


def _rank(asset: pystac.Asset) -> int:
    media = (asset.media_type or "").lower().replace(" ", "")
    for i, t in enumerate(_RASTER_TYPES):
        if media.startswith(t.replace(" ", "")):
            return i
    return len(_RASTER_TYPES)


def _datetime(item: pystac.Item) -> str | None:
    if isinstance(item.datetime, datetime):
        return datetime_to_str(item.datetime)
    start, end = item.properties.get("start_datetime"), item.properties.get("end_datetime")
    if start or end:
        return f"{start or '..'}/{end or '..'}"
    return None


def _read_json(ref: str) -> Any:
    try:
        if _is_url(ref):
            with urllib.request.urlopen(ref, timeout=_TIMEOUT_S) as r:
                raw = r.read()
        else:
            path = Path(ref)
            if not path.exists():
                raise UserError(f"{ref}: no such file")
            raw = path.read_bytes()
    except urllib.error.HTTPError as e:
        raise UserError(f"{ref}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise UserError(f"{ref}: cannot read ({_one_line(e)})") from None
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{ref}: not JSON ({_one_line(e)})") from None


def _describe(item: pystac.Item, base: str) -> str:
    return f"STAC item {item.id} ({base})" if base else f"STAC item {item.id}"


def _list(item: pystac.Item) -> str:
    return ", ".join(item.assets) or "(none)"


def _is_url(text: str) -> bool:
    return urlparse(text).scheme.lower() in ("http", "https")


def _is_absolute(href: str) -> bool:
    return href.startswith("/") or len(urlparse(href).scheme) > 1


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:240] or type(e).__name__
