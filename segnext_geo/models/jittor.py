"""Jittor ``.pkl`` weights (JSeg, the SegNeXt authors' Jittor port), read without Jittor and without running code.

File layout (Jittor's ``jt.save`` / ``safepickle``)::

    body = pickle.dumps(obj, protocol=4)
    file = body + sha1(body).digest() (20 bytes) + b"HCAJSLHD" (8 bytes)

``jt.load`` also accepts a plain pickle without the trailer, and so does :func:`read_jittor`.
``obj`` is a flat ``{name: float32 ndarray}`` dict (the released files), or JSeg's training
checkpoint ``{"meta", "model", "scheduler", "optimizer"}``. Jittor releases after Dec 2023 pickle
``jittor.Var`` objects as ``REDUCE(jittor.Var, (ndarray,))``; they are read as their arrays.

Key names are the official SegNeXt (PyTorch) names; Jittor's BatchNorm has no
``num_batches_tracked`` (filled with 0 by :func:`fill_num_batches_tracked`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import CheckpointError
from .safe_pickle import NumpyUnpickler, RefusedGlobal

__all__ = [
    "JITTOR_MARKER",
    "JittorError",
    "fill_num_batches_tracked",
    "has_jittor_trailer",
    "jittor_state_dict",
    "read_jittor",
    "split_trailer",
]

JITTOR_MARKER = b"HCAJSLHD"
_TRAILER = 20 + len(JITTOR_MARKER)


class JittorError(CheckpointError):
    """A Jittor weights file that cannot be used (bad trailer, refused pickle content)."""


def has_jittor_trailer(data: bytes) -> bool:
    """Whether ``data`` ends with Jittor's SHA-1 trailer marker."""
    return len(data) >= _TRAILER and data.endswith(JITTOR_MARKER)


def split_trailer(data: bytes, path: Path | str = "file") -> tuple[bytes, bool]:
    """Return ``(pickle body, had_trailer)``; raise :class:`JittorError` when the trailer's SHA-1 does not match."""
    if not has_jittor_trailer(data):
        return data, False
    body, digest = data[:-_TRAILER], data[-_TRAILER : -len(JITTOR_MARKER)]
    actual = hashlib.sha1(body).digest()
    if actual != digest:
        raise JittorError(
            f"{path}: Jittor SHA-1 check failed (body {actual.hex()[:12]}..., trailer {digest.hex()[:12]}...): "
            "the file is corrupt or incomplete"
        )
    return body, True


def read_jittor(path: str | Path, data: bytes | None = None) -> Any:
    """Unpickle a Jittor file with the restricted :class:`~segnext_geo.models.safe_pickle.NumpyUnpickler`.

    Returns the pickled object (numpy arrays stay numpy arrays). Raises :class:`JittorError`
    naming the file for a SHA-1 mismatch, a refused global (nothing of it is executed) or a
    broken pickle.
    """
    p = Path(path)
    raw = p.read_bytes() if data is None else data
    body, had_trailer = split_trailer(raw, p)
    what = "Jittor pickle" if had_trailer else "PyTorch checkpoint or Jittor pickle"
    try:
        return NumpyUnpickler(io.BytesIO(body)).load()
    except RefusedGlobal as e:
        raise JittorError(
            f"{p}: {e}: a Jittor weights file holds only numpy arrays; refusing to run code from it"
        ) from None
    except Exception as e:  # any other failure: the pickle is broken
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JittorError(f"{p}: not a readable {what} ({first[:160]})") from None


def _as_tensor(value: Any) -> Tensor | None:
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return torch.from_numpy(np.array(value, copy=True))
    if isinstance(value, np.generic) and value.dtype.kind in "fiub":
        return torch.from_numpy(np.array(value))
    return None


def jittor_state_dict(obj: Any, path: str | Path = "file") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, container)`` from a flat ``{name: array}`` dict or a JSeg ``{"model": ...}`` checkpoint.

    As JSeg's loader: ``obj["model"]``, else ``obj["state_dict"]``, else ``obj`` itself.
    Arrays become CPU tensors (copies). Non-array entries are an error naming the key.
    """
    if not isinstance(obj, Mapping):
        raise JittorError(f"{path}: a Jittor pickle of {type(obj).__name__}, not a dict of weights")
    container: dict[str, Any] = {}
    inner: Any = obj
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            inner, container = obj[key], dict(obj)
            break
    sd: dict[str, Tensor] = {}
    for k, v in inner.items():
        t = _as_tensor(v)
        if t is None:
            raise JittorError(f"{path}: entry {k!r} is a {type(v).__name__}, not a numeric array")
        sd[str(k)] = t
    if not sd:
        raise JittorError(f"{path}: no weights in the Jittor pickle")
    return sd, container


def fill_num_batches_tracked(sd: dict[str, Tensor]) -> int:
    """Add ``X.num_batches_tracked = 0`` for every BatchNorm ``X.running_mean`` lacking it; returns the count."""
    added = 0
    for k in [k for k in sd if k.endswith(".running_mean")]:
        nbt = k[: -len("running_mean")] + "num_batches_tracked"
        if nbt not in sd:
            sd[nbt] = torch.tensor(0, dtype=torch.long)
            added += 1
    return added
