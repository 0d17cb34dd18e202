"""Every ``Example:`` line of every command's ``--help`` runs, as a user would paste it.

The examples are parsed from the help texts themselves, so a new or changed example without a
recipe here fails :func:`test_every_example_has_a_recipe`. Each runs in a copy of a work folder
that holds the files the examples name (made here: small GeoTIFFs, tiny checkpoints, a raw
iSAID folder), with ``~`` expanded as a shell would, through the real console entry point. The
only edits are listed per example in ``RECIPES``: sizes (4096 px scenes, 160k-step configs,
4 devices) shrunk to what a test can afford; every flag and file name stays as written.

The pretrained names (``segnext_t_isaid``, ``mscan_t``) resolve to test-made files in a cache,
as in ``test_default_model.py``: ``segnext_t_isaid`` through ``models import`` of a tiny
Jittor-format file, ``mscan_t`` written under its cache name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
import typer.main
from rasterio.transform import from_origin
from segnext_geo.cli.app import app
from weights_files import jittor_arrays, random_model, run_cli, write_jittor, write_mmseg, write_mscan_pth

from segnext_geo.models import build_model, save_checkpoint
from segnext_geo.models.meta import ISAID_CLASSES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = re.compile(r"^\s*(?:Example|Polygons): (segnext-geo .+?)(?:\s{2,}\(.*\))?\s*$")


def help_examples() -> list[str]:
    """The example command lines of every command's help, in command order."""
    found: list[str] = []

    def walk(cmd: object) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for sub in subs.values():
                walk(sub)
            return
        for line in (getattr(cmd, "help", None) or "").splitlines():
            m = EXAMPLE.match(line)
            if m:
                found.append(m.group(1))

    walk(typer.main.get_command(app))
    return found


@dataclass
class Recipe:
    """How one example is run: ``edits`` (old, new) on the text (sizes only), then ``extra`` arguments;
    ``outputs`` must exist afterwards (relative to the work folder); ``stdout`` fragments must be printed."""

    edits: list[tuple[str, str]] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    stdout: list[str] = field(default_factory=list)
    fresh_cache: bool = False  # an empty weights cache (models import)
    no_data: bool = False  # without the prepared data/ folder (prepare-isaid writes it)
    absent: list[str] = field(default_factory=list)  # files the example writes, removed from the copy first


SMALL_TRAIN = [
    "--set", "data.crop_size=[64,64]", "--set", "data.img_scale=[64,64]", "--set", "data.batch_size=2",
    "--set", "data.num_workers=0", "--set", "data.test_scale=null", "--set", "schedule.iters=2",
    "--set", "schedule.warmup_iters=1", "--set", "trainer.val_interval=2", "--set", "trainer.log_interval=1",
    "--set", "trainer.accelerator=cpu",
]  # fmt: skip

RECIPES: dict[str, Recipe] = {
    "segnext-geo info segnext_mscan-t_ade20k.pth": Recipe(
        stdout=["family     : mmseg", "classes    : 150", "NMF rank   : 16"]
    ),
    "segnext-geo info segnext_t_isaid": Recipe(
        stdout=["variant    : segnext_t", "classes    : 16 (background, ship", "NMF rank   : 16", "licence"]
    ),
    "segnext-geo batch /data/archive/ --checkpoint best.ckpt --out-dir results/ --workers 2 --merge all.gpkg": Recipe(
        edits=[("/data/archive/", "archive/")],
        outputs=["results/manifest.jsonl", "results/a.gpkg", "results/b.gpkg", "all.gpkg"],
    ),
    "segnext-geo demo --out-dir demo --size 4096 --minutes 3": Recipe(
        edits=[("--size 4096 --minutes 3", "--size 256 --minutes 3 --steps 3")],
        outputs=["demo/classes.tif", "demo/polygons.gpkg", "demo/preview.png", "demo/scores.json"],
        stdout=["mIoU"],
    ),
    "segnext-geo export runs/isaid/best.ckpt --out segnext_t.onnx --tile-size 1024 --dynamic": Recipe(
        edits=[("--tile-size 1024", "--tile-size 128")], outputs=["segnext_t.onnx"]
    ),
    "segnext-geo export segnext_t_isaid --out segnext_t_isaid.onnx --tile-size 896": Recipe(
        edits=[("--tile-size 896", "--tile-size 128")], outputs=["segnext_t_isaid.onnx"]
    ),
    "segnext-geo predict scene.tif --out polygons.gpkg": Recipe(
        outputs=["polygons.gpkg"], absent=["polygons.gpkg"], stdout=["wrote polygons.gpkg", "polygons)"]
    ),
    "segnext-geo predict scene.tif -c segnext_t_isaid -o classes.tif --probs-out probs.tif --tta flip": Recipe(
        outputs=["classes.tif", "probs.tif"]
    ),
    "segnext-geo predict scene.tif -c model.pth -o parcels.gpkg --mask-out classes.tif --min-area 20": Recipe(
        outputs=["parcels.gpkg", "classes.tif"]
    ),
    "segnext-geo preview scene.tif --polygons polygons.gpkg --out preview.png": Recipe(outputs=["preview.png"]),
    "segnext-geo prepare-isaid ~/datasets/iSAID_raw data/iSAID --workers 4": Recipe(
        outputs=["data/iSAID/img_dir/val", "data/iSAID/ann_dir/train"], no_data=True
    ),
    "segnext-geo prepare-isaid ~/datasets/iSAID_raw data/iSAID_jseg --protocol jseg": Recipe(
        outputs=["data/iSAID_jseg/img_dir/val", "data/iSAID_jseg/ann_dir/train"], no_data=True
    ),
    "segnext-geo train --config configs/segnext_t_isaid.yaml --pretrained mscan_t --devices 4": Recipe(
        edits=[("--devices 4", "--devices 1")],
        extra=SMALL_TRAIN,
        outputs=["runs/segnext_t_isaid/best.ckpt", "runs/segnext_t_isaid/training_curve.png"],
    ),
    "segnext-geo train -c configs/cpu_smoke.yaml --set schedule.iters=50 --set trainer.out_dir=runs/smoke": Recipe(
        edits=[("schedule.iters=50", "schedule.iters=2")],
        extra=["--set", "trainer.val_interval=2"],
        outputs=["runs/smoke/best.ckpt", "runs/smoke/last.ckpt"],
    ),
    "segnext-geo evaluate -c configs/segnext_t_isaid.yaml --checkpoint runs/t_isaid/best.ckpt --mode slide": Recipe(
        outputs=["runs/t_isaid/eval_val_slide.json"], stdout=["mIoU"]
    ),
    "segnext-geo vectorize scene.mask.tif --out scene.gpkg --probs scene.probs.tif --min-area 20 --workers 4": Recipe(
        outputs=["scene.gpkg"]
    ),
    "segnext-geo models list --dataset iSAID": Recipe(stdout=["segnext_t_isaid", "segnext_l_isaid"]),
    "segnext-geo models info segnext_t_isaid": Recipe(stdout=["segnext_t_isaid", "iSAID"]),
    "segnext-geo models download segnext_t_isaid mscan_t": Recipe(stdout=["already cached"]),
    "segnext-geo models import segnext_t_isaid /media/usb/segnext_tiny_896x896_isaid_160k.pkl": Recipe(
        edits=[("/media/usb/", "usb/")], fresh_cache=True
    ),
}


def test_every_example_has_a_recipe() -> None:
    examples = help_examples()
    assert len(examples) == len(set(examples)) >= 20
    assert set(examples) == set(RECIPES), set(examples) ^ set(RECIPES)


def _write(path: Path, data: np.ndarray, **kw: object) -> Path:
    c, h, w = data.shape
    profile = {"driver": "GTiff", "height": h, "width": w, "count": c, "dtype": data.dtype.name}
    profile.update(crs="EPSG:32633", transform=from_origin(500_000, 5_000_000, 2.0, 2.0), **kw)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _scene(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, (3, 96, 128), dtype=np.uint8)
    data[:, 20:60, 30:90] = 200
    return _write(path, data)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(work folder, HOME, weights home) holding everything the examples name."""
    from test_isaid import write_raw

    from segnext_geo.data.isaid_prepare import prepare_isaid
    from segnext_geo.models.hub import cached_path, import_weights

    base = tmp_path_factory.mktemp("examples")
    work, home, weights_home = base / "work", base / "home", base / "weights_home"
    work.mkdir()
    shutil.copytree(ROOT / "configs", work / "configs")
    _scene(work / "scene.tif", 0)
    (work / "archive").mkdir()
    _scene(work / "archive" / "a.tif", 1)
    _scene(work / "archive" / "b.tif", 2)
    torch.manual_seed(0)
    four = build_model("tiny", 4, class_names=["background", "building", "road", "water"])
    save_checkpoint(four, work / "model.pth")
    save_checkpoint(four, work / "best.ckpt")
    (work / "runs" / "isaid").mkdir(parents=True)
    (work / "runs" / "t_isaid").mkdir(parents=True)
    isaid = random_model("tiny", 16, seed=21)
    with torch.no_grad():
        isaid.decode_head.conv_seg.bias[0] = -50.0  # background never wins: polygons at the default settings
    save_checkpoint(build_model("tiny", 16, class_names=list(ISAID_CLASSES)), work / "runs" / "isaid" / "best.ckpt")
    save_checkpoint(build_model("tiny", 16, class_names=list(ISAID_CLASSES)), work / "runs" / "t_isaid" / "best.ckpt")
    write_mmseg(work / "segnext_mscan-t_ade20k.pth", random_model("tiny", 150, seed=3), [f"c{i}" for i in range(150)])
    # predict's outputs, for vectorize and preview
    classes = np.zeros((1, 96, 128), np.uint8)
    classes[0, 10:50, 10:70], classes[0, 60:90, 40:120], classes[0, 0:5, 0:5] = 1, 2, 3
    _write(work / "scene.mask.tif", classes, nodata=255)
    with rasterio.open(work / "scene.mask.tif", "r+") as dst:
        dst.update_tags(class_names=json.dumps(["background", "building", "road", "water"]))
    probs = np.random.default_rng(4).integers(0, 255, (4, 96, 128), dtype=np.uint8)
    _write(work / "scene.probs.tif", probs)
    import geopandas as gpd
    from shapely.geometry import box

    gdf = gpd.GeoDataFrame(
        {"class_id": [1, 2], "class_name": ["building", "road"]},
        geometry=[box(500_020, 4_999_900, 500_100, 4_999_980), box(500_120, 4_999_820, 500_200, 4_999_900)],
        crs="EPSG:32633",
    )
    pyogrio.write_dataframe(gdf, work / "polygons.gpkg")
    # iSAID: the raw layout under ~/datasets, and its 64 px patches in data/iSAID
    write_raw(home / "datasets" / "iSAID_raw")
    (work / "data").mkdir()
    prepare_isaid(home / "datasets" / "iSAID_raw", work / "data" / "iSAID", 64, 24, progress=False)
    # the weights: segnext_t_isaid imported as a user would, mscan_t under its cache name
    usb = work / "usb"
    usb.mkdir()
    write_jittor(usb / "segnext_tiny_896x896_isaid_160k.pkl", jittor_arrays(isaid))
    old = os.environ.get("SEGNEXT_GEO_HOME")
    os.environ["SEGNEXT_GEO_HOME"] = str(weights_home)
    try:
        import_weights("segnext_t_isaid", usb / "segnext_tiny_896x896_isaid_160k.pkl")
        write_mscan_pth(cached_path("mscan_t"), random_model("tiny", 16, seed=5))
    finally:
        if old is None:
            os.environ.pop("SEGNEXT_GEO_HOME")
        else:
            os.environ["SEGNEXT_GEO_HOME"] = old
    return work, home, weights_home


@pytest.mark.slow
@pytest.mark.parametrize("example", list(RECIPES))
def test_the_example_runs_as_written(
    example: str,
    template: tuple[Path, Path, Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recipe = RECIPES[example]
    src_work, home, weights_home = template
    work = tmp_path / "work"
    shutil.copytree(src_work, work, ignore=shutil.ignore_patterns("data") if recipe.no_data else None)
    for name in recipe.absent:
        (work / name).unlink()
    cache = tmp_path / "fresh_home" if recipe.fresh_cache else weights_home
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SEGNEXT_GEO_HOME", str(cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    line = example
    for old, new in recipe.edits:
        assert old in line, (old, line)
        line = line.replace(old, new)
    argv = [os.path.expanduser(a) if a.startswith("~") else a for a in shlex.split(line)]  # as a shell does
    assert argv[0] == "segnext-geo"
    # stream handlers that libraries (Lightning) made at import time, in an earlier test whose captured
    # stderr is closed now, write to this test's stderr instead (a user's process has one stderr)
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in getattr(logger, "handlers", []):
            if type(h) is logging.StreamHandler and getattr(h.stream, "closed", False):
                monkeypatch.setattr(h, "stream", sys.stderr)
    code, out, err = run_cli([*argv[1:], *recipe.extra], capfd, monkeypatch)
    assert code == 0, err[-3000:]
    assert "Traceback" not in err and "error:" not in err, err[-3000:]
    for p in recipe.outputs:
        assert (work / p).exists(), f"{p} was not written; stdout: {out[-1000:]}"
    for fragment in recipe.stdout:
        assert fragment in out, (fragment, out[-2000:])
    if recipe.fresh_cache:
        assert (cache / "weights" / "segnext_tiny_896x896_isaid_160k.pkl").is_file()
