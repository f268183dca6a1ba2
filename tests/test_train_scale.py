"""Scale and precision: DDP over 2 CPU processes with a fixed global batch, bf16-mixed, fp16 skipped steps."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from adm.callbacks import EMA
from adm.recipes.train import train

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def test_ddp_two_cpu_processes_keep_the_global_batch(tmp_path: Path, fast_overrides, read_ckpt):
    # `strategy=ddp` re-executes the command line for rank 1, so run the real script as a subprocess.
    cmd = [
        sys.executable,
        "scripts/train.py",
        "experiment=smoke",
        *fast_overrides["train"],
        "batch_size=8",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_steps=2",
        "callbacks.sample_grid.sampler.steps=2",
        f"hydra.run.dir={tmp_path}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    # the global batch of 8 is split into 4 per device over 2 processes
    assert "Global batch 8 = 2 device(s) x 1 node(s) x 1 accumulation x 4 per device" in output
    ckpt = read_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 2
    assert ckpt["adm_config"]["data"]["batch_size"] == 4
    # both ranks' random streams are saved, and they differ (per-rank seeds)
    rng = ckpt["rng_states"]["torch"]
    assert rng.shape[0] == 2 and not torch.equal(rng[0], rng[1])
    # the train loader's position (rank 0's share: 2 batches of 4 drawn in epoch 0)
    (loader,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader["_sampler_iter_state"]["sampler_state"] == {"epoch": 0, "position": 8}


def test_bf16_mixed_on_cpu(tmp_path: Path, compose, fast_overrides, read_ckpt):
    cfg = compose(
        "train",
        [
            "experiment=smoke",
            *fast_overrides["train"],
            "trainer.precision=bf16-mixed",
            "trainer.max_steps=2",
            "callbacks.sample_grid.sampler.steps=2",
        ],
        output_dir=tmp_path,
    )
    trainer = train(cfg)
    assert trainer.global_step == 2
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    ckpt = read_ckpt(tmp_path / "checkpoints" / "last.ckpt")
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert ckpt["callbacks"]["EMA"]["num_updates"] == 2


class _Linear(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def training_step(self, batch, batch_idx):
        return self.lin(batch[0]).float().pow(2).mean() * 100

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_fp16_overflow_steps_do_not_update_ema():
    """16-mixed with a real GradScaler (fp16 autocast on the CPU): a huge initial scale overflows the fp16
    gradients, the scaler skips those steps and halves its scale each time; the EMA must skip them too."""
    pl.seed_everything(0)
    ema = EMA(rates=[0.9], warmup=False)
    init_scale = 2.0**30
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, growth_interval=10**6)
    trainer = pl.Trainer(
        accelerator="cpu",
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        max_steps=24,
        callbacks=[ema],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Linear(), DataLoader(TensorDataset(torch.randn(96, 8)), batch_size=4))
    skipped = round(math.log2(init_scale / scaler.get_scale()))
    assert skipped > 0, "the test needs overflowing steps"
    assert ema.skipped_steps == skipped
    assert ema.num_updates == trainer.global_step - skipped


# --- the design card's command and the checks before a run starts -----------------------------------------
def test_design_card_command_without_gpu_or_data_stops_with_one_message(tmp_path: Path):
    from adm.recipes.runs import _cpu_cores

    devices = max(8, _cpu_cores() + 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", ADM_DATA_DIR=str(tmp_path / "no-data"))
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "model=adm_u_64", f"trainer.devices={devices}"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    # what is missing, and the override that fixes it
    assert f"no images at data.path={tmp_path / 'no-data'}/imagenet/train (data=imagenet64)" in line
    assert "give data.path=" in line
    if not torch.cuda.is_available():
        assert "no GPU is visible" in line and "trainer.allow_cpu_oversubscribe=true" in line
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


@pytest.fixture
def preflight_cfg(compose, tmp_path: Path):
    """``preflight_cfg(*overrides)``: the tiny model's train config, written to tmp_path."""

    def cfg(*overrides: str):
        return compose("train", ["model=adm_u_tiny", "data=mnist5k", *overrides], output_dir=tmp_path)

    return cfg


def test_several_devices_train_with_ddp_in_bf16_on_gpus_and_cpu_processes_are_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preflight_cfg
):
    import adm.recipes.runs as runs

    monkeypatch.setattr(runs, "_cpu_cores", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for devices, nodes, precision in ((8, 1, "bf16-mixed"), (1, 1, "32-true"), (1, 4, "bf16-mixed")):
        cfg = preflight_cfg(f"trainer.devices={devices}", f"trainer.num_nodes={nodes}")
        assert (cfg.trainer.strategy, cfg.trainer.precision) == ("auto", "auto")  # Lightning: DDP for > 1
        runs.preflight(cfg)
        assert cfg.trainer.precision == precision
    cfg = preflight_cfg("trainer.devices=8", "trainer.precision=16-mixed")
    runs.preflight(cfg)
    assert cfg.trainer.precision == "16-mixed"  # an explicit choice stays

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(runs.UsageError, match=r"trainer.devices=3 but no GPU is visible.*devices=2 or fewer"):
        runs.preflight(preflight_cfg("trainer.devices=3"))
    cfg = preflight_cfg("trainer.devices=3", "trainer.allow_cpu_oversubscribe=true")
    runs.preflight(cfg)
    assert cfg.trainer.precision == "32-true"
    runs.preflight(preflight_cfg("trainer.devices=2"))
    with pytest.raises(runs.UsageError, match="trainer.accelerator=gpu but no GPU is visible.*trainer=cpu"):
        runs.preflight(preflight_cfg("trainer=gpu"))
    with pytest.raises(FileNotFoundError, match="no images at data.path=.*missing"):
        runs.preflight(preflight_cfg("data=imagefolder", f"data.path={tmp_path / 'missing'}"))
    assert "allow_cpu_oversubscribe" not in runs.trainer_kwargs(cfg.trainer)
