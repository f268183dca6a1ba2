"""The training progress bar counts optimizer steps (global step / max_steps), also after a resume, with
gradient accumulation and validation in between; the config selects it by default."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from adm.callbacks import StepProgressBar
from adm.diffusion import GaussianDiffusion, UniformSampler
from adm.lit import DiffusionModule
from adm.nn import UNet


class TinyModule(DiffusionModule):
    """The diffusion module of a tiny UNet, with a validation loss so that validation can run."""

    def validation_step(self, batch, batch_idx):
        x, _ = batch
        return torch.zeros((), device=x.device) + x.mean()


def tiny_module() -> TinyModule:
    torch.manual_seed(0)
    unet = UNet(
        image_size=8, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=[],
        channel_mult=[1], learn_sigma=False, num_classes=None, num_head_channels=32,
    )  # fmt: skip
    diffusion = GaussianDiffusion.from_schedule(
        "linear", 100, mean_type="epsilon", var_type="fixed_small", loss_type="mse", rescale_timesteps=False
    )
    return TinyModule(
        unet=unet, diffusion=diffusion, timestep_sampler=UniformSampler(diffusion),
        optimizer=functools.partial(torch.optim.SGD, lr=1e-3),
    )  # fmt: skip


def loader(batches: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2 * batches, 1, 8, 8, generator=g) * 2 - 1
    return DataLoader(TensorDataset(x, torch.zeros(2 * batches, dtype=torch.int64)), batch_size=2)


class RecordingBar(StepProgressBar):
    """Records (global step, bar n, bar total, bar initial) after every training batch and at train start."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[tuple[int, int, int | None, int]] = []
        self.start: tuple[int, int, int | None, int] | None = None

    def _state(self, trainer):
        bar = self.train_progress_bar
        return trainer.global_step, bar.n, bar.total, bar.initial

    def on_train_start(self, trainer, pl_module):
        super().on_train_start(trainer, pl_module)
        self.start = self._state(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.seen.append(self._state(trainer))


def trainer(tmp_path: Path, bar: TQDMProgressBar, **kwargs) -> pl.Trainer:
    options = dict(
        default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[bar], num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    options.update(kwargs)
    return pl.Trainer(**options)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def final_line(text: str) -> str:
    """The last drawing of the main bar in captured terminal output."""
    frames = [f for f in re.split(r"[\r\n]", text) if "Steps" in f]
    assert frames, f"no step bar in the output: {text!r}"
    return frames[-1]


def test_bar_counts_global_steps_over_epochs_with_validation(tmp_path, capsys):
    bar = RecordingBar(refresh_rate=1)
    # 4 batches an epoch: the 6 steps span two epochs; validation every 2 batches
    t = trainer(tmp_path, bar, max_steps=6, limit_val_batches=1, val_check_interval=2, num_sanity_val_steps=1)
    t.fit(tiny_module(), train_dataloaders=loader(4), val_dataloaders=loader(1))
    assert t.global_step == 6
    assert bar.start == (0, 0, 6, 0)
    assert bar.seen == [(s, s, 6, 0) for s in range(1, 7)]  # global step / max_steps, not batch / epoch
    line = final_line(capsys.readouterr().out)
    assert "epoch 1" in line and "6/6" in line and ("it/s" in line or "s/it" in line)
    assert "loss" in line  # the postfix of the module's logged metrics


def test_bar_moves_once_per_optimizer_step_with_accumulation(tmp_path):
    bar = RecordingBar(refresh_rate=1)
    t = trainer(tmp_path, bar, max_steps=3, accumulate_grad_batches=2)
    t.fit(tiny_module(), train_dataloaders=loader(6))
    assert t.global_step == 3
    # six batches, one optimizer step every second one
    assert [n for _, n, _, _ in bar.seen] == [0, 1, 1, 2, 2, 3]
    assert all(total == 3 for _, _, total, _ in bar.seen)


def test_resumed_run_starts_at_its_step(tmp_path, capsys):
    first = trainer(tmp_path, RecordingBar(refresh_rate=1), max_steps=3)
    first.fit(tiny_module(), train_dataloaders=loader(8))
    ckpt = tmp_path / "step3.ckpt"
    first.save_checkpoint(ckpt)
    capsys.readouterr()

    bar = RecordingBar(refresh_rate=1)
    resumed = trainer(tmp_path, bar, max_steps=6)
    resumed.fit(tiny_module(), train_dataloaders=loader(8), ckpt_path=str(ckpt))
    assert bar.start == (3, 3, 6, 3)  # starts at the resumed step, rate and time left over this run's steps
    assert bar.seen == [(s, s, 6, 3) for s in (4, 5, 6)]
    assert "6/6" in final_line(capsys.readouterr().out)
    assert bar.train_progress_bar.format_dict["initial"] == 3


def test_large_refresh_rate_still_ends_at_the_last_step(tmp_path, capsys):
    bar = RecordingBar(refresh_rate=1000)  # e.g. logs that are not a terminal
    t = trainer(tmp_path, bar, max_steps=5)
    t.fit(tiny_module(), train_dataloaders=loader(8))
    assert [n for _, n, _, _ in bar.seen] == [0, 0, 0, 0, 5]  # drawn at the last step only
    assert bar.train_progress_bar.n == 5
    line = final_line(capsys.readouterr().out)
    assert "5/5" in line


def test_without_max_steps_the_bar_counts_the_epoch_batches(tmp_path):
    bar = RecordingBar(refresh_rate=1)
    t = trainer(tmp_path, bar, max_steps=-1, max_epochs=2, limit_train_batches=3)
    t.fit(tiny_module(), train_dataloaders=loader(8))
    assert t.global_step == 6
    # Lightning's epoch bar: batches of the current epoch
    assert [(n, total) for _, n, total, _ in bar.seen] == [(1, 3), (2, 3), (3, 3)] * 2


def test_disabled_bar_shows_nothing(tmp_path, capsys):
    bar = RecordingBar(refresh_rate=0)
    t = trainer(tmp_path, bar, max_steps=3)
    t.fit(tiny_module(), train_dataloaders=loader(4))
    assert t.global_step == 3 and "Steps" not in capsys.readouterr().out


@pytest.mark.parametrize("config", ["train", "train_classifier", "train_superres"])
def test_every_training_script_uses_the_step_bar(config, tmp_path, compose):
    cfg = compose(config, output_dir=tmp_path)
    assert cfg.callbacks.progress_bar._target_ == "adm.callbacks.StepProgressBar"
    bar = instantiate(cfg.callbacks.progress_bar)
    assert isinstance(bar, StepProgressBar) and bar.refresh_rate == cfg.callbacks.progress_bar.refresh_rate
    cfg = compose(config, ["callbacks/progress_bar=epochs"], output_dir=tmp_path)
    assert type(instantiate(cfg.callbacks.progress_bar)) is TQDMProgressBar
