"""``--gsd`` through predict and batch, and the GSD that checkpoints record (issue 14, section 4)."""

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
import torch.nn.functional as F
from rasterio.transform import from_origin
from rasterio.windows import Window
from rasters import PixelLinear, pixel_meta, textured, write_tif
from shapely import hausdorff_distance
from torch import Tensor, nn

from segnext_geo.errors import UserError
from segnext_geo.inference import PredictOptions, PredictResult, predict_scene
from segnext_geo.models import ModelMeta, build_model, describe_checkpoint, load_model, save_checkpoint
from segnext_geo.models.weights import list_weights
from segnext_geo.raster.gsd import GroundSampling, ResampleGrid

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # module-scoped, in conftest.py


def _predict(scene: Path, model: nn.Module, out: Path, meta: ModelMeta, **kw: object) -> PredictResult:
    probs = kw.pop("probs_out", None)
    kw.setdefault("device", "cpu")
    return predict_scene(scene, model, out, PredictOptions(**kw), meta=meta, probs_out=probs, progress=False)  # type: ignore[arg-type]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


class BoxDetector(nn.Module):
    """A real, deterministic, scale-dependent detector (no learned weights): class 1 ("object")
    where the mean brightness of the ``size`` x ``size`` box around a pixel is above one half.

    With inputs normalised to [0, 1] (mean 0, std 255), a bright square is found when it is wider
    than about ``size / sqrt(2)`` px: a 12 px square with ``size=9`` is found (its centre box is all
    object), a 6 px square is not (its centre box is 36/81 object). So what the detector finds
    depends on how many pixels an object spans, i.e. on the GSD it is shown, as with a trained
    network. ``forward``: ``(N, C, H, W) -> (N, 2, H, W)`` logits.
    """

    def __init__(self, size: int = 9, gain: float = 40.0) -> None:
        super().__init__()
        self.size, self.gain = size, gain

    def forward(self, x: Tensor) -> Tensor:
        grey = x.mean(dim=1, keepdim=True)
        box = F.avg_pool2d(grey, self.size, stride=1, padding=self.size // 2, count_include_pad=False)
        logit = self.gain * (box - 0.5)
        return torch.cat([torch.zeros_like(logit), logit], dim=1)


def _box_meta(gsd_m: float | None) -> ModelMeta:
    return ModelMeta(
        variant="box-detector",
        num_classes=2,
        class_names=["background", "object"],
        mean=(0.0, 0.0, 0.0),
        std=(255.0, 255.0, 255.0),
        gsd_m=gsd_m,
    )


# squares (row, col, side) in px of the 0.5 m scene: 6 m and 10 m objects, and a 6 x 15 m one
OBJECTS = [(20, 24, 12, 12), (20, 90, 20, 20), (80, 30, 12, 30), (96, 100, 12, 12), (150, 160, 20, 20)]


def _object_scenes(tmp_path: Path) -> tuple[Path, Path]:
    """The same ground at 0.5 m (256 px) and at 1 m (128 px, 2 x 2 means of the first)."""
    fine = np.full((3, 256, 256), 20, np.uint8)
    for r, c, h, w in OBJECTS:
        fine[:, r : r + h, c : c + w] = 220
    coarse = fine.reshape(3, 128, 2, 128, 2).astype(np.float64).mean(axis=(2, 4)).astype(np.uint8)
    x0, y0 = 500_000.0, 6_000_000.0
    a = write_tif(tmp_path / "fine.tif", fine, transform=from_origin(x0, y0, 0.5, 0.5))
    b = write_tif(tmp_path / "coarse.tif", coarse, transform=from_origin(x0, y0, 1.0, 1.0))
    return a, b


def _polygons(path: Path) -> list[object]:
    df = pyogrio.read_dataframe(path)
    return sorted(df.geometry, key=lambda g: (round(g.centroid.y), round(g.centroid.x)))


def test_auto_gives_the_native_polygons_on_a_scene_at_twice_the_models_gsd(tmp_path: Path) -> None:
    fine, coarse = _object_scenes(tmp_path)
    model, meta = BoxDetector(), _box_meta(0.5)
    opts = {"tile_size": 64, "overlap": 16}
    native = _predict(fine, model, tmp_path / "fine.gpkg", meta, **opts)
    auto = _predict(coarse, model, tmp_path / "auto.gpkg", meta, **opts)
    _predict(coarse, model, tmp_path / "plain.gpkg", meta, gsd="native", **opts)
    assert "within 10%" in native.gsd and "resampling to 0.5 m (2x)" in auto.gsd
    want, got = _polygons(tmp_path / "fine.gpkg"), _polygons(tmp_path / "auto.gpkg")
    assert len(want) == len(got) == len(OBJECTS)
    for a, b in zip(want, got, strict=True):
        assert hausdorff_distance(a, b) <= 1.0  # one pixel of the 1 m scene
        assert abs(a.area - b.area) <= 2.0  # m²: two pixels of the 1 m scene
    # without resampling the 6 m objects are 6 px wide on the 1 m scene and the detector misses them
    assert len(_polygons(tmp_path / "plain.gpkg")) == 3
    with rasterio.open(coarse) as src:
        grid = (src.transform, src.width, src.height, src.crs)
    auto_mask = tmp_path / "auto.tif"
    _predict(coarse, model, auto_mask, meta, **opts)
    with rasterio.open(auto_mask) as out:
        assert (out.transform, out.width, out.height, out.crs) == grid  # on the scene's grid
        assert json.loads(out.tags()["gsd"]) == {"scene_m": pytest.approx(1.0004, abs=1e-4), "model_m": 0.5}


@pytest.mark.parametrize("scene_m", [1.0, 0.3])
def test_resampled_output_does_not_depend_on_tiling(tmp_path: Path, scene_m: float) -> None:
    """Working set, batch size and readers: byte-identical; tile size too for a pixel-wise model,
    and the classes equal an independent whole-scene computation (resample, model, map back)."""
    img = textured((3, 90, 110), seed=3)
    scene = write_tif(tmp_path / "s.tif", img, transform=from_origin(500_000.0, 6_000_000.0, scene_m, scene_m))
    model, meta = PixelLinear(3, 4), pixel_meta(4)
    meta.gsd_m = 0.5
    runs = [
        {"tile_size": 64, "overlap": 16},
        {"tile_size": 64, "overlap": 16, "working_set": 64, "batch_size": 3, "workers": 0},
        {"tile_size": 64, "overlap": 16, "working_set": 112},
        {"tile_size": 96, "overlap": 32},
        {"tile_size": 128, "overlap": 32, "working_set": 128},
    ]
    outs = []
    for i, kw in enumerate(runs):
        r = _predict(scene, model, tmp_path / f"c{i}.tif", meta, probs_out=tmp_path / f"p{i}.tif", **kw)
        assert "resampling" in r.gsd
        outs.append((_read(tmp_path / f"c{i}.tif"), _read(tmp_path / f"p{i}.tif")))
    for i in (1, 2):  # same tiles, other super-tiles, batches and readers: the same bytes
        assert (tmp_path / f"c{i}.tif").read_bytes() == (tmp_path / "c0.tif").read_bytes()
        assert (tmp_path / f"p{i}.tif").read_bytes() == (tmp_path / "p0.tif").read_bytes()
    for classes, probs in outs[3:]:
        assert np.array_equal(classes, outs[0][0])
        assert np.abs(probs.astype(int) - outs[0][1].astype(int)).max() <= 1

    h, w = img.shape[1:]
    # the scene at 500 km E is in UTM 32N: its true GSD is the nominal one / 0.9996 (the scale factor there)
    g = ResampleGrid.create(Window(0, 0, w, h), GroundSampling(scene_m / 0.9996, scene_m / 0.9996), 0.5)
    x = (torch.from_numpy(img).double() - 120.0) / 60.0
    whole = Window(0, 0, w, h)
    on_model = g.to_model(x.float(), whole, Window(0, 0, g.model_width, g.model_height))
    with torch.no_grad():
        p = torch.softmax(model(on_model[None]), dim=1)[0].double()
    planes = torch.cat([p, torch.ones_like(p[:1])])
    back = g.to_scene(planes, Window(0, 0, g.model_width, g.model_height), whole)
    expected = torch.argmax(back[:4] / back[4], dim=0).numpy()
    assert outs[0][0].shape == (1, h, w)
    assert len(np.unique(expected)) >= 3  # a non-trivial map
    assert np.array_equal(outs[0][0][0], expected)


def test_native_is_byte_identical_to_no_flag(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 70, 90)), transform=from_origin(500_000.0, 6e6, 1.0, 1.0))
    model = PixelLinear(3, 4)
    unknown, known = pixel_meta(4), pixel_meta(4)
    known.gsd_m = 0.5
    _predict(scene, model, tmp_path / "none.tif", unknown, tile_size=64, overlap=16)
    _predict(scene, model, tmp_path / "native.tif", unknown, tile_size=64, overlap=16, gsd="native")
    _predict(scene, model, tmp_path / "known_native.tif", known, tile_size=64, overlap=16, gsd="native")
    _predict(scene, model, tmp_path / "known_auto.tif", known, tile_size=64, overlap=16)
    _predict(scene, model, tmp_path / "metres.tif", unknown, tile_size=64, overlap=16, gsd="0.5m")
    first = (tmp_path / "none.tif").read_bytes()
    assert (tmp_path / "native.tif").read_bytes() == first
    assert (tmp_path / "known_native.tif").read_bytes() == first
    assert (tmp_path / "known_auto.tif").read_bytes() != first  # auto resampled: the model's GSD is known
    assert np.array_equal(_read(tmp_path / "metres.tif"), _read(tmp_path / "known_auto.tif"))  # --gsd 0.5 forces it
    with rasterio.open(tmp_path / "none.tif") as src:
        assert src.tags()["gsd"] == "native"


def test_scene_without_crs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """auto: a warning and native resolution (the scene's GSD is unknown); metres: an error."""
    scene = write_tif(tmp_path / "s.tif", textured((3, 40, 50)), crs=None)
    model, meta = PixelLinear(3, 4), pixel_meta(4)
    meta.gsd_m = 0.5
    with caplog.at_level("WARNING", logger="segnext_geo"):
        r = _predict(scene, model, tmp_path / "a.tif", meta, tile_size=64, overlap=16)
    assert any("no CRS, so its GSD is unknown" in m and "model GSD 0.5 m" in m for m in caplog.messages)
    assert "predicting at native" in r.gsd and r.gsd in r.warnings
    _predict(scene, model, tmp_path / "n.tif", pixel_meta(4), tile_size=64, overlap=16)
    assert np.array_equal(_read(tmp_path / "a.tif"), _read(tmp_path / "n.tif"))
    with pytest.raises(UserError, match=r"^--gsd: .*s\.tif has no CRS.*use --gsd native$"):
        _predict(scene, model, tmp_path / "m.tif", meta, gsd=0.5)
    assert not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize("value", [True, -1, "0", "fast", "nan", [0.5]])
def test_bad_gsd_values_name_the_flag(value: object) -> None:
    with pytest.raises(UserError, match=r"^--gsd: "):
        PredictOptions(gsd=value)  # type: ignore[arg-type]
    assert PredictOptions(gsd=" 0.30m").gsd == 0.3 and PredictOptions(gsd="NATIVE").gsd == "native"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gsd", "fast"], "--gsd: 'fast' is not auto, native or a ground sample distance in metres"),
        (["--gsd", "-2"], "--gsd: '-2' must be a positive number of metres"),
        (["--gsd", "0.05"], "would enlarge it 20.0x per side (at most 8x)"),
    ],
)
def test_cli_bad_gsd_is_one_line_exit_2(tmp_path: Path, tiny_checkpoint: Path, args: list[str], message: str) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 40, 50)), transform=from_origin(500_000.0, 6e6, 1.0, 1.0))
    cmd = [sys.executable, "-m", "segnext_geo.cli.app", "predict", str(scene), "-o", str(tmp_path / "c.tif")]
    proc = subprocess.run([*cmd, "-c", str(tiny_checkpoint), *args], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not (tmp_path / "c.tif").exists()


def test_batch_passes_gsd_to_every_scene(tmp_path: Path) -> None:
    from segnext_geo.batch import run_batch

    torch.manual_seed(0)
    model = build_model("tiny", 3, class_names=["a", "b", "c"], gsd_m=0.5, gsd_note="test")
    ckpt = save_checkpoint(model, tmp_path / "m.pth")
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_tif(inputs / "s.tif", textured((3, 48, 40)), transform=from_origin(500_000.0, 6e6, 1.0, 1.0))
    opts = PredictOptions(tile_size=64, overlap=16, device="cpu", compile="off")
    summary = run_batch([inputs], ckpt, tmp_path / "out", fmt="gpkg", mask=True, workers=1, options=opts)
    assert summary.failed == 0, summary
    masks = list((tmp_path / "out").rglob("*.mask.tif"))
    assert len(masks) == 1
    with rasterio.open(masks[0]) as src:
        assert json.loads(src.tags()["gsd"])["model_m"] == 0.5 and src.shape == (48, 40)
    assert summary.manifest is not None
    rows = [json.loads(line) for line in summary.manifest.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["done"] and "s.tif is at 1 m: resampling to 0.5 m (2x)" in rows[0]["gsd"]


def test_checkpoints_record_gsd_and_old_ones_load_without(tmp_path: Path) -> None:
    model = build_model("tiny", 2, gsd_m=0.3, gsd_note="0.3 m (test)")
    path = save_checkpoint(model, tmp_path / "m.pth")
    back = load_model(path)
    assert (back.meta.gsd_m, back.meta.gsd_note) == (0.3, "0.3 m (test)")
    d = describe_checkpoint(path)
    assert (d["gsd_m"], d["gsd_note"]) == (0.3, "0.3 m (test)")
    payload = torch.load(path, weights_only=True)
    del payload["segnext_geo"]["gsd_m"], payload["segnext_geo"]["gsd_note"]  # as written before GSD existed
    torch.save(payload, tmp_path / "old.pth")
    old = load_model(tmp_path / "old.pth")
    assert old.meta.gsd_m is None and old.meta.gsd_note == ""
    with pytest.raises(ValueError, match="gsd_m must be a positive number"):
        ModelMeta(gsd_m=0)


def test_every_catalogue_entry_states_its_gsd() -> None:
    for w in list_weights():
        assert w.gsd_m is None and w.gsd_note, w.name  # none of the published trainings has one GSD
        assert w.model_meta()["gsd_m"] is None and w.model_meta()["gsd_note"] == w.gsd_note
        if "isaid" in w.name:
            assert w.gsd_note.startswith("varies")
        elif w.name.startswith("mscan"):
            assert "no GSD" in w.gsd_note
        else:
            assert "photos (no GSD)" in w.gsd_note


def test_tiles_shrunk_from_a_fine_scene_are_read_in_row_bands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a resampled tile in bands of model rows (bounded reads) gives the same bytes as one read."""
    from segnext_geo.inference import loader

    scene = write_tif(tmp_path / "s.tif", textured((3, 150, 130), seed=5), transform=from_origin(5e5, 6e6, 0.2, 0.2))
    model, meta = PixelLinear(3, 4), pixel_meta(4)
    meta.gsd_m = 0.5
    _predict(scene, model, tmp_path / "a.tif", meta, tile_size=64, overlap=16, probs_out=tmp_path / "pa.tif")
    reads: list[int] = []
    read = loader.SceneSource.read

    def counting(self: object, window: Window, *a: object) -> object:
        reads.append(int(window.height))
        return read(self, window, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(loader, "READ_CHUNK_BYTES", 1)  # one model row per read
    monkeypatch.setattr(loader.SceneSource, "read", counting)
    _predict(scene, model, tmp_path / "b.tif", meta, tile_size=64, overlap=16, workers=0, probs_out=tmp_path / "pb.tif")
    assert max(reads[:20]) <= 6  # 2.5 scene rows per model row, plus the kernel's reach
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    assert (tmp_path / "pa.tif").read_bytes() == (tmp_path / "pb.tif").read_bytes()


def test_cli_batch_takes_gsd(tmp_path: Path, tiny_checkpoint: Path) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 40, 50)))
    cmd = [sys.executable, "-m", "segnext_geo.cli.app", "batch", str(scene), "-c", str(tiny_checkpoint)]
    args = [*cmd, "--out-dir", str(tmp_path / "o"), "--gsd", "0m"]
    proc = subprocess.run(args, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == ["error: --gsd: '0m' must be a positive number of metres"], proc.stderr
    help_text = subprocess.run([*cmd[:4], "--help"], capture_output=True, text=True, env=ENV).stdout
    assert "--gsd" in help_text


def test_area_of_interest_with_resampling_runs_on_the_areas_model_grid(tmp_path: Path) -> None:
    """--aoi + --gsd: the model grid covers the area's window (its corner is the grid's origin);
    the outputs cover that window, pixels outside the area are nodata, and inside it the classes
    equal an independent computation (resample the window, model, map back)."""
    import geopandas as gpd
    import shapely
    from rasterio.features import geometry_mask

    img = textured((3, 90, 110), seed=5)
    t = from_origin(500_000.0, 6_000_000.0, 1.0, 1.0)
    scene = write_tif(tmp_path / "s.tif", img, transform=t)
    model, meta = PixelLinear(3, 4), pixel_meta(4)
    meta.gsd_m = 0.5
    tri_px = [(17.3, 11.6), (95.2, 30.4), (40.8, 80.1)]  # (col, row) in scene pixels
    tri = shapely.Polygon([t @ xy for xy in tri_px])
    aoi = tmp_path / "area.gpkg"
    gpd.GeoDataFrame({"n": [1]}, geometry=[tri], crs="EPSG:32632").to_file(aoi)
    out, probs = tmp_path / "c.tif", tmp_path / "p.tif"
    r = _predict(scene, model, out, meta, probs_out=probs, tile_size=64, overlap=16, aoi=str(aoi))
    assert "resampling to 0.5 m" in r.gsd
    win = Window(17, 11, 96 - 17, 81 - 11)  # the pixels the triangle touches
    assert r.window == win
    with rasterio.open(out) as c, rasterio.open(probs) as p:
        classes, pmask = c.read(1), p.dataset_mask()
        assert c.transform == t @ rasterio.Affine.translation(17, 11) and (c.width, c.height) == (79, 70)
        assert p.count == 4 and json.loads(c.tags()["gsd"])["model_m"] == 0.5

    inside = geometry_mask([tri], (70, 79), c.transform, all_touched=True, invert=True)
    assert 0.3 * inside.size < inside.sum() < 0.8 * inside.size
    assert np.all(classes[~inside] == 255) and np.all(classes[inside] != 255)
    assert np.array_equal(pmask > 0, inside)
    g = ResampleGrid.create(win, GroundSampling(1 / 0.9996, 1 / 0.9996), 0.5)
    assert (g.model_height, g.model_width) == (140, 158)
    x = (torch.from_numpy(img[:, 11:81, 17:96]).double() - 120.0) / 60.0
    on_model = g.to_model(x.float(), win, Window(0, 0, g.model_width, g.model_height))
    with torch.no_grad():
        pr = torch.softmax(model(on_model[None]), dim=1)[0].double()
    planes = torch.cat([pr, torch.ones_like(pr[:1])])
    back = g.to_scene(planes, Window(0, 0, g.model_width, g.model_height), win)
    expected = torch.argmax(back[:4] / back[4], dim=0).numpy()
    assert len(np.unique(expected[inside])) >= 3
    assert np.array_equal(classes[inside], expected[inside])
