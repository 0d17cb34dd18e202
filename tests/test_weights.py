"""The weights catalogue: every published file is an entry, and every entry is consistent with itself."""

from __future__ import annotations

import re

import pytest

from segnext_geo.models import Weights, build_model, get_weights, list_weights
from segnext_geo.models.meta import ISAID_CLASSES
from segnext_geo.models.weights import _STATE_COUNTS, estimated_size, find_weights, suggest_weights

REQUIRED = [f"segnext_{v}_{d}" for d in ("isaid", "ade20k", "cityscapes") for v in "tsbl"] + [
    f"mscan_{v}" for v in "tsbl"
]


def test_the_sixteen_required_entries_and_their_sources() -> None:
    names = [w.name for w in list_weights()]
    assert names[:16] == REQUIRED  # listed first, in this order
    assert len(names) == len(set(names)) >= 16
    isaid = get_weights("segnext_t_isaid")
    assert isaid.url == (
        "https://cg.cs.tsinghua.edu.cn/jittor/assets/build/checkpoints/segnext_tiny_896x896_isaid_160k.pkl"
    )
    assert (isaid.format, isaid.family, isaid.nmf_rank, isaid.crop_size) == ("jittor", "official", 16, (896, 896))
    assert [get_weights(f"segnext_{v}_isaid").miou for v in "tsbl"] == [68.3, 68.8, 69.9, 70.3]
    assert [get_weights(f"segnext_{v}_isaid").nmf_rank for v in "tsbl"] == [16, 16, 64, 64]
    assert [get_weights(f"segnext_{v}_ade20k").nmf_rank for v in "tsbl"] == [16, 16, 16, 16]
    assert [get_weights(f"segnext_{v}_ade20k").miou for v in "tsbl"] == [41.50, 44.16, 48.03, 50.99]
    assert [get_weights(f"segnext_{v}_cityscapes").miou for v in "tsbl"] == [79.8, 81.3, 82.6, 83.2]
    assert [get_weights(f"segnext_{v}_cityscapes").nmf_rank for v in "tsbl"] == [16, 16, 64, 64]
    ade_t = get_weights("segnext_t_ade20k")
    assert ade_t.filename == "segnext_mscan-t_1x16_512x512_adamw_160k_ade20k_20230210_140244-05bd8466.pth"
    assert ade_t.url.endswith("/v0.5/segnext/segnext_mscan-t_1x16_512x512_adamw_160k_ade20k/" + ade_t.filename)
    assert get_weights("segnext_b_cityscapes").url == "https://cloud.tsinghua.edu.cn/f/adb49029f66f426bb046/?dl=1"
    assert get_weights("mscan_l").filename == "mscan_l_20230227-cef260d4.pth"
    assert get_weights("segnext_l_cityscapes_jittor").filename == "segnext_large_1024x1024_city_160k.pkl"
    assert isaid.gsd_m is None and "varies" in isaid.gsd_note


@pytest.mark.parametrize("w", list_weights(), ids=lambda w: w.name)
def test_every_entry_is_consistent(w: Weights) -> None:
    assert w.url.startswith("https://")
    assert w.format in ("jittor", "pytorch") and w.family in ("official", "mmseg", "mscan-imagenet")
    assert w.filename.endswith(".pkl" if w.format == "jittor" else ".pth")
    assert w.sha1_trailer == (w.format == "jittor")
    match = re.search(r"-([0-9a-f]{8})\.pth$", w.filename)
    assert w.sha256_prefix == (match.group(1) if match else None)  # mmseg names carry the hash; others none
    assert w.variant in ("segnext_t", "segnext_s", "segnext_b", "segnext_l")
    if w.backbone_only:
        assert w.num_classes is None and w.nmf_rank is None and w.class_names == () and w.dataset == "ImageNet-1k"
    else:
        assert w.num_classes == len(w.class_names) == len(w.palette) == len(set(w.class_names))
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in w.palette)
        assert w.nmf_rank in (16, 64)
        assert {"iSAID": 16, "ADE20K": 150, "Cityscapes": 19}[w.dataset] == w.num_classes
    assert "research" in w.licence and w.dataset.split("-")[0] in w.licence
    assert len(w.bands) == len(w.band_names) == len(w.mean) == len(w.std) == 3
    assert w.miou is None or 40 < w.miou < 85


def test_class_lists_match_mmseg_and_isaid() -> None:
    ade = get_weights("segnext_t_ade20k")
    assert ade.class_names[:8] == ("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed")
    assert ade.class_names[-3:] == ("glass", "clock", "flag") and ade.palette[0] == (120, 120, 120)
    assert ade.palette[-1] == (92, 0, 255)
    city = get_weights("segnext_t_cityscapes")
    assert city.class_names[0] == "road" and city.class_names[-1] == "bicycle"
    assert city.palette[0] == (128, 64, 128) and city.palette[-1] == (119, 11, 32)
    assert get_weights("segnext_l_isaid").class_names == ISAID_CLASSES


@pytest.mark.parametrize("variant", ["segnext_t", "segnext_s", "segnext_b", "segnext_l"])
def test_estimated_sizes_are_the_real_state_dict_sizes(variant: str) -> None:
    model = build_model(variant, 19)
    sd = model.state_dict()
    backbone = sum(t.numel() for k, t in sd.items() if k.startswith("backbone.") and "num_batches" not in k)
    counters = sum(1 for k in sd if k.endswith("num_batches_tracked"))
    head = sum(t.numel() for k, t in sd.items() if k.startswith("decode_head.") and "conv_seg" not in k)
    channels, last = model.decode_head.conv_seg.in_channels, model.backbone.norm4.weight.shape[0]
    assert _STATE_COUNTS[variant] == (backbone, counters, head, channels, last)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    city = get_weights(f"{variant}_cityscapes")  # a PyTorch file with 19 classes, counters included
    assert estimated_size(city) == nbytes
    jittor = get_weights(f"{variant}_cityscapes_jittor")  # no counters
    assert estimated_size(jittor) == nbytes - 8 * counters


def test_lookup_is_forgiving_and_suggests() -> None:
    assert find_weights("SegNeXt-T_iSAID") is get_weights("segnext_t_isaid")
    assert find_weights("nope") is None
    assert suggest_weights("segnext_t_isiad")[0] == "segnext_t_isaid"
    with pytest.raises(KeyError, match="did you mean segnext_t_isaid"):
        get_weights("segnext_t_isiad")
    assert [w.dataset for w in list_weights("isaid")] == ["iSAID"] * 4
