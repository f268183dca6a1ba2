"""End-to-end training runs of the real configs (composed with Hydra, shrunk to seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adm.io.checkpoint import AtomicCheckpointIO, load_checkpoint
from adm.recipes.train import train, train_classifier

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def metrics_header(run_dir: Path) -> list[str]:
    (csv,) = run_dir.glob("csv/version_*/metrics.csv")
    return csv.read_text().splitlines()[0].split(",")


def test_smoke_diffusion(tmp_path: Path, compose, fast_overrides, read_ckpt):
    small = fast_overrides["train"]
    cfg = compose("train", ["experiment=smoke", *small, "trainer.max_steps=4"], output_dir=tmp_path)
    trainer = train(cfg)
    assert trainer.global_step == 4
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)

    # resolved config in the run dir; the network's class count came from the data
    assert (tmp_path / "resolved_config.yaml").is_file()
    ckpt = read_ckpt(tmp_path / "checkpoints" / "last.ckpt")  # weights_only: plain types and tensors only
    assert ckpt["global_step"] == 4
    assert ckpt["adm_config"]["model"]["num_classes"] == 10
    assert ckpt["adm_config"]["model"]["image_size"] == 8
    assert ckpt["adm_config"]["diffusion"]["var_type"] == "learned_range"  # from the model's learn_sigma
    assert ckpt["adm_ema"]["rates"] == [0.999, 0.9]

    header = metrics_header(tmp_path)
    for key in ["train/loss", "train/loss_mse", "train/loss_vb", "lr-AdamW"]:
        assert key in header
    assert any(k.startswith("train/loss_q") for k in header)
    assert list((tmp_path / "samples").glob("step_*.png"))

    # the sampling API: EMA weights by default, raw on request, other rates by value
    ema = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    raw = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt", ema=False)
    fast = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt", ema=0.9)
    assert (ema.kind, ema.weights, raw.weights, fast.weights) == ("diffusion", "ema_0.999", "raw", "ema_0.9")
    assert ema.unet.num_classes == 10 and ema.diffusion.num_timesteps == 1000
    p_ema, p_raw = next(ema.unet.parameters()), next(raw.unet.parameters())
    assert not torch.equal(p_ema, p_raw)
    with pytest.raises(ValueError, match="rates"):
        load_checkpoint(tmp_path / "checkpoints" / "last.ckpt", ema=0.5)

    # resuming with other checkpoint settings still continues from, and rewrites, last.ckpt
    more = ["callbacks.last_checkpoint.every_n_train_steps=7", "trainer.max_steps=5", "ckpt_path=last"]
    train(compose("train", ["experiment=smoke", *small, *more], output_dir=tmp_path))
    assert read_ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 5
    assert not list((tmp_path / "checkpoints").glob("last-v*.ckpt"))


def test_smoke_classifier(tmp_path: Path, compose, fast_overrides):
    fast = fast_overrides["train_classifier"]
    cfg = compose(
        "train_classifier",
        ["experiment=smoke_classifier", *fast, "trainer.max_steps=4", "trainer.val_check_interval=2"],
        output_dir=tmp_path,
    )
    trainer = train_classifier(cfg)
    assert trainer.global_step == 4
    for key in ["val/loss", "val/acc@1", "val/acc@5"]:
        assert key in trainer.callback_metrics
    assert (
        0.0
        <= float(trainer.callback_metrics["val/acc@1"])
        <= float(trainer.callback_metrics["val/acc@5"])
        <= 1
    )
    header = metrics_header(tmp_path)
    for key in ["train/loss", "train/acc@1", "train/acc@5", "val/loss_q0", "val/acc@1_q3"]:
        assert key in header
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt.kind == "classifier" and ckpt.weights == "raw"
    assert ckpt.classifier.num_classes == 10
    assert ckpt.config["classifier"]["out_channels"] == 10


def test_bad_inputs(tmp_path: Path, compose, fast_overrides):
    with pytest.raises(ValueError, match="not divisible"):
        train(
            compose(
                "train",
                ["experiment=smoke", "batch_size=7", "trainer.accumulate_grad_batches=2"],
                output_dir=tmp_path / "a",
            )
        )
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        train(
            compose(
                "train",
                [
                    "experiment=smoke",
                    "data=imagefolder",
                    "data.num_classes=2",
                    f"data.path={tmp_path}/no-such-dir",
                ],
                output_dir=tmp_path / "b",
            )
        )
    missing = [*fast_overrides["train"], f"ckpt_path={tmp_path}/missing.ckpt"]
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        train(compose("train", ["experiment=smoke", *missing], output_dir=tmp_path / "c"))
    with pytest.raises(ValueError, match="unconditional"):
        train_classifier(
            compose(
                "train_classifier", ["experiment=smoke", "data.num_classes=null"], output_dir=tmp_path / "d"
            )
        )


def test_loggers_wandb_offline_and_tensorboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compose, fast_overrides
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose(
        "train",
        [
            "experiment=smoke",
            *fast_overrides["train"],
            "trainer.max_steps=2",
            "logger=many",
            "callbacks.sample_grid.sampler.steps=2",
        ],
        output_dir=tmp_path,
    )
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {tmp_path / 'wandb'}"
    assert list(runs[0].glob("*.wandb")), "the offline run holds no data file"
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
