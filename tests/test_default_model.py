"""The user's exact command, ``segnext-geo predict scene.tif --out polygons.gpkg``, and names everywhere.

The default model (``segnext_t_isaid``) is a test-made Jittor file with random weights whose
classifier never picks background, put into a temporary cache with ``segnext-geo models import``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from weights_files import jittor_arrays, random_model, run_cli, write_jittor, write_mscan_pth

from segnext_geo.models import SegNeXt, build_model, save_checkpoint
from segnext_geo.models.meta import ISAID_CLASSES, ISAID_PALETTE

FILE = "segnext_tiny_896x896_isaid_160k.pkl"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def isaid_model() -> SegNeXt:
    model = random_model("tiny", 16, seed=21)
    with torch.no_grad():
        model.decode_head.conv_seg.bias[0] = -50.0  # background never wins: polygons of iSAID's object classes
    return model


@pytest.fixture(scope="module")
def isaid_file(isaid_model: SegNeXt, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jittor(tmp_path_factory.mktemp("usb") / "copied_by_hand.pkl", jittor_arrays(isaid_model))


def _scene(path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, 96, 128), dtype=np.uint8)
    data[:, 20:60, 30:90] = 200
    profile = {
        "driver": "GTiff",
        "height": 96,
        "width": 128,
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 5_000_000, 0.5, 0.5),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "segnext_geo.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {**os.environ, "SEGNEXT_GEO_HOME": str(tmp_path / "home"), "SEGNEXT_GEO_WEIGHTS_MIRROR": "http://127.0.0.1:9"}
    e.pop("SEGNEXT_GEO_MODEL", None)
    return e


def test_the_exact_command_after_models_import(tmp_path: Path, env: dict[str, str], isaid_file: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _scene(work / "scene.tif")
    r = _run(["models", "import", "segnext_t_isaid", str(isaid_file)], work, env)
    assert r.returncode == 0, r.stderr
    r = _run(["predict", "scene.tif", "--out", "polygons.gpkg"], work, env)  # exactly as a user types it
    assert r.returncode == 0, r.stderr
    gdf = pyogrio.read_dataframe(work / "polygons.gpkg")
    assert len(gdf) > 0
    names = set(gdf["class_name"])
    assert names <= set(ISAID_CLASSES[1:]) and len(names) >= 2, names
    assert all(ISAID_CLASSES[i] == n for i, n in zip(gdf["class_id"], gdf["class_name"], strict=True))
    assert sorted(p.name for p in work.iterdir()) == ["polygons.gpkg", "scene.tif"]


def test_with_an_empty_cache_and_no_server_it_fails_fast_and_writes_nothing(
    tmp_path: Path, env: dict[str, str]
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _scene(work / "scene.tif")
    r = _run(["predict", "scene.tif", "--out", "polygons.gpkg"], work, env)  # timeout=600: a hang fails the test
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    expected = Path(env["SEGNEXT_GEO_HOME"]) / "weights" / FILE
    assert lines[0].startswith("error: segnext_t_isaid: cannot download http://127.0.0.1:9/" + FILE)
    assert str(expected) in lines[0] and "segnext-geo models import segnext_t_isaid FILE" in lines[0]
    assert sorted(p.name for p in work.iterdir()) == ["scene.tif"]
    assert not expected.exists()


def test_catalogue_classes_and_palette_reach_the_cog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isaid_file: Path
) -> None:
    from segnext_geo.inference import PredictOptions, predict_scene
    from segnext_geo.models.hub import import_weights

    monkeypatch.setenv("SEGNEXT_GEO_HOME", str(tmp_path / "home"))
    import_weights("segnext_t_isaid", isaid_file)
    out = tmp_path / "classes.tif"
    predict_scene(
        _scene(tmp_path / "scene.tif"),
        "segnext_t_isaid",
        out,
        PredictOptions(tile_size=64, overlap=16),
        progress=False,
    )
    with rasterio.open(out) as src:
        assert json.loads(src.tags()["class_names"]) == list(ISAID_CLASSES)
        cmap = src.colormap(1)
        assert [cmap[i][:3] for i in range(16)] == list(ISAID_PALETTE)


def test_segnext_geo_model_picks_the_default(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _scene(tmp_path / "scene.tif")
    torch.manual_seed(0)
    own = build_model("tiny", 3, class_names=["background", "roof", "pool"])
    with torch.no_grad():
        own.decode_head.conv_seg.bias.copy_(torch.tensor([-50.0, 0.0, 0.0]))
    save_checkpoint(own, tmp_path / "own.pth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEGNEXT_GEO_MODEL", "own.pth")
    code, _, err = run_cli(
        ["predict", "scene.tif", "--out", "p.gpkg", "-q", "--tile-size", "64", "--overlap", "16"], capfd, monkeypatch
    )
    assert code == 0, err
    assert set(pyogrio.read_dataframe(tmp_path / "p.gpkg")["class_name"]) <= {"roof", "pool"}


def test_batch_and_info_take_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isaid_file: Path, isaid_model: SegNeXt
) -> None:
    from segnext_geo.batch import run_batch
    from segnext_geo.inference import PredictOptions
    from segnext_geo.models import describe_checkpoint
    from segnext_geo.models.hub import import_weights

    monkeypatch.setenv("SEGNEXT_GEO_HOME", str(tmp_path / "home"))
    import_weights("segnext_t_isaid", isaid_file)
    d = describe_checkpoint("segnext_t_isaid")
    assert d["format"] == "jittor" and d["weights"]["name"] == "segnext_t_isaid" and d["num_classes"] == 16
    archive = tmp_path / "archive"
    archive.mkdir()
    _scene(archive / "a.tif")
    s = run_batch(
        [archive],
        "segnext_t_isaid",
        tmp_path / "out",
        workers=1,
        options=PredictOptions(tile_size=64, overlap=16, device="cpu"),
        progress=False,
    )
    assert s.done == 1 and s.failed == 0, s.failures
    names = set(pyogrio.read_dataframe(tmp_path / "out" / "a.gpkg")["class_name"])
    assert names and names <= set(ISAID_CLASSES[1:])


def _training_rasters(root: Path) -> list[str]:
    """A 3-band image and a 4-class label raster per split, and the config keys that train on them."""
    rng = np.random.default_rng(3)
    sets = ["data.dataset=geotiff"]
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        label = np.zeros((96, 96), np.uint8)
        label[16:48, 16:48], label[48:80, 40:90], label[60:90, 5:30] = 1, 2, 3
        image = (label[None] * 60 + rng.integers(0, 40, (3, 96, 96))).astype(np.uint8)
        profile = {"driver": "GTiff", "width": 96, "height": 96, "crs": "EPSG:32633"}
        profile["transform"] = from_origin(500_000, 5_000_000, 0.5, 0.5)
        with rasterio.open(root / split / "image.tif", "w", count=3, dtype="uint8", **profile) as dst:
            dst.write(image)
        with rasterio.open(root / split / "label.tif", "w", count=1, dtype="uint8", **profile) as dst:
            dst.write(label[None])
        sets.append(f"data.{split}_images={root / split / 'image.tif'}")
        sets.append(f"data.{split}_labels={root / split / 'label.tif'}")
    return [
        *sets,
        "data.class_names=[background, a, b, c]",
        "data.chip_size=64",
        "data.samples_per_epoch=4",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.img_scale=64",
        "data.crop_size=64",
        "data.test_scale=null",
        "schedule.iters=1",
        "schedule.warmup_iters=1",
        "trainer.val_interval=1",
        "trainer.accelerator=cpu",
        "trainer.progress_bar=false",
    ]


def test_paper_configs_without_pretrained_weights_warn(caplog: pytest.LogCaptureFixture) -> None:
    from segnext_geo.train.config import load_config
    from segnext_geo.train.pretrained import warn_if_from_scratch

    root = ROOT / "configs"
    for name in ("segnext_t_isaid", "segnext_l_isaid", "loveda_segnext_t", "potsdam_segnext_t"):
        caplog.clear()
        assert warn_if_from_scratch(load_config(root / f"{name}.yaml")) is True
        msg = caplog.records[-1].getMessage()
        assert f"{name}.yaml" in msg and "14-18 % mIoU" in msg and "--pretrained mscan_" in msg
    caplog.clear()
    assert warn_if_from_scratch(load_config(root / "segnext_l_isaid.yaml")) is True
    assert "--pretrained mscan_l " in caplog.records[-1].getMessage()
    assert warn_if_from_scratch(load_config(root / "segnext_t_isaid.yaml", ["model.pretrained=mscan_t"])) is False
    assert warn_if_from_scratch(load_config(root / "cpu_smoke.yaml")) is False


@pytest.mark.slow
def test_training_by_name_and_the_from_scratch_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, isaid_model: SegNeXt
) -> None:
    from segnext_geo.models import load_model
    from segnext_geo.models.hub import cached_path, import_weights
    from segnext_geo.train.config import load_config
    from segnext_geo.train.fit import train, train_from_config
    from segnext_geo.train.pretrained import init_from_pretrained

    monkeypatch.setenv("SEGNEXT_GEO_HOME", str(tmp_path / "home"))
    # the Jittor ImageNet file through the real import checks; the mmseg one as if downloaded earlier
    # (its published SHA-256 prefix cannot match bytes a test makes)
    import_weights("mscan_t_jittor", write_jittor(tmp_path / "mscan_t.pkl", jittor_arrays(isaid_model, True)))
    mmseg = write_mscan_pth(tmp_path / "m.pth", isaid_model)
    cached_path("mscan_t").write_bytes(mmseg.read_bytes())
    for name in ("mscan_t", "mscan_t_jittor"):
        model = build_model("tiny", 4)
        assert init_from_pretrained(model, name) == f"backbone from ImageNet {name}"
        for k, v in isaid_model.backbone.state_dict().items():
            if not k.endswith("num_batches_tracked"):
                assert torch.equal(model.backbone.state_dict()[k], v), k

    # a run without pretrained weights warns right before training starts (stopped there by a callback)
    import lightning.pytorch as pl

    class Stop(pl.Callback):
        def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            raise _Stopped

    sets = _training_rasters(tmp_path / "rasters")
    caplog.set_level("WARNING", logger="segnext_geo")
    with pytest.raises(_Stopped):
        train(load_config(None, [*sets, f"trainer.out_dir={tmp_path / 'scratch'}"]), callbacks=[Stop()])
    assert any("on geotiff from random weights" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "scratch" / "last.ckpt").exists()
    caplog.clear()
    result = train_from_config(None, [*sets, f"trainer.out_dir={tmp_path / 'run'}"], pretrained="mscan_t_jittor")
    assert not any("from random weights" in r.getMessage() for r in caplog.records)
    assert load_model(result.last).meta.extra["pretrained"] == "backbone from ImageNet mscan_t_jittor"


class _Stopped(Exception):
    """Raised by a test callback to end a run at its start."""
