"""A table-driven corpus of bad inputs across every command.

Each case asserts: exit code 2, one line on stderr that names the file or option and
the problem, no traceback, nothing left at the output path, and inputs left unchanged.
The commands run in-process through the real console entry point (``main``), as a user runs them.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from segnext_geo.models import build_model, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "cpu_smoke.yaml"


def write_tif(path: Path, data: np.ndarray, crs: str | None = "EPSG:32633", **kw: object) -> Path:
    c, h, w = data.shape
    profile = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": c,
        "dtype": data.dtype,
        "crs": crs,
        "transform": from_origin(500_000, 5_000_000, 0.5, 0.5),
        **kw,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


@dataclass
class Case:
    """``argv`` may hold ``{tmp}``, ``{ckpt}``, ``{scene}``, ``{ro}`` and ``{full}`` placeholders."""

    id: str
    argv: list[str]
    expect: str  # the problem: a fragment of the one-line message (placeholders allowed)
    names: str  # the file or option the message must name (after substitution)
    output: str | None = None  # must not exist afterwards
    setup: Callable[[Path], None] | None = None
    needs: tuple[str, ...] = field(default_factory=tuple)
    xfail: str | None = None  # a known wart, documented: the test fails if it gets fixed


def _scene(tmp: Path) -> None:
    write_tif(tmp / "scene.tif", np.random.default_rng(0).integers(0, 255, (3, 64, 80), dtype=np.uint8))


def _text_tif(tmp: Path) -> None:
    (tmp / "text.tif").write_text("hello, I am not a GeoTIFF\n")


def _empty(tmp: Path) -> None:
    (tmp / "empty.tif").write_bytes(b"")


def _truncated(tmp: Path) -> None:
    write_tif(tmp / "full.tif", np.random.default_rng(1).integers(0, 255, (3, 256, 256), dtype=np.uint8))
    data = (tmp / "full.tif").read_bytes()
    (tmp / "truncated.tif").write_bytes(data[: len(data) // 3])


def _zero_width(tmp: Path) -> None:
    (tmp / "zero.vrt").write_text(
        '<VRTDataset rasterXSize="0" rasterYSize="10"><VRTRasterBand dataType="Byte" band="1"/></VRTDataset>'
    )


def _two_band(tmp: Path) -> None:
    write_tif(tmp / "two.tif", np.ones((2, 64, 64), np.uint8))


def _nan_float(tmp: Path) -> None:
    write_tif(tmp / "nan.tif", np.full((1, 32, 32), np.nan, np.float32))


def _one_px_training(tmp: Path) -> None:
    write_tif(tmp / "img1.tif", np.full((3, 1, 1), 100, np.uint8))
    write_tif(tmp / "lab1.tif", np.zeros((1, 1, 1), np.uint8))


def _corrupt_ckpt(tmp: Path) -> None:
    (tmp / "corrupt.pth").write_bytes(b"\x80\x04garbage" * 100)


def _missing_keys_ckpt(tmp: Path) -> None:
    sd = build_model("tiny", 4).state_dict()
    del sd["decode_head.squeeze.gn.weight"]
    torch.save({"state_dict": sd}, tmp / "missing_keys.pth")


def _five_class_ckpt(tmp: Path) -> None:
    save_checkpoint(build_model("tiny", 5), tmp / "five.pth")


def _existing(tmp: Path) -> None:
    _scene(tmp)
    (tmp / "exists.tif").write_bytes(b"precious")


def _big_noise(tmp: Path) -> None:
    """Incompressible outputs that cannot fit a 64 KiB file system."""
    write_tif(tmp / "big.tif", np.random.default_rng(2).integers(0, 255, (3, 512, 512), dtype=np.uint8))


def _dir_input(tmp: Path) -> None:
    (tmp / "adir.tif").mkdir()


CASES = [
    # predict: files
    Case(
        "predict-missing-scene",
        ["predict", "{tmp}/nope.tif", "-c", "{ckpt}", "-o", "{tmp}/o.tif"],
        "nope.tif: no such file",
        "{tmp}/nope.tif",
        "{tmp}/o.tif",
    ),
    Case(
        "predict-directory",
        ["predict", "{tmp}/adir.tif", "-c", "{ckpt}", "-o", "{tmp}/o.tif"],
        "adir.tif: is a directory, not a raster",
        "{tmp}/adir.tif",
        "{tmp}/o.tif",
        _dir_input,
    ),
    Case(
        "predict-empty-file",
        ["predict", "{tmp}/empty.tif", "-c", "{ckpt}", "-o", "{tmp}/o.tif"],
        "empty.tif: is empty (0 bytes), not a raster",
        "{tmp}/empty.tif",
        "{tmp}/o.tif",
        _empty,
    ),
    Case(
        "predict-text-file-called-tif",
        ["predict", "{tmp}/text.tif", "-c", "{ckpt}", "-o", "{tmp}/o.tif"],
        "text.tif: not a raster GDAL can read",
        "{tmp}/text.tif",
        "{tmp}/o.tif",
        _text_tif,
    ),
    Case(
        "predict-truncated-tiff",
        ["predict", "{tmp}/truncated.tif", "-c", "{ckpt}", "-o", "{tmp}/o.tif"],
        "truncated.tif: cannot read its last block (corrupt or truncated file?)",
        "{tmp}/truncated.tif",
        "{tmp}/o.tif",
        _truncated,
    ),
    Case(
        "predict-zero-width",
        ["predict", "{tmp}/zero.vrt", "-c", "{ckpt}", "-o", "{tmp}/o.tif"],
        "0 x 10",
        "{tmp}/zero.vrt",
        "{tmp}/o.tif",
        _zero_width,
    ),
    Case(
        "predict-2-bands-for-3-band-model",
        ["predict", "{tmp}/two.tif", "-c", "{ckpt}", "-o", "{tmp}/o.tif"],
        "band",
        "{tmp}/two.tif",
        "{tmp}/o.tif",
        _two_band,
    ),
    Case(
        "predict-corrupt-checkpoint",
        ["predict", "{scene}", "-c", "{tmp}/corrupt.pth", "-o", "{tmp}/o.tif"],
        "not a readable PyTorch checkpoint",
        "{tmp}/corrupt.pth",
        "{tmp}/o.tif",
        _corrupt_ckpt,
    ),
    Case(
        "predict-missing-keys",
        ["predict", "{scene}", "-c", "{tmp}/missing_keys.pth", "-o", "{tmp}/o.tif"],
        "missing keys: decode_head.squeeze.gn.weight",
        "{tmp}/missing_keys.pth",
        "{tmp}/o.tif",
        _missing_keys_ckpt,
    ),
    Case(
        "predict-unknown-extension",
        ["predict", "{scene}", "-c", "{ckpt}", "-o", "{tmp}/o.xyz"],
        "o.xyz: unsupported extension .xyz",
        "{tmp}/o.xyz",
        "{tmp}/o.xyz",
    ),
    Case(
        "predict-existing-output",
        ["predict", "{scene}", "-c", "{ckpt}", "-o", "{tmp}/exists.tif"],
        "--overwrite",
        "{tmp}/exists.tif",
        None,
        _existing,
    ),
    Case(
        "predict-missing-output-dir",
        ["predict", "{scene}", "-c", "{ckpt}", "-o", "{tmp}/no/such/dir/o.tif"],
        "dir does not exist",
        "{tmp}/no/such/dir",
        "{tmp}/no/such/dir/o.tif",
    ),
    Case(
        "predict-read-only-output-dir",
        ["predict", "{scene}", "-c", "{ckpt}", "-o", "{ro}/o.tif"],
        "is not writable",
        "{ro}",
        "{ro}/o.tif",
        needs=("ro",),
    ),
    Case(
        "predict-full-disk",
        [
            "predict",
            "{tmp}/big.tif",
            "-c",
            "{ckpt}",
            "-o",
            "{full}/o.tif",
            "--tile-size",
            "256",
            "--overlap",
            "0",
            "--probs-out",
            "{full}/p.tif",
            "--quiet",
        ],
        "no space left",
        "{full}",
        "{full}/o.tif",
        _big_noise,
        needs=("full",),
    ),
    Case(
        "predict-bad-bands",
        ["predict", "{scene}", "-c", "{ckpt}", "-o", "{tmp}/o.tif", "--bands", "1,x,3"],
        "'1,x,3' is not a comma-separated list of band numbers",
        "--bands",
        "{tmp}/o.tif",
    ),
    Case(
        "predict-band-out-of-range",
        ["predict", "{scene}", "-c", "{ckpt}", "-o", "{tmp}/o.tif", "--bands", "1,2,9"],
        "band 9 does not exist in {scene} (it has 3 band(s))",
        "--bands",
        "{tmp}/o.tif",
    ),
    Case(
        "predict-negative-overlap",
        ["predict", "{scene}", "-c", "{ckpt}", "-o", "{tmp}/o.tif", "--overlap", "-5"],
        "must be between 0 and half the tile size (512 px), got -5",
        "--overlap",
        "{tmp}/o.tif",
    ),
    Case(
        "predict-overlap-ge-tile",
        ["predict", "{scene}", "-c", "{ckpt}", "-o", "{tmp}/o.tif", "--tile-size", "256", "--overlap", "256"],
        "must be between 0 and half the tile size (128 px), got 256",
        "--overlap",
        "{tmp}/o.tif",
    ),
    Case(
        "predict-tile-too-small",
        ["predict", "{scene}", "-c", "{ckpt}", "-o", "{tmp}/o.tif", "--tile-size", "16"],
        "16 px is too small; use at least 64 px",
        "--tile-size",
        "{tmp}/o.tif",
    ),
    Case(
        "predict-unknown-device",
        ["predict", "{scene}", "-c", "{ckpt}", "-o", "{tmp}/o.tif", "--device", "tpu"],
        "unknown device 'tpu'",
        "--device",
        "{tmp}/o.tif",
    ),
    # vectorize
    Case(
        "vectorize-nan-float-mask",
        ["vectorize", "{tmp}/nan.tif", "-o", "{tmp}/v.gpkg"],
        "not an integer class raster (data type float32)",
        "{tmp}/nan.tif",
        "{tmp}/v.gpkg",
        _nan_float,
    ),
    Case(
        "vectorize-missing-mask",
        ["vectorize", "{tmp}/none.tif", "-o", "{tmp}/v.gpkg"],
        "none.tif: no such file",
        "{tmp}/none.tif",
        "{tmp}/v.gpkg",
    ),
    Case(
        "vectorize-unknown-extension",
        ["vectorize", "{scene}", "-o", "{tmp}/v.abc"],
        "unknown output extension '.abc'",
        "{tmp}/v.abc",
        "{tmp}/v.abc",
    ),
    # train / evaluate
    Case(
        "train-invalid-config-key",
        ["train", "--config", str(SMOKE), "--set", "data.batchsize=3"],
        "did you mean 'data.batch_size'",
        "data.batchsize",
        None,
    ),
    Case(
        "train-unknown-dataset",
        ["train", "--config", str(SMOKE), "--set", "data.dataset=nosuchset"],
        "unknown dataset",
        "nosuchset",
        None,
    ),
    Case(
        "train-missing-config",
        ["train", "--config", "{tmp}/none.yaml"],
        "none.yaml: config file not found",
        "{tmp}/none.yaml",
        None,
    ),
    Case(
        "train-1x1-raster",
        [
            "train",
            "--config",
            str(SMOKE),
            "--set",
            "data.dataset=geotiff",
            "--set",
            "data.train_images={tmp}/img1.tif",
            "--set",
            "data.train_labels={tmp}/lab1.tif",
            "--set",
            "data.val_images={tmp}/img1.tif",
            "--set",
            "data.val_labels={tmp}/lab1.tif",
            "--set",
            "data.class_names=[a,b]",
            "--set",
            "trainer.out_dir={tmp}/run",
        ],
        "img1.tif: smaller than one 96 px chip",
        "{tmp}/img1.tif",
        "{tmp}/run/best.ckpt",
        _one_px_training,
    ),
    Case(
        "evaluate-class-count-mismatch",
        ["evaluate", "--config", str(SMOKE), "--checkpoint", "{tmp}/five.pth", "--out", "{tmp}/m.json"],
        "class",
        "{tmp}/five.pth",
        "{tmp}/m.json",
        _five_class_ckpt,
    ),
    # batch
    Case(
        "batch-missing-input",
        ["batch", "{tmp}/nothing_here", "-c", "{ckpt}", "-o", "{tmp}/bo"],
        "nothing_here: no such file or directory",
        "{tmp}/nothing_here",
        "{tmp}/bo/manifest.jsonl",
    ),
    Case(
        "batch-unknown-format",
        ["batch", "{scene}", "-c", "{ckpt}", "-o", "{tmp}/bo", "--format", "dxf"],
        "'dxf' is not one of gpkg, parquet, fgb, geojson",
        "--format",
        "{tmp}/bo/manifest.jsonl",
    ),
    Case(
        "batch-corrupt-checkpoint",
        ["batch", "{scene}", "-c", "{tmp}/corrupt.pth", "-o", "{tmp}/bo"],
        "corrupt.pth: not a readable PyTorch checkpoint or Jittor pickle",
        "{tmp}/corrupt.pth",
        "{tmp}/bo/manifest.jsonl",
        _corrupt_ckpt,
    ),
    # export and info
    Case("export-bad-suffix", ["export", "{ckpt}", "--out", "{tmp}/m.pt"], ".onnx", "{tmp}/m.pt", "{tmp}/m.pt"),
    Case(
        "export-missing-checkpoint",
        ["export", "{tmp}/none.pth", "--out", "{tmp}/m.onnx"],
        "not found",
        "{tmp}/none.pth",
        "{tmp}/m.onnx",
    ),
    Case(
        "info-text-checkpoint",
        ["info", "{tmp}/text.tif"],
        "text.tif: is a text file, not a model checkpoint",
        "{tmp}/text.tif",
        None,
        _text_tif,
    ),
    Case("info-directory", ["info", "{tmp}"], "directory", "{tmp}", None),
]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_model("tiny", 4), tmp_path_factory.mktemp("bad") / "tiny4.pth")


def _mount(kind: str, path: Path) -> bool:
    """A read-only or a 64 KiB tmpfs at ``path`` (needs root and mount rights)."""
    path.mkdir(parents=True, exist_ok=True)
    opts = "ro,size=1m" if kind == "ro" else "size=64k"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_cli(argv: list[str], capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    from segnext_geo.cli.app import main

    monkeypatch.setattr(sys, "argv", ["segnext-geo", *argv])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capfd.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case,
    tmp_path: Path,
    ckpt: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    if case.xfail:
        request.applymarker(pytest.mark.xfail(reason=case.xfail, strict=True))
    _scene(tmp_path)
    if case.setup:
        case.setup(tmp_path)
    subs = {
        "tmp": str(tmp_path),
        "ckpt": str(ckpt),
        "scene": str(tmp_path / "scene.tif"),
        "ro": str(tmp_path / "ro"),
        "full": str(tmp_path / "full"),
    }
    mounted = []
    for kind in case.needs:
        if os.geteuid() != 0 or not _mount(kind, tmp_path / kind):
            pytest.skip(f"cannot mount a {'read-only' if kind == 'ro' else 'tiny'} tmpfs here (needs root)")
        mounted.append(tmp_path / kind)
    try:
        argv = [a.format(**subs) for a in case.argv]
        before = _digest(tmp_path)
        inputs_before = {**before, "ckpt": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
        code, err = run_cli(argv, capfd, monkeypatch)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert code == 2, f"exit code {code}; stderr: {err}"
        assert "Traceback" not in err, err
        assert len(lines) == 1, f"expected one line, got: {err}"
        assert lines[0].startswith("error: ")
        assert case.names.format(**subs) in lines[0], f"{case.names.format(**subs)!r} not named in {lines[0]!r}"
        expect = case.expect.format(**subs)
        assert expect and expect in lines[0], f"{expect!r} not in {lines[0]!r}"
        if case.output:
            out = Path(case.output.format(**subs))
            assert not out.exists(), f"{out} was left behind"
            if out.parent.exists():
                assert not [p for p in out.parent.iterdir() if ".tmp" in p.name], "temporary files left behind"
        after = _digest(tmp_path)
        assert {k: v for k, v in after.items() if k in before} == before, "an input changed"
        assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == inputs_before["ckpt"]
    finally:
        for m in mounted:
            subprocess.run(["umount", str(m)], capture_output=True)


@pytest.mark.parametrize(
    ("name", "data", "nodata"),
    [("nan", np.full((3, 48, 48), np.nan, np.float32), None), ("all_nodata", np.zeros((3, 48, 48), np.uint8), 0)],
)
def test_empty_scenes_write_all_nodata_and_say_so(
    name: str,
    data: np.ndarray,
    nodata: float | None,
    tmp_path: Path,
    ckpt: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """NaN-filled and all-nodata scenes are not errors for predict: an all-nodata output and one warning."""
    scene = write_tif(tmp_path / f"{name}.tif", data, nodata=nodata)
    out = tmp_path / "o.tif"
    code, err = run_cli(["predict", str(scene), "-c", str(ckpt), "-o", str(out), "--quiet"], capfd, monkeypatch)
    assert code == 0, err
    assert f"warning: {scene}: no valid pixels" in err and "Traceback" not in err
    with rasterio.open(out) as src:
        assert (src.read(1) == 255).all() and src.nodata == 255
