"""iSAID: raw layout (folders and zips), the patch converter, the patch dataset, and the whole
prepare -> train -> load -> evaluate path on a tiny synthetic raw tree."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from segnext_geo.data.isaid import ISAID, ISAID_PALETTE
from segnext_geo.data.isaid_prepare import jseg_windows, patch_windows, prepare_isaid
from segnext_geo.data.isaid_raw import scan_raw_split
from segnext_geo.data.palette import ids_to_rgb, rgb_to_ids
from segnext_geo.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PATCH, OVERLAP = 64, 24  # stride 40: small enough for fast tests, same logic as 896/384
UNKNOWN = (1, 2, 3)
#: raw images: split -> {name: (height, width)}
SIZES = {
    "train": {"P0000": (100, 150), "P0001": (50, 70)},
    "val": {"P0002": (64, 40), "P0003": (90, 90)},
    "test": {"P0004": (70, 80)},
}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segnext_geo.cli.app", *args], capture_output=True, text=True)


def _scene(name: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable image/id-mask pair: class k blocks drawn in a colour that depends on k."""
    rng = np.random.default_rng(int(name[1:]))
    ids = np.zeros((h, w), dtype=np.uint8)
    for _ in range(6):
        k = int(rng.integers(1, 16))
        y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        ids[y : y + int(rng.integers(6, 24)), x : x + int(rng.integers(6, 24))] = k
    image = (rng.normal(90, 10, size=(h, w, 3)) + ids[..., None] * np.array([9, 5, 13])).clip(0, 255)
    return image.astype(np.uint8), ids


def _mask_rgb(name: str, ids: np.ndarray) -> np.ndarray:
    rgb = ids_to_rgb(ids, ISAID_PALETTE)
    if name == "P0000":  # a few pixels in a colour that is not in the palette
        rgb[:2, :3] = UNKNOWN
    return rgb


def write_raw(root: Path, zipped: bool = False, sizes: dict[str, dict[str, tuple[int, int]]] = SIZES) -> Path:
    """The raw iSAID layout: {split}/images/P*.png and {split}/Semantic_masks/P*_instance_color_RGB.png."""
    for split, scenes in sizes.items():
        img_dir, mask_dir = root / split / "images", root / split / "Semantic_masks"
        img_dir.mkdir(parents=True)
        if split != "test":
            mask_dir.mkdir(parents=True)
        files: dict[str, list[tuple[str, Image.Image]]] = {"img": [], "mask": []}
        for name, (h, w) in scenes.items():
            image, ids = _scene(name, h, w)
            files["img"].append((f"{name}.png", Image.fromarray(image)))
            if split != "test":
                files["mask"].append((f"{name}_instance_color_RGB.png", Image.fromarray(_mask_rgb(name, ids))))
        for kind, folder, zip_name in (("img", img_dir, "part1.zip"), ("mask", mask_dir, "images.zip")):
            if not files[kind]:
                continue
            if zipped:  # like the official archives: members under images/
                with zipfile.ZipFile(folder / zip_name, "w") as zf:
                    for fname, im in files[kind]:
                        tmp = folder / fname
                        im.save(tmp)
                        zf.write(tmp, f"images/{fname}")
                        tmp.unlink()
            else:
                for fname, im in files[kind]:
                    im.save(folder / fname)
    return root


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_raw(tmp_path_factory.mktemp("raw") / "iSAID")


@pytest.fixture(scope="module")
def prepared(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("prepared") / "iSAID"
    r = _cli("prepare-isaid", str(raw), str(out), "--patch-size", str(PATCH), "--overlap", str(OVERLAP), "-q")
    assert r.returncode == 0, r.stderr
    return out, r


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_workers_write_the_same_patches_as_one(
    raw: Path, prepared: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """``--workers 2`` (a process pool) writes exactly the files, bytes and report of ``--workers 1``."""
    out, one = prepared
    two_out = tmp_path / "iSAID"
    args = ["--patch-size", str(PATCH), "--overlap", str(OVERLAP), "--workers", "2", "-q"]
    two = _cli("prepare-isaid", str(raw), str(two_out), *args)
    assert two.returncode == 0, two.stderr
    tree_one, tree_two = _tree(out), _tree(two_out)
    assert len(tree_one) > 20 and list(tree_two) == list(tree_one)
    report_one, report_two = (json.loads(t.pop("prepare_isaid.json")) for t in (tree_one, tree_two))
    assert report_two.pop("out_dir") == str(two_out) and report_one.pop("out_dir") == str(out)
    assert report_two == report_one and tree_two == tree_one
    assert two.stdout.replace(str(two_out), "OUT") == one.stdout.replace(str(out), "OUT")


def test_evaluate_mode_slide(prepared: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    """``evaluate --mode slide`` (mmseg's sliding window) on the prepared 64 px patches, random weights.

    One window as large as a patch scores exactly as ``whole``; 32 px windows every 24 px score every
    labelled pixel, with other predictions (a random model's logits depend on the context it sees).
    """
    import torch

    from segnext_geo.models import build_model, save_checkpoint
    from segnext_geo.models.meta import ISAID_CLASSES

    out, _ = prepared
    torch.manual_seed(3)
    ckpt = save_checkpoint(build_model("tiny", 16, class_names=list(ISAID_CLASSES)), tmp_path / "random.pth")
    cfg = _tiny_cfg(tmp_path, out)
    cfg.write_text(cfg.read_text().replace("train_split: val, ", ""))

    def run(name: str, *extra: str) -> dict:
        args = ["--config", str(cfg), "--checkpoint", str(ckpt), "--out", str(tmp_path / name), "-q", *extra]
        r = _cli("evaluate", *args)
        assert r.returncode == 0, r.stderr[-2000:]
        result: dict = json.loads((tmp_path / name).read_text())
        return result

    def slide(crop: int, stride: int) -> list[str]:
        return [
            "--mode",
            "slide",
            "--set",
            f"eval.crop_size=[{crop},{crop}]",
            "--set",
            f"eval.stride=[{stride},{stride}]",
        ]

    whole = run("whole.json", "--mode", "whole")
    one = run("one.json", *slide(64, 64))
    small = run("small.json", *slide(32, 24))
    labelled = sum(int((np.asarray(Image.open(p)) != 255).sum()) for p in (out / "ann_dir" / "val").iterdir())
    assert (whole["mode"], one["mode"], small["mode"]) == ("whole", "slide", "slide")
    assert np.array(whole["confusion_matrix"]).sum() == labelled == np.array(small["confusion_matrix"]).sum()
    assert len({tuple(r) for r in np.array(whole["confusion_matrix"]).T.tolist() if any(r)}) > 1  # not one class
    assert one["confusion_matrix"] == whole["confusion_matrix"]
    assert small["confusion_matrix"] != whole["confusion_matrix"]


def test_windows_follow_the_mmseg_loops() -> None:
    # W=150: x starts 0, 40, 80, 120 -> the last pulled back to 150-64=86; H=100: y 0, 40, 80 -> 0, 36, 36
    assert patch_windows(100, 150, 64, 24) == [
        (0, 64, 0, 64),
        (36, 100, 0, 64),
        (0, 64, 40, 104),
        (36, 100, 40, 104),
        (0, 64, 80, 144),
        (36, 100, 80, 144),
        (0, 64, 86, 150),
        (36, 100, 86, 150),
    ]
    # the paper's setting on a 1200x2000 image: stride 512, last windows pulled back to the edges
    w = patch_windows(1200, 2000)
    assert sorted({x0 for _, _, x0, _ in w}) == [0, 512, 1024, 1104]
    assert sorted({y0 for y0, _, _, _ in w}) == [0, 304]
    assert all(y1 - y0 == 896 and x1 - x0 == 896 for y0, y1, x0, x1 in w)
    # smaller than a patch (also exactly one side equal): padded to a single full window
    assert patch_windows(50, 70, 64, 24) == [(0, 64, 0, 64), (0, 64, 6, 70)]
    assert patch_windows(64, 40, 64, 24) == [(0, 64, 0, 64)]
    with pytest.raises(UserError, match="--overlap"):
        patch_windows(100, 100, 64, 64)


def test_jseg_windows_follow_the_jseg_converter() -> None:
    """JSeg's split_iSAID: cut only when both sides exceed 800; starts range(0, size, 600), pulled back to the edge."""
    assert jseg_windows(800, 1000) == [(0, 800, 0, 1000)]  # one side not above 800: the whole image, unpadded
    assert jseg_windows(1000, 800) == [(0, 1000, 0, 800)]
    assert jseg_windows(300, 500) == [(0, 300, 0, 500)]
    # 801 x 1000: x starts 0, 600 -> 0, 200; y starts 0, 600 -> 0, 1 (x outer loop)
    assert jseg_windows(801, 1000) == [(0, 800, 0, 800), (1, 801, 0, 800), (0, 800, 200, 1000), (1, 801, 200, 1000)]
    # 1000 x 2000: x starts 0, 600, 1200, 1800 -> 1200 twice (written once); y 0, 600 -> 0, 200
    assert jseg_windows(1000, 2000) == [
        (0, 800, 0, 800),
        (200, 1000, 0, 800),
        (0, 800, 600, 1400),
        (200, 1000, 600, 1400),
        (0, 800, 1200, 2000),
        (200, 1000, 1200, 2000),
    ]
    assert len(jseg_windows(4000, 4000)) == 7 * 7  # starts 0..3600 step 600 -> 0..3000 and 3200 (3600 pulled back)


JSEG_SIZES = {
    "train": {"P0000": (850, 1300), "P0001": (600, 900), "P1527": (90, 80)},
    "val": {"P0002": (300, 200)},
    "test": {"P0004": (900, 820), "P1530": (70, 60)},
}


@pytest.fixture(scope="module")
def jseg_prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, subprocess.CompletedProcess[str]]:
    raw = write_raw(tmp_path_factory.mktemp("raw_jseg") / "iSAID", sizes=JSEG_SIZES)
    out = tmp_path_factory.mktemp("prepared_jseg") / "iSAID"
    r = _cli("prepare-isaid", str(raw), str(out), "--protocol", "jseg", "-q")
    assert r.returncode == 0, r.stderr
    return raw, out, r


def test_prepare_jseg_protocol(jseg_prepared: tuple[Path, Path, subprocess.CompletedProcess[str]]) -> None:
    raw, out, result = jseg_prepared

    def names(folder: str) -> list[str]:
        return sorted(p.name for p in (out / folder).iterdir())

    assert names("img_dir/train") == [
        "P0000_0_800_0_800.png",
        "P0000_0_800_500_1300.png",
        "P0000_50_850_0_800.png",
        "P0000_50_850_500_1300.png",
        "P0001.png",  # 600 x 900: copied whole, not padded
    ]  # P1527 left out
    assert names("ann_dir/train") == [n.replace(".png", "_instance_color_RGB.png") for n in names("img_dir/train")]
    assert names("img_dir/val") == ["P0002.png"]
    # JSeg cuts the test images too (no annotations); P1530 left out
    test_patches = ["P0004_0_800_0_800", "P0004_0_800_20_820", "P0004_100_900_0_800", "P0004_100_900_20_820"]
    assert names("img_dir/test") == [f"{n}.png" for n in test_patches]
    assert not (out / "ann_dir" / "test").exists()

    # pixels are the source's own; annotations hold the ids (unknown colours -> 0), never padded
    image, ids = _scene("P0000", 850, 1300)
    patch = np.asarray(Image.open(out / "img_dir" / "train" / "P0000_50_850_500_1300.png"))
    assert np.array_equal(patch, image[50:850, 500:1300])
    ann = np.asarray(Image.open(out / "ann_dir" / "train" / "P0000_0_800_0_800_instance_color_RGB.png"))
    expected = ids[:800, :800].copy()
    expected[:2, :3] = 0  # the unknown colour
    assert np.array_equal(ann, expected)
    whole = out / "img_dir" / "train" / "P0001.png"
    assert whole.read_bytes() == (raw / "train" / "images" / "P0001.png").read_bytes()  # copyfile, as JSeg
    ann = np.asarray(Image.open(out / "ann_dir" / "train" / "P0001_instance_color_RGB.png"))
    assert ann.shape == (600, 900) and np.array_equal(ann, _scene("P0001", 600, 900)[1])

    assert "protocol: jseg (800x800 px, overlap 200)" in result.stdout
    assert "left out as the jseg protocol does: train/P1527, test/P1530" in result.stdout
    report = json.loads((out / "prepare_isaid.json").read_text())
    assert report["patches"] == {"train": 5, "val": 1, "test": 4}
    assert report["unknown_masks"] == {"train/P0000": {"pixels": 6, "colours": {"1,2,3": 6}}}
    # the dataset reads both kinds of file
    ds = ISAID(out, "train")
    assert len(ds) == 5 and ds.load(4)[0].shape == (600, 900, 3)

    r = _cli("prepare-isaid", str(raw), str(out), "--protocol", "pfseg", "-q")
    assert r.returncode == 2 and r.stderr.strip() == "error: --protocol pfseg: must be one of mmseg, jseg"


@pytest.mark.slow
def test_evaluate_jseg_config_with_a_checkpoint_file(
    tmp_path: Path, jseg_prepared: tuple[Path, Path, subprocess.CompletedProcess[str]]
) -> None:
    import torch

    from segnext_geo.models import build_model, save_checkpoint
    from segnext_geo.train.evaluate import evaluate

    _, out, _ = jseg_prepared
    torch.manual_seed(0)
    ckpt = save_checkpoint(build_model("tiny", 16, palette=ISAID_PALETTE), tmp_path / "isaid16.pth")
    cfg = ROOT / "configs" / "segnext_t_isaid_jseg.yaml"
    sets = [f"data.root={out}", "data.num_workers=0"]
    a = evaluate(cfg, str(ckpt), overrides=sets, progress=False)  # the checkpoint string goes to load_model as given
    assert a["json"] == str(tmp_path / "eval_val_whole.json") and Path(a["png"]).is_file()  # next to the file
    assert a["checkpoint"] == str(ckpt) and a["images"] == 1  # P0002 (300 x 200), copied whole by JSeg
    assert (a["test_scale"], a["test_size_divisor"], a["mode"]) == ([896, 896], 32, "whole")
    assert np.array(a["confusion_matrix"]).sum() == 300 * 200  # run at 896 x 608, scored at the label's own size
    b = evaluate(cfg, ckpt, out=tmp_path / "b.json", overrides=sets, progress=False)  # a Path works too
    assert b["confusion_matrix"] == a["confusion_matrix"]
    c = evaluate(cfg, ckpt, out=tmp_path / "c.json", overrides=[*sets, "data.test_size_divisor=null"], progress=False)
    assert c["confusion_matrix"] != a["confusion_matrix"]  # 896 x 597 without the multiple-of-32 resize

    r = _cli("evaluate", "--config", str(cfg), "--checkpoint", str(tmp_path / "none.pth"), "--set", sets[0], "-q")
    assert r.returncode == 2 and r.stderr.strip() == f"error: {tmp_path / 'none.pth'}: checkpoint not found"


def test_palette_round_trips_and_counts_unknown_colours() -> None:
    ids = np.arange(16, dtype=np.uint8).repeat(3).reshape(6, 8)
    rgb = ids_to_rgb(ids, ISAID_PALETTE)
    assert np.array_equal(rgb_to_ids(rgb, ISAID_PALETTE).ids, ids)
    rgb[0, 0] = UNKNOWN
    rgb[5, 7] = (200, 200, 200)
    m = rgb_to_ids(rgb, ISAID_PALETTE)
    assert m.ids[0, 0] == 0 and m.ids[5, 7] == 0
    assert m.unknown_pixels == 2
    assert m.unknown_colours == {UNKNOWN: 1, (200, 200, 200): 1}


def test_prepare_writes_mmseg_patches(raw: Path, prepared: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, result = prepared
    for split, scenes in SIZES.items():
        if split == "test":
            continue
        names = sorted(p.name for p in (out / "img_dir" / split).iterdir())
        expected = sorted(
            f"{name}_{y0}_{y1}_{x0}_{x1}.png"
            for name, (h, w) in scenes.items()
            for y0, y1, x0, x1 in patch_windows(h, w, PATCH, OVERLAP)
        )
        assert names == expected
        anns = sorted(p.name for p in (out / "ann_dir" / split).iterdir())
        assert anns == [n.replace(".png", "_instance_color_RGB.png") for n in expected]
    # test images are copied whole
    assert [p.name for p in (out / "img_dir" / "test").iterdir()] == ["P0004.png"]
    assert Image.open(out / "img_dir" / "test" / "P0004.png").size == (80, 70)

    # pixels: the patch is the (padded) source crop; the annotation holds ids with 255 in the padding
    image, ids = _scene("P0001", 50, 70)
    patch = np.asarray(Image.open(out / "img_dir" / "train" / "P0001_0_64_6_70.png"))
    assert np.array_equal(patch[:50], image[:, 6:70]) and not patch[50:].any()
    ann = Image.open(out / "ann_dir" / "train" / "P0001_0_64_6_70_instance_color_RGB.png")
    assert ann.mode == "P"
    a = np.asarray(ann)
    assert np.array_equal(a[:50], ids[:, 6:70]) and (a[50:] == 255).all()
    # the palette travels in the PNG: ids -> colours -> ids round-trips
    as_rgb = np.asarray(ann.convert("RGB"))[:50]
    assert np.array_equal(rgb_to_ids(as_rgb, ISAID_PALETTE).ids, a[:50])

    # the unknown colour became background and was reported
    assert "unknown mask colours: 6 px in 1 masks" in result.stdout
    report = json.loads((out / "prepare_isaid.json").read_text())
    assert report["unknown_masks"] == {"train/P0000": {"pixels": 6, "colours": {"1,2,3": 6}}}
    assert report["patches"] == {"train": 10, "val": 5, "test": 1}


def test_second_run_skips_finished_images(raw: Path, prepared: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = prepared
    one = out / "img_dir" / "val" / "P0003_26_90_26_90.png"
    one.unlink()  # an interrupted image is redone, the others are skipped
    report = prepare_isaid(raw, out, PATCH, OVERLAP, progress=False)
    assert report.converted == {"train": 0, "val": 1, "test": 0}
    assert report.skipped == {"train": 2, "val": 1, "test": 1}
    assert one.is_file()
    assert not list(out.rglob(".*.tmp"))


def test_zip_archives_give_the_same_patches(
    tmp_path: Path, prepared: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    raw_zip = write_raw(tmp_path / "zipped", zipped=True)
    assert scan_raw_split(raw_zip, "train").images["P0000"].member == "images/P0000.png"
    out = tmp_path / "out"
    prepare_isaid(raw_zip, out, PATCH, OVERLAP, progress=False)
    ref, _ = prepared
    files = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert files == sorted(p.relative_to(ref) for p in ref.rglob("*.png"))
    for rel in files:
        assert np.array_equal(np.asarray(Image.open(out / rel)), np.asarray(Image.open(ref / rel))), rel


def test_bad_raw_inputs_name_the_file(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw")
    (raw / "val" / "Semantic_masks" / "P0003_instance_color_RGB.png").unlink()
    with pytest.raises(UserError, match=r"val/images/P0003\.png: no mask P0003_instance_color_RGB\.png"):
        prepare_isaid(raw, tmp_path / "out", PATCH, OVERLAP, progress=False)

    raw2 = write_raw(tmp_path / "raw2")
    (raw2 / "train" / "images" / "P0001.png").write_bytes(b"")
    r = _cli("prepare-isaid", str(raw2), str(tmp_path / "out2"), "--patch-size", "64", "--overlap", "24", "-q")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"error: {raw2 / 'train' / 'images' / 'P0001.png'}: empty file"]

    raw3 = write_raw(tmp_path / "raw3")
    (raw3 / "train" / "images" / "part2.zip").write_bytes(b"not a zip")
    with pytest.raises(UserError, match=r"part2\.zip: not a readable zip archive"):
        prepare_isaid(raw3, tmp_path / "out3", PATCH, OVERLAP, progress=False)

    with pytest.raises(UserError, match="raw iSAID folder not found"):
        prepare_isaid(tmp_path / "nowhere", tmp_path / "out4", progress=False)


def test_isaid_dataset_reads_patches_and_names_bad_files(
    tmp_path: Path, prepared: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    out, _ = prepared
    ds = ISAID(out, "val")
    assert len(ds) == 5
    image, label = ds.load(0)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and label.shape == (64, 64)
    # P0002 (64 x 40) padded to the 64 px patch as mmseg's converter does: image 0, label 255
    raw_image, raw_ids = _scene("P0002", 64, 40)
    assert (image[:, :40] == raw_image).all() and (image[:, 40:] == 0).all()
    assert (label[:, :40] == raw_ids).all() and (label[:, 40:] == 255).all()
    item = ds[0]
    assert tuple(item["image"].shape) == (3, 64, 64) and tuple(item["mask"].shape) == (64, 64)

    broken = tmp_path / "broken"
    (broken / "img_dir" / "val").mkdir(parents=True)
    (broken / "ann_dir" / "val").mkdir(parents=True)
    Image.fromarray(image).save(broken / "img_dir" / "val" / "P9_0_64_0_64.png")
    with pytest.raises(UserError, match=r"P9_0_64_0_64_instance_color_RGB\.png: annotation missing"):
        ISAID(broken, "val")
    (broken / "ann_dir" / "val" / "P9_0_64_0_64_instance_color_RGB.png").write_bytes(b"")
    with pytest.raises(UserError, match="empty file"):
        ISAID(broken, "val")
    with pytest.raises(UserError, match="folder not found"):
        ISAID(broken, "train")


def test_isaid_dataset_refuses_one_bit_and_impossible_labels(
    tmp_path: Path, prepared: tuple[Path, subprocess.CompletedProcess[str]]
) -> None:
    """mmseg's own converter writes 1-bit PNGs under Pillow >= 9: ids {0, 5, 255} read back as {0, 1}."""
    out, _ = prepared
    image, _ = ISAID(out, "val").load(0)
    bad = tmp_path / "bad"
    for d in ("img_dir/val", "ann_dir/val"):
        (bad / d).mkdir(parents=True)
    Image.fromarray(image).save(bad / "img_dir" / "val" / "P9_0_64_0_64.png")
    ann = bad / "ann_dir" / "val" / "P9_0_64_0_64_instance_color_RGB.png"
    ids = np.zeros((64, 64), dtype=np.uint8)
    ids[:20], ids[40:] = 5, 255
    Image.fromarray(ids > 0).save(ann)  # what a 1-bit mask keeps of them
    assert Image.open(ann).mode == "1"
    one_bit = rf"^{ann}: 1-bit label PNG \(mode '1'\).*class ids are lost.*segnext-geo prepare-isaid"
    with pytest.raises(UserError, match=one_bit):
        ISAID(bad, "val")  # refused before any training starts

    r = _cli("train", "--config", str(_tiny_cfg(tmp_path, bad)), "--set", f"trainer.out_dir={tmp_path / 'run'}", "-q")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "1-bit label PNG" in r.stderr and str(ann) in r.stderr

    ids[0, 0] = 37  # not an iSAID class id (0..15) nor the ignore index
    Image.fromarray(ids).save(ann)
    ds = ISAID(bad, "val")
    impossible = rf"^{ann}: label value 37 is not an iSAID class id .*segnext-geo prepare-isaid"
    with pytest.raises(UserError, match=impossible):
        ds.load(0)
    ids[0, 0] = 15
    Image.fromarray(ids).save(ann)
    assert set(np.unique(ISAID(bad, "val").load(0)[1])) == {0, 5, 15, 255}  # 8-bit ids are read as they are


def _tiny_cfg(tmp_path: Path, root: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(f"data: {{dataset: isaid, root: {root}, train_split: val, num_workers: 0, test_scale: null}}\n")
    return cfg


@pytest.mark.slow
def test_prepare_train_load_evaluate(tmp_path: Path, prepared: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """The acceptance path: prepared patches -> a few CPU iterations -> load_model -> evaluate JSON."""
    from segnext_geo.models import load_model

    out, _ = prepared
    run = tmp_path / "run"
    cfg = tmp_path / "tiny_isaid.yaml"
    cfg.write_text(
        f"""
model: {{variant: segnext_t}}
data:
  dataset: isaid
  root: {out}
  batch_size: 2
  num_workers: 0
  img_scale: [64, 64]
  ratio_range: [0.75, 1.25]
  crop_size: [64, 64]
  test_scale: null
optim: {{lr: 0.0006}}
schedule: {{iters: 4, warmup_iters: 2}}
trainer: {{out_dir: {run}, val_interval: 2, log_interval: 1, accelerator: cpu, progress_bar: false}}
"""
    )
    r = _cli("train", "--config", str(cfg), "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "steps      : 4" in r.stdout
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "training_curve.png"):
        assert (run / name).is_file(), name

    model = load_model(run / "best.ckpt")
    assert model.num_classes == 16
    # predict takes the checkpoint with no other flag (bands, normalisation and classes come from it)
    scene = tmp_path / "scene.tif"
    image, _ = _scene("P0007", 96, 80)
    profile = {"driver": "GTiff", "width": 80, "height": 96, "count": 3, "dtype": "uint8", "crs": "EPSG:32633"}
    with rasterio.open(scene, "w", transform=from_origin(500000, 5200000, 0.5, 0.5), **profile) as dst:
        dst.write(np.moveaxis(image, -1, 0))
    r = _cli(
        "predict",
        str(scene),
        "--checkpoint",
        str(run / "best.ckpt"),
        "--out",
        str(tmp_path / "classes.tif"),
        "--tile-size",
        "64",
        "--overlap",
        "16",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    with rasterio.open(tmp_path / "classes.tif") as src:
        assert (src.height, src.width) == (96, 80) and src.read(1).max() < 16
    assert model.meta.class_names[14] == "plane"
    assert [tuple(c) for c in model.meta.palette] == list(ISAID_PALETTE)
    assert model.meta.variant == "segnext_t" and model.meta.nmf_rank == 16 and model.meta.bands == (1, 2, 3)

    metrics = tmp_path / "metrics.json"
    r = _cli("evaluate", "--config", str(cfg), "--checkpoint", str(run / "best.ckpt"), "--out", str(metrics), "-q")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mIoU" in r.stdout and "plane" in r.stdout
    m = json.loads(metrics.read_text())
    assert m["images"] == 5 and m["mode"] == "whole" and m["dataset"] == "isaid"
    assert [c["name"] for c in m["per_class"]][:2] == ["background", "ship"]
    conf = np.array(m["confusion_matrix"])
    labelled = sum(int((np.asarray(Image.open(p)) != 255).sum()) for p in (out / "ann_dir" / "val").iterdir())
    assert conf.shape == (16, 16) and conf.sum() == labelled
    assert m["aAcc"] == pytest.approx(np.trace(conf) / conf.sum())
    assert (tmp_path / "metrics.png").is_file()

    # evaluating again refuses to overwrite; a checkpoint with other classes is refused
    r = _cli("evaluate", "--config", str(cfg), "--checkpoint", str(run / "best.ckpt"), "--out", str(metrics), "-q")
    assert r.returncode == 2 and f"{metrics}: already exists" in r.stderr, r.stderr
