"""Checkpoint families, metadata round-trips and every bad-checkpoint case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segnext_geo.models import CheckpointError, build_model, load_model, save_checkpoint
from segnext_geo.models.checkpoint import detect_family, inspect_checkpoint


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segnext_geo.cli.app", *args], capture_output=True, text=True)


class Custom:
    """A non-tensor object in checkpoint metadata (like mmengine's HistoryBuffer)."""

    def __reduce__(self) -> tuple:
        return (_explode, ())


def _explode() -> None:
    raise AssertionError("checkpoint loading executed code from the pickle")


@pytest.fixture(scope="module")
def tiny5() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("tiny", 5).eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module, prefix: str = "") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k.startswith(prefix))


def test_own_checkpoint_round_trips_metadata(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    tiny5.meta.class_names = ["bg", "a", "b", "c", "d"]
    tiny5.meta.bands = (3, 2, 1)
    path = save_checkpoint(tiny5, tmp_path / "m.pth")
    loaded = load_model(path)
    assert loaded.meta.family == "segnext-geo"
    assert loaded.meta.class_names == ["bg", "a", "b", "c", "d"]
    assert loaded.meta.bands == (3, 2, 1)
    assert not loaded.training
    assert _same_weights(tiny5, loaded)


def test_mmseg_naming_from_raw_state_dict(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    path = tmp_path / "raw.pth"
    torch.save(tiny5.state_dict(), path)
    loaded = load_model(path)
    assert loaded.meta.family == "mmseg" and loaded.num_classes == 5
    assert _same_weights(tiny5, loaded)


def test_lightning_and_ddp_prefixes_are_stripped(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    sd = {f"model.{k}": v for k, v in tiny5.state_dict().items()}
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": sd, "epoch": 1}, path)
    assert _same_weights(tiny5, load_model(path))


@pytest.mark.parametrize("variant", ["s", "b"])
def test_variant_and_classes_inferred_from_shapes(tmp_path: Path, variant: str) -> None:
    model = build_model(variant, 9)
    path = tmp_path / "m.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = load_model(path)
    assert loaded.meta.variant == f"segnext_{variant}" and loaded.num_classes == 9
    assert loaded.nmf.rank == 16  # mmseg 1.x naming: R = 16 for every variant


def test_official_family_uses_rank_64_for_base(tmp_path: Path) -> None:
    model = build_model("b", 4)
    sd = {k.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv."): v for k, v in model.state_dict().items()}
    path = tmp_path / "official_b.pth"
    torch.save({"state_dict": sd, "meta": {}}, path)
    loaded = load_model(path)
    assert loaded.meta.family == "official" and loaded.nmf.rank == 64
    assert load_model(path, nmf_rank=16).nmf.rank == 16


def test_imagenet_mscan_backbone_loads_and_head_is_fresh(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    sd = {
        k[len("backbone.") :].replace(".mlp.dwconv.", ".mlp.dwconv.dwconv."): v
        for k, v in tiny5.state_dict().items()
        if k.startswith("backbone.")
    }
    sd["head.weight"] = torch.randn(1000, 256)
    sd["head.bias"] = torch.randn(1000)
    path = tmp_path / "mscan_t.pth"
    torch.save({"state_dict": sd}, path)
    mapped = inspect_checkpoint(path).state_dict
    assert all(k.startswith("backbone.") for k in mapped)  # after mapping, prefixes are added
    assert detect_family(mapped) == "mscan-imagenet"  # a backbone with prefixes is still a backbone
    assert inspect_checkpoint(path).family == "mscan-imagenet"
    loaded = load_model(path, num_classes=3)
    assert loaded.num_classes == 3 and loaded.meta.family == "mscan-imagenet"
    assert _same_weights(tiny5, loaded, prefix="backbone.")
    assert "freshly initialised" in loaded.meta.extra["note"]
    with pytest.raises(CheckpointError, match="give num_classes"):
        load_model(path)


def test_non_tensor_metadata_is_read_without_executing_code(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    path = tmp_path / "with_objects.pth"
    torch.save({"state_dict": tiny5.state_dict(), "meta": {"history": Custom()}}, path)
    assert load_model(path).num_classes == 5


# --- every bad-checkpoint case -------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pth: checkpoint not found"):
        load_model(tmp_path / "nope.pth")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        load_model(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "e.pth")


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"this is not a checkpoint\n" * 20, r"is a text file, not a model checkpoint \(it starts 'this is not"),
        (b"PK\x03\x04garbage" * 50, r"not a readable PyTorch checkpoint"),
    ],
)
def test_corrupt_file(tmp_path: Path, payload: bytes, problem: str) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=rf"corrupt\.pth: {problem}"):
        load_model(path)


def test_truncated_file(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    path = save_checkpoint(tiny5, tmp_path / "full.pth")
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth"):
        load_model(tmp_path / "cut.pth")


def test_wrong_layout(tmp_path: Path) -> None:
    torch.save({"state_dict": {"fc.weight": torch.zeros(3, 3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a SegNeXt/MSCAN checkpoint"):
        load_model(tmp_path / "other.pth")
    torch.save({"epoch": 3}, tmp_path / "noweights.pth")
    with pytest.raises(CheckpointError, match="no tensor weights"):
        load_model(tmp_path / "noweights.pth")


def test_missing_keys_are_listed_by_name(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    sd = dict(tiny5.state_dict())
    del sd["backbone.block2.1.attn.proj_1.weight"]
    del sd["decode_head.align.gn.bias"]
    torch.save({"state_dict": sd}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "missing.pth")
    msg = str(e.value)
    assert (
        "missing keys" in msg and "backbone.block2.1.attn.proj_1.weight" in msg and "decode_head.align.gn.bias" in msg
    )
    assert "\n" not in msg


def test_unexpected_and_mismatched_keys_are_listed(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    sd = dict(tiny5.state_dict())
    sd["backbone.extra.weight"] = torch.zeros(1)
    sd["decode_head.squeeze.conv.weight"] = torch.zeros(256, 100, 1, 1)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "unexpected keys: backbone.extra.weight" in msg
    assert "shape mismatch: decode_head.squeeze.conv.weight (256, 100, 1, 1)!=(256, 480, 1, 1)" in msg


def test_class_count_mismatch(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    path = save_checkpoint(tiny5, tmp_path / "five.pth")
    with pytest.raises(CheckpointError, match="has 5 classes but 16 were asked for"):
        load_model(path, num_classes=16)


def test_wrong_variant_requested(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    path = save_checkpoint(tiny5, tmp_path / "five.pth")
    tiny5.meta.variant = "segnext_t"
    with pytest.raises(CheckpointError, match="does not fit segnext_s"):
        load_model(path, variant="small")


# --- the info command ----------------------------------------------------------------


def test_info_command(tmp_path: Path, tiny5: torch.nn.Module) -> None:
    path = save_checkpoint(tiny5, tmp_path / "five.pth")
    r = _cli("info", str(path))
    assert r.returncode == 0, r.stderr
    assert "variant    : segnext_t" in r.stdout
    assert "classes    : 5" in r.stdout
    assert f"{sum(p.numel() for p in tiny5.parameters()):,}" in r.stdout
    assert "family     : segnext-geo" in r.stdout


def test_info_bad_file_is_one_line_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_text("junk")
    r = _cli("info", str(path))
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {path}: is a text file, not a model checkpoint (it starts 'junk')"
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
