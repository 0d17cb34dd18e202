"""Where the work runs: in this process, or in a pool of worker processes, with the same results.

Two kinds of task: polygonizing a block (:class:`~.polygonize.BlockPolygonizer`) and finishing
the polygons whose pieces a seam merge completed (union + post-processing, :func:`finish_groups`).
Block results come back in row-major order (the seam merge needs that); the caller writes
finished groups in submission order, so the output is the same whatever ``workers`` is.

Worker processes start with ``forkserver`` (safe when the caller runs threads, as torch and
GDAL do) and preload only this module, so they import rasterio and shapely but not the
caller's ``__main__`` (which may import torch) nor pyogrio.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice

from ..errors import UserError
from .polygonize import BlockPolygonizer, BlockResult, PolygonizeJob
from .postprocess import Finished
from .seams import Group, unite

__all__ = ["Runner", "finish_groups", "init_worker", "run_block"]

_WORKER: BlockPolygonizer | None = None


def init_worker(job: PolygonizeJob) -> None:
    """Process-pool initializer: one :class:`BlockPolygonizer` per worker process.

    Workers ignore SIGINT: Ctrl-C reaches the whole process group, and only the main process
    should react (it cancels what is queued and cleans up); a worker killed mid-task would
    turn an interruption into a broken pool.
    """
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = BlockPolygonizer(job)


def run_block(ij: tuple[int, int]) -> BlockResult:
    """Process-pool task: polygonize block ``ij``."""
    assert _WORKER is not None, "init_worker was not called"
    return _WORKER(*ij)


def finish_groups(groups: Sequence[Group], job: PolygonizeJob | None = None) -> Finished:
    """Unite each group's pieces and post-process the polygons (min area, holes, features)."""
    job = job if job is not None else (_WORKER.job if _WORKER is not None else None)
    assert job is not None, "init_worker was not called"
    return job.finisher.finish(unite(groups, job.finisher.with_conf))


class Runner:
    """Runs the tasks of one job here (``workers == 1``) or in ``workers`` processes.

    Use as a context manager; :meth:`blocks` yields every block's result in row-major order,
    :meth:`finish` returns a future of :func:`finish_groups`.
    """

    def __init__(self, job: PolygonizeJob, workers: int) -> None:
        self.job = job
        self.workers = max(1, min(workers, len(job.grid)))
        self.note: str | None = None
        in_memory = [
            p for p in (job.mask.path, job.probs.path if job.probs else None) if p and p.startswith("/vsimem/")
        ]
        if self.workers > 1 and multiprocessing.current_process().daemon:
            # e.g. inside a Dask worker: daemonic processes may not start children
            self.note = f"--workers {workers}: running inside a daemonic process (a Dask worker?); using 1 process"
            self.workers = 1
        elif self.workers > 1 and in_memory:
            self.note = (
                f"--workers {workers}: {in_memory[0]} lives in this process's memory (/vsimem/), which worker "
                "processes cannot read; using 1 process"
            )
            self.workers = 1
        self._local: BlockPolygonizer | None = None
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Runner:
        if self.workers == 1:
            self._local = BlockPolygonizer(self.job)
        else:
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=init_worker, initargs=(self.job,)
            )
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if self._local is not None:
            self._local.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if exc_type is not None and issubclass(exc_type, BrokenProcessPool):
            raise UserError(
                "--workers: a worker process died (out of memory? or a script that calls vectorize_raster "
                "with workers > 1 outside `if __name__ == '__main__':`)"
            ) from None

    def blocks(self) -> Iterator[BlockResult]:
        """Every block's result, in row-major order (at most ``2 * workers`` computed ahead)."""
        grid = self.job.grid
        order = ((i, j) for i in range(grid.n_rows) for j in range(grid.n_cols))
        if self._pool is None:
            assert self._local is not None
            for ij in order:
                yield self._local(*ij)
            return
        pending: deque[Future[BlockResult]] = deque(
            self._pool.submit(run_block, ij) for ij in islice(order, 2 * self.workers)
        )
        while pending:
            res = pending.popleft().result()
            nxt = next(order, None)
            if nxt is not None:
                pending.append(self._pool.submit(run_block, nxt))
            yield res

    def finish(self, groups: Sequence[Group]) -> Future[Finished]:
        """A future of :func:`finish_groups` (already done when running in this process)."""
        if self._pool is not None:
            return self._pool.submit(finish_groups, list(groups))
        fut: Future[Finished] = Future()
        fut.set_result(finish_groups(groups, self.job))
        return fut
