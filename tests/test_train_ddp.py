"""DDP with two CPU processes (gloo): each rank trains on its own share of the data and the ranks end
with the same weights, which are the weights in the checkpoint."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from segnext_geo.models import load_model

SCRIPT = """
import sys
import torch
import lightning.pytorch as pl
from segnext_geo.train.config import load_config
from segnext_geo.train.fit import train

out = sys.argv[1]


class Record(pl.Callback):
    \"\"\"Per rank: the sample ids of every batch, and the final model state.\"\"\"

    def __init__(self):
        self.ids = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids.append(batch["id"].tolist())

    def on_train_end(self, trainer, pl_module):
        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        record = {"ids": self.ids, "state": state, "world": trainer.world_size}
        torch.save(record, f"{out}/rank{trainer.global_rank}.pt")


cfg = load_config(None, [
    "data.dataset=synthetic",
    "data.options={num_train: 16, num_val: 4, size: 48, num_classes: 3}",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.img_scale=48",
    "data.crop_size=48",
    "data.test_scale=null",
    "schedule.iters=3",
    "schedule.warmup_iters=1",
    "trainer.val_interval=3",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.progress_bar=false",
    f"trainer.out_dir={out}/run",
])
train(cfg, callbacks=[Record()])
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=240
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in (0, 1)]
    assert [rk["world"] for rk in ranks] == [2, 2]

    # each step, the two ranks trained on different images, and the epoch's images were shared out
    ids0, ids1 = ranks[0]["ids"], ranks[1]["ids"]
    assert len(ids0) == len(ids1) == 3 and all(len(b) == 2 for b in ids0 + ids1)  # 4 per step = 2 per rank
    for a, b in zip(ids0, ids1, strict=True):
        assert not set(a) & set(b)
    seen = [i for batch in ids0 + ids1 for i in batch]
    assert len(seen) == len(set(seen)) == 12  # one epoch (8 images per rank): no image twice

    # DDP kept the parameters identical; the checkpoint (written by rank 0) holds them
    s0, s1 = ranks[0]["state"], ranks[1]["state"]
    params = [k for k in s0 if "running_" not in k and "num_batches_tracked" not in k]
    for k in params:
        assert torch.equal(s0[k], s1[k]), k
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    for k in params:
        assert torch.equal(ckpt["state_dict"][f"model.{k}"], s0[k]), k
    assert len(ckpt["segnext_geo_rng"]) == 2  # every rank's RNG state, for an exact resume
    assert load_model(tmp_path / "run" / "best.ckpt").num_classes == 3

    # validation was split over the ranks and its confusion matrices summed: single-process evaluation agrees
    from segnext_geo.train.evaluate import evaluate

    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "version_0" / "metrics.csv").open()))
    logged = [float(row["val/mIoU"]) for row in rows if row.get("val/mIoU")]
    cfg = tmp_path / "run" / "config.yaml"
    result = evaluate(cfg, tmp_path / "run" / "best.ckpt", out=tmp_path / "eval.json", progress=False)
    assert result["images"] == 4
    assert logged[-1] == pytest.approx(result["mIoU"], abs=1e-6)
