"""Untrusted checkpoint pickles never execute code, whatever globals they name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segnext_geo.models import CheckpointError, build_model, load_model


class _Call:
    """Pickles as ``REDUCE(func, args)`` for an arbitrary global ``func`` (a pickle gadget)."""

    def __init__(self, func: object, args: tuple) -> None:
        self.func, self.args = func, args

    def __call__(self, *a: object) -> None:  # pickle requires the reduce callable to be callable
        raise AssertionError("never called while pickling")

    def __reduce__(self) -> tuple:
        return (self.func, self.args)


def _gadget(marker: Path) -> _Call:
    """``torch._utils._import_dotted_name("os.system")("touch marker")``: code execution if allowed."""
    lookup = _Call(torch._utils._import_dotted_name, ("os.system",))
    return _Call(lookup, (f"touch {marker}",))


def test_torch_utils_gadget_in_metadata_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model = build_model("tiny", 3)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"hook": _gadget(marker)}}, path)
    try:
        loaded = load_model(path)
    except CheckpointError:
        loaded = None
    assert not marker.exists(), "loading a checkpoint executed a command from its pickle"
    if loaded is not None:
        assert loaded.num_classes == 3


@pytest.mark.parametrize("name", ["os.system", "subprocess.call", "builtins.eval", "torch._utils._import_dotted_name"])
def test_dangerous_globals_are_never_resolved(name: str) -> None:
    from segnext_geo.models.safe_pickle import MetadataUnpickler as _SafeUnpickler

    module, attr = name.rsplit(".", 1)
    import io

    resolved = _SafeUnpickler(io.BytesIO(b"")).find_class(module, attr)
    import importlib

    assert resolved is not getattr(importlib.import_module(module), attr)


def test_metadata_checkpoints_load_with_the_explicit_fallback_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list used if PyTorch moves its private allow-list still reads tensors, and still no gadgets."""
    from segnext_geo.models.safe_pickle import MetadataUnpickler, _explicit_torch_globals

    monkeypatch.setattr(MetadataUnpickler, "_allowed", _explicit_torch_globals())
    marker = tmp_path / "pwned"
    model = build_model("tiny", 3)
    path = tmp_path / "meta.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"hook": _gadget(marker)}}, path)
    loaded = load_model(path)
    assert not marker.exists()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
