"""STAC input (segnext_geo.raster.stac) and remote COG reads (segnext_geo.raster.cloud).

Items and ItemCollections are written here with pystac and point at COGs written here with
rasterio, read from disk or from a loopback HTTP server that counts the bytes it serves.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
from http_server import HttpServer
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.transform import from_origin
from rasterio.windows import Window

from segnext_geo.errors import UserError
from segnext_geo.raster.cloud import align_window, blocks_touched, cloud_env, cloud_options, gdal_path, is_remote
from segnext_geo.raster.stac import StacScene, is_stac, load_items, resolve_stac, scene_from_item

UTM = "EPSG:32632"
WHEN = datetime(2023, 6, 1, 10, 20, 30, tzinfo=UTC)
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
CHUNK = 16384  # GDAL's /vsicurl/ chunk size (CPL_VSIL_CURL_CHUNK_SIZE default)


def write_cog(path: Path, data: np.ndarray, res: float = 10.0, origin=(600_000.0, 5_000_000.0), **kw: Any) -> Path:
    """``data`` ``(C, H, W)`` as a Cloud-Optimized GeoTIFF in UTM 32N."""
    c, h, w = data.shape
    prof: dict[str, Any] = {
        "driver": "COG",
        "width": w,
        "height": h,
        "count": c,
        "dtype": data.dtype.name,
        "crs": UTM,
        "transform": from_origin(*origin, res, res),
        "blocksize": 128,
        "compress": "DEFLATE",
        "overview_resampling": "nearest",
    }
    prof.update(kw)
    with rasterio.open(path, "w", **prof) as dst:
        dst.write(data)
    return path


def band_meta(*names: str, v11: bool = False) -> dict[str, Any]:
    """Asset band metadata: STAC 1.0 ``eo:bands`` or STAC 1.1 ``bands`` with ``eo:common_name``."""
    if v11:
        return {"bands": [{"name": n.upper(), "eo:common_name": n} for n in names]}
    return {"eo:bands": [{"name": n.upper(), "common_name": n} for n in names]}


def make_item(item_id: str, assets: dict[str, tuple[str, dict[str, Any]]], **props: Any) -> pystac.Item:
    """A STAC Item with ``assets``: key -> (href, extra fields incl. ``roles``/``type``)."""
    when = props.pop("when", WHEN)
    item = pystac.Item(
        id=item_id,
        geometry={"type": "Polygon", "coordinates": [[[9, 45], [9.1, 45], [9.1, 45.1], [9, 45.1], [9, 45]]]},
        bbox=[9, 45, 9.1, 45.1],
        datetime=when,
        properties=props,
    )
    for key, (href, extra) in assets.items():
        extra = dict(extra)
        roles = extra.pop("roles", ["data"])
        media = extra.pop("type", COG_TYPE)
        item.add_asset(key, pystac.Asset(href=href, media_type=media, roles=roles, extra_fields=extra))
    return item


def save(doc: pystac.Item | pystac.ItemCollection, path: Path) -> Path:
    """Write a STAC document as JSON, hrefs exactly as given (relative ones stay relative)."""
    d = doc.to_dict(transform_hrefs=False) if isinstance(doc, pystac.Item) else doc.to_dict()
    if isinstance(doc, pystac.Item):
        d["links"] = []
    path.write_text(json.dumps(d))
    return path


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A 3-band uint8 COG and its pixels."""
    folder = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(1)
    data = rng.integers(0, 255, (3, 200, 300), dtype=np.uint8)
    (folder / "data").mkdir()
    return write_cog(folder / "data" / "visual.tif", data), data


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Single-band uint16 COGs with nodata 0: red and green at 10 m, blue at 20 m on the same extent."""
    folder = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(2)
    bands = {
        "red": rng.integers(1, 4000, (1, 120, 160), dtype=np.uint16),
        "green": rng.integers(1, 4000, (1, 120, 160), dtype=np.uint16),
        "blue": rng.integers(1, 4000, (1, 60, 80), dtype=np.uint16),
    }
    bands["red"][0, :5, :7] = 0
    for name, data in bands.items():
        write_cog(folder / f"{name}.tif", data, res=10.0 if data.shape[1] == 120 else 20.0, nodata=0)
    return folder, bands


# --- cloud.py -------------------------------------------------------------------------------


def test_gdal_path_and_remote() -> None:
    assert gdal_path("https://host/a/b.tif?sig=1") == "/vsicurl/https://host/a/b.tif?sig=1"
    assert gdal_path("s3://bucket/key/x.tif") == "/vsis3/bucket/key/x.tif"
    assert gdal_path("gs://bucket/x.tif") == "/vsigs/bucket/x.tif"
    assert gdal_path("file:///data/my%20scene.tif") == "/data/my scene.tif"
    assert gdal_path("/vsizip/a.zip/b.tif") == "/vsizip/a.zip/b.tif"
    assert gdal_path("relative/x.tif") == "relative/x.tif"
    with pytest.raises(ValueError, match="ftp"):
        gdal_path("ftp://host/x.tif")
    assert is_remote("/vsicurl/http://h/x.tif") and is_remote("/vsizip//vsis3/b/a.zip/x.tif")
    assert not is_remote("/data/x.tif") and not is_remote("/vsizip/a.zip/x.tif")


def test_cloud_options() -> None:
    opts = cloud_options(["/vsicurl/http://h/a.tif", "/vsicurl/http://h/b.TIF?x=1", "/data/c.jp2"], 64 * 2**20)
    assert opts["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert opts["GDAL_HTTP_MERGE_CONSECUTIVE_RANGES"] == "YES"
    assert opts["GDAL_CACHEMAX"] == 64 * 2**20
    assert opts["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] == ".JP2,.TIF,.jp2,.tif"
    # a URL without an extension would be refused with an extension list: none is set
    assert "CPL_VSIL_CURL_ALLOWED_EXTENSIONS" not in cloud_options(["/vsicurl/http://h/object?id=3"])
    assert cloud_options([], cache_bytes=1)["GDAL_CACHEMAX"] == 16 * 2**20


def test_align_window() -> None:
    assert align_window(Window(130, 250, 100, 10), (128, 128), 1000, 700) == Window(128, 128, 128, 256)
    # the last block ends at the raster edge; a fractional window is grown to whole pixels first
    assert align_window(Window(900.5, 600.2, 99.5, 99.8), (128, 128), 1000, 700) == Window(896, 512, 104, 188)
    assert align_window(Window(256, 0, 128, 128), (128, 128), 1000, 700) == Window(256, 0, 128, 128)
    assert align_window(Window(2000, 0, 10, 10), (128, 128), 1000, 700) == Window(0, 0, 0, 0)
    assert blocks_touched(Window(127, 0, 2, 129), (128, 128), 1000, 700) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert blocks_touched(Window(128, 128, 128, 128), (128, 256), 1000, 700) == [(1, 0)]


# --- Items on disk ---------------------------------------------------------------------------


def test_visual_asset_relative_href(tmp_path: Path, rgb: tuple[Path, np.ndarray]) -> None:
    cog, data = rgb
    item = make_item("scene-1", {"visual": ("../data/visual.tif", {"roles": ["visual"]})})
    (cog.parent.parent / "items").mkdir(exist_ok=True)
    path = save(item, cog.parent.parent / "items" / "scene-1.json")
    assert is_stac(path) and not is_stac(cog)
    (scene,) = resolve_stac(path)
    assert scene == StacScene(
        item_id="scene-1",
        datetime="2023-06-01T10:20:30Z",
        item_href=str(path),
        assets=("visual",),
        path=str(cog),
        bands=(1, 2, 3),
        sources=(str(cog),),
    )
    assert scene.source_label == "scene-1@2023-06-01T10:20:30Z"
    assert scene.tags == {
        "STAC_ITEM_ID": "scene-1",
        "STAC_ASSETS": "visual",
        "STAC_ITEM": str(path),
        "STAC_DATETIME": "2023-06-01T10:20:30Z",
    }
    with rasterio.open(scene.path) as src:
        assert (src.read(list(scene.bands or ())) == data).all()


def test_visual_role_and_band_order(tmp_path: Path, rgb: tuple[Path, np.ndarray]) -> None:
    cog, _ = rgb
    item = make_item(
        "bgr",
        {
            "thumb": (str(tmp_path / "t.png"), {"roles": ["thumbnail"], "type": "image/png"}),
            "tci": (str(cog), {"roles": ["visual"], **band_meta("blue", "green", "red")}),
        },
    )
    scene = scene_from_item(item, base=str(tmp_path / "x.json"))
    assert scene.assets == ("tci",) and scene.bands == (3, 2, 1)


@pytest.mark.parametrize("v11", [False, True])
def test_one_asset_with_named_bands(tmp_path: Path, rgb: tuple[Path, np.ndarray], v11: bool) -> None:
    cog, _ = rgb
    item = make_item(
        "multi",
        {
            "jp2": (
                str(tmp_path / "m.jp2"),
                {"type": "image/jp2", **band_meta("nir", "red", "green", "blue", v11=v11)},
            ),
            "cog": (str(cog), band_meta("nir", "red", "green", "blue", v11=v11)),
        },
    )
    scene = scene_from_item(item)
    assert scene.assets == ("cog",) and scene.bands == (2, 3, 4)  # the COG wins over the JPEG 2000


def test_stac_09_band_indices(rgb: tuple[Path, np.ndarray]) -> None:
    cog, _ = rgb
    item = make_item("old", {"img": (str(cog), {"eo:bands": [2, 1, 0]})}, **band_meta("red", "green", "blue"))
    assert scene_from_item(item).bands == (3, 2, 1)


def test_asset_option(tmp_path: Path, rgb: tuple[Path, np.ndarray]) -> None:
    cog, _ = rgb
    item = make_item(
        "opt", {"visual": (str(cog), {}), "analytic": (str(cog), band_meta("blue", "green", "red", "nir"))}
    )
    assert scene_from_item(item, asset="analytic").bands == (3, 2, 1)
    plain = make_item("plain", {"raw": (str(cog), {})})
    assert scene_from_item(plain, asset="raw").bands is None  # the caller's --bands decide
    with pytest.raises(UserError) as e:
        scene_from_item(item, asset="nir", base="/items/opt.json")
    assert str(e.value) == "--asset: STAC item opt (/items/opt.json) has no asset 'nir'; its assets: visual, analytic"


def test_no_usable_asset(tmp_path: Path) -> None:
    item = make_item(
        "bare",
        {
            "thumbnail": ("t.png", {"roles": ["thumbnail"], "type": "image/png"}),
            "nir": ("nir.tif", band_meta("nir")),
            "meta": ("m.xml", {"roles": ["metadata"], "type": "application/xml"}),
        },
    )
    path = save(item, tmp_path / "bare.json")
    with pytest.raises(UserError) as e:
        resolve_stac(path)
    msg = str(e.value)
    assert msg.startswith(f"STAC item bare ({path}): no asset to read") and msg.endswith(
        "its assets: thumbnail, nir, meta"
    )
    assert "\n" not in msg


def test_separate_colour_assets_become_one_vrt(colours: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, bands = colours
    item = make_item(
        "s2",
        {
            "blue": ("blue.tif", band_meta("blue")),
            "green": ("green.tif", band_meta("green")),
            "red": ("red.tif", band_meta("red")),
            "nir": ("nir.tif", band_meta("nir")),
            "blue-jp2": ("blue.jp2", {"type": "image/jp2", **band_meta("blue")}),
        },
    )
    (scene,) = resolve_stac(save(item, folder / "s2.json"))
    assert scene.assets == ("red", "green", "blue") and scene.bands == (1, 2, 3)
    assert scene.sources == tuple(str(folder / f"{c}.tif") for c in ("red", "green", "blue"))
    assert scene.path.startswith("<VRTDataset")
    with rasterio.open(scene.path) as src:
        assert (src.width, src.height, src.count) == (160, 120, 3)
        assert src.crs == UTM and src.transform == from_origin(600_000.0, 5_000_000.0, 10.0, 10.0)
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        assert src.nodatavals == (0.0, 0.0, 0.0) and src.dtypes == ("uint16",) * 3
        out = src.read()
        # a 20 m window of the same scene: read on the 10 m grid
        part = src.read(3, window=Window(40, 30, 50, 40))
    assert (out[0] == bands["red"][0]).all() and (out[1] == bands["green"][0]).all()
    blue_10m = bands["blue"][0].repeat(2, axis=0).repeat(2, axis=1)  # nearest neighbour at 2x
    assert (out[2] == blue_10m).all() and (part == blue_10m[30:70, 40:90]).all()


def test_vrt_keeps_a_dataset_mask(tmp_path: Path) -> None:
    data = np.full((1, 64, 64), 9, np.uint8)
    valid = np.ones((64, 64), bool)
    valid[:, :20] = False
    for colour in ("red", "green", "blue"):
        path = tmp_path / f"{colour}.tif"
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            prof = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8", "crs": UTM}
            with rasterio.open(path, "w", transform=from_origin(0, 640, 10, 10), **prof) as dst:
                dst.write(data)
                dst.write_mask(valid.astype(np.uint8) * 255)
    item = make_item("masked", {c: (str(tmp_path / f"{c}.tif"), band_meta(c)) for c in ("red", "green", "blue")})
    scene = scene_from_item(item)
    with rasterio.open(scene.path) as src:
        assert MaskFlags.per_dataset in src.mask_flag_enums[0]
        assert ((src.read_masks(1) > 0) == valid).all()


def test_vrt_refuses_mixed_crs(tmp_path: Path) -> None:
    data = np.ones((1, 8, 8), np.uint8)
    write_cog(tmp_path / "red.tif", data)
    write_cog(tmp_path / "green.tif", data)
    write_cog(tmp_path / "blue.tif", data, crs="EPSG:32633")
    item = make_item("mixed", {c: (str(tmp_path / f"{c}.tif"), band_meta(c)) for c in ("red", "green", "blue")})
    with pytest.raises(UserError, match=r"STAC item mixed: assets red and blue have different CRSs"):
        scene_from_item(item)
    (tmp_path / "blue.tif").unlink()
    with pytest.raises(UserError, match=r"STAC item mixed: cannot open asset blue \("):
        scene_from_item(item)


def test_item_collection(tmp_path: Path, rgb: tuple[Path, np.ndarray]) -> None:
    cog, _ = rgb
    coll = pystac.ItemCollection(
        [
            make_item("a", {"visual": ("data/visual.tif", {})}),  # relative to the collection file
            make_item("b", {"visual": (cog.as_uri(), {})}),  # file:// URL
            make_item(
                "c",
                {"visual": ("https://example.com/c/visual.tif", {})},
                when=None,
                start_datetime="2023-01-01T00:00:00Z",
                end_datetime="2023-12-31T23:59:59Z",
            ),
            make_item("bad/id:1", {"nothing": ("x.txt", {"type": "text/plain"})}),
        ]
    )
    path = save(coll, cog.parent.parent / "coll.json")
    assert is_stac(path)
    items = load_items(path)
    assert [i.item.id for i in items] == ["a", "b", "c", "bad/id:1"] and {i.base for i in items} == {str(path)}
    scenes = [scene_from_item(i.item, base=i.base) for i in items[:3]]
    assert [s.path for s in scenes] == [str(cog), str(cog), "/vsicurl/https://example.com/c/visual.tif"]
    assert scenes[2].datetime == "2023-01-01T00:00:00Z/2023-12-31T23:59:59Z"
    assert StacScene("bad/id:1", None, "", (), "", None, ()).stem == "bad_id_1"
    with pytest.raises(UserError, match="STAC item bad/id:1"):
        resolve_stac(path)  # the first bad item stops resolve_stac; batch goes item by item


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        (
            json.dumps({"type": "Catalog", "id": "x", "stac_version": "1.0.0"}),
            "not a STAC Item or ItemCollection (type 'Catalog')",
        ),
        (json.dumps({"type": "FeatureCollection", "features": []}), "the STAC ItemCollection has no items"),
        (json.dumps({"type": "Feature", "stac_version": "1.0.0", "id": "x"}), "not a valid STAC Feature"),
    ],
)
def test_bad_documents(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "doc.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError) as e:
        load_items(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


# --- Items and COGs over HTTP ------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_cog(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, np.ndarray]:
    """An 8192² 3-band uint8 COG (512² ZSTD tiles, overviews) as bytes, and one 512² tile's pixels.

    Each tile holds the same smooth pattern with 1 % random pixels, so tiles compress to about
    a third of their 768 KiB and the file is about 40 MB.
    """
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:512, 0:512]
    tile = np.stack([((yy + xx * k) // 8 % 200).astype(np.uint8) for k in (1, 2, 3)])
    noisy = rng.random(tile.shape) < 0.01
    tile[noisy] = rng.integers(0, 255, int(noisy.sum()), dtype=np.uint8)
    path = tmp_path_factory.mktemp("big") / "big.tif"
    write_cog(path, np.tile(tile, (1, 16, 16)), res=0.5, blocksize=512, compress="ZSTD")
    return path.read_bytes(), tile


def _tile_spans(data: bytes, blocks: list[tuple[int, int]], folder: Path) -> tuple[int, list[tuple[int, int]]]:
    """From the COG's own TIFF tags: where its header ends, and the byte span of each block."""
    path = folder / "tags.tif"
    path.write_bytes(data)
    with rasterio.open(path) as src:
        spans = []
        for i, j in blocks:
            off = int(src.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=1))
            size = int(src.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=1))
            spans.append((off - 4, off + size + 4))  # COG tiles have a 4-byte leader and trailer
        first_data = min(
            int(ov.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
            for ov in [src] + [rasterio.open(path, overview_level=k) for k in range(len(src.overviews(1)))]
        )
    return first_data, spans


def _chunked(a: int, b: int) -> int:
    """Bytes of the 16 KiB chunks that cover ``[a, b)`` (GDAL fetches whole chunks at most)."""
    return (-(-b // CHUNK) - a // CHUNK) * CHUNK


@pytest.mark.slow
def test_small_window_of_a_big_remote_cog(
    big_cog: tuple[bytes, np.ndarray], tmp_path: Path, rgb: tuple[Path, np.ndarray]
) -> None:
    """A 512² window of an 8192² COG over HTTP downloads its 4 tiles and the header, nothing else."""
    data, tile = big_cog
    with HttpServer(files={"cogs/big.tif": data}) as server:
        item = make_item("big", {"visual": ("../cogs/big.tif", {"roles": ["visual"]})})
        server.files["items/big.json"] = json.dumps(item.to_dict(transform_hrefs=False)).encode()
        (scene,) = resolve_stac(server.url_for("items/big.json"))
        assert scene.path == "/vsicurl/" + server.url_for("cogs/big.tif")
        window = Window(3000, 3000, 512, 512)
        with cloud_env(scene.sources), rasterio.open(scene.path) as src:
            assert src.block_shapes[0] == (512, 512) and src.width == 8192
            blocks = blocks_touched(window, src.block_shapes[0], src.width, src.height)
            got = src.read(list(scene.bands or ()), window=window)
        assert blocks == [(5, 5), (5, 6), (6, 5), (6, 6)]
        expected = np.tile(tile, (1, 2, 2))[:, 3000 % 512 : 3000 % 512 + 512, 3000 % 512 : 3000 % 512 + 512]
        assert (got == expected).all()
        sent = server.bytes_sent["cogs/big.tif"]
        requests = server.requests
    header_end, spans = _tile_spans(data, blocks, tmp_path)
    # GDAL's open reads the first 32 KiB (the COG header is in front); then each tile (span
    # rounded out to 16 KiB chunks at most); consecutive tiles merged into one request
    bound = max(2 * CHUNK, _chunked(0, header_end)) + sum(_chunked(a, b) for a, b in spans)
    assert sent <= bound, (sent, bound)
    assert sent <= 0.02 * len(data)  # about 1.4 % of a 40 MB file
    assert set(requests) == {"items/big.json", "cogs/big.tif"}  # no side-car probing
    assert requests["cogs/big.tif"] <= 2 + len(spans)  # HEAD, header, at most one GET per tile

    # a window aligned to the COG tiles reads exactly one tile
    with HttpServer(files={"big2.tif": data}) as server:
        url = "/vsicurl/" + server.url_for("big2.tif")
        with cloud_env([url]), rasterio.open(url) as src:
            aligned = align_window(Window(3100, 3100, 300, 300), src.block_shapes[0], src.width, src.height)
            assert aligned == Window(3072, 3072, 512, 512)
            server.reset_counters()
            assert (src.read(window=aligned) == tile).all()
        ((a, b),) = _tile_spans(data, [(6, 6)], tmp_path)[1]
        assert server.bytes_sent["big2.tif"] <= _chunked(a, b) and server.gets["big2.tif"] == 1


def test_remote_reads_from_reader_threads(rgb: tuple[Path, np.ndarray]) -> None:
    """cloud_env is process-wide: reader threads started inside it read with its options."""
    cog, data = rgb
    with HttpServer(files={"v.tif": cog.read_bytes()}) as server:
        url = "/vsicurl/" + server.url_for("v.tif")
        local = threading.local()

        def read(row: int) -> np.ndarray:
            if not hasattr(local, "src"):
                local.src = rasterio.open(url)
            return local.src.read(window=Window(0, row, 300, 40))

        with cloud_env([url]), ThreadPoolExecutor(2) as pool:
            parts = list(pool.map(read, range(0, 200, 40)))
        assert (np.concatenate(parts, axis=1) == data).all()
        assert set(server.requests) == {"v.tif"}  # no .aux.xml/.msk/directory probes from any thread


def test_remote_separate_assets_vrt(colours: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, bands = colours
    with HttpServer(root=folder) as server:
        item = make_item("s2", {c: (f"../{c}.tif", band_meta(c)) for c in ("red", "green", "blue")})
        server.files["stac/s2.json"] = json.dumps(item.to_dict(transform_hrefs=False)).encode()
        (scene,) = resolve_stac(server.url_for("stac/s2.json"))
        assert scene.sources == tuple("/vsicurl/" + server.url_for(f"{c}.tif") for c in ("red", "green", "blue"))
        assert scene.name == f"STAC item s2 assets red,green,blue ({server.url_for('stac/s2.json')})"
        with cloud_env(scene.sources), rasterio.open(scene.path) as src:
            out = src.read(window=Window(10, 20, 30, 40))
    assert (out[0] == bands["red"][0, 20:60, 10:40]).all() and (out[1] == bands["green"][0, 20:60, 10:40]).all()
    assert (out[2] == bands["blue"][0].repeat(2, 0).repeat(2, 1)[20:60, 10:40]).all()


def test_remote_errors(colours: tuple[Path, dict[str, np.ndarray]]) -> None:
    folder, _ = colours
    with HttpServer(root=folder) as server:
        with pytest.raises(UserError, match=r"items/missing.json: HTTP 404"):
            resolve_stac(server.url_for("items/missing.json"))
        item = make_item(
            "gone",
            {c: (f"../{c}{'-gone' if c == 'green' else ''}.tif", band_meta(c)) for c in ("red", "green", "blue")},
        )
        server.files["items/gone.json"] = json.dumps(item.to_dict(transform_hrefs=False)).encode()
        with pytest.raises(UserError, match=r"STAC item gone \(http://.*/items/gone.json\): cannot open asset green"):
            resolve_stac(server.url_for("items/gone.json"))


def test_is_stac(tmp_path: Path, rgb: tuple[Path, np.ndarray]) -> None:
    assert is_stac("https://host/items/x.json") and not is_stac("https://host/cog.tif")
    item = json.dumps(make_item("api", {"visual": (str(rgb[0]), {})}).to_dict(transform_hrefs=False)).encode()
    with HttpServer(files={"collections/c/items/api": item, "cog": rgb[0].read_bytes()}) as server:
        server.types["collections/c/items/api"] = "application/geo+json; charset=utf-8"
        assert is_stac(server.url_for("collections/c/items/api"))  # a STAC API item URL: asked with HEAD
        assert not is_stac(server.url_for("cog")) and not is_stac(server.url_for("missing"))
        assert server.heads["collections/c/items/api"] == 1 and server.gets["collections/c/items/api"] == 0
        (scene,) = resolve_stac(server.url_for("collections/c/items/api"))
        assert scene.item_id == "api" and scene.path == str(rgb[0])
    (tmp_path / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature"}]}))
    assert not is_stac(tmp_path / "a.geojson")  # plain GeoJSON (an AOI), not STAC
    (tmp_path / "b.json").write_text("{broken")
    assert is_stac(tmp_path / "b.json")  # so that resolve_stac says what is wrong with it
