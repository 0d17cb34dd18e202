"""Atomic output files: write to a temporary file next to the target, rename at the end."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

__all__ = ["atomic_output", "check_output", "sigterm_as_interrupt"]


def check_output(path: str | Path, overwrite: bool = False, option: str = "--out") -> Path:
    """Validate an output path before any work is done.

    Raises:
        UserError: the path exists (without ``overwrite``), is a directory, or its folder is
            missing or not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{option}: {p} is a directory; give a file name")
    if p.exists() and not overwrite:
        raise UserError(f"{option}: {p} already exists; pass --overwrite to replace it")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{option}: {p}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option}: {p}: the folder {parent} is not writable")
    return p


@contextmanager
def atomic_output(path: str | Path, overwrite: bool = False, option: str = "--out") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name keeps the suffix (``.name.tmp-PID.ext``) so drivers that look at the
    extension still work. On any exception, Ctrl-C included, the temporary file is removed
    and nothing appears at ``path``.
    """
    p = check_output(path, overwrite, option)
    tmp = p.with_name(f".{p.stem}.tmp-{os.getpid()}{p.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"{tmp} was not written")
        if p.exists() and not overwrite:  # appeared meanwhile
            raise UserError(f"{option}: {p} already exists; pass --overwrite to replace it")
        os.replace(tmp, p)
    except OSError as e:
        _remove(tmp)
        if e.errno == 28:  # ENOSPC
            raise UserError(f"{option}: {p}: no space left on the device") from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: Path) -> None:
    if tmp.is_dir():
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt (main thread only), so ``kill`` cleans up like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
