"""Block-wise vectorization against whole-array ``rasterio.features.shapes``, same masks, same run.

Masks: realistic segmentation-like rasters (blobs of 6 classes with speckle along their
edges, nodata corners of a rotated footprint), written as tiled uint8 GeoTIFFs with nodata 255,
as ``predict`` writes them. Every variant runs in its own subprocess so peak memory (RSS,
sampled over the whole process tree, workers included) of one does not pollute another:

- ``shapes``: read the whole band, ``shapes(mask=...)`` on it, build the shapely polygons
  (the bare whole-array baseline; writes nothing);
- ``shapes+gpkg``: the same, plus the attributes and one GeoPackage write (the same output as
  ``vectorize``);
- ``vectorize``: :func:`segnext_geo.vector.vectorize_raster`, block 2048, 1 process;
- ``vectorize -w2``: the same with 2 worker processes.

Prints wall time and its ratio against each baseline, CPU time (all processes, and the main
process alone: its share bounds the speed-up workers can give), peak RSS and its ratio, and
polygons/s. Each figure is the fastest of ``--repeats`` round-robin runs.

    python benchmarks/vectorize.py                   # 2048^2 and 8192^2
    python benchmarks/vectorize.py --sizes 2048      # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CLASSES = ["background", "building", "road", "water", "vegetation", "bare"]


# -- masks ----------------------------------------------------------------------------------------
def _lattice_noise(grid: np.ndarray, rows: np.ndarray, w: int, cell: int) -> np.ndarray:
    """Smooth value noise from a lattice ``grid`` sampled at ``rows`` x ``range(w)`` (cells of ``cell`` px)."""
    y = rows.astype(np.float32) / cell
    x = np.arange(w, dtype=np.float32) / cell
    y0, x0 = y.astype(np.int64), x.astype(np.int64)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    g0, g1 = grid[y0], grid[y0 + 1]
    return (g0[:, x0] * (1 - fx) + g0[:, x0 + 1] * fx) * (1 - fy) + (g1[:, x0] * (1 - fx) + g1[:, x0 + 1] * fx) * fy


def write_blob_mask(path: Path, size: int, seed: int = 0) -> None:
    """A ``size``² segmentation-like class raster (uint8, nodata 255, 512-px tiles, UTM 32N, 0.5 m)."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    octaves = ((192, 1.0), (48, 0.5), (12, 0.25), (4, 0.1))  # cell px, weight
    bias = np.array([0.18, 0.0, 0.0, 0.02, 0.05, 0.0], np.float32)  # background dominates
    grids = [[rng.random((size // c + 2, size // c + 2), dtype=np.float32) for c, _ in octaves] for _ in CLASSES]
    ang = np.deg2rad(11.0)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint8",
        "nodata": 255,
        "crs": "EPSG:32632",
        "transform": from_origin(500_000.0, 5_000_000.0, 0.5, 0.5),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(class_names=json.dumps(CLASSES))
        for r0 in range(0, size, 512):
            rows = np.arange(r0, min(r0 + 512, size))
            best = None
            label = np.zeros((len(rows), size), np.uint8)
            for c in range(len(CLASSES)):
                f = sum(wt * _lattice_noise(grids[c][o], rows, size, cell) for o, (cell, wt) in enumerate(octaves))
                f = f + bias[c]
                if best is None:
                    best = f
                else:
                    better = f > best
                    label[better] = c
                    best = np.where(better, f, best)
            yy, xx = np.meshgrid(rows - (size - 1) / 2, np.arange(size) - (size - 1) / 2, indexing="ij")
            u = xx * np.cos(ang) + yy * np.sin(ang)
            v = -xx * np.sin(ang) + yy * np.cos(ang)
            label[(np.abs(u) > 0.46 * size) | (np.abs(v) > 0.46 * size)] = 255
            dst.write(label, 1, window=rasterio.windows.Window(0, r0, size, len(rows)))


# -- one variant in a subprocess ------------------------------------------------------------------
class TreeRSS:
    """Samples this process and all its descendants every 20 ms.

    Keeps the peak of their summed RSS, and the last CPU time (user + system) seen for each
    descendant (workers are children of the forkserver, so ``RUSAGE_CHILDREN`` misses them).
    """

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = 0
        self.child_cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        total = self.proc.memory_info().rss
        for ch in self.proc.children(recursive=True):
            try:
                total += ch.memory_info().rss
                t = ch.cpu_times()
                self.child_cpu[ch.pid] = t.user + t.system
            except Exception:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            time.sleep(0.02)

    def __enter__(self) -> TreeRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._sample())


def whole_array(mask: Path, out: Path | None) -> int:
    """The baseline: whole band -> shapes -> shapely (-> attributes -> one GeoPackage write)."""
    import pyogrio.raw
    import rasterio
    import shapely
    from rasterio.features import shapes

    from segnext_geo.vector.polygonize import shapes_to_polygons

    with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(mask) as src:
        a = src.read(1)
        tf, crs = src.transform, src.crs
    valid = (a != 255) & (a != 0)
    geoms, values, _ = shapes_to_polygons(shapes(a, mask=valid, connectivity=4, transform=tf))
    if out is not None:
        names = np.array(CLASSES, dtype=object)[values]
        pyogrio.set_gdal_config_options({"OGR_SQLITE_SYNCHRONOUS": "OFF"})  # as vectorize does
        pyogrio.raw.write(
            out,
            shapely.to_wkb(geoms),
            [
                values.astype(np.int32),
                names,
                shapely.area(geoms),
                shapely.length(geoms),
                np.full(len(geoms), str(mask)),
            ],
            ["class_id", "class_name", "area_m2", "perimeter_m", "source"],
            driver="GPKG",
            geometry_type="Polygon",
            crs=crs.to_wkt(),
        )
    return len(geoms)


def child(variant: str, mask: Path, out: Path) -> None:
    """Run one variant and print wall seconds, tree RSS peak, own ru_maxrss, CPU seconds and the count (JSON)."""
    from segnext_geo.vector import VectorOptions, vectorize_raster

    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with TreeRSS() as rss:
        t = time.perf_counter()
        if variant == "shapes":
            n = whole_array(mask, None)
        elif variant == "shapes+gpkg":
            n = whole_array(mask, out)
        else:  # "vectorize[-b<block>][-w<workers>]"
            opts = dict(part.split("=") for part in variant.split()[1:])
            n = vectorize_raster(
                mask,
                out,
                VectorOptions(block_size=int(opts.get("b", 2048)), workers=int(opts.get("w", 1))),
                overwrite=True,
                progress=False,
            ).count
        s = time.perf_counter() - t
    ru = resource.getrusage(resource.RUSAGE_SELF)
    main_cpu = ru.ru_utime - cpu0.ru_utime + ru.ru_stime - cpu0.ru_stime
    out = {"s": s, "rss_mb": rss.peak / 2**20, "self_mb": ru.ru_maxrss / 1024, "n": n}
    out.update(main_cpu=main_cpu, cpu=main_cpu + sum(rss.child_cpu.values()))
    print(json.dumps(out))


def run_variant(variant: str, mask: Path, out: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", variant, str(mask), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant (the fastest is kept)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segnext_geo_bench_vectorize")
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "MASK", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"cpus: {os.cpu_count()}; every variant in its own subprocess; RSS = peak over the process tree")
    for size in args.sizes:
        mask = args.workdir / f"blobs_{size}.tif"
        if not mask.exists():
            t = time.perf_counter()
            write_blob_mask(mask, size)
            print(f"wrote {mask} in {time.perf_counter() - t:.1f} s")
        variants = ["shapes", "shapes+gpkg", "vectorize b=2048", "vectorize b=2048 w=2", "vectorize b=1024 w=2"]
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for _ in range(args.repeats):  # round-robin, so load changes hit every variant alike
            for v in variants:
                runs[v].append(run_variant(v, mask, args.workdir / f"out_{size}_{v.replace(' ', '_')}.gpkg"))
        res = {v: min(r, key=lambda x: x["s"]) for v, r in runs.items()}
        base, base_w = res["shapes"], res["shapes+gpkg"]
        print(f"\n{size}x{size}: {base['n']} polygons (whole array) / {res['vectorize b=2048']['n']} (vectorize)")
        print(
            "| variant | time s | vs shapes | vs shapes+gpkg | CPU s, all (main) | peak RSS MB, all (main) "
            "| RSS vs shapes+gpkg | polygons/s |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for v, r in res.items():
            print(
                f"| {v} | {r['s']:.2f} | {r['s'] / base['s']:.2f}x | {r['s'] / base_w['s']:.2f}x | "
                f"{r['cpu']:.2f} ({r['main_cpu']:.2f}) | {r['rss_mb']:.0f} ({r['self_mb']:.0f}) | "
                f"{r['rss_mb'] / base_w['rss_mb']:.2f}x | {r['n'] / r['s']:,.0f} |"
            )


if __name__ == "__main__":
    main()
