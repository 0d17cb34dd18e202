"""Bytes a tiled read of a remote COG downloads, by reading strategy.

A COG (3 bands, uint8, 512² ZSTD tiles, overviews) is served by the loopback test server
(tests/http_server.py, its own process) and read as predict reads a scene: overlapping tiles
(``--tile`` px, ``--overlap`` px) over a ``--region`` px square. Baseline, measured in the same
run: the bytes of the COG tiles the region touches (from the file's own TIFF tags), i.e. what a
reader that fetches every tile exactly once downloads. Each strategy prints downloaded bytes /
baseline, HTTP requests and seconds:

- ``gdal defaults``: one handle, no cloud options (GDAL probes side-car files and lists the folder);
- ``cloud_env, 1 handle``: one handle, :func:`segnext_geo.raster.cloud.cloud_env`;
- ``cloud_env, 2 threads``: a handle per reader thread (as ``SceneSource`` reads);
- ``cloud_env, aligned rows``: one block-aligned read per row of tiles
  (:func:`~segnext_geo.raster.cloud.align_window`), tiles cut from it in memory;
- ``SceneSource, 2 threads``: how ``predict`` reads (:class:`~segnext_geo.raster.SceneSource`
  from two reader threads; a remote scene shares one handle).

    python benchmarks/remote_cog_reads.py                  # 4096² COG, 2048² region, 640 tiles, 128 overlap
    python benchmarks/remote_cog_reads.py --size 8192 --region 4096
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from http_server import HttpServer

from segnext_geo.raster import SceneSource, open_scene
from segnext_geo.raster.cloud import align_window, blocks_touched, cloud_env


def write_cog(path: Path, size: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512]
    tile = np.stack([((yy + xx * k) // 8 % 200).astype(np.uint8) for k in (1, 2, 3)])
    noisy = rng.random(tile.shape) < 0.01
    tile[noisy] = rng.integers(0, 255, int(noisy.sum()), dtype=np.uint8)
    data = np.tile(tile, (1, size // 512, size // 512))
    prof = {"driver": "COG", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32632"}
    prof.update(transform=from_origin(500_000, 6_000_000, 0.5, 0.5), blocksize=512, compress="ZSTD")
    with rasterio.open(path, "w", overview_resampling="nearest", **prof) as dst:
        dst.write(data)


def tile_windows(region: int, tile: int, overlap: int) -> list[list[Window]]:
    """Rows of tile windows over ``[0, region)²``, the last tile pulled back to the edge."""
    stride = tile - overlap
    starts = sorted({min(i, region - tile) for i in range(0, region - overlap, stride)})
    return [[Window(x, y, tile, tile) for x in starts] for y in starts]


def unique_block_bytes(path: Path, rows: list[list[Window]]) -> int:
    with rasterio.open(path) as src:
        blocks = {b for row in rows for w in row for b in blocks_touched(w, (512, 512), src.width, src.height)}
        return sum(int(src.get_tag_item(f"BLOCK_SIZE_{j}_{i}", "TIFF", bidx=1)) for i, j in blocks)


def one_handle(url: str, rows: list[list[Window]]) -> None:
    with rasterio.open(url) as src:
        for row in rows:
            for w in row:
                src.read(window=w)


def two_threads(url: str, rows: list[list[Window]]) -> None:
    local = threading.local()
    handles: list[rasterio.DatasetReader] = []

    def read(w: Window) -> None:
        if not hasattr(local, "src"):
            local.src = rasterio.open(url)
            handles.append(local.src)
        local.src.read(window=w)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(read, [w for row in rows for w in row]))
    for h in handles:
        h.close()


def scene_source(url: str, rows: list[list[Window]]) -> None:
    info = open_scene(url, (1, 2, 3), (1, 2, 3), needed=3)
    with SceneSource(info) as src, ThreadPoolExecutor(2) as pool:
        list(pool.map(src.read, [w for row in rows for w in row]))


def aligned_rows(url: str, rows: list[list[Window]]) -> None:
    with rasterio.open(url) as src:
        for row in rows:
            x0, y0 = min(int(w.col_off) for w in row), int(row[0].row_off)
            x1, y1 = max(int(w.col_off + w.width) for w in row), int(row[0].row_off + row[0].height)
            big = align_window(Window(x0, y0, x1 - x0, y1 - y0), src.block_shapes[0], src.width, src.height)
            data = src.read(window=big)
            for w in row:
                r, c = int(w.row_off - big.row_off), int(w.col_off - big.col_off)
                _ = data[:, r : r + int(w.height), c : c + int(w.width)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--region", type=int, default=2048)
    ap.add_argument("--tile", type=int, default=640)
    ap.add_argument("--overlap", type=int, default=128)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segnext-cog-bench-"))
    try:
        cog = work / "scene.tif"
        write_cog(cog, args.size)
        rows = tile_windows(args.region, args.tile, args.overlap)
        baseline = unique_block_bytes(cog, rows)
        n_tiles = sum(len(r) for r in rows)
        print(
            f"COG {args.size}² (3 x uint8, 512² ZSTD tiles, {cog.stat().st_size / 2**20:.1f} MiB); {n_tiles} tiles of "
            f"{args.tile} px, overlap {args.overlap}, over {args.region}²; {os.cpu_count()} cores"
        )
        print(f"baseline: the COG tiles the region touches, once each = {baseline / 2**20:.2f} MiB\n")
        strategies: list[tuple[str, bool, Callable[[str, list[list[Window]]], None]]] = [
            ("gdal defaults, 1 handle", False, one_handle),
            ("cloud_env, 1 handle", True, one_handle),
            ("cloud_env, 2 threads", True, two_threads),
            ("cloud_env, aligned rows", True, aligned_rows),
            ("SceneSource, 2 threads", True, scene_source),
        ]
        print(f"{'strategy':<26} {'MiB':>8} {'/ baseline':>11} {'requests':>9} {'seconds':>8}")
        for i, (name, env, fn) in enumerate(strategies):
            with HttpServer(files={f"{i}/scene.tif": cog.read_bytes()}) as server:
                url = "/vsicurl/" + server.url_for(f"{i}/scene.tif")
                t = time.perf_counter()
                if env:
                    with cloud_env([url]):
                        fn(url, rows)
                else:
                    fn(url, rows)
                dt = time.perf_counter() - t
                sent, requests = server.total_bytes, sum(server.requests.values())
            print(f"{name:<26} {sent / 2**20:>8.2f} {sent / baseline:>11.2f} {requests:>9} {dt:>8.2f}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\npeak RSS of this process: {peak:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
