"""The CUDA pipeline's stream, event and device discipline, run on the CPU through a CUDA simulator.

``CudaOps`` reaches CUDA only through its ``api`` (the ``torch.cuda`` module); here the api is
:class:`cuda_sim.SimCuda`, which keeps CUDA's current-device semantics and logs every call, and
tensors stay on the CPU. The whole predict pipeline runs through the real ``CudaOps`` code:
batched uploads from double-buffered host batches on a copy stream, forwards on the compute
stream, blending on a second stream, downloads on a third, the writer thread waiting for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import rasterio
import torch
from cuda_sim import SimCuda
from rasters import PixelLinear, pixel_meta, textured, write_tif

from segnext_geo.inference import InferenceRunner, PredictOptions, predict_scene
from segnext_geo.inference.device import CudaOps
from segnext_geo.models import build_model

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # module-scoped, in conftest.py


def _ops(sim: SimCuda, index: int) -> CudaOps:
    return CudaOps(torch.device("cuda", index), api=sim, tensor_device=CPU, pin_memory=False)


def _read(path: Path) -> bytes:
    with rasterio.open(path) as src:
        return bytes(src.read().tobytes())


def _run(tmp_path: Path, runner: Any, name: str, **opts: Any) -> tuple[bytes, bytes]:
    scene = tmp_path / "s.tif"
    if not scene.exists():
        img = textured((3, 150, 190), seed=5)
        img[:, :40, :70] = 0  # skipped, all-nodata tiles
        write_tif(scene, img, nodata=0)
    out, probs = tmp_path / f"{name}.tif", tmp_path / f"{name}_p.tif"
    options = PredictOptions(tile_size=64, overlap=16, working_set=100, workers=1, **opts)
    predict_scene(scene, runner, out, options, probs_out=probs, meta=pixel_meta(4), progress=False)
    return _read(out), _read(probs)


def test_a_cuda_1_run_touches_only_device_1_and_matches_the_cpu(tmp_path: Path) -> None:
    sim = SimCuda({0: (9, 0), 1: (9, 0)})
    ops = _ops(sim, 1)
    model = PixelLinear(3, 4)
    model.record = True
    runner = InferenceRunner(model, ops=ops, num_classes=4)
    got = _run(tmp_path, runner, "cuda1", batch_size=3)
    want = _run(tmp_path, InferenceRunner(PixelLinear(3, 4), "cpu", num_classes=4), "cpu", batch_size=3)
    assert got == want
    assert {c["device"] for c in sim.calls} == {1}, "something ran on another device than cuda:1"
    streams = {s.id for s in ops.streams.values()}
    records = [c for c in sim.calls if c["op"] == "record"]
    assert records and all(c["stream"] in streams for c in records)  # events on this device's own streams
    waits = [c for c in sim.calls if c["op"] == "wait_event"]
    assert waits and all(c["event_device"] == c["device"] == 1 for c in waits)
    assert not [c for c in sim.calls if c["op"] == "device_sync"]
    # real batched forwards: 3 tiles per forward (the last batch may be shorter)
    sizes = [x.shape[0] for x in model.seen]
    assert max(sizes) == 3 and sizes.count(3) >= len(sizes) - 1


def test_the_main_loop_never_waits_for_results_only_the_writer_does(tmp_path: Path) -> None:
    sim = SimCuda({0: (9, 0), 1: (9, 0)})
    ops = _ops(sim, 1)
    _run(tmp_path, InferenceRunner(PixelLinear(3, 4), ops=ops, num_classes=4), "a", batch_size=2)
    stream_of = {c["event"]: c["stream"] for c in sim.calls if c["op"] == "record"}
    h2d, d2h = ops.streams["h2d"].id, ops.streams["d2h"].id
    syncs = [c for c in sim.calls if c["op"] == "event_sync"]
    downloads = {e for e, s in stream_of.items() if s == d2h}
    assert downloads and {c["event"] for c in syncs if c["event"] in downloads} == downloads  # all awaited
    for c in syncs:
        if c["thread"].startswith("segnext-write"):
            assert stream_of[c["event"]] == d2h  # the writer waits for device-to-host copies
        else:  # the main loop waits only before refilling a host batch buffer
            assert stream_of[c["event"]] == h2d, c
    # ... and never for the copy it has just issued: a buffer is refilled two uploads later
    last_h2d = None
    for c in sim.calls:
        if c["op"] == "record" and c["stream"] == h2d:
            last_h2d = c["event"]
        elif c["op"] == "event_sync" and not c["thread"].startswith("segnext-write"):
            assert c["event"] != last_h2d


def test_copies_wait_for_their_producers(tmp_path: Path) -> None:
    """Blending waits on the forward's stream, downloads wait on the blend stream, uploads are waited on."""
    sim = SimCuda({0: (9, 0), 1: (9, 0)})
    ops = _ops(sim, 1)
    _run(tmp_path, InferenceRunner(PixelLinear(3, 4), ops=ops, num_classes=4), "a", batch_size=2)
    stream_of = {c["event"]: c["stream"] for c in sim.calls if c["op"] == "record"}
    s = {k: v.id for k, v in ops.streams.items()}
    pairs = {(stream_of[c["event"]], c["stream"]) for c in sim.calls if c["op"] == "wait_event"}
    assert (s["h2d"], s["compute"]) in pairs  # the forward waits for its batch's upload
    assert (s["compute"], s["blend"]) in pairs  # blending waits for the forward
    assert (s["blend"], s["d2h"]) in pairs  # the download waits for the finished core
    assert (s["h2d"], s["blend"]) in pairs  # spilled partial sums come back on the copy stream


@pytest.mark.parametrize(("index", "expected"), [(0, "fp16"), (1, "bf16")])
def test_bf16_capability_is_checked_on_the_chosen_device(index: int, expected: str) -> None:
    sim = SimCuda({0: (7, 5), 1: (8, 0)})  # device 0 pre-Ampere, device 1 with bf16
    runner = InferenceRunner(PixelLinear(3, 2), ops=_ops(sim, index), num_classes=2)
    assert runner.precision == expected
    assert {c["device"] for c in sim.calls if c["op"] == "capability"} == {index}


def test_deterministic_is_byte_identical_across_batch_sizes_and_batched_is_not_forced(tmp_path: Path) -> None:
    """A real SegNeXt through the simulated CUDA path: --deterministic runs image by image."""
    torch.manual_seed(0)
    model = build_model("tiny", 4)
    outs = set()
    for bs in (1, 4):
        sim = SimCuda({0: (9, 0)})
        runner = InferenceRunner(model, ops=_ops(sim, 0), precision="fp32", deterministic=True)
        sizes: list[int] = []
        runner.model.backbone.register_forward_pre_hook(lambda m, a, sizes=sizes: sizes.append(a[0].shape[0]))
        outs.add(_run(tmp_path, runner, f"det{bs}", batch_size=bs))
        assert set(sizes) == {1}
    assert len(outs) == 1
    sim = SimCuda({0: (9, 0)})
    batched = InferenceRunner(model, ops=_ops(sim, 0), precision="fp32")
    calls = []
    batched.model.backbone.register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    _run(tmp_path, batched, "batched", batch_size=4)
    assert max(calls) == 4


def test_forward_times_come_from_events_on_the_compute_stream(tmp_path: Path) -> None:
    sim = SimCuda({0: (9, 0)})
    ops = _ops(sim, 0)
    runner = InferenceRunner(PixelLinear(3, 4), ops=ops, num_classes=4)
    _run(tmp_path, runner, "t", batch_size=2)
    assert runner.forward_seconds() > 0 and runner.timer.calls >= 1
    timed = [c for c in sim.calls if c["op"] == "record" and c["stream"] == ops.streams["compute"].id]
    assert len(timed) >= 2 * runner.timer.calls
