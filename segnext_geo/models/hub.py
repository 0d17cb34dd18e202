"""The weights cache: resolve names and URLs to verified local files, download once, import by hand.

Cache: ``$SEGNEXT_GEO_HOME/weights/`` (default ``$XDG_CACHE_HOME/segnext-geo/weights/``, i.e.
``~/.cache/segnext-geo/weights/``), holding the published files under their own names.

A download streams into ``.<name>.<pid>.part`` in the cache directory with a tqdm bar, is verified
(the SHA-256 prefix in mmseg file names, Jittor's SHA-1 trailer, then a full structural load:
every expected key and shape) and only then renamed to its final name. An interrupted, killed or
failed download therefore never leaves a file under the final name, and stale ``.part`` files are
removed by the next download. A file lock per file makes concurrent processes (Dask workers,
DDP ranks) download it once; the others wait and use it.

``$SEGNEXT_GEO_WEIGHTS_MIRROR`` (a base URL, ``http(s)://`` or ``file://``) replaces the published
hosts: every file is fetched as ``<mirror>/<file name>`` (an organisation's mirror, or a test server).
``$SEGNEXT_GEO_DOWNLOAD_TIMEOUT`` (seconds, default 30) bounds the connection and every read.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from .weights import Weights, find_weights, get_weights, suggest_weights, weights_for_filename, weights_for_url

__all__ = [
    "DEFAULT_MODEL",
    "DownloadError",
    "cache_dir",
    "cached_path",
    "checks_done",
    "default_checkpoint",
    "default_model",
    "download_url",
    "fetch_url",
    "fetch_weights",
    "import_weights",
    "is_cached",
    "prepare_checkpoint",
    "resolve_checkpoint",
    "verify_file",
]

log = logging.getLogger("segnext_geo")

DEFAULT_MODEL = "segnext_t_isaid"
ENV_HOME = "SEGNEXT_GEO_HOME"
ENV_MODEL = "SEGNEXT_GEO_MODEL"
ENV_MIRROR = "SEGNEXT_GEO_WEIGHTS_MIRROR"
ENV_TIMEOUT = "SEGNEXT_GEO_DOWNLOAD_TIMEOUT"
_CHUNK = 1 << 20
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_URL_SCHEMES = ("http://", "https://", "file://")


class DownloadError(UserError):
    """Weights that could not be fetched, or failed verification; nothing was cached."""


def cache_dir() -> Path:
    """``$SEGNEXT_GEO_HOME/weights``, else ``$XDG_CACHE_HOME/segnext-geo/weights``, else ``~/.cache/...``."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser() / "weights"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "segnext-geo" / "weights"


def cached_path(weights: Weights | str) -> Path:
    """Where the file of ``weights`` (an entry or its name) lives in the cache."""
    w = get_weights(weights) if isinstance(weights, str) else weights
    return cache_dir() / w.filename


def is_cached(weights: Weights | str) -> bool:
    """Whether the file of ``weights`` is in the cache (it was verified when it was put there)."""
    return cached_path(weights).is_file()


def default_model() -> str:
    """The model used when none is given: ``$SEGNEXT_GEO_MODEL``, else ``segnext_t_isaid``."""
    return os.environ.get(ENV_MODEL, "").strip() or DEFAULT_MODEL


def download_url(weights: Weights) -> str:
    """The URL a download uses: the published one, or ``<$SEGNEXT_GEO_WEIGHTS_MIRROR>/<file name>``."""
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    if not mirror:
        return weights.url
    return mirror.rstrip("/") + "/" + urllib.parse.quote(weights.filename)


def _timeout() -> float:
    raw = os.environ.get(ENV_TIMEOUT, "").strip()
    try:
        value = float(raw) if raw else 30.0
    except ValueError:
        raise UserError(f"${ENV_TIMEOUT}: {raw!r} is not a number of seconds") from None
    if value <= 0:
        raise UserError(f"${ENV_TIMEOUT}: must be > 0 seconds, not {raw}")
    return value


def is_url(spec: str) -> bool:
    """Whether ``spec`` is an ``http(s)://`` or ``file://`` URL."""
    return spec.lower().startswith(_URL_SCHEMES)


# --- verification ------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | Path, weights: Weights | None = None, expect_hash: str | None = None) -> None:
    """Check that ``path`` is a usable copy of ``weights`` (or, without an entry, a usable checkpoint).

    In order: the SHA-256 prefix (``weights.sha256_prefix`` or ``expect_hash``), the Jittor SHA-1
    trailer (while reading), the family the entry expects, then a full strict load into the
    entry's variant and class count (every key and shape).

    Raises:
        CheckpointError: the file fails a check; the message says which.
    """
    from .checkpoint import CheckpointError, infer_variant, inspect_file, load_model

    p = Path(path)
    prefix = (weights.sha256_prefix if weights is not None else None) or expect_hash
    if prefix:
        digest = _sha256(p)
        if not digest.startswith(prefix.lower()):
            raise CheckpointError(f"{p}: SHA-256 {digest[:16]}... does not start with the published {prefix}")
    if weights is not None:
        from .checkpoint import file_format

        fmt = file_format(p)
        if fmt != weights.format:
            what = {"jittor": "a Jittor pickle", "pytorch": "a PyTorch file"}
            raise CheckpointError(f"{p}: {what[fmt]}, but {weights.name} is published as {what[weights.format]}")
    ck = inspect_file(p, weights)
    if weights is not None:
        if ck.family != weights.family:
            raise CheckpointError(
                f"{p}: holds {ck.family} weights, but {weights.name} is a {weights.family} file "
                f"({weights.dataset}, {weights.variant})"
            )
        found = infer_variant(ck.state_dict, p)
        if found != weights.variant:
            raise CheckpointError(f"{p}: holds {found} weights, but {weights.name} is a {weights.variant} model")
        load_model(ck, variant=weights.variant, num_classes=weights.num_classes or 1)
    else:
        load_model(ck, num_classes=1 if ck.family == "mscan-imagenet" else None)


def checks_done(weights: Weights, path: str | Path) -> str:
    """In words, what verifying ``path`` as ``weights`` checked (for messages)."""
    from .jittor import JITTOR_MARKER

    done = [f"SHA-256 prefix {weights.sha256_prefix}"] if weights.sha256_prefix else []
    if weights.format == "jittor":
        with open(path, "rb") as f:
            f.seek(max(0, Path(path).stat().st_size - len(JITTOR_MARKER)))
            trailer = f.read() == JITTOR_MARKER
        done.append("Jittor SHA-1 trailer" if trailer else "no SHA-1 trailer in the file (none to check)")
    return ", ".join([*done, "every key and shape"])


# --- downloading -------------------------------------------------------------------------


def _import_hint(weights: Weights | None, target: Path) -> str:
    if weights is None:
        return f"download it by hand and pass the file's path (expected at {target})"
    return f"expected at {target}; on a machine without internet: segnext-geo models import {weights.name} FILE"


def _describe_failure(e: BaseException, timeout: float) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        reason = e.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"no answer within {timeout:g} s"
        return str(getattr(reason, "strerror", None) or reason)
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"no data for {timeout:g} s"
    if isinstance(e, http.client.IncompleteRead):
        return f"connection dropped after {len(e.partial):,} more bytes"
    if isinstance(e, ConnectionError) and not e.errno:
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}".strip()


class _WriteError(Exception):
    """Writing the temporary file failed (disk full, permissions): not the network's fault."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error.strerror or str(error))


def _stream(url: str, tmp: Path, desc: str, progress: bool | None, timeout: float) -> int:
    """Write the body at ``url`` into ``tmp``; returns its size. Raises on HTTP errors and short bodies."""
    from tqdm import tqdm

    try:
        f = open(tmp, "wb")  # closed by the with below, after the body and an fsync
    except OSError as e:
        raise _WriteError(e) from None
    req = urllib.request.Request(url, headers={"User-Agent": "segnext-geo"})
    with f, urllib.request.urlopen(req, timeout=timeout) as resp:
        length = resp.headers.get("Content-Length") if hasattr(resp, "headers") else None
        total = int(length) if length and length.isdigit() else None
        written = 0
        with (
            tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=None if progress is None else not progress,
                dynamic_ncols=True,
            ) as bar,
        ):
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as e:
                    raise _WriteError(e) from None
                written += len(chunk)
                bar.update(len(chunk))
        try:
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them the cached file
        except OSError as e:
            raise _WriteError(e) from None
    if total is not None and written != total:
        raise ConnectionError(f"connection dropped after {written:,} of {total:,} bytes")
    return written


@contextmanager
def _file_lock(target: Path) -> Iterator[None]:
    """Hold the per-file lock of ``target``; waits (saying so) while another process holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(target.parent / ".locks" / f"{target.name}.lock"))
    try:
        lock.acquire(timeout=1.0)
    except Timeout:
        log.warning(f"waiting for another process to finish downloading {target.name}")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _make_cache_dir(target: Path, label: str) -> None:
    """Create the cache folder and its lock folder, or say in one line why not."""
    try:
        (target.parent / ".locks").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"{label}: cannot create the weights cache {target.parent} ({e.strerror or e}); "
            f"set $SEGNEXT_GEO_HOME to a writable folder"
        ) from None
    if not os.access(target.parent, os.W_OK) or not os.access(target.parent / ".locks", os.W_OK):
        raise DownloadError(
            f"{label}: the weights cache {target.parent} is not writable; set $SEGNEXT_GEO_HOME to a writable "
            f"folder or ask for {target.name} to be put there"
        )


def _remove_stale_parts(target: Path) -> None:
    """Remove ``.part`` files of ``target`` left by killed processes (call while holding its lock)."""
    for stale in target.parent.glob(f".{target.name}.*.part"):
        stale.unlink(missing_ok=True)


def _install(tmp: Path, target: Path, weights: Weights | None, expect_hash: str | None) -> Path:
    """Verify ``tmp`` and rename it to ``target`` (same directory: atomic)."""
    verify_file(tmp, weights, expect_hash)
    os.replace(tmp, target)
    return target


def _download(
    url: str, target: Path, weights: Weights | None, label: str, progress: bool | None, expect_hash: str | None
) -> Path:
    """Download ``url`` into the cache as ``target`` under its lock (see the module docstring)."""
    from ..outputs import sigterm_as_interrupt
    from .checkpoint import CheckpointError

    _make_cache_dir(target, label)
    timeout = _timeout()
    with _file_lock(target):
        if target.is_file():  # another process finished it while we waited
            return target
        _remove_stale_parts(target)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            with sigterm_as_interrupt():
                try:
                    _stream(url, tmp, label, progress, timeout)
                except _WriteError as e:
                    raise DownloadError(
                        f"{label}: cannot write into the weights cache {target.parent} ({e}) while downloading "
                        f"{url}; {_import_hint(weights, target)}"
                    ) from None
                except (OSError, http.client.HTTPException, ValueError) as e:
                    raise DownloadError(
                        f"{label}: cannot download {url} ({_describe_failure(e, timeout)}); "
                        f"{_import_hint(weights, target)}"
                    ) from None
                try:
                    return _install(tmp, target, weights, expect_hash)
                except CheckpointError as e:
                    reason = str(e).replace(f"{tmp}: ", "")
                    raise DownloadError(
                        f"{label}: the file from {url} failed verification ({reason}); nothing was cached; "
                        f"{_import_hint(weights, target)}"
                    ) from None
        finally:
            tmp.unlink(missing_ok=True)


def fetch_weights(weights: Weights | str, progress: bool | None = None) -> Path:
    """The local, verified file of a catalogue entry: from the cache, else downloaded into it.

    ``progress``: a tqdm bar on stderr (``None``: only on a terminal).

    Raises:
        DownloadError: no network, an HTTP error, a timeout, a dropped connection or a failed
            check; one line naming the model, the URL, the cache path and ``segnext-geo models import``.
    """
    w = get_weights(weights) if isinstance(weights, str) else weights
    target = cached_path(w)
    if target.is_file():
        return target
    return _download(download_url(w), target, w, w.name, progress, None)


def _url_filename(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    name = Path(urllib.parse.unquote(parsed.path)).name
    if not name or "." not in name or name.startswith("."):
        name = f"url-{hashlib.sha256(url.encode()).hexdigest()[:16]}.bin"
    return name


def fetch_url(url: str, progress: bool | None = None) -> tuple[Path, Weights | None]:
    """Download (once) the checkpoint at ``url`` into the cache; returns ``(path, catalogue entry or None)``.

    A catalogue URL resolves to its entry (and the mirror applies). Any other URL is cached under its
    file name; a ``-<hex>.`` suffix in that name is checked as a SHA-256 prefix, as ``torch.hub`` does.
    """
    w = weights_for_url(url)
    if w is not None:
        return fetch_weights(w, progress), w
    filename = _url_filename(url)
    target = cache_dir() / filename
    match = _HASH_IN_NAME.search(filename)
    known = weights_for_filename(filename)
    if target.is_file():
        return target, known
    return _download(url, target, known, filename, progress, match.group(1) if match else None), known


def resolve_checkpoint(checkpoint: str | Path, progress: bool | None = None) -> tuple[Path, Weights | None]:
    """Turn a path, a catalogue name or a URL into a local file (downloading names and URLs once).

    Returns ``(path, entry)``; ``entry`` is the catalogue entry the file belongs to (a path whose
    file name is a catalogue file name counts), else ``None``. An existing file wins over a name.

    Raises:
        CheckpointError: neither an existing file, nor a known name, nor a URL.
        DownloadError: a name or URL that cannot be fetched.
    """
    from .checkpoint import CheckpointError

    spec = str(checkpoint)
    if is_url(spec):
        return fetch_url(spec, progress)
    p = Path(spec).expanduser()
    if p.exists():
        return p, weights_for_filename(p.name)
    w = find_weights(spec)
    if w is not None:
        return fetch_weights(w, progress), w
    if "/" not in spec and os.sep not in spec and not p.suffix:
        close = suggest_weights(spec)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CheckpointError(
            f"{spec}: no such checkpoint file and no pretrained model of that name; {hint}"
            "'segnext-geo models list' shows the names"
        )
    raise CheckpointError(f"{p}: checkpoint not found")


def default_checkpoint(checkpoint: str | Path | None) -> str:
    """For the CLI's ``--checkpoint``: ``None`` (or blank) becomes :func:`default_model`, anything else a string."""
    if checkpoint is None or not str(checkpoint).strip():
        return default_model()
    return str(checkpoint)


def prepare_checkpoint(checkpoint: str | Path | None, progress: bool = True) -> str:
    """For the CLI: :func:`default_checkpoint`, then fetch a name or URL now (bar unless ``progress=False``).

    Returns the string to pass on to the library, which then finds the file in the cache.
    """
    spec = default_checkpoint(checkpoint)
    if is_url(spec):
        fetch_url(spec, None if progress else False)
    elif not Path(spec).expanduser().exists() and find_weights(spec) is not None:
        fetch_weights(spec, None if progress else False)
    return spec


def import_weights(name: str, file: str | Path, overwrite: bool = False) -> Path:
    """Verify ``file`` as the catalogue's ``name`` and copy it into the cache (for air-gapped machines).

    The same checks as a download run on the copy in the cache directory before it is renamed
    into place, so a file that fails them is never cached.

    Raises:
        UserError: unknown name, missing file, a file that fails verification, or a cached file
            already there (without ``overwrite``).
    """
    from .checkpoint import CheckpointError

    w = find_weights(name)
    if w is None:
        close = suggest_weights(name)
        hint = f"; did you mean {', '.join(close)}?" if close else "; 'segnext-geo models list' shows the names"
        raise UserError(f"{name}: no pretrained model of that name{hint}")
    src = Path(file).expanduser()
    if not src.is_file():
        raise UserError(f"{src}: no such file" if not src.exists() else f"{src}: is not a file")
    target = cached_path(w)
    _make_cache_dir(target, name)
    with _file_lock(target):
        same = target.is_file() and src.resolve() == target.resolve()
        if target.is_file() and not same and not overwrite:
            raise UserError(f"{name}: {target} is already in the cache; pass --overwrite to replace it")
        if same:
            verify_file(target, w)
            return target
        _remove_stale_parts(target)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            shutil.copyfile(src, tmp)
            try:
                return _install(tmp, target, w, None)
            except CheckpointError as e:
                reason = str(e).replace(f"{tmp}: ", "")
                raise UserError(f"{src}: is not {w.name} ({reason}); nothing was cached") from None
        except OSError as e:
            raise UserError(f"{name}: cannot copy {src} into {target.parent} ({e.strerror or e})") from None
        finally:
            tmp.unlink(missing_ok=True)
