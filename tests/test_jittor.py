"""Every published weights format, made by the tests from random weights, loads to the logits it came from.

Also: the Jittor reader's SHA-1 trailer and allow-list, the three JSeg head biases (through BN
folding and ONNX export), and files that are not checkpoints at all.
"""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from weights_files import (
    jittor_arrays,
    jittor_bytes,
    jittor_var_bytes,
    jseg_checkpoint,
    malicious_jittor_bytes,
    random_model,
    run_cli,
    write_jittor,
    write_mmseg,
    write_mscan_pth,
    write_official,
)

from segnext_geo.models import CheckpointError, SegNeXt, load_model, save_checkpoint
from segnext_geo.models.checkpoint import file_format, inspect_checkpoint
from segnext_geo.models.jittor import JittorError, read_jittor
from segnext_geo.models.segnext import HEAD_BIAS_KEYS

CLASSES = [f"c{i}" for i in range(16)]


@pytest.fixture(scope="module")
def source() -> SegNeXt:
    return random_model("tiny", 16, seed=3)


@pytest.fixture(scope="module")
def biased() -> SegNeXt:
    model = random_model("tiny", 16, seed=4, head_conv_bias=True)
    assert all(k in model.state_dict() for k in HEAD_BIAS_KEYS)
    return model


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def expected(source: SegNeXt, biased: SegNeXt, x: torch.Tensor) -> dict[bool, torch.Tensor]:
    """The logits of the models the files are made from, keyed on head bias."""
    return {False: _logits(source, x), True: _logits(biased, x)}


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


Writer = Callable[[Path, SegNeXt], Path]

WRITERS: dict[str, Writer] = {
    "jittor-flat-trailer": lambda p, m: write_jittor(p / "m.pkl", jittor_arrays(m)),
    "jittor-flat-no-trailer": lambda p, m: write_jittor(p / "m.pkl", jittor_arrays(m), trailer=False),
    "jittor-nested-trailer": lambda p, m: write_jittor(p / "m.pkl", jseg_checkpoint(jittor_arrays(m))),
    "jittor-nested-no-trailer": lambda p, m: write_jittor(p / "m.pkl", jseg_checkpoint(jittor_arrays(m)), False),
    "jittor-var-objects": lambda p, m: _write_bytes(p / "m.pkl", jittor_var_bytes(jittor_arrays(m))),
    "mmseg-pth": lambda p, m: write_mmseg(p / "m.pth", m, CLASSES),
    "official-pth": lambda p, m: write_official(p / "m.pth", m, CLASSES),
    "segnext-geo": lambda p, m: save_checkpoint(m, p / "m.pth"),
}


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


CASES = [(fmt, False) for fmt in WRITERS] + [
    ("jittor-flat-trailer", True),
    ("jittor-nested-no-trailer", True),
    ("official-pth", True),
    ("segnext-geo", True),
]


@pytest.mark.parametrize(("fmt", "bias"), CASES, ids=[f"{f}{'-head-biases' if b else ''}" for f, b in CASES])
def test_each_format_loads_to_the_same_logits(
    fmt: str,
    bias: bool,
    source: SegNeXt,
    biased: SegNeXt,
    x: torch.Tensor,
    expected: dict[bool, torch.Tensor],
    tmp_path: Path,
) -> None:
    model = biased if bias else source
    ck = inspect_checkpoint(WRITERS[fmt](tmp_path, model))
    assert ck.format == ("jittor" if fmt.startswith("jittor") else "pytorch")
    loaded = load_model(ck)
    assert loaded.meta.variant == "segnext_t" and loaded.num_classes == 16
    assert loaded.decode_head.conv_bias is bias
    assert loaded.nmf.rank == model.nmf.rank == 16
    assert torch.equal(_logits(loaded, x), expected[bias])
    if fmt.startswith(("mmseg", "official")):
        assert loaded.meta.class_names == CLASSES  # from the file's own metadata


def test_jittor_files_lack_num_batches_tracked_and_get_it_filled(source: SegNeXt, tmp_path: Path) -> None:
    arrays = jittor_arrays(source)
    assert len(arrays) == 519  # as the published T files: 550 official keys minus 31 BatchNorm counters
    assert not any(k.endswith("num_batches_tracked") for k in arrays)
    ck = inspect_checkpoint(write_jittor(tmp_path / "t.pkl", arrays))
    counters = [k for k in ck.state_dict if k.endswith("num_batches_tracked")]
    assert len(counters) == 31 and all(int(ck.state_dict[k]) == 0 for k in counters)
    assert len(ck.state_dict) == 550 and ck.family == "official"


@pytest.mark.parametrize("missing", [1, 2])
def test_some_but_not_all_head_biases_are_refused_by_name(missing: int, biased: SegNeXt, tmp_path: Path) -> None:
    arrays = jittor_arrays(biased)
    for key in HEAD_BIAS_KEYS[:missing]:
        del arrays[key]
    with pytest.raises(CheckpointError) as e:
        load_model(write_jittor(tmp_path / "partial.pkl", arrays))
    msg = str(e.value)
    assert "unexpected keys" in msg and all(k in msg for k in HEAD_BIAS_KEYS[missing:]) and "\n" not in msg


def test_imagenet_backbones_in_both_formats(source: SegNeXt, tmp_path: Path) -> None:
    pkl = write_jittor(tmp_path / "mscan_t.pkl", jittor_arrays(source, backbone_only=True))
    pth = write_mscan_pth(tmp_path / "mscan_t.pth", source)
    for path in (pkl, pth):
        ck = inspect_checkpoint(path)
        assert ck.family == "mscan-imagenet"
        model = load_model(ck, num_classes=5)
        own = model.backbone.state_dict()
        for k, v in source.backbone.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                assert torch.equal(own[k], v), (path.name, k)


# --- the Jittor reader --------------------------------------------------------------------


def test_trailer_is_verified(source: SegNeXt, tmp_path: Path) -> None:
    data = bytearray(jittor_bytes(jittor_arrays(source)))
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the pickle body
    bad = _write_bytes(tmp_path / "flipped.pkl", bytes(data))
    with pytest.raises(JittorError, match=r"flipped\.pkl: Jittor SHA-1 check failed"):
        load_model(bad)
    truncated = _write_bytes(tmp_path / "cut.pkl", jittor_bytes(jittor_arrays(source))[:-1000])
    with pytest.raises(CheckpointError, match=r"cut\.pkl: not a readable PyTorch checkpoint or Jittor pickle"):
        load_model(truncated)  # the trailer went with the cut: the file could be either
    body = jittor_bytes(jittor_arrays(source))
    cut_body = body[: len(body) // 2] + body[-28:]  # trailer kept, body cut: caught by the SHA-1 first
    with pytest.raises(JittorError, match="SHA-1 check failed"):
        load_model(_write_bytes(tmp_path / "cut2.pkl", cut_body))


def test_the_trailer_is_exactly_sha1_of_the_body(tmp_path: Path) -> None:
    body = pickle.dumps({"a": np.arange(4, dtype=np.float32)}, protocol=4)
    data = body + hashlib.sha1(body).digest() + b"HCAJSLHD"
    obj = read_jittor(_write_bytes(tmp_path / "a.pkl", data))
    assert np.array_equal(obj["a"], np.arange(4, dtype=np.float32))
    other = body + hashlib.sha1(body + b"x").digest() + b"HCAJSLHD"  # a SHA-1, but not of this body
    with pytest.raises(JittorError, match=r"b\.pkl: Jittor SHA-1 check failed"):
        read_jittor(_write_bytes(tmp_path / "b.pkl", other))


def test_a_pickle_that_would_run_a_command_is_refused(source: SegNeXt, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = _write_bytes(tmp_path / "evil.pkl", malicious_jittor_bytes(marker, jittor_arrays(source)))
    with pytest.raises(JittorError) as e:
        load_model(evil)
    assert "refused pickle global posix.system" in str(e.value) or "refused pickle global os.system" in str(e.value)
    assert not marker.exists()
    # and through the command line (in a new process): one line, no traceback, nothing ran
    r = subprocess.run([sys.executable, "-m", "segnext_geo.cli", "info", str(evil)], capture_output=True, text=True)
    assert r.returncode == 2 and not marker.exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {evil}: refused pickle global"), r.stderr


@pytest.mark.parametrize(
    "global_",
    [("builtins", "eval"), ("torch._utils", "_rebuild_tensor_v2"), ("numpy", "load"), ("collections", "defaultdict")],
)
def test_only_the_listed_numpy_globals_are_allowed(global_: tuple[str, str], tmp_path: Path) -> None:
    module, name = global_
    body = b"\x80\x04\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)]) + name.encode()
    body += b"\x93)R."  # STACK_GLOBAL, EMPTY_TUPLE, REDUCE, STOP
    with pytest.raises(JittorError, match=rf"refused pickle global {module}\.{name}"):
        read_jittor(_write_bytes(tmp_path / "g.pkl", body))


def test_non_array_entries_are_named(tmp_path: Path) -> None:
    path = write_jittor(tmp_path / "odd.pkl", {"backbone.norm1.weight": "not an array"})
    with pytest.raises(CheckpointError, match=r"odd\.pkl: entry 'backbone\.norm1\.weight' is a str"):
        load_model(path)
    with pytest.raises(CheckpointError, match=r"list\.pkl: a Jittor pickle of list"):
        load_model(write_jittor(tmp_path / "list.pkl", [1, 2]))


# --- head biases through fusion and ONNX ----------------------------------------------------


def test_head_biases_survive_bn_folding(biased: SegNeXt, x: torch.Tensor, expected: dict[bool, torch.Tensor]) -> None:
    from segnext_geo.models.fuse import fuse_for_inference

    fused = fuse_for_inference(biased)
    for name in HEAD_BIAS_KEYS:
        assert torch.equal(fused.state_dict()[name], biased.state_dict()[name]), name
    ref, got = expected[True], _logits(fused, x)
    assert (got - ref).abs().max() / ref.abs().max() < 1e-4  # float rounding of the folded backbone (4e-5 here)
    with torch.no_grad():
        for m in (fused.decode_head.squeeze, fused.decode_head.hamburger.ham_out, fused.decode_head.align):
            m.conv.bias.zero_()  # the biases matter: without them the logits differ clearly
    assert (_logits(fused, x) - ref).abs().max() / ref.abs().max() > 1e-2


def test_head_biases_survive_onnx_export(biased: SegNeXt, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from segnext_geo.export import export_onnx

    path = write_jittor(tmp_path / "biased.pkl", jittor_arrays(biased))
    r = export_onnx(path, tmp_path / "biased.onnx", tile_size=64)
    assert r.max_rel_diff < 1e-4
    sess = ort.InferenceSession(str(tmp_path / "biased.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    y = sess.run(None, {"image": x.numpy()})[0]
    ref = _logits(biased, x).numpy()
    assert np.abs(y - ref).max() / np.abs(ref).max() < 1e-4


# --- files that are not checkpoints -----------------------------------------------------------


def test_a_geotiff_is_called_a_tiff_not_a_checkpoint(tmp_path: Path) -> None:
    import rasterio
    from rasterio.transform import from_origin

    tif = tmp_path / "scene.tif"
    with rasterio.open(
        tif, "w", driver="GTiff", height=8, width=8, count=3, dtype="uint8", crs="EPSG:32633",
        transform=from_origin(0, 80, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(CheckpointError, match=r"scene\.tif: is a TIFF image \(a raster\?\), not a model checkpoint"):
        load_model(tif)
    with pytest.raises(CheckpointError, match=r"empty\.pth: checkpoint file is empty \(0 bytes\)"):
        load_model(_write_bytes(tmp_path / "empty.pth", b""))
    html = _write_bytes(tmp_path / "dl.pth", b"<!DOCTYPE html><html><body>Login</body></html>")
    with pytest.raises(CheckpointError, match=r"dl\.pth: is an HTML page"):
        load_model(html)
    assert file_format(WRITERS["mmseg-pth"](tmp_path, random_model("tiny", 2))) == "pytorch"


def test_geotiff_as_predict_checkpoint_is_one_clear_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import rasterio
    from rasterio.transform import from_origin

    tif = tmp_path / "scene.tif"
    with rasterio.open(
        tif, "w", driver="GTiff", height=64, width=64, count=3, dtype="uint8", crs="EPSG:32633",
        transform=from_origin(0, 640, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(np.full((3, 64, 64), 100, np.uint8))
    out = tmp_path / "o.tif"
    code, _, err = run_cli(["predict", str(tif), "-c", str(tif), "-o", str(out), "-q"], capfd, monkeypatch)
    assert code == 2 and not out.exists()
    assert err.strip() == f"error: {tif}: is a TIFF image (a raster?), not a model checkpoint"


def test_empty_checkpoint_and_info_of_a_jittor_file_on_the_command_line(
    biased: SegNeXt, tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = _write_bytes(tmp_path / "empty.pth", b"")
    code, _, err = run_cli(["info", str(empty)], capfd, monkeypatch)
    assert code == 2 and err.strip() == f"error: {empty}: checkpoint file is empty (0 bytes)"
    path = write_jittor(tmp_path / "jseg.pkl", jseg_checkpoint(jittor_arrays(biased)))
    code, out, err = run_cli(["info", str(path)], capfd, monkeypatch)
    assert code == 0, err
    assert "family     : official (jittor file)" in out
    assert "head       : biases on the squeeze, ham_out and align convs" in out
    assert f"{sum(p.numel() for p in biased.parameters()):,}" in out
