"""The fast inference path: folding is exact to float rounding, devices are validated."""

from __future__ import annotations

import pytest
import torch

from segnext_geo.models import build_model
from segnext_geo.models.fuse import fuse_for_inference
from segnext_geo.models.optimize import InferenceRunner, resolve_device


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_model("tiny", 6)
    # non-trivial BN statistics and layer scales, so that folding mistakes show
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    for name, p in m.named_parameters():
        if "layer_scale" in name:
            p.data.uniform_(0.05, 0.5)
    return m.eval()


def test_fused_model_matches_unfused_exactly_in_float64(model: torch.nn.Module) -> None:
    m64 = model.double()
    fused = fuse_for_inference(m64)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 96, 64, dtype=torch.float64)
    with torch.no_grad():
        a, b = m64(x), fused(x)
    model.float()
    assert float((a - b).abs().max() / a.abs().max()) < 1e-10
    # the original is untouched
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_runner_fp32_channels_last_matches_eager(model: torch.nn.Module) -> None:
    runner = InferenceRunner(model, device="cpu", precision="fp32")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    out = runner(x)
    assert out.dtype == torch.float32 and out.shape == (3, 6, 64, 64)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4
    # batch invariance holds on the fast path too (channels_last GroupNorm is not batch-invariant on CPU)
    assert torch.equal(runner(x[1:2]), out[1:2])


def test_runner_bf16_stays_close() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", 6).eval()  # reference-like scales (layer scale 1e-2)
    runner = InferenceRunner(model, device="cpu", precision="bf16")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    out = runner(x)
    assert torch.isfinite(out).all()
    # bf16 carries ~3 significant digits; random-weight logits are near-ties, so compare values
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.05


@pytest.mark.parametrize("bad", ["gpu", "cuda:99", "tpu"])
def test_unknown_devices_are_clear_errors(bad: str) -> None:
    with pytest.raises(ValueError, match="--device"):
        resolve_device(bad)


def test_auto_device_is_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
