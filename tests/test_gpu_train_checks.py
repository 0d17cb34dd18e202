"""benchmarks/_gpu_train.py (the training rows of benchmarks/gpu_check.py) imports anywhere and, without CUDA,
returns 'skipped' rows at once, starting nothing."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("_gpu_train", ROOT / "benchmarks" / "_gpu_train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_training_checks_skip_without_cuda() -> None:
    checks = _module()
    rows = checks.train_checks("cpu")
    assert [name for name, _ in rows] == list(checks._CHECKS) and len(rows) == 4
    assert all(result == "skipped: device cpu is not a CUDA device" for _, result in rows)
    if torch.cuda.is_available():
        pytest.skip("CUDA is present: benchmarks/gpu_check.py runs these checks")
    rows = checks.train_checks("cuda")
    assert all(result == "skipped: CUDA is not available" for _, result in rows)
    assert not torch.cuda.is_initialized()  # nothing was started
