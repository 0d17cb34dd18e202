"""The one InferenceRunner: folding and fused kernels are exact to rounding, precision and compile choices, devices."""

from __future__ import annotations

import logging

import pytest
import torch
from rasters import PixelLinear
from torch import Tensor, nn

from segnext_geo.errors import UserError
from segnext_geo.inference import InferenceRunner, resolve_device
from segnext_geo.inference import runner as runner_module
from segnext_geo.inference.device import CpuOps
from segnext_geo.inference.kernels import KernelFusedBlock, fuse_cpu_kernels, onednn_available
from segnext_geo.models import build_model
from segnext_geo.models.fuse import fuse_for_inference

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # module-scoped, in conftest.py


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


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _same_labels_except_ties(out: Tensor, ref: Tensor) -> None:
    """Labels agree wherever the reference's top two logits are further apart than twice the largest error."""
    top2 = ref.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * (out - ref).abs().max()
    assert clear.float().mean() > 0.999 and torch.equal(out.argmax(1)[clear], ref.argmax(1)[clear])


def test_fused_model_matches_unfused_exactly_in_float64(model: torch.nn.Module) -> None:
    m64 = model.double()
    fused = fuse_for_inference(m64)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 96, 64, dtype=torch.float64)
    with torch.no_grad():
        a, b = m64(x), fused(x)
    model.float()
    assert _rel(b, a) < 1e-12
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


@pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")
def test_fused_kernels_match_the_folded_model_to_rounding(model: torch.nn.Module) -> None:
    folded = fuse_for_inference(model).to(memory_format=torch.channels_last)
    kernels = fuse_cpu_kernels(fuse_for_inference(model)).to(memory_format=torch.channels_last)
    assert sum(isinstance(m, KernelFusedBlock) for m in kernels.modules()) == 13  # every MSCAN block of T
    x = torch.randn(1, 3, 96, 128).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        a, b = folded(x), kernels(x)
    # oneDNN's GELU post-op evaluates erf to ~1e-6 absolute; through 13 blocks with these strong layer
    # scales that is 3.7e-5 of the largest logit (1e-6 with the reference's 1e-2 layer scales)
    assert _rel(b, a) < 1e-4
    _same_labels_except_ties(b, a)
    # in float64 the kernels fall back to the plain operations: the folded model's algebra
    with torch.inference_mode():
        assert _rel(kernels.double()(x.double()), folded.double()(x.double())) < 1e-12


def test_runner_fp32_matches_eager_and_is_batch_invariant(model: torch.nn.Module) -> None:
    runner = InferenceRunner(model, "cpu", precision="fp32")
    assert runner.precision == "fp32" and runner.per_image and runner.kernels == onednn_available()
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
    out = runner(x)
    assert out.dtype == torch.float32 and out.shape == (3, 6, 64, 96)
    assert _rel(out, ref) < 1e-4  # 2.2e-5: the fused GELU's erf (see the test above)
    _same_labels_except_ties(out, ref)
    assert torch.equal(runner(x[1:2]), out[1:2])  # an image's logits never depend on its batch
    probs = runner.probabilities(x)  # the final upsampling on class planes: the same up to rounding
    assert probs.is_contiguous() and (probs - torch.softmax(out, 1)).abs().max() < 1e-6


def test_probabilities_average_the_tta_passes() -> None:
    x = torch.randn(2, 3, 32, 48)
    plain = InferenceRunner(PixelLinear(3, 4), "cpu", num_classes=4).probabilities(x)
    flip = InferenceRunner(PixelLinear(3, 4), "cpu", num_classes=4, tta="d4").probabilities(x)
    torch.testing.assert_close(plain.sum(1), torch.ones(2, 32, 48))
    torch.testing.assert_close(flip, plain, rtol=0, atol=1e-6)  # a per-pixel model commutes with D4


class _NoNativeBf16(CpuOps):
    """This CPU as one without AVX512-BF16/AMX would report itself."""

    def bf16_native(self) -> bool:
        return False


def test_bf16_without_native_support_warns_once_and_runs_fp32(
    model: torch.nn.Module, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_module, "_warned", set())
    ops = _NoNativeBf16(torch.device("cpu"))
    with caplog.at_level(logging.WARNING, logger="segnext_geo"):
        a = InferenceRunner(model, precision="bf16", ops=ops)
        b = InferenceRunner(model, precision="bf16", ops=ops)
    warnings = [r.getMessage() for r in caplog.records if "bf16" in r.getMessage()]
    assert len(warnings) == 1 and "no native bf16" in warnings[0] and "fp32" in warnings[0]
    assert a.precision == b.precision == "fp32" and a.amp_dtype is None
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(a(x), InferenceRunner(model, "cpu", precision="fp32")(x))


@pytest.mark.skipif(not CpuOps(torch.device("cpu")).bf16_native(), reason="this CPU has no native bf16")
def test_bf16_on_a_cpu_with_native_support_stays_close() -> None:
    torch.manual_seed(0)
    m = build_model("tiny", 6).eval()
    runner = InferenceRunner(m, "cpu", precision="bf16")
    assert runner.precision == "bf16" and not runner.kernels  # the oneDNN fp32 kernels are for fp32 only
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
    out = runner(x)
    assert torch.isfinite(out).all() and _rel(out, ref) < 0.05  # bf16 carries ~3 significant digits


def test_auto_compile_decides_from_the_work_to_do(model: torch.nn.Module) -> None:
    runner = InferenceRunner(model, "cpu", compile="auto")
    assert not runner.plan(tiles=9, tile_shape=(1024, 1024))  # 9.4 MPix: not worth the compile
    assert not runner.compiled
    limit = runner_module.COMPILE_AUTO_MPIX["cpu"]
    tiles = int(limit * 1e6 / 1024**2) + 1
    assert runner.plan(tiles=tiles, tile_shape=(1024, 1024)) and runner.compiled
    off = InferenceRunner(model, "cpu", compile="off")
    assert not off.plan(tiles=10**6, tile_shape=(1024, 1024))


@pytest.mark.slow
def test_compiled_forward_matches_eager(model: torch.nn.Module) -> None:
    """inductor with freezing on the CPU: the same labels, logits equal to rounding (compiles once, ~30-60 s)."""
    eager = InferenceRunner(model, "cpu", compile="off")
    compiled = InferenceRunner(model, "cpu", compile="on")
    x = torch.randn(1, 3, 64, 64)
    a, b = eager(x), compiled(x)
    assert compiled.compiled and _rel(b, a) < 1e-4
    _same_labels_except_ties(b, a)


class _WrongShape(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x[:, :2, ::2, ::2]


def test_a_model_with_the_wrong_output_is_a_clear_error() -> None:
    with pytest.raises(UserError, match=r"--checkpoint: the model returned shape \(1, 2, 16, 16\)"):
        InferenceRunner(_WrongShape(), "cpu", num_classes=2)(torch.randn(1, 3, 32, 32))
    with pytest.raises(UserError, match="returned 4 classes but its metadata names 3"):
        InferenceRunner(PixelLinear(3, 4), "cpu", num_classes=3)(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("bad", ["gpu", "cuda:99", "tpu"])
def test_unknown_devices_are_clear_errors(bad: str) -> None:
    with pytest.raises(UserError, match="--device"):
        resolve_device(bad)


def test_auto_device_is_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.parametrize(("field", "value"), [("precision", "fp8"), ("compile", "maybe")])
def test_bad_runner_options_name_the_flag(model: torch.nn.Module, field: str, value: str) -> None:
    with pytest.raises(UserError, match=f"--{field}: '{value}' is not one of"):
        InferenceRunner(model, "cpu", **{field: value})  # type: ignore[arg-type]
