"""Batch processing of scene archives on Dask distributed.

One Dask task per scene runs the same pipeline as ``segnext-geo predict`` (class raster, then
polygons). A local cluster of worker processes is started by default; ``scheduler=`` connects
to an existing cluster instead. Each worker process loads the checkpoint once and keeps it.

The output folder holds ``manifest.jsonl``: one JSON row per attempt (input path, size, mtime,
outputs, status ``done``/``failed``/``skipped`` (done by an earlier run), error, timings, pixel and
polygon counts). The last row of an input is its state. A rerun skips inputs whose last row is
``done`` or ``skipped``, whose outputs exist and whose size and mtime are unchanged; failed
inputs are tried again.

STAC: an Item or ItemCollection file (``.json``/``.geojson``) among the inputs gives one task
per Item; its manifest rows are keyed ``FILE#ITEM_ID`` and carry ``item`` and ``datetime``,
and its outputs are named after the Item id. With an area of interest (``options.bbox`` or
``options.aoi``), a scene the area misses is recorded as ``skipped`` with the ``reason``
"outside the area of interest" and no outputs; a rerun does not try it again.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import socket
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError
from .inference.options import PredictOptions
from .raster.stac import StacScene, load_items, scene_from_item

if TYPE_CHECKING:
    from .inference.predict import PredictResult

__all__ = [
    "RASTER_SUFFIXES",
    "BatchSummary",
    "SceneJob",
    "check_batch_outputs",
    "discover_inputs",
    "read_manifest",
    "run_batch",
]

RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".jp2", ".img", ".ecw", ".nc"}
STAC_SUFFIXES = {".json", ".geojson"}
OUTSIDE = "outside the area of interest"
VECTOR_SUFFIXES = {"gpkg": ".gpkg", "parquet": ".parquet", "fgb": ".fgb", "geojson": ".geojson"}
MANIFEST = "manifest.jsonl"
#: Scenes with more pixels than this (an 8192 x 8192 scene) are cut into bands over the whole cluster.
DEFAULT_SPLIT_ABOVE = 8192 * 8192


@dataclass(frozen=True)
class SceneJob:
    """One input scene and where its outputs go (``rel`` mirrors its path under the output folder).

    For a STAC Item, ``path`` is the Item or ItemCollection file, ``stac`` the Item's scene (or
    ``None`` with ``error`` when the Item has nothing to read: it is recorded as failed).
    """

    path: Path
    rel: Path
    stac: StacScene | None = None
    item: str | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        """The manifest's ``input``: the path, or ``FILE#ITEM_ID`` for a STAC Item."""
        return f"{self.path}#{self.item}" if self.item is not None else str(self.path)

    @property
    def scene(self) -> str | StacScene:
        """What ``predict_scene`` reads."""
        return self.stac if self.stac is not None else str(self.path)

    def outputs(self, out_dir: Path, fmt: str, mask: bool) -> dict[str, str]:
        base = out_dir / self.rel
        outs = {"vector": str(base.with_name(base.name + VECTOR_SUFFIXES[fmt]))}
        if mask:
            outs["mask"] = str(base.with_name(base.name + ".mask.tif"))
        return outs


@dataclass
class BatchSummary:
    """Counts and throughput of one batch run."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    pixels: int = 0
    polygons: int = 0
    manifest: Path | None = None
    merged: Path | None = None
    merge_note: str = ""
    dashboard: str | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    outside: int = 0

    @property
    def scenes_per_minute(self) -> float:
        return self.done / self.elapsed_s * 60.0 if self.elapsed_s > 0 else 0.0


# --- inputs ------------------------------------------------------------------------------


def _is_raster(p: Path) -> bool:
    return p.suffix.lower() in RASTER_SUFFIXES


def discover_inputs(inputs: Sequence[str | Path], asset: str | None = None) -> list[SceneJob]:
    """Expand files, directories (recursive), glob patterns and list files (one path per line).

    Output names mirror each scene's path relative to the directory or glob root it was found
    under (a plain file keeps its bare name). Duplicates are dropped. A STAC Item or
    ItemCollection file (``.json``/``.geojson``) gives one job per Item, named after the Item
    id, reading ``asset`` (``--asset``) or the asset chosen as ``predict`` does.

    Raises:
        UserError: an input that does not exist, matches nothing, or yields no raster.
    """
    jobs: dict[Path | str, SceneJob] = {}

    def add_stac(path: Path) -> None:
        path = path.resolve()
        for it in load_items(path):
            item = it.item
            try:
                stac: StacScene | None = scene_from_item(item, asset=asset, base=it.base)
                error = None
            except UserError as e:
                stac, error = None, str(e)
            stem = stac.stem if stac is not None else item.id
            job = SceneJob(path, Path(stem), stac, item.id, error)
            jobs.setdefault(job.key, job)

    def add(path: Path, root: Path | None) -> None:
        path = path.resolve()
        rel = path.relative_to(root.resolve()) if root is not None else Path(path.name)
        jobs.setdefault(path, SceneJob(path, rel.with_suffix("")))

    for item in inputs:
        s = str(item)
        p = Path(s)
        if glob.has_magic(s):
            matches = sorted(Path(m) for m in glob.glob(s, recursive=True))
            root = Path(s.split("*")[0].split("?")[0].split("[")[0])
            root = root if root.is_dir() else root.parent
            hits = [m for m in matches if m.is_file() and _is_raster(m)]
            if not hits:
                raise UserError(f"{s}: the pattern matches no raster file")
            for m in hits:
                add(m, root)
        elif p.is_dir():
            hits = sorted(m for m in p.rglob("*") if m.is_file() and _is_raster(m))
            if not hits:
                raise UserError(f"{p}: the directory holds no raster file ({', '.join(sorted(RASTER_SUFFIXES))})")
            for m in hits:
                add(m, p)
        elif p.is_file() and p.suffix.lower() in {".txt", ".lst", ".list", ".csv"}:
            lines = [ln.strip() for ln in p.read_text().splitlines()]
            paths = [
                Path(ln) if Path(ln).is_absolute() else p.parent / ln for ln in lines if ln and not ln.startswith("#")
            ]
            if not paths:
                raise UserError(f"{p}: the list file names no scene")
            for q in paths:
                if not q.exists():
                    raise UserError(f"{p}: lists {q}, which does not exist")
                add(q, None)
        elif p.is_file() and p.suffix.lower() in STAC_SUFFIXES:
            add_stac(p)
        elif p.is_file():
            add(p, None)
        else:
            raise UserError(f"{p}: no such file or directory")
    return list(jobs.values())


# --- manifest ----------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The last row per input path (rows that cannot be parsed, e.g. a torn last line, are ignored)."""
    rows: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "input" in row:
            rows[row["input"]] = row
    return rows


class _Manifest:
    """Append-only JSON Lines writer, flushed and fsynced per row (survives a kill)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, row: dict[str, Any]) -> None:
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _fingerprint(path: Path) -> dict[str, Any]:
    try:
        st = path.stat()
    except OSError:
        return {"size": None, "mtime": None}
    return {"size": st.st_size, "mtime": st.st_mtime_ns}


def _is_complete(job: SceneJob, row: dict[str, Any] | None) -> bool:
    if not row or row.get("status") not in ("done", "skipped"):
        return False
    fp = _fingerprint(job.path)
    if row.get("size") != fp["size"] or row.get("mtime") != fp["mtime"]:
        return False
    return all(Path(p).exists() for p in (row.get("outputs") or {}).values())


# --- the per-scene task (runs on a Dask worker) -------------------------------------------

_RUNNERS: dict[tuple[Any, ...], Any] = {}
_RUNNERS_LOCK = threading.Lock()


def _worker_device(requested: str) -> str:
    """``auto`` on a multi-GPU worker -> the GPU matching the worker's index (round robin)."""
    if requested != "auto":
        return requested
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    n = torch.cuda.device_count()
    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        name = "0"
    tail = name.rsplit("-", 1)[-1]
    # a stable index: Python's hash() of a string differs between worker processes
    index = int(tail) if tail.isdigit() else zlib.crc32(name.encode())
    return f"cuda:{index % n}"


def _cached_runner(checkpoint: str, options: PredictOptions, threads: int) -> Any:
    """One :class:`~segnext_geo.inference.InferenceRunner` per worker process, kept across scenes
    (loaded, folded and, when compiled, compiled once), keyed on checkpoint, mtime and how it runs."""
    import torch

    from .inference import InferenceRunner
    from .models import load_model

    how = (options.device, options.precision, options.compile, options.deterministic, options.tta)
    key = (checkpoint, os.stat(checkpoint).st_mtime_ns if os.path.isfile(checkpoint) else 0, *how)
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            torch.set_num_threads(max(1, threads))
            model = load_model(checkpoint)
            runner = InferenceRunner(
                model,
                options.device,
                precision=options.precision,
                compile=options.compile,
                deterministic=options.deterministic,
                tta=options.tta,
            )
            _RUNNERS.clear()
            _RUNNERS[key] = runner
        return runner


def process_scene(
    scene: str | StacScene,
    outputs: dict[str, str],
    checkpoint: str,
    options: PredictOptions,
    threads: int = 1,
) -> dict[str, Any]:
    """Run predict + vectorize for one scene; never raises for a bad scene (the error is returned).

    Returns a manifest row fragment: status (``done``, ``failed``, or ``skipped`` with a
    ``reason`` when the area of interest misses the scene), error, timings, pixels, polygons,
    worker, and what ``--gsd`` decided (``gsd``).
    """
    t0 = time.perf_counter()
    row: dict[str, Any] = {"worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        from .inference import AreaMissesScene, predict_scene

        opts = options.replace(device=_worker_device(options.device))
        runner = _cached_runner(checkpoint, opts, threads)
        t_load = time.perf_counter()
        result = predict_scene(
            scene,
            runner,
            outputs["vector"],
            opts,
            mask_out=outputs.get("mask"),
            overwrite=True,  # the manifest, not the file system, says what is done
            progress=False,
        )
        row.update(
            _done(result),
            load_s=round(t_load - t0, 3),
        )
    except AreaMissesScene as e:
        for path in outputs.values():
            Path(path).unlink(missing_ok=True)
        row.update(status="skipped", reason=OUTSIDE, error=None, detail=str(e), pixels=0, polygons=0)
    except Exception as e:  # one bad scene never stops the rest
        msg = " ".join(str(e).split()) or type(e).__name__
        for path in outputs.values():  # nothing half-written may look done
            Path(path).unlink(missing_ok=True)
        row.update(status="failed", error=f"{type(e).__name__}: {msg}"[:500], pixels=0, polygons=0)
    row["elapsed_s"] = round(time.perf_counter() - t0, 3)
    import resource

    row["worker_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return row


def check_batch_outputs(
    jobs: Sequence[SceneJob], outputs: Sequence[dict[str, str]], extra: Sequence[tuple[str, Path]]
) -> None:
    """Refuse, before any work, outputs that are an input scene or that two scenes (or ``extra``
    outputs such as ``--merge``) would share. Linear in the number of scenes.

    Raises:
        UserError: naming the output, the scene(s) and the flag.
    """

    def keys(p: Path) -> list[object]:
        out: list[object] = [os.path.realpath(p)]
        try:
            st = p.stat()
            out.append((st.st_dev, st.st_ino))
        except OSError:
            pass
        return out

    inputs: dict[object, Path] = {}
    for job in jobs:
        for k in keys(job.path):
            inputs[k] = job.path
    owners: dict[object, str] = {}
    named = [(f"output of {job.path}", Path(p)) for job, outs in zip(jobs, outputs, strict=True) for p in outs.values()]
    for owner, p in [*named, *((flag, q) for flag, q in extra)]:
        for k in keys(p):
            if k in inputs:
                raise UserError(f"--out-dir: {p} ({owner}) is the input scene {inputs[k]}; choose another --out-dir")
            if k in owners and owners[k] != owner:
                raise UserError(f"--out-dir: {p} would be written twice ({owners[k]} and {owner}); rename one scene")
            owners[k] = owner


# --- the driver ----------------------------------------------------------------------------


def _make_client(scheduler: str | None, workers: int | None, threads_per_worker: int, gpus_per_worker: float) -> Any:
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise UserError(f"--scheduler: cannot connect to {scheduler} ({e})") from None
    n = workers or max(1, (os.cpu_count() or 1) // max(1, threads_per_worker))
    resources = {"GPU": gpus_per_worker} if gpus_per_worker else None
    cluster = LocalCluster(
        n_workers=n,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=":0",
        resources=resources,
        silence_logs=40,
    )
    return Client(cluster)


def run_batch(
    inputs: Sequence[str | Path],
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    fmt: str = "gpkg",
    mask: bool = False,
    scheduler: str | None = None,
    client: Any = None,
    workers: int | None = None,
    threads_per_worker: int = 1,
    gpus_per_worker: float = 0,
    retries: int = 2,
    merge: str | Path | None = None,
    merge_crs: str | None = None,
    options: PredictOptions | None = None,
    progress: bool = True,
    split_above: int | None = DEFAULT_SPLIT_ABOVE,
) -> BatchSummary:
    """Process every scene of ``inputs`` with ``checkpoint`` into ``out_dir``.

    Args:
        inputs: files, directories, glob patterns or list files (see :func:`discover_inputs`).
        checkpoint: the model checkpoint (loaded once per worker).
        out_dir: the output folder; it holds the mirrored outputs and ``manifest.jsonl``.
        fmt: vector format, ``gpkg`` | ``parquet`` | ``fgb`` | ``geojson``.
        mask: also keep the class raster (``<name>.mask.tif``).
        scheduler: address of an existing Dask scheduler (``tcp://host:8786``); else a LocalCluster.
        client: an existing ``distributed.Client`` (takes precedence over ``scheduler``).
        workers, threads_per_worker, gpus_per_worker: LocalCluster sizing and worker resources.
        retries: Dask retries of a task whose worker died.
        merge: write all polygons into this one file with a ``source`` column.
        merge_crs: reproject everything to this CRS when merging; else one layer per CRS.
        options: how each scene is predicted and vectorized (:class:`~segnext_geo.inference.PredictOptions`,
            with ``options.vector`` for the polygons); ``device="auto"`` spreads workers over GPUs.
        progress: tqdm bar over scenes with throughput.
        split_above: a scene with more pixels than this is cut into horizontal bands computed by
            every worker (:func:`~segnext_geo.inference.distributed.predict_scene_distributed`;
            the same output), when the cluster has more than one worker; ``None``: never.
    """
    from tqdm import tqdm

    if fmt not in VECTOR_SUFFIXES:
        raise UserError(f"--format: {fmt!r} is not one of {', '.join(VECTOR_SUFFIXES)}")
    if split_above is not None and (isinstance(split_above, bool) or int(split_above) < 1):
        raise UserError(f"--split-above: {split_above!r} pixels; give 1 or more")
    from .models.checkpoint import inspect_checkpoint

    # a file (absolute: workers may run elsewhere), a catalogue name or a URL (workers load it from their cache)
    ckpt = str(Path(checkpoint).resolve()) if Path(checkpoint).exists() else str(checkpoint)
    inspect_checkpoint(ckpt)  # fetch names/URLs and fail fast on a bad checkpoint, before any cluster starts
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out-dir: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise UserError(f"--out-dir: {out} is not writable")
    opts = options if options is not None else PredictOptions()
    opts.area()  # read the --aoi file now: a bad one fails before any cluster starts
    if opts.aoi is not None and Path(opts.aoi).exists():  # workers may run in another folder
        opts = opts.replace(aoi=str(Path(opts.aoi).resolve()))
    jobs = discover_inputs(inputs, opts.asset)
    manifest_path = out / MANIFEST
    extra = [("--merge", Path(merge)), ("manifest", manifest_path)] if merge else [("manifest", manifest_path)]
    check_batch_outputs(jobs, [job.outputs(out, fmt, mask) for job in jobs], extra)
    manifest = _Manifest(manifest_path)
    previous = read_manifest(manifest_path)
    summary = BatchSummary(manifest=manifest_path)
    todo: list[SceneJob] = []
    for job in jobs:
        row = previous.get(job.key)
        if job.error is not None:
            error = f"UserError: {job.error}"[:500]
            manifest.append({**_base_row(job), "status": "failed", "error": error, "pixels": 0, "polygons": 0})
            summary.failed += 1
            summary.failures.append((job.key, error))
        elif _is_complete(job, row):
            summary.skipped += 1
            assert row is not None
            manifest.append({**row, "status": "skipped", "finished": time.time(), "elapsed_s": 0.0})
        else:
            todo.append(job)
    t0 = time.perf_counter()
    if todo:
        own_client = client is None
        client = client or _make_client(scheduler, workers, threads_per_worker, gpus_per_worker)
        summary.dashboard = getattr(client, "dashboard_link", None)
        if progress and summary.dashboard:
            print(f"Dask dashboard: {summary.dashboard}")
        try:
            _submit_all(
                client,
                todo,
                out,
                fmt,
                mask,
                ckpt,
                opts,
                threads_per_worker,
                retries,
                gpus_per_worker,
                manifest,
                summary,
                progress,
                tqdm,
                split_above,
            )
        finally:
            if own_client:
                cluster = getattr(client, "cluster", None)
                client.close()
                if cluster is not None:
                    cluster.close()
    summary.elapsed_s = time.perf_counter() - t0
    if merge:
        rows = read_manifest(manifest_path)
        done = [
            rows[j.key]
            for j in jobs
            if rows.get(j.key, {}).get("status") in ("done", "skipped") and "vector" in rows[j.key].get("outputs", {})
        ]
        summary.merged, summary.merge_note = merge_outputs(
            [r["outputs"]["vector"] for r in done], [r["input"] for r in done], Path(merge), merge_crs
        )
    return summary


def _submit_all(
    client: Any,
    todo: list[SceneJob],
    out: Path,
    fmt: str,
    mask: bool,
    ckpt: str,
    opts: PredictOptions,
    threads: int,
    retries: int,
    gpus: float,
    manifest: _Manifest,
    summary: BatchSummary,
    progress: bool,
    tqdm: Any,
    split_above: int | None = None,
) -> None:
    from distributed import as_completed

    workers = len(client.nthreads())
    big = [
        j for j in todo if workers > 1 and split_above is not None and j.stac is None and _pixels(j.path) > split_above
    ]
    futures = {}
    for job in todo:
        if job in big:
            continue
        outputs = job.outputs(out, fmt, mask)
        for p in outputs.values():
            Path(p).parent.mkdir(parents=True, exist_ok=True)
        futures[_submit_scene(client, job, outputs, ckpt, opts, threads, retries, gpus)] = (job, outputs)
    bar = tqdm(total=len(todo), unit="scene", disable=not progress, desc="scenes")
    t0 = time.perf_counter()

    def split_rows() -> Iterable[tuple[SceneJob, dict[str, str], dict[str, Any]]]:
        for job in big:  # in the driver, while the small scenes run on the cluster
            outputs = job.outputs(out, fmt, mask)
            Path(outputs["vector"]).parent.mkdir(parents=True, exist_ok=True)
            yield job, outputs, _process_split(client, job, outputs, ckpt, opts, retries, gpus, threads)

    def task_rows() -> Iterable[tuple[SceneJob, dict[str, str], dict[str, Any]]]:
        for fut in as_completed(futures):
            job, outputs = futures[fut]
            try:
                row = fut.result()
            except Exception as e:  # the worker died more than `retries` times, or the task was lost
                row = {
                    "status": "failed",
                    "error": f"{type(e).__name__}: {' '.join(str(e).split())}"[:500],
                    "pixels": 0,
                    "polygons": 0,
                }
            yield job, outputs, row

    for job, outputs, row in itertools.chain(split_rows(), task_rows()):
        base = {**_base_row(job), "outputs": outputs, "finished": time.time()}
        row = {**base, **row}
        if row["status"] == "skipped":  # the area of interest misses the scene
            row["outputs"] = {}
            summary.outside += 1
        elif row["status"] != "done":
            row["outputs"] = {}
            summary.failed += 1
            summary.failures.append((job.key, row["error"]))
        else:
            summary.done += 1
            summary.pixels += row["pixels"]
            summary.polygons += row["polygons"]
        manifest.append(row)
        bar.update(1)
        rate = summary.done / max(time.perf_counter() - t0, 1e-9) * 60
        bar.set_postfix(done=summary.done, failed=summary.failed, per_min=f"{rate:.1f}")
    bar.close()


def _base_row(job: SceneJob) -> dict[str, Any]:
    """The manifest fields that name a job: ``input``, the file's size and mtime, the STAC Item."""
    row: dict[str, Any] = {"input": job.key, **_fingerprint(job.path)}
    if job.item is not None:
        row["item"] = job.item
        row["datetime"] = job.stac.datetime if job.stac is not None else None
    return row


def _pixels(path: Path) -> int:
    """Width x height of a scene (0 when it cannot be opened: its own task reports why)."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            return int(ds.width) * int(ds.height)
    except Exception:
        return 0


def _done(result: PredictResult) -> dict[str, Any]:
    """The manifest fields of a finished scene, from what :func:`predict_scene` (or its
    distributed twin) returned."""
    return {
        "status": "done",
        "error": None,
        "pixels": int(result.pixels),
        "polygons": int(result.polygons or 0),
        "warnings": list(result.warnings),
        "gsd": result.gsd,
        "forward_s": round(result.forward_s, 3),
    }


def _submit_scene(
    client: Any,
    job: SceneJob,
    outputs: dict[str, str],
    ckpt: str,
    opts: PredictOptions,
    threads: int,
    retries: int,
    gpus: float,
) -> Any:
    """One scene as one Dask task (:func:`process_scene`), retried ``retries`` times, holding
    ``gpus`` of a worker's ``GPU`` resource; the future."""
    return client.submit(
        process_scene,
        job.scene,
        outputs,
        ckpt,
        opts,
        threads,
        retries=retries,
        pure=False,
        resources={"GPU": gpus} if gpus else None,
    )


def _process_split(
    client: Any,
    job: SceneJob,
    outputs: dict[str, str],
    ckpt: str,
    opts: PredictOptions,
    retries: int,
    gpus: float,
    threads: int,
) -> dict[str, Any]:
    """One big scene cut into bands over the whole cluster, each band with ``threads`` torch threads
    as the unsplit scenes' tasks; a manifest row fragment (never raises). A scene that ``--gsd``
    resamples (which does not run in bands) runs as one ordinary task instead."""
    from .inference import AreaMissesScene
    from .inference.distributed import DistributedOptions, ResampleOnCluster, predict_scene_distributed

    t0 = time.perf_counter()
    row: dict[str, Any] = {"worker": "driver"}
    try:
        r = predict_scene_distributed(
            job.scene,
            ckpt,
            outputs["vector"],
            opts,
            DistributedOptions(retries=retries, gpus_per_worker=gpus, threads=threads),
            mask_out=outputs.get("mask"),
            overwrite=True,  # the manifest, not the file system, says what is done
            progress=False,
            client=client,
        )
        row.update(
            _done(r),
            split={"bands": r.bands, "halo_tiles": r.halo_tiles, "workers": sorted(set(r.band_workers or []))},
        )
    except ResampleOnCluster:
        fut = _submit_scene(client, job, outputs, ckpt, opts, threads, retries, gpus)
        try:
            return dict(fut.result())
        except Exception as e:  # the worker died more than `retries` times, or the task was lost
            row.update(status="failed", error=f"{type(e).__name__}: {' '.join(str(e).split())}"[:500])
            row.update(pixels=0, polygons=0)
    except AreaMissesScene as e:
        for path in outputs.values():
            Path(path).unlink(missing_ok=True)
        row.update(status="skipped", reason=OUTSIDE, error=None, detail=str(e), pixels=0, polygons=0)
    except Exception as e:  # one bad scene never stops the rest
        msg = " ".join(str(e).split()) or type(e).__name__
        for path in outputs.values():
            Path(path).unlink(missing_ok=True)
        row.update(status="failed", error=f"{type(e).__name__}: {msg}"[:500], pixels=0, polygons=0)
    row["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return row


# --- merging -------------------------------------------------------------------------------


def merge_outputs(
    paths: Iterable[str], sources: Iterable[str], merged: Path, merge_crs: str | None
) -> tuple[Path, str]:
    """Write every scene's polygons into ``merged`` with a ``source`` column.

    With ``merge_crs`` all layers are reprojected into one layer in that CRS. Without it, scenes
    that share a CRS share a layer, and each CRS gets its own layer (``polygons_<EPSG>``), because
    one layer has one CRS; a single CRS gives a single layer named ``polygons``.
    """
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    from .outputs import atomic_output

    frames = []
    for path, src in zip(paths, sources, strict=True):
        df = pyogrio.read_dataframe(path)
        df["source"] = src
        frames.append(df)
    with atomic_output(merged, overwrite=True, option="--merge") as tmp:
        if not frames:
            gpd.GeoDataFrame({"source": []}, geometry=[], crs=merge_crs).to_file(tmp, layer="polygons")
            return merged, "no scene finished; wrote an empty layer"
        if merge_crs:
            parts = [f.to_crs(merge_crs) if f.crs is not None else f.set_crs(merge_crs) for f in frames]
            gdf = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=merge_crs)
            pyogrio.write_dataframe(gdf, tmp, layer="polygons")
            note = f"one layer 'polygons' reprojected to {merge_crs}"
        else:
            groups: dict[str, list[Any]] = {}
            for f in frames:
                groups.setdefault(f.crs.to_string() if f.crs is not None else "none", []).append(f)
            names = []
            for crs, parts in groups.items():
                layer = "polygons" if len(groups) == 1 else "polygons_" + crs.replace(":", "_").replace(" ", "_")
                gdf = gpd.GeoDataFrame(pd.concat(parts, ignore_index=True), crs=parts[0].crs)
                pyogrio.write_dataframe(gdf, tmp, layer=layer)
                names.append(layer)
            note = (
                "one layer 'polygons' (all scenes share a CRS)"
                if len(names) == 1
                else f"{len(names)} layers, one per CRS ({', '.join(names)}); pass --merge-crs to reproject into one"
            )
    return merged, note


def summary_dict(summary: BatchSummary) -> dict[str, Any]:
    d = asdict(summary)
    d["scenes_per_minute"] = summary.scenes_per_minute
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
