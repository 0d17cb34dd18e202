"""Shared test fixtures. Tests make their own data; ../shared is optional."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGNEXT_GEO_SHARED", ROOT.parent / "shared"))
FIXTURE = SHARED / "fixtures" / "segnext_tiny"

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def _isolated_weights_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test (or subprocess it starts) touches the real weights cache or the internet's weights hosts."""
    os.environ["SEGNEXT_GEO_HOME"] = str(tmp_path_factory.mktemp("segnext_geo_home"))
    os.environ["SEGNEXT_GEO_WEIGHTS_MIRROR"] = "http://127.0.0.1:9"  # discard port: refused at once
    os.environ.pop("SEGNEXT_GEO_MODEL", None)


@pytest.fixture(scope="session")
def reference_fixture() -> Path:
    """The reference implementation's SegNeXt-T fixture directory (skips when ../shared is absent)."""
    if not (FIXTURE / "checkpoint.pth").exists():
        pytest.skip(f"reference fixture not found at {FIXTURE} (../shared is absent)")
    return FIXTURE


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small own-format SegNeXt-T checkpoint with 4 classes and deterministic random weights."""
    from segnext_geo.models import build_model, save_checkpoint

    torch.manual_seed(0)
    model = build_model("tiny", 4, class_names=["background", "building", "road", "water"])
    path = tmp_path_factory.mktemp("ckpt") / "tiny4.pth"
    save_checkpoint(model, path)
    return path


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a test module (``pytestmark = pytest.mark.usefixtures(...)``): the
    reader threads get the other core, and a shared, busy 2-core machine does not stall OpenMP
    barriers (which made the inference tests 10-50x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
