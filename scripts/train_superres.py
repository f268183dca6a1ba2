"""Train an ADM upsampler: the steps of scripts/train.py with a SuperResModule instead of a DiffusionModule.

python scripts/train_superres.py experiment=sr_mnist                     # MNIST 14 -> 28 on CPU
python scripts/train_superres.py experiment=sr_64_256 trainer.devices=8  # the paper's 64 -> 256 recipe
python scripts/train_superres.py hydra.run.dir=DIR ckpt_path=last        # resume DIR/checkpoints/last.ckpt
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from train import build_trainer_and_data, fit_network_to_data, resolve_ckpt_path, save_resolved_config

from adm.lit.superres import SuperResModule

log = logging.getLogger("train_superres")


def train(cfg: DictConfig) -> pl.Trainer:
    """Build everything the config describes and fit; returns the trainer (with its callback_metrics)."""
    seed = pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    trainer, datamodule = build_trainer_and_data(cfg)
    fit_network_to_data(cfg.model, datamodule, "num_classes")
    plain = save_resolved_config(cfg, output_dir)
    log.info(
        "Instantiating upsampler <%s> (%d -> %d px), diffusion and timestep sampler",
        cfg.model._target_,
        cfg.low_res_size,
        cfg.model.image_size,
    )
    diffusion = instantiate(cfg.diffusion)
    module = SuperResModule(
        unet=instantiate(cfg.model),
        diffusion=diffusion,
        low_res_size=cfg.low_res_size,
        timestep_sampler=instantiate(cfg.timestep_sampler, diffusion),
        optimizer=instantiate(cfg.optimizer),
        lr_schedule=instantiate(cfg.lr_schedule) if cfg.get("lr_schedule") else None,
        config={k: plain[k] for k in ("model", "diffusion", "data")},
    )
    for logger in trainer.loggers:
        logger.log_hyperparams({**plain, "seed": seed})
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    log.info("Starting training%s", f" from {ckpt_path}" if ckpt_path else "")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    log.info("Done: checkpoints in %s", output_dir / "checkpoints")
    return trainer


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_superres")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
