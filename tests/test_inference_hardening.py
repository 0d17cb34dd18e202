"""Issue 11 regressions on the predict side: each test failed before its fix (checked on the old code).

- outputs that are the input scene, or each other, are refused before any work, even with --overwrite;
- scratch files follow the tool's GDAL settings, not the user's (GDAL_TIFF_INTERNAL_MASK=NO: no .msk);
- blended bytes do not depend on --working-set, even for classes tied to 1e-7;
- on an error mid-run the writer thread stops before the spill folder is removed;
- the memory plan keeps K=150 and K=19 runs under the budget, shrinking the tile only when needed.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasters import PixelLinear, corrupt_middle_block, pixel_meta, textured, write_tif
from torch import Tensor, nn

from segnext_geo.errors import UserError
from segnext_geo.inference import PredictOptions, TileGrid, estimate_peak, plan_memory, predict_scene
from segnext_geo.inference.options import ACTIVATION_BYTES_PER_PX

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # module-scoped, in conftest.py


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def _opts(**kw: object) -> PredictOptions:
    return PredictOptions(device="cpu", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "case", ["out-is-scene", "probs-is-scene", "mask-is-scene", "out-eq-probs", "hardlink", "dotdot"]
)
def test_outputs_never_name_the_input_or_each_other(tmp_path: Path, case: str) -> None:
    scene = write_tif(tmp_path / "s.tif", textured((3, 40, 40)))
    before = _md5(scene)
    out: Path = tmp_path / "c.tif"
    extra: dict[str, Path] = {}
    flag = "--out"
    if case == "out-is-scene":
        out = scene
    elif case == "probs-is-scene":
        extra, flag = {"probs_out": scene}, "--probs-out"
    elif case == "mask-is-scene":
        out, extra, flag = tmp_path / "v.gpkg", {"mask_out": scene}, "--mask-out"
    elif case == "out-eq-probs":
        extra, flag = {"probs_out": tmp_path / "c.tif"}, "--probs-out"
    elif case == "hardlink":
        os.link(scene, tmp_path / "link.tif")
        out = tmp_path / "link.tif"
    else:
        (tmp_path / "d").mkdir()
        out = tmp_path / "d" / ".." / "s.tif"
    listing = sorted(p.name for p in tmp_path.iterdir())
    model = PixelLinear(3, 2)
    model.record = True
    with pytest.raises(UserError, match=flag) as e:
        predict_scene(scene, model, out, _opts(tile_size=64, overlap=16), meta=pixel_meta(2), overwrite=True, **extra)  # type: ignore[arg-type]
    assert "\n" not in str(e.value)
    assert _md5(scene) == before and sorted(p.name for p in tmp_path.iterdir()) == listing
    assert not model.seen  # refused before any work


def test_scratch_files_follow_the_tools_gdal_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDAL_TIFF_INTERNAL_MASK", "NO")  # a user's environment
    img = textured((3, 80, 90))
    img[:, :, :20] = 0
    scene = write_tif(tmp_path / "s.tif", img, nodata=0)
    predict_scene(
        scene, PixelLinear(3, 2), tmp_path / "c.tif", _opts(tile_size=64, overlap=16),
        meta=pixel_meta(2), probs_out=tmp_path / "p.tif", progress=False,
    )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif", "p.tif", "s.tif"]  # no .msk, no .aux.xml
    with rasterio.open(tmp_path / "p.tif") as p:
        assert (p.read_masks(1)[:, :20] == 0).all() and (p.read_masks(1)[:, 20:] == 255).all()


class NearTie(nn.Module):
    """Classes 0 and 1 tied to about one float32 ulp (~1e-7) everywhere; per pixel, so translation-equivariant."""

    def forward(self, x: Tensor) -> Tensor:
        l0 = x[:, 0:1] * 0.5
        l1 = l0 + x[:, 1:2] * 1e-7
        return torch.cat([l0, l1, l0 - 3.0], 1)


def test_working_set_does_not_change_near_ties(tmp_path: Path) -> None:
    """Super-tile boundaries change which partial sums meet first; the fixed-point sums make that irrelevant."""
    scene = write_tif(tmp_path / "s.tif", textured((3, 200, 260), seed=3))
    outs = set()
    splits = set()
    for ws in (None, 96, 128):
        out, probs = tmp_path / f"c{ws}.tif", tmp_path / f"p{ws}.tif"
        opts = _opts(tile_size=64, overlap=32, working_set=ws)
        predict_scene(scene, NearTie(), out, opts, meta=pixel_meta(3), probs_out=probs, progress=False)
        with rasterio.open(out) as a, rasterio.open(probs) as b:
            outs.add((a.read().tobytes(), b.read().tobytes()))
        splits.add(len(TileGrid(200, 260, 64, 32, ws or 4096).supertiles))
    assert len(splits) == 3 and len(outs) == 1


def test_writer_stops_before_the_spill_folder_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []
    real_save = np.save

    def slow_save(path: Path, arr: np.ndarray, *a: object, **k: object) -> None:
        time.sleep(0.4)  # the read error strikes while this spill is being written
        seen.append(Path(path).parent.exists())
        real_save(path, arr, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(np, "save", slow_save)
    scene = write_tif(
        tmp_path / "s.tif", textured((3, 256, 256)), tiled=True, blockxsize=64, blockysize=64, compress="deflate"
    )
    corrupt_middle_block(scene)
    with pytest.raises(UserError, match="read error"):
        predict_scene(
            scene, PixelLinear(3, 2), tmp_path / "c.tif", _opts(tile_size=64, overlap=16, working_set=64, batch_size=1),
            meta=pixel_meta(2), progress=False,
        )  # fmt: skip
    assert seen and all(seen)  # every spill write found its folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


@pytest.mark.parametrize("classes", [19, 150])
@pytest.mark.parametrize("probs", [False, True])
def test_memory_plan_keeps_the_estimated_peak_under_the_budget(classes: int, probs: bool) -> None:
    budget = 3 * 2**30
    opts = PredictOptions(tile_size=1024, overlap=256, batch_size=8, max_memory=budget)
    plan = plan_memory(
        opts, 20_000, 30_000, classes=classes, bands=3, probs_bands=classes if probs else 0, per_image=True,
        variant="segnext_t",
    )  # fmt: skip
    assert plan.peak_bytes <= budget and not [n for n in plan.notes if "exceeds" in n]
    grid = TileGrid(20_000, 30_000, plan.tile, plan.overlap, plan.working_set)
    again = estimate_peak(
        tile=plan.tile, overlap=plan.overlap, batch=8, classes=classes, bands=3, extent=grid.max_extent,
        probs_bands=classes if probs else 0, activation_bytes_per_px=ACTIVATION_BYTES_PER_PX["segnext_t"],
    )  # fmt: skip
    assert again.host == plan.peak_bytes and again.device == 0
    if classes == 19:
        assert plan.tile == 1024 and plan.working_set >= 1024  # nothing shrinks for few classes


def test_memory_plan_shrinks_the_tile_only_when_a_single_tile_does_not_fit() -> None:
    tight = PredictOptions(tile_size=1024, overlap=256, max_memory="1500M")
    plan = plan_memory(tight, 8000, 8000, classes=150, bands=3, probs_bands=150, per_image=True, variant="segnext_t")
    assert plan.tile < 1024 and plan.peak_bytes <= 1500 * 2**20
    assert any("--tile-size" in n for n in plan.notes)
    assert plan.overlap * 4 == plan.tile  # the overlap keeps its share of the tile
    impossible = tight.replace(max_memory="100M")
    plan = plan_memory(impossible, 8000, 8000, classes=150, bands=3, probs_bands=0, per_image=True)
    assert plan.peak_bytes > 100 * 2**20 and any("--max-memory" in n for n in plan.notes)


def test_on_a_gpu_the_forward_and_accumulators_count_against_the_gpu_not_the_host() -> None:
    opts = PredictOptions(tile_size=1024, overlap=256, batch_size=8)
    kw = {"classes": 16, "bands": 3, "probs_bands": 0, "per_image": False, "variant": "segnext_l"}
    big = plan_memory(opts, 20_000, 20_000, gpu_bytes=80 * 2**30, **kw)  # type: ignore[arg-type]
    assert big.tile == 1024 and not big.notes  # a batch of 8 L tiles would not fit a 3 GiB host budget
    cpu = plan_memory(opts, 20_000, 20_000, **kw)  # type: ignore[arg-type]
    assert cpu.tile < 1024
    small = plan_memory(opts, 20_000, 20_000, gpu_bytes=4 * 2**30, **kw)  # type: ignore[arg-type]
    assert small.tile < 1024 and any("--tile-size" in n for n in small.notes)


# -- README promise: .msk sidecars, /vsizip/ and /vsimem/ scenes through the predict command ---------------------
@pytest.mark.parametrize("kind", ["msk", "vsizip", "vsimem"])
def test_predict_reads_msk_sidecars_and_virtual_paths_as_given(
    kind: str,
    tmp_path: Path,
    tiny_checkpoint: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mask travels with the scene (a .msk beside it, in the zip, or an internal one in memory): the
    output is byte for byte that of the same scene with an internal mask on disk, 255 exactly where the
    mask is 0. The path reaches GDAL as typed: /vsizip//abs/path.zip/... keeps its double slash."""
    import zipfile

    from rasterio.io import MemoryFile
    from test_raster_masks import write_msk
    from weights_files import run_cli

    data = textured((3, 40, 56), seed=3)
    mask = np.ones((40, 56), bool)
    mask[:12, 20:] = False
    plain = write_tif(tmp_path / "plain.tif", data)
    internal = write_tif(tmp_path / "internal.tif", data, mask=mask)
    args = ["-c", str(tiny_checkpoint), "--tile-size", "64", "--overlap", "16", "-q"]
    code, _, err = run_cli(["predict", str(internal), "-o", str(tmp_path / "ref.tif"), *args], capfd, monkeypatch)
    assert code == 0, err
    expected = _read(tmp_path / "ref.tif")
    assert ((expected == 255) == ~mask).all() and len(np.unique(expected[mask])) > 1
    msk = write_msk(tmp_path / "m.tif", data, mask)
    out = tmp_path / "out.tif"
    with MemoryFile(ext=".tif") as mem:
        if kind == "msk":
            scene = str(msk)
        elif kind == "vsizip":
            with zipfile.ZipFile(tmp_path / "scenes.zip", "w") as z:
                z.write(msk, "dir/m.tif")
                z.write(f"{msk}.msk", "dir/m.tif.msk")
            scene = f"/vsizip//{str(tmp_path / 'scenes.zip').lstrip('/')}/dir/m.tif"
        else:
            with rasterio.open(plain) as src, mem.open(**src.profile) as dst:
                dst.write(data)
                dst.write_mask(mask.astype(np.uint8) * 255)
            scene = mem.name
        code, _, err = run_cli(["predict", scene, "-o", str(out), *args], capfd, monkeypatch)
        assert code == 0, err
    assert np.array_equal(_read(out), expected)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)
