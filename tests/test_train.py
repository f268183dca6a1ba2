"""End-to-end training runs of the real configs (composed with Hydra, shrunk to seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from adm.io.checkpoint import AtomicCheckpointIO, load_checkpoint
from adm.recipes.train import train, train_classifier

REPO = Path(__file__).resolve().parents[1]

# Small everywhere (the CPU is shared): 8 px digits, 4 images per step, two resolutions in the networks.
FAST = ["data.image_size=8", "batch_size=4", "model.channel_mult=[1,2]"]
FAST_CLS = ["data.image_size=8", "batch_size=4", "classifier.channel_mult=[1,2]"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name, overrides=[*overrides, f"paths.output_dir={output_dir}"])


def read_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def metrics_header(run_dir: Path) -> list[str]:
    (csv,) = run_dir.glob("csv/version_*/metrics.csv")
    return csv.read_text().splitlines()[0].split(",")


def test_smoke_diffusion(tmp_path: Path):
    cfg = compose_cfg("train", ["experiment=smoke", *FAST, "trainer.max_steps=4"], tmp_path)
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
    train(compose_cfg("train", ["experiment=smoke", *FAST, *more], tmp_path))
    assert read_ckpt(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 5
    assert not list((tmp_path / "checkpoints").glob("last-v*.ckpt"))


def test_smoke_classifier(tmp_path: Path):
    cfg = compose_cfg(
        "train_classifier",
        ["experiment=smoke_classifier", *FAST_CLS, "trainer.max_steps=4", "trainer.val_check_interval=2"],
        tmp_path,
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


def test_bad_inputs(tmp_path: Path):
    with pytest.raises(ValueError, match="not divisible"):
        train(
            compose_cfg(
                "train",
                ["experiment=smoke", "batch_size=7", "trainer.accumulate_grad_batches=2"],
                tmp_path / "a",
            )
        )
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        train(
            compose_cfg(
                "train",
                [
                    "experiment=smoke",
                    "data=imagefolder",
                    "data.num_classes=2",
                    f"data.path={tmp_path}/no-such-dir",
                ],
                tmp_path / "b",
            )
        )
    with pytest.raises(FileNotFoundError, match="ckpt_path"):
        train(
            compose_cfg(
                "train", ["experiment=smoke", *FAST, f"ckpt_path={tmp_path}/missing.ckpt"], tmp_path / "c"
            )
        )
    with pytest.raises(ValueError, match="unconditional"):
        train_classifier(
            compose_cfg("train_classifier", ["experiment=smoke", "data.num_classes=null"], tmp_path / "d")
        )


def test_loggers_wandb_offline_and_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_cfg(
        "train",
        [
            "experiment=smoke",
            *FAST,
            "trainer.max_steps=2",
            "logger=many",
            "callbacks.sample_grid.sampler.steps=2",
        ],
        tmp_path,
    )
    train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {tmp_path / 'wandb'}"
    assert list(runs[0].glob("*.wandb")), "the offline run holds no data file"
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
