"""Atomic output files: write to a temporary file next to the target, rename at the end."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

__all__ = ["atomic_output", "check_output", "check_outputs", "local_file", "same_file", "sigterm_as_interrupt"]


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


#: GDAL virtual file systems whose path holds a local container file (``/vsizip/a.zip/x.tif``)
_VSI_LOCAL = ("/vsizip/", "/vsigzip/", "/vsitar/", "/vsi7z/", "/vsirar/", "/vsisubfile/")


def local_file(path: str | Path) -> Path | None:
    """The local file behind ``path``: itself, or the archive of a ``/vsizip/``-like path (else ``None``)."""
    s = str(path)
    if "://" in s:
        return None
    if not s.startswith("/vsi"):
        return Path(s)
    while s.startswith("/vsi"):  # nested handlers: /vsizip//vsigzip/...
        prefix = next((v for v in _VSI_LOCAL if s.startswith(v)), None)
        if prefix is None:
            return None  # /vsimem/, /vsicurl/ ...: nothing on this disk
        s = s[len(prefix) :]
        if prefix == "/vsisubfile/":
            s = s.split(",", 1)[-1]  # /vsisubfile/offset_size,file
        if s.startswith("{"):  # /vsizip/{/path/a.zip}/x.tif
            s = s[1:].split("}", 1)[0]
    candidate = Path(s)
    for p in (candidate, *candidate.parents):  # /vsizip/a.zip/b/c.tif -> a.zip
        if p.is_file():
            return p
    return candidate


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file: the same resolved path, or (when both exist) the
    same device and inode (hard links, symlinks, ``./a.tif`` and ``a.tif``).

    A ``/vsizip/``-style path stands for its local archive; ``/vsimem/`` and URLs never match a
    local file.
    """
    pa, pb = local_file(a), local_file(b)
    if pa is None or pb is None:
        return str(a) == str(b)
    try:
        if pa.exists() and pb.exists():
            sa, sb = pa.stat(), pb.stat()
            return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
    except OSError:
        pass
    return Path(os.path.realpath(pa)) == Path(os.path.realpath(pb))


def check_outputs(inputs: Sequence[str | Path], outputs: Sequence[tuple[str, Path | None]], overwrite: bool) -> None:
    """Check every output of a command before any work is done.

    Args:
        inputs: the files the command reads (``None``-free; ``/vsi...`` paths allowed).
        outputs: ``(option flag, path)`` for each output; ``None`` paths (not requested) are skipped.
        overwrite: whether existing outputs may be replaced.

    Raises:
        UserError: an output is one of the inputs (whatever ``overwrite`` says: the input would be
            destroyed), two outputs name the same file, or :func:`check_output` refuses one.
    """
    given = [(flag, Path(p)) for flag, p in outputs if p is not None]
    for flag, p in given:
        for inp in inputs:
            if same_file(p, inp):
                what = "is the input" if str(p) == str(inp) else "is the same file as the input"
                raise UserError(f"{flag}: {p} {what} {inp}; write the output to another file")
    for k, (flag, p) in enumerate(given):
        for other_flag, other in given[:k]:
            if same_file(p, other):
                raise UserError(f"{flag}: {p} is also {other_flag}; give each output its own file")
    for flag, p in given:
        check_output(p, overwrite, flag)


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
