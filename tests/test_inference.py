"""predict_scene end to end on GeoTIFFs written here: stitching, determinism, georeferencing, nodata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasters import PixelLinear, corrupt_middle_block, pixel_meta, textured, write_tif

from segnext_geo.errors import UserError
from segnext_geo.inference import PredictOptions, PredictResult, TileGrid, predict_scene
from segnext_geo.models import build_model
from segnext_geo.raster import SceneSource, compute_normalization, open_scene

FAST = {"progress": False, "device": "cpu"}
CALL_ARGS = ("meta", "probs_out", "mask_out", "overwrite", "progress")


def _predict(scene: object, model: object, out: object, **kw: object) -> PredictResult:
    """``predict_scene`` with the options given as keywords (split into PredictOptions and call arguments)."""
    call = {k: kw.pop(k) for k in CALL_ARGS if k in kw}
    call.setdefault("progress", False)
    kw.setdefault("device", "cpu")
    return predict_scene(scene, model, out, PredictOptions(**kw), **call)  # type: ignore[arg-type]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # module-scoped, in conftest.py


@pytest.fixture(scope="module")
def segnext() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("tiny", 4, class_names=["background", "building", "road", "water"]).eval()


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _whole_image(model: PixelLinear, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: the model on the whole normalised image at once -> (classes, probs) (K, H, W)."""
    with torch.inference_mode():
        p = torch.softmax(model(torch.from_numpy(x)[None]), dim=1)[0]
    return p.argmax(0).numpy().astype(np.uint8), p.numpy()


@pytest.mark.parametrize("blend", ["hann", "taper", "none"])
def test_tiled_result_equals_the_whole_image_result(tmp_path: Path, blend: str) -> None:
    h, w = 230, 371  # non-square, not a multiple of 32 or of the stride
    img = textured((3, h, w), seed=1)
    scene = write_tif(tmp_path / "s.tif", img)
    model, meta = PixelLinear(3, 5, seed=2), pixel_meta(5)
    r = _predict(
        scene,
        model,
        tmp_path / "c.tif",
        meta=meta,
        probs_out=tmp_path / "p.tif",
        tile_size=64,
        overlap=24,
        blend=blend,  # type: ignore[arg-type]
        batch_size=3,
        working_set=150,  # many super-tiles: partial sums handed right and spilled downwards
        **FAST,
    )
    grid = TileGrid(h, w, 64, 24, 150)
    assert len(grid.supertiles) > 4 and r.tiles == len(grid) and r.skipped_tiles == 0 and r.pixels == h * w
    x = (img.astype(np.float32) - 120.0) / 60.0
    classes, probs = _whole_image(model, x)
    got = _read(tmp_path / "c.tif")[0]
    assert (got == classes).all()
    q = _read(tmp_path / "p.tif").astype(int)
    assert np.abs(q - np.round(probs * 255)).max() <= 1


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_stretch_is_the_same_for_every_tile(tmp_path: Path, dtype: str) -> None:
    img = textured((3, 150, 170), dtype, seed=4)
    scene = write_tif(tmp_path / "s.tif", img)
    model, meta = PixelLinear(3, 4, seed=5), pixel_meta(4)
    _predict(scene, model, tmp_path / "c.tif", meta=meta, tile_size=64, overlap=16, **FAST)
    with SceneSource(open_scene(scene, None, meta.bands, 3)) as src:
        norm = compute_normalization(src, meta.mean, meta.std)
    assert norm.method == "percentile"
    classes, _ = _whole_image(model, norm.apply(img))
    assert (_read(tmp_path / "c.tif")[0] == classes).all()


def test_output_is_byte_identical_across_batch_sizes_workers_and_runs(tmp_path: Path, segnext: torch.nn.Module) -> None:
    img = textured((3, 120, 170), seed=6)
    img[:, :30, :40] = 0
    scene = write_tif(tmp_path / "s.tif", img, nodata=0)
    digests = set()
    for i, (bs, wk) in enumerate([(1, 0), (5, 3), (5, 3)]):
        c, p = tmp_path / f"c{i}.tif", tmp_path / f"p{i}.tif"
        _predict(scene, segnext, c, probs_out=p, tile_size=64, overlap=16, batch_size=bs, workers=wk, **FAST)
        digests.add((c.read_bytes(), p.read_bytes()))
    assert len(digests) == 1
    # a model that takes whole batches (not image by image) too
    pixel = set()
    for i, (bs, wk) in enumerate([(1, 0), (7, 2)]):
        c = tmp_path / f"x{i}.tif"
        kw = {"tile_size": 64, "overlap": 16, "batch_size": bs, "workers": wk, **FAST}
        _predict(scene, PixelLinear(3, 4), c, meta=pixel_meta(4), probs_out=tmp_path / f"xp{i}.tif", **kw)  # type: ignore[arg-type]
        pixel.add((c.read_bytes(), (tmp_path / f"xp{i}.tif").read_bytes()))
    assert len(pixel) == 1


def test_working_set_size_does_not_change_the_classes(tmp_path: Path, segnext: torch.nn.Module) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 120, 150), seed=7))
    outs = []
    for ws in (None, 100):
        out = tmp_path / f"c{ws}.tif"
        _predict(scene, segnext, out, tile_size=64, overlap=16, working_set=ws, **FAST)
        outs.append(_read(out))
    assert (outs[0] == outs[1]).all()


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:32632", Affine(0.5, 0, 500_000, 0, -0.5, 6_000_000)),
        ("EPSG:4326", Affine(1e-5, 0, 11.5, 0, -1e-5, 48.1)),
        ("EPSG:3035", Affine(10, 0.5, 4_300_000, 0.5, -10, 2_900_000)),  # rotated grid
    ],
)
def test_georeferencing_round_trips(tmp_path: Path, crs: str, transform: Affine) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 90, 140)), crs=crs, transform=transform)
    meta = pixel_meta(3)
    meta.palette = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    r = _predict(scene, PixelLinear(3, 3), tmp_path / "c.tif", meta=meta, tile_size=64, overlap=16, **FAST)
    assert isinstance(r, PredictResult) and r.out == tmp_path / "c.tif" and not r.warnings
    with rasterio.open(scene) as a, rasterio.open(r.out) as b:
        assert b.crs == a.crs and b.transform.almost_equals(a.transform, precision=1e-12)
        assert (b.height, b.width, b.count, b.dtypes[0], b.nodata) == (90, 140, 1, "uint8", 255)
        assert json.loads(b.tags()["class_names"]) == ["c0", "c1", "c2"]
        assert b.colormap(1)[2] == (0, 0, 255, 255)
        assert b.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and b.profile["tiled"]


def _nodata_scene(tmp_path: Path, kind: str) -> tuple[Path, np.ndarray]:
    """A scene of the given masking kind and its validity ``(H, W)``."""
    h, w = 140, 190
    valid = np.ones((h, w), bool)
    valid[:, :70] = False  # whole tiles of nodata
    valid[100:, 150:] = False
    if kind == "nodata":
        img = textured((3, h, w), "uint16")
        img[:, ~valid] = 0
        return write_tif(tmp_path / "s.tif", img, nodata=0), valid
    if kind == "mask":
        return write_tif(tmp_path / "s.tif", textured((3, h, w)), mask=valid), valid
    if kind == "alpha":
        alpha = (valid * 255).astype(np.uint8)[None]
        img = np.concatenate([textured((3, h, w)), alpha])
        return write_tif(tmp_path / "s.tif", img, photometric="RGB", alpha="YES"), valid
    img = textured((3, h, w), "float32")
    img[:, ~valid] = np.nan
    return write_tif(tmp_path / "s.tif", img), valid


@pytest.mark.parametrize("kind", ["nodata", "mask", "alpha", "nan"])
def test_nodata_masks_and_alpha_become_output_nodata(tmp_path: Path, kind: str) -> None:
    scene, valid = _nodata_scene(tmp_path, kind)
    model = PixelLinear(3, 4)
    model.record = True
    r = _predict(
        scene, model, tmp_path / "c.tif", meta=pixel_meta(4), probs_out=tmp_path / "p.tif", tile_size=64, overlap=16
    )
    out = _read(tmp_path / "c.tif")[0]
    assert ((out == 255) == ~valid).all() and r.pixels == valid.sum()
    with rasterio.open(tmp_path / "p.tif") as p:
        assert ((p.read_masks(1) > 0) == valid).all()
    # tiles entirely in nodata are skipped and never reach the model
    grid = TileGrid(140, 190, 64, 16, 4096)
    empty = sum(not valid[t.rect.y0 : t.rect.y1, t.rect.x0 : t.rect.x1].any() for t in grid.tiles)
    assert empty >= 2 and r.skipped_tiles == empty
    assert sum(x.shape[0] for x in model.seen) == r.tiles - r.skipped_tiles


def test_masked_input_is_filled_with_the_band_mean(tmp_path: Path) -> None:
    img = textured((3, 64, 64))
    img[:, :, :20] = 0
    img[1, 40:, 40:] = 0  # one band nodata inside valid pixels
    scene = write_tif(tmp_path / "s.tif", img, nodata=0)
    model = PixelLinear(3, 2)
    model.record = True
    _predict(scene, model, tmp_path / "c.tif", meta=pixel_meta(2), tile_size=64, overlap=0, **FAST)
    (x,) = model.seen
    want = (img.astype(np.float32) - 120.0) / 60.0
    filled = img == 0
    assert (x[0].numpy()[filled] == 0).all()  # 0 = the training mean after normalisation, no artificial edge
    np.testing.assert_allclose(x[0].numpy()[~filled], want[~filled], rtol=1e-6)


def test_all_nodata_scene_writes_all_nodata_and_says_so(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "s.tif", np.zeros((3, 70, 90), np.uint8), nodata=0)
    model = PixelLinear(3, 2)
    model.record = True
    r = _predict(scene, model, tmp_path / "c.tif", meta=pixel_meta(2), tile_size=64, overlap=16, **FAST)
    assert (_read(r.out) == 255).all() and r.pixels == 0 and r.skipped_tiles == r.tiles and not model.seen
    assert any("no valid pixels" in w for w in r.warnings)


def test_scene_smaller_than_a_tile_is_reflect_padded(tmp_path: Path) -> None:
    img = textured((3, 37, 53), seed=8)
    scene = write_tif(tmp_path / "s.tif", img)
    model = PixelLinear(3, 3, seed=9)
    model.record = True
    r = _predict(scene, model, tmp_path / "c.tif", meta=pixel_meta(3), tile_size=256, overlap=64, **FAST)
    (x,) = model.seen
    assert tuple(x.shape) == (1, 3, 64, 64) and r.tiles == 1
    assert torch.equal(x[0, :, 37:39], x[0, :, [35, 34]])  # reflected rows below the scene
    classes, _ = _whole_image(model, (img.astype(np.float32) - 120.0) / 60.0)
    out = _read(r.out)[0]
    assert out.shape == (37, 53) and (out == classes).all()


def test_small_scene_with_segnext(tmp_path: Path, segnext: torch.nn.Module) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 45, 30)))
    r = _predict(scene, segnext, tmp_path / "c.tif", tile_size=1024, **FAST)
    out = _read(r.out)
    assert out.shape == (1, 45, 30) and out.max() < 4
    with rasterio.open(r.out) as src:
        assert json.loads(src.tags()["class_names"]) == ["background", "building", "road", "water"]


@pytest.mark.parametrize(("tta", "passes"), [("flip", 3), ("d4", 8)])
def test_tta_averages_transformed_passes(tmp_path: Path, tta: str, passes: int) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 96, 128), seed=10))
    base, aug = PixelLinear(3, 4, seed=11), PixelLinear(3, 4, seed=11)
    aug.record = True
    kw = {"meta": pixel_meta(4), "tile_size": 64, "overlap": 32, **FAST}
    r = _predict(scene, base, tmp_path / "a.tif", probs_out=tmp_path / "pa.tif", **kw)  # type: ignore[arg-type]
    _predict(scene, aug, tmp_path / "b.tif", probs_out=tmp_path / "pb.tif", tta=tta, **kw)  # type: ignore[arg-type]
    assert sum(x.shape[0] for x in aug.seen) == passes * r.tiles
    # a per-pixel model commutes with flips and rotations: TTA must give the same answer
    assert (_read(tmp_path / "a.tif") == _read(tmp_path / "b.tif")).all()
    assert np.abs(_read(tmp_path / "pa.tif").astype(int) - _read(tmp_path / "pb.tif")).max() <= 1


def test_confidence_band_is_the_top_probability(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 80, 100), seed=12))
    kw = {"meta": pixel_meta(4), "tile_size": 64, "overlap": 16, **FAST}
    _predict(scene, PixelLinear(3, 4), tmp_path / "a.tif", probs_out=tmp_path / "k.tif", **kw)  # type: ignore[arg-type]
    _predict(
        scene,
        PixelLinear(3, 4),
        tmp_path / "b.tif",
        probs_out=tmp_path / "conf.tif",
        probs_mode="confidence",
        **kw,  # type: ignore[arg-type]
    )
    k, conf = _read(tmp_path / "k.tif").astype(int), _read(tmp_path / "conf.tif").astype(int)
    assert conf.shape == (1, 80, 100) and np.abs(conf[0] - k.max(axis=0)).max() <= 1
    with rasterio.open(tmp_path / "k.tif") as src:
        assert src.descriptions == ("c0", "c1", "c2", "c3")


def test_scene_without_crs_warns_and_keeps_the_pixel_grid(tmp_path: Path) -> None:
    t = Affine(1, 0, 0, 0, -1, 70)
    scene = write_tif(tmp_path / "s.tif", textured((3, 70, 90)), crs=None, transform=t)
    r = _predict(scene, PixelLinear(3, 2), tmp_path / "c.tif", meta=pixel_meta(2), tile_size=64, overlap=16, **FAST)
    assert any("has no CRS" in w for w in r.warnings)
    with rasterio.open(r.out) as b:
        assert b.crs is None and b.transform == t and b.shape == (70, 90)


def test_checkpoint_path_and_default_bands(tmp_path: Path, tiny_checkpoint: Path) -> None:
    img = np.concatenate([textured((3, 50, 60)), np.full((1, 50, 60), 9, np.uint8)])
    scene = write_tif(tmp_path / "s.tif", img, photometric="MINISBLACK")
    kw = {"tile_size": 64, "overlap": 16, **FAST}
    a = _predict(scene, tiny_checkpoint, tmp_path / "a.tif", **kw)  # type: ignore[arg-type]
    b = _predict(scene, tiny_checkpoint, tmp_path / "b.tif", bands="1,2,3", **kw)  # type: ignore[arg-type]
    c = _predict(scene, tiny_checkpoint, tmp_path / "c.tif", bands=[4, 2, 1], **kw)  # type: ignore[arg-type]
    assert (_read(a.out) == _read(b.out)).all()
    assert not (_read(a.out) == _read(c.out)).all()


def test_existing_outputs_are_refused_without_overwrite(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 40, 40)))
    kw = {"meta": pixel_meta(2), "tile_size": 64, "overlap": 16, **FAST}
    out = tmp_path / "c.tif"
    out.write_bytes(b"keep me")
    with pytest.raises(UserError, match=r"--out: .*c\.tif already exists; pass --overwrite"):
        _predict(scene, PixelLinear(3, 2), out, **kw)  # type: ignore[arg-type]
    assert out.read_bytes() == b"keep me"
    (tmp_path / "p.tif").write_bytes(b"x")
    with pytest.raises(UserError, match=r"--probs-out: .* already exists"):
        _predict(scene, PixelLinear(3, 2), tmp_path / "new.tif", probs_out=tmp_path / "p.tif", **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "new.tif").exists()
    _predict(scene, PixelLinear(3, 2), out, overwrite=True, **kw)  # type: ignore[arg-type]
    assert _read(out).shape == (1, 40, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "p.tif", "s.tif"]  # no temporary left


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tile_size": 40}, "--tile-size: 40 px is too small"),
        ({"tile_size": 128, "overlap": 65}, r"--overlap: must be between 0 and half the tile size \(64 px\)"),
        ({"blend": "gauss"}, "--blend: 'gauss' is not one of hann, taper, none"),
        ({"tta": "d8"}, "--tta: 'd8' is not one of none, flip, d4"),
        ({"batch_size": 0}, "--batch-size: must be at least 1"),
        ({"workers": -1}, "--workers: must be 0 or more"),
        ({"bands": "1,2"}, r"--bands: the model takes 3 band\(s\), got 2"),
        ({"bands": "1,2,7"}, "--bands: band 7 does not exist"),
        ({"device": "tpu"}, "--device"),
        ({"out": "missing/c.tif"}, "--out: .* the folder .*missing does not exist"),
        ({"out": "c.png"}, r"--out: .*c\.png: unsupported extension \.png"),
        ({"probs_out": "p.png"}, r"--probs-out: .*p\.png: must be a \.tif"),
        ({"mask_out": "m.tif"}, "--mask-out: only used when --out is a vector file"),
        ({"scene": "nope.tif"}, r"nope\.tif: no such file"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, options: dict[str, object], message: str) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 40, 40)))
    opts = dict(options)
    out = tmp_path / str(opts.pop("out", "c.tif"))
    scene_path = tmp_path / str(opts.pop("scene")) if "scene" in opts else scene
    for key in ("probs_out", "mask_out"):
        if key in opts:
            opts[key] = tmp_path / str(opts[key])
    with pytest.raises(UserError, match=message) as err:
        _predict(scene_path, PixelLinear(3, 2), out, meta=pixel_meta(2), progress=False, **opts)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_read_error_mid_run_leaves_nothing_behind(tmp_path: Path) -> None:
    img = textured((3, 256, 256))
    scene = write_tif(tmp_path / "s.tif", img, tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    corrupt_middle_block(scene)
    with pytest.raises(UserError, match=r"s\.tif: read error at rows"):
        _predict(
            scene,
            PixelLinear(3, 2),
            tmp_path / "c.tif",
            meta=pixel_meta(2),
            probs_out=tmp_path / "p.tif",
            tile_size=64,
            overlap=16,
            working_set=64,  # spilled partial sums exist when the error strikes
            **FAST,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_vector_output(tmp_path: Path) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 64, 80)))
    kw = {"meta": pixel_meta(3), "tile_size": 64, "overlap": 16, **FAST}
    r = _predict(scene, PixelLinear(3, 3), tmp_path / "v.gpkg", mask_out=tmp_path / "m.tif", **kw)  # type: ignore[arg-type]
    assert r.out.exists() and r.mask_path == tmp_path / "m.tif" and r.mask_path.exists()
    assert r.polygons is not None and r.polygons > 0
    r2 = _predict(scene, PixelLinear(3, 3), tmp_path / "w.gpkg", **kw)  # type: ignore[arg-type]
    assert r2.mask_path is None and r2.polygons == r.polygons
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tif", "s.tif", "v.gpkg", "w.gpkg"]


def test_vrt_and_jp2_inputs_give_the_geotiff_result(tmp_path: Path) -> None:
    import rasterio.shutil

    img = textured((3, 96, 120), seed=13)
    tif = write_tif(tmp_path / "s.tif", img)
    rasterio.shutil.copy(tif, tmp_path / "s.vrt", driver="VRT")
    rasterio.shutil.copy(tif, tmp_path / "s.jp2", driver="JP2OpenJPEG", REVERSIBLE="YES", QUALITY="100")
    kw = {"meta": pixel_meta(3), "tile_size": 64, "overlap": 16, **FAST}
    want = _read(_predict(tif, PixelLinear(3, 3), tmp_path / "a.tif", **kw).out)  # type: ignore[arg-type]
    for src in ("s.vrt", "s.jp2"):
        r = _predict(tmp_path / src, PixelLinear(3, 3), tmp_path / f"{src}.tif", **kw)  # type: ignore[arg-type]
        assert (_read(r.out) == want).all()
        with rasterio.open(r.out) as b, rasterio.open(tif) as a:
            assert b.crs == a.crs and b.transform.almost_equals(a.transform)


def test_outputs_record_how_they_were_made(tmp_path: Path, tiny_checkpoint: Path) -> None:
    import segnext_geo
    from segnext_geo.models import load_model

    scene = write_tif(tmp_path / "s.tif", textured((3, 70, 90)))
    kw = {"tile_size": 64, "overlap": 16, "tta": "flip", **FAST}
    a = _predict(scene, tiny_checkpoint, tmp_path / "a.tif", probs_out=tmp_path / "p.tif", **kw)  # type: ignore[arg-type]
    model = load_model(tiny_checkpoint)
    b = _predict(scene, model, tmp_path / "b.tif", **kw)  # type: ignore[arg-type]
    with torch.no_grad():
        model.decode_head.conv_seg.bias[0] += 1e-3
    _predict(scene, model, tmp_path / "c.tif", **kw)  # type: ignore[arg-type]
    tags = {}
    for name in ("a", "p", "b", "c"):
        with rasterio.open(tmp_path / f"{name}.tif") as src:
            tags[name] = src.tags()
    t = tags["a"]
    assert t["model"] == tiny_checkpoint.name and len(t["model_sha256"]) == 64
    assert (t["tile_size"], t["overlap"], t["blend"], t["tta"]) == ("64", "16", "hann", "flip")
    assert t["precision"] == "fp32" and t["device"] == "cpu" and t["segnext_geo_version"] == segnext_geo.__version__
    assert json.loads(t["segnext_geo"])["model_sha256"] == t["model_sha256"]
    assert tags["p"]["model_sha256"] == t["model_sha256"]  # the probabilities say the same
    assert tags["b"]["model_sha256"] == t["model_sha256"] and tags["b"]["model"] == "segnext_t"  # weights, not file
    assert tags["c"]["model_sha256"] != t["model_sha256"]  # one changed weight changes the hash
    assert a.runner["precision"] == "fp32" and b.plan is not None and b.plan.tile == 64


def test_nodata_option_overrides_the_file(tmp_path: Path) -> None:
    """--nodata 0 on a scene with an undeclared 0 collar: the collar is nodata in the output and never predicted."""
    img = textured((3, 90, 140), seed=14)
    img[:, :, :70] = 0  # an undeclared collar covering whole tiles
    scene = write_tif(tmp_path / "s.tif", img)
    model = PixelLinear(3, 3)
    model.record = True
    plain = _predict(scene, PixelLinear(3, 3), tmp_path / "a.tif", meta=pixel_meta(3), tile_size=64, overlap=16)
    r = _predict(scene, model, tmp_path / "b.tif", meta=pixel_meta(3), tile_size=64, overlap=16, nodata=0)
    assert plain.pixels == 90 * 140 and (_read(tmp_path / "a.tif") != 255).all()
    out = _read(tmp_path / "b.tif")[0]
    assert (out[:, :70] == 255).all() and (out[:, 70:] != 255).all() and r.pixels == 90 * 70
    assert r.skipped_tiles > 0 and sum(x.shape[0] for x in model.seen) == r.tiles - r.skipped_tiles
