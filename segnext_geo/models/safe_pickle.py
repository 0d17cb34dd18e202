"""Restricted unpicklers: read weights from untrusted pickles without ever executing their code.

A pickle runs code by naming a global (``GLOBAL``/``STACK_GLOBAL``) and calling it (``REDUCE``).
Both unpicklers here decide every global from an explicit allow-list of harmless constructors:

- :class:`NumpyUnpickler` (Jittor ``.pkl`` files): exactly the numpy globals an array
  pickle needs, ``collections.OrderedDict``, and ``jittor.Var`` mapped to a function that
  returns its ndarray argument. Any other global is refused with :class:`RefusedGlobal`.
- :class:`MetadataUnpickler` (the fallback for PyTorch checkpoints whose metadata holds
  other Python objects, e.g. mmengine's ``HistoryBuffer``): PyTorch's own ``weights_only``
  allow-list plus the numpy globals; every other class or function becomes an inert
  :class:`Stub` that records its arguments and never runs anything.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import Any

import numpy as np

__all__ = ["JITTOR_VAR_NAMES", "MetadataUnpickler", "NumpyUnpickler", "RefusedGlobal", "Stub"]

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.26
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]


def _var_to_array(data: Any) -> Any:
    """``jittor.Var`` stand-in: Jittor pickles a Var as ``REDUCE(jittor.Var, (ndarray,))``."""
    return data


#: Where Jittor's Var class may be recorded in a pickle (``jt.Var`` is ``jittor_core.Var``).
JITTOR_VAR_NAMES: frozenset[tuple[str, str]] = frozenset(
    {("jittor", "Var"), ("jittor_core", "Var"), ("jittor.jittor_core", "Var")}
)

#: The numpy globals an array pickle needs (numpy 1.x and 2.x module names).
_NUMPY: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list; nothing was called."""

    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"refused pickle global {module}.{name}")
        self.module, self.name = module, name


class NumpyUnpickler(pickle.Unpickler):
    """Unpickles ``{name: ndarray}`` dicts (Jittor weights); refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _NUMPY.get((module, name))
        if obj is not None:
            return obj
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if (module, name) in JITTOR_VAR_NAMES:
            return _var_to_array
        raise RefusedGlobal(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id (not a Jittor weights pickle)")


class Stub:
    """Stands in for any non-allowed class or function in checkpoint metadata; never executes anything."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> Stub:
        return Stub(*args)


_SAFE_BUILTINS = {"set", "frozenset", "slice", "complex", "bytearray", "tuple", "list", "dict", "int", "float", "str"}


def _torch_allowed_globals() -> dict[str, Any]:
    """PyTorch's own ``weights_only`` allow-list (tensor rebuild functions, storages, dtypes, Size ...).

    That list is private API; should it move, :func:`_explicit_torch_globals` stands in.
    """
    try:
        from torch import _weights_only_unpickler

        return dict(_weights_only_unpickler._get_allowed_globals())
    except (ImportError, AttributeError):  # depends on the torch version
        return _explicit_torch_globals()


def _explicit_torch_globals() -> dict[str, Any]:
    """The tensor essentials of PyTorch's allow-list: rebuild functions, Parameter, Size, device, dtypes."""
    import torch

    allowed: dict[str, Any] = {
        f"torch._utils.{f}": getattr(torch._utils, f)
        for f in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state")
    }
    allowed.update({"torch.Size": torch.Size, "torch.device": torch.device, "torch.Tensor": torch.Tensor})
    allowed["torch.nn.parameter.Parameter"] = torch.nn.Parameter
    allowed.update({str(t): t for t in vars(torch).values() if isinstance(t, torch.dtype)})
    return allowed


class MetadataUnpickler(pickle.Unpickler):
    """PyTorch's ``weights_only`` globals, numpy arrays and safe builtins; everything else is a :class:`Stub`.

    Used through ``torch.load(..., pickle_module=...)`` so that tensors are still rebuilt by
    PyTorch. Functions such as ``torch._utils._import_dotted_name`` are *not* allowed: any
    callable that returns another callable would let a pickle reach ``os.system``.
    """

    _allowed: dict[str, Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if MetadataUnpickler._allowed is None:
            MetadataUnpickler._allowed = _torch_allowed_globals()
        obj = MetadataUnpickler._allowed.get(f"{module}.{name}")
        if obj is not None:
            return obj
        obj = _NUMPY.get((module, name))
        if obj is not None:
            return obj
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if module == "collections" and name in {"OrderedDict", "defaultdict"}:
            return super().find_class(module, name)
        if module == "_codecs" and name == "encode":  # bytes in protocol-2 pickles
            return super().find_class(module, name)
        return Stub


class MetadataPickleModule:
    """A ``pickle_module`` for ``torch.load`` that unpickles with :class:`MetadataUnpickler`."""

    Unpickler = MetadataUnpickler
    load = pickle.load
    __name__ = "segnext_geo_safe_pickle"
