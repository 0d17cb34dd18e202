"""Training: configs, the optimisation recipe, metrics, learning, exact resume, pretrained weights, errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pngs import check_png

from segnext_geo.errors import UserError
from segnext_geo.models import build_model, load_model, save_checkpoint
from segnext_geo.train.config import ScheduleSection, load_config
from segnext_geo.train.metrics import confusion_matrix, metrics_from_confusion
from segnext_geo.train.recipe import build_optimizer, lr_factor, param_groups

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "segnext_geo.cli.app", *args], capture_output=True, text=True)


def _synthetic_cfg(out_dir: Path, *sets: str):
    """A tiny synthetic run: 64 px shapes, batch 4, CPU."""
    base = [
        "data.dataset=synthetic",
        "data.options={num_train: 16, num_val: 4, size: 64, num_classes: 4}",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.img_scale=64",
        "data.crop_size=64",
        "data.ratio_range=[0.75, 1.5]",
        "data.test_scale=null",
        "optim.lr=0.0006",
        "schedule.warmup_iters=2",
        "trainer.accelerator=cpu",
        "trainer.progress_bar=false",
        "trainer.log_interval=1",
        f"trainer.out_dir={out_dir}",
    ]
    return load_config(None, [*base, *sets])


# ---------------------------------------------------------------------------- config


def test_paper_configs_load_with_the_recipe() -> None:
    t = load_config(ROOT / "configs" / "segnext_t_isaid.yaml")
    d, o, s = t.data, t.optim, t.schedule
    assert (d.crop_size, d.batch_size, d.ratio_range, d.cat_max_ratio) == ([896, 896], 16, [0.5, 2.0], 0.75)
    assert (o.lr, o.betas, o.weight_decay, o.head_lr_mult, o.norm_decay_mult) == (6e-5, [0.9, 0.999], 0.01, 10.0, 0.0)
    assert (s.iters, s.warmup_iters, s.warmup_ratio, s.power, s.min_lr) == (160000, 1500, 1e-6, 1.0, 0.0)
    assert t.data.ignore_index == 255
    variants = {}
    for name in ("t", "s", "b", "l"):
        c = load_config(ROOT / "configs" / f"segnext_{name}_isaid.yaml")
        variants[c.model.variant] = c.model.drop_path_rate
        assert c.optim == t.optim and c.schedule == t.schedule and c.data == t.data  # inherited via _base_
    assert variants == {"segnext_t": 0.1, "segnext_s": 0.1, "segnext_b": 0.2, "segnext_l": 0.3}
    assert t.model.nmf_init == "reference" and t.model.nmf_grad == "full" and t.data.test_size_divisor is None
    for name in ("t", "s", "b", "l"):  # the authors' JSeg protocol: same recipe, JSeg's test resize and NMF gradient
        j = load_config(ROOT / "configs" / f"segnext_{name}_isaid_jseg.yaml")
        mm = load_config(ROOT / "configs" / f"segnext_{name}_isaid.yaml")
        assert (j.model.variant, j.model.drop_path_rate, j.model.nmf_rank) == (
            mm.model.variant,
            mm.model.drop_path_rate,
            mm.model.nmf_rank,
        )
        assert j.model.nmf_grad == "one_step" and j.model.nmf_init == "reference"
        assert (j.data.test_scale, j.data.test_size_divisor, j.eval.mode) == ([896, 896], 32, "whole")
        assert j.optim == mm.optim and j.schedule == mm.schedule and j.data.crop_size == mm.data.crop_size
    for extra in ("loveda_segnext_t", "potsdam_segnext_t", "geotiff_example", "cpu_smoke"):
        load_config(ROOT / "configs" / f"{extra}.yaml")


def test_config_overrides_and_errors(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("data: {batch_size: 8, crop_size: [512, 512]}\noptim: {lr: 0.001}\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\ndata: {batch_size: 4}\n")
    c = load_config(child, ["optim.lr=2e-4", "data.img_scale=640", "trainer.devices=auto"])
    assert (c.data.batch_size, c.data.crop_size, c.optim.lr) == (4, [512, 512], 2e-4)
    assert c.data.img_scale == [640, 640] and c.trainer.devices == "auto"

    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: 1e-4\n  weight_decy: 0.1\n")
    hint = r"bad\.yaml: unknown config key 'optim\.weight_decy' \(did you mean 'optim\.weight_decay'\?\)"
    with pytest.raises(UserError, match=hint):
        load_config(bad)
    with pytest.raises(UserError, match=r"--set lr=1: unknown config key 'lr' \(did you mean 'optim\.lr'\?\)"):
        load_config(None, ["lr=1"])
    with pytest.raises(UserError, match=r"--set data.batch_size=two: data\.batch_size must be an integer"):
        load_config(None, ["data.batch_size=two"])
    with pytest.raises(UserError, match=r"eval\.mode must be one of whole, slide"):
        load_config(None, ["eval.mode=tiles"])
    with pytest.raises(UserError, match=r"data\.mean: needs one value per band \(4\)"):
        load_config(None, ["data.bands=[1,2,3,4]", "data.mean=[1,2,3]"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  batch_size: [1,\n")
    with pytest.raises(UserError, match=r"broken\.yaml: not valid YAML at line"):
        load_config(broken)

    r = _cli("train", "--config", str(child), "--set", "data.bach_size=2")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: --set data.bach_size=2: unknown config key 'data.bach_size' (did you mean 'data.batch_size'?)"
    )


# ---------------------------------------------------------------------------- recipe


def test_param_groups_follow_mmcv_custom_keys() -> None:
    model = build_model("tiny", 5)
    groups = {g["name"]: g for g in param_groups(model, 6e-5, 0.01)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    named = dict(model.named_parameters())
    assert ids["head"] == {id(p) for n, p in named.items() if n.startswith("decode_head.")}
    assert id(named["backbone.block1.0.norm1.weight"]) in ids["norm"]
    assert id(named["backbone.norm4.bias"]) in ids["norm"]
    assert id(named["backbone.patch_embed2.norm.weight"]) in ids["norm"]
    # the stem BN is called proj.1, so it keeps weight decay (as in the reference); so do layer scales
    assert id(named["backbone.patch_embed1.proj.1.weight"]) in ids["base"]
    assert id(named["backbone.block1.0.layer_scale_1"]) in ids["base"]
    assert (groups["head"]["lr"], groups["head"]["weight_decay"]) == (pytest.approx(6e-4), 0.01)
    assert (groups["norm"]["lr"], groups["norm"]["weight_decay"]) == (6e-5, 0.0)
    assert (groups["base"]["lr"], groups["base"]["weight_decay"]) == (6e-5, 0.01)
    assert sum(len(g["params"]) for g in groups.values()) == len(named)


def test_warmup_then_poly_schedule() -> None:
    s = ScheduleSection()  # 160k iters, 1500 warmup from 1e-6, power 1, official (mmcv 1.x) style
    assert lr_factor(0, 6e-5, s) == pytest.approx(1e-6)
    assert lr_factor(750, 6e-5, s) == pytest.approx((1 - 750 / 160000) * (1 - 0.5 * (1 - 1e-6)))
    assert lr_factor(1500, 6e-5, s) == pytest.approx(1 - 1500 / 160000)
    assert lr_factor(80000, 6e-5, s) == pytest.approx(0.5)
    assert lr_factor(160000, 6e-5, s) == 0.0
    m = ScheduleSection(style="mmseg1")
    assert lr_factor(750, 6e-5, m) == pytest.approx(0.5000005)
    assert lr_factor(1500, 6e-5, m) == 1.0
    assert lr_factor(1500 + (160000 - 1500) // 2, 6e-5, m) == pytest.approx(0.5, abs=1e-5)
    # the scheduler applies it per step to every group (head at 10x)
    model = build_model("tiny", 3)
    opt, sched = build_optimizer(model, load_config(None).optim, ScheduleSection(iters=10, warmup_iters=2))
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [g["name"] for g in opt.param_groups] == ["base", "head", "norm"]
    assert lrs[0][1] == pytest.approx(6e-4 * 1e-6)
    assert lrs[2] == pytest.approx([6e-5 * 0.8, 6e-4 * 0.8, 6e-5 * 0.8])
    assert lrs[9] == pytest.approx([6e-5 * 0.1, 6e-4 * 0.1, 6e-5 * 0.1])


# ---------------------------------------------------------------------------- metrics


def test_metrics_match_the_definitions() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 3]])
    conf = confusion_matrix(pred, target, num_classes=4)
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    m = metrics_from_confusion(conf, ["a", "b", "c", "d"])
    iou = [r["IoU"] for r in m["per_class"]]
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert iou[3] != iou[3]  # absent from truth and prediction: NaN, left out of the mean
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["aAcc"] == pytest.approx(4 / 6)
    assert m["mAcc"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)


# ---------------------------------------------------------------------------- NMF bases


def _trained_model(*sets: str):
    """The model exactly as ``train`` builds it from a config (synthetic data, 3 classes)."""
    from segnext_geo.data.build import build_data
    from segnext_geo.train.fit import _build_model

    cfg = load_config(None, ["data.dataset=synthetic", "data.options={num_classes: 3, size: 32}", *sets])
    return cfg, _build_model(cfg, build_data(cfg.data, roles=("val",)))


def test_training_draws_new_nmf_bases_every_forward_and_eval_is_deterministic() -> None:
    cfg, model = _trained_model()
    assert cfg.model.nmf_init == "reference"  # the paper's rand_init is the default
    nmf = model.nmf
    x = torch.rand(2, 256, 6, 5, generator=torch.Generator().manual_seed(0))  # a post-ReLU (non-negative) map
    dev = torch.device("cpu")

    model.train()
    b1, b2 = nmf.initial_bases(2, 256, dev), nmf.initial_bases(2, 256, dev)
    assert b1.shape == (2, 256, 16) and not torch.equal(b1, b2)  # new bases every forward ...
    assert not torch.equal(b1[0], b1[1])  # ... and per image, as torch.rand(B*S, D, R)
    assert torch.allclose(b1.norm(dim=1), torch.ones(2, 16))  # unit L2 norm along D
    y1, y2 = nmf(x), nmf(x)
    assert not torch.allclose(y1, y2, atol=1e-3)
    torch.manual_seed(7)
    y3 = nmf(x)
    torch.manual_seed(7)
    assert torch.equal(nmf(x), y3)  # drawn from the global RNG: seeding (and a restored RNG state) repeats them
    torch.manual_seed(7)
    expected = torch.nn.functional.normalize(torch.rand(2, 256, 16), dim=1)
    torch.manual_seed(7)
    assert torch.equal(nmf.initial_bases(2, 256, dev), expected)  # exactly the reference's draw

    model.eval()
    e1 = nmf(x)
    torch.manual_seed(123)
    assert torch.equal(nmf(x), e1)  # eval: one fixed set of bases, whatever the RNG
    assert torch.equal(nmf.initial_bases(2, 256, dev)[0], nmf.initial_bases(2, 256, dev)[1])
    plain = build_model("tiny", 3).nmf.eval()  # what load_model/predict/evaluate use
    assert torch.equal(plain(x), e1)

    cfg, fixed = _trained_model("model.nmf_init=deterministic")
    fixed.train()
    assert torch.equal(fixed.nmf(x), fixed.nmf(x))
    with pytest.raises(UserError, match=r"model\.nmf_init must be one of reference, deterministic"):
        load_config(None, ["model.nmf_init=random"])


# ---------------------------------------------------------------------------- training


def _losses(run: Path) -> list[float]:
    rows = list(csv.DictReader((run / "logs" / "version_0" / "metrics.csv").open()))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


@pytest.mark.slow
def test_training_reduces_the_loss_and_checkpoints_load(tmp_path: Path) -> None:
    from segnext_geo.train.fit import train

    cfg = _synthetic_cfg(
        tmp_path / "run",
        "data.options={num_train: 32, num_val: 8, size: 64, num_classes: 4}",
        "data.batch_size=4",
        "schedule.iters=30",
        "trainer.val_interval=15",
    )
    result = train(cfg)
    losses = _losses(result.out_dir)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3
    assert result.steps == 30 and result.best_miou is not None
    model = load_model(result.best)
    assert model.num_classes == 4 and model.meta.class_names == ["background", "rectangle", "ellipse", "triangle"]
    assert model.meta.extra["dataset"] == "synthetic"
    # three panels (13 x 3.6 in at 120 dpi, cropped tight): loss, learning rate and val mIoU in their colours
    tab = {"blue": (31, 119, 180), "orange": (255, 127, 14), "green": (44, 160, 44)}
    check_png(result.out_dir / "training_curve.png", width=(1400, 1700), height=(380, 480), colours=tab.values())

    with pytest.raises(UserError, match="already holds a run"):
        train(cfg)


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path: Path) -> None:
    """Stopping after 3 (mid-epoch) or 4 (end of epoch) of 6 steps and resuming gives the same weights as one
    uninterrupted run: optimiser, schedule, step, data position and RNG (dropout, drop path and the random NMF
    bases drawn on every training forward) all continue."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from segnext_geo.train.fit import train

    sets = ("schedule.iters=6", "trainer.val_interval=3", "model.drop_path_rate=0.2")  # 16 images = 4 steps/epoch
    snaps = [
        ModelCheckpoint(
            tmp_path / f"every{n}", "s{step}", every_n_train_steps=n, save_top_k=-1, auto_insert_metric_name=False
        )
        for n in (3, 4)
    ]
    assert _synthetic_cfg(tmp_path / "a", *sets).model.nmf_init == "reference"
    full = train(_synthetic_cfg(tmp_path / "a", *sets), callbacks=snaps)
    a = torch.load(full.last, weights_only=True)
    for name, snap in (("b", tmp_path / "every3" / "s3.ckpt"), ("c", tmp_path / "every4" / "s4.ckpt")):
        resumed = train(_synthetic_cfg(tmp_path / name, *sets), resume=snap)
        assert resumed.steps == 6
        b = torch.load(resumed.last, weights_only=True)
        for k, v in a["state_dict"].items():
            assert torch.equal(v, b["state_dict"][k]), (snap.name, k)
        assert a["lr_schedulers"][0]["_last_lr"] == b["lr_schedulers"][0]["_last_lr"]
        # the training curve kept the steps before the resume
        assert [r["step"] for r in b["callbacks"]["TrainingCurve"]["train"]] == [1, 2, 3, 4, 5, 6]

    with pytest.raises(UserError, match="has 4 classes but the dataset has 5"):
        train(_synthetic_cfg(tmp_path / "d", *sets, "data.options={num_classes: 5, size: 64}"), resume=snap)


def test_last_checkpoint_every_n_steps_and_at_validation(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from segnext_geo.train.fit import _cudnn_benchmark, train

    assert load_config(None).checkpoint_every() == 2000  # long runs (val every 8000): every 2000 steps
    assert load_config(None, ["trainer.val_interval=1000"]).checkpoint_every() is None  # validation is often enough
    assert load_config(None, ["trainer.checkpoint_interval=null"]).checkpoint_every() is None
    assert load_config(ROOT / "configs" / "cpu_smoke.yaml").checkpoint_every() is None
    with pytest.raises(UserError, match=r"trainer\.checkpoint_interval: must be >= 1, got 0"):
        load_config(None, ["trainer.checkpoint_interval=0"])
    assert _cudnn_benchmark(deterministic=False, gpu=True) is True
    assert _cudnn_benchmark(deterministic=True, gpu=True) is None and _cudnn_benchmark(False, gpu=False) is None

    class SeeLast(pl.Callback):
        """The step stored in last.ckpt as each training step begins."""

        def __init__(self) -> None:
            self.seen: list[int | None] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            last = tmp_path / "run" / "last.ckpt"
            self.seen.append(torch.load(last, weights_only=True)["global_step"] if last.exists() else None)

    from segnext_geo.data.build import build_data

    see = SeeLast()
    cfg = _synthetic_cfg(
        tmp_path / "run",
        "data.options={num_train: 8, num_val: 2, size: 32, num_classes: 3}",
        "data.batch_size=2",
        "data.img_scale=32",
        "data.crop_size=32",
        "schedule.iters=5",
        "trainer.val_interval=5",
        "trainer.checkpoint_interval=2",
    )
    bundle = build_data(cfg.data)  # sources built in code: train(data=...) uses them instead of cfg.data's
    with pytest.raises(UserError, match="data: no val source given"):
        train(cfg, data=type(bundle)(**{**bundle.__dict__, "sources": {"train": bundle.sources["train"]}}))
    result = train(cfg, callbacks=[see], data=bundle)
    assert see.seen == [None, None, 2, 2, 4]
    assert torch.load(result.last, weights_only=True)["global_step"] == 5  # and after the final validation


@pytest.mark.slow
def test_bf16_mixed_precision_and_accumulation(tmp_path: Path) -> None:
    from segnext_geo.train.fit import train

    cfg = _synthetic_cfg(
        tmp_path / "run",
        "schedule.iters=2",
        "trainer.val_interval=2",
        "trainer.precision=bf16-mixed",
        "trainer.accumulate_grad_batches=2",
    )
    result = train(cfg)
    assert result.steps == 2
    state = torch.load(result.last, weights_only=True)["state_dict"]
    assert all(v.dtype in (torch.float32, torch.int64) for v in state.values())
    with pytest.raises(UserError, match="must divide evenly over 1 device"):
        train(_synthetic_cfg(tmp_path / "x", "data.batch_size=6", "trainer.accumulate_grad_batches=4"))


# ---------------------------------------------------------------------------- pretrained, evaluate errors


def test_pretrained_imagenet_backbone_and_segmentation_checkpoint(tmp_path: Path) -> None:
    from segnext_geo.train.pretrained import init_from_pretrained

    torch.manual_seed(1)
    source = build_model("tiny", 19)
    imagenet = {k[len("backbone.") :]: v for k, v in source.state_dict().items() if k.startswith("backbone.")}
    imagenet["head.weight"], imagenet["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    path = tmp_path / "mscan_t.pth"
    torch.save({"state_dict": imagenet}, path)

    model = build_model("tiny", 5)
    head_before = {k: v.clone() for k, v in model.decode_head.state_dict().items()}
    assert "ImageNet" in init_from_pretrained(model, path)
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert all(torch.equal(v, model.decode_head.state_dict()[k]) for k, v in head_before.items())

    seg = save_checkpoint(source, tmp_path / "seg19.pth")
    model2 = build_model("tiny", 5)
    assert "classifier re-initialised" in init_from_pretrained(model2, seg)
    assert torch.equal(model2.decode_head.squeeze.conv.weight, source.decode_head.squeeze.conv.weight)
    assert model2.decode_head.conv_seg.weight.shape[0] == 5

    with pytest.raises(UserError, match=r"holds segnext_t weights but model\.variant is segnext_s"):
        init_from_pretrained(build_model("small", 5), path)


def test_evaluate_refuses_a_checkpoint_with_other_classes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from segnext_geo.train.evaluate import evaluate

    cfg = tmp_path / "five.yaml"
    cfg.write_text("data: {dataset: synthetic, options: {num_classes: 5, num_val: 2, size: 64}, num_workers: 0}\n")
    with pytest.raises(UserError, match=r"tiny4\.pth: has 4 classes but dataset synthetic .* has 5"):
        evaluate(cfg, tiny_checkpoint, out=tmp_path / "m.json")
    with pytest.raises(UserError, match=r"data\.dataset=lovda: unknown dataset \(did you mean 'LoveDA'\?\)"):
        evaluate(None, tiny_checkpoint, overrides=["data.dataset=lovda"], out=tmp_path / "m.json")
