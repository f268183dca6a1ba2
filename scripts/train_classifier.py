"""Train a noisy-image classifier for classifier guidance: compose, build data / classifier / process, fit.

Shares its building steps with scripts/train.py (imported from the same folder).

    python scripts/train_classifier.py experiment=smoke_classifier             # seconds, CPU
    python scripts/train_classifier.py experiment=classifier_imagenet128 trainer.devices=8
    python scripts/train_classifier.py hydra.run.dir=DIR ckpt_path=last        # resume
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig
from train import (
    build_trainer_and_data,
    fit_network_to_data,
    instantiate,
    resolve_ckpt_path,
    save_resolved_config,
)

from adm.lit import ClassifierModule

log = logging.getLogger("train_classifier")


def train_classifier(cfg: DictConfig) -> pl.Trainer:
    """Build everything the config describes and fit; returns the trainer (see trainer.callback_metrics)."""
    seed = pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    trainer, datamodule = build_trainer_and_data(cfg)
    fit_network_to_data(cfg.classifier, datamodule, "out_channels")
    plain = save_resolved_config(cfg, output_dir)
    log.info("Instantiating classifier <%s>, diffusion and timestep sampler", cfg.classifier._target_)
    diffusion = instantiate(cfg.diffusion)
    module = ClassifierModule(
        classifier=instantiate(cfg.classifier),
        diffusion=diffusion,
        timestep_sampler=instantiate(cfg.timestep_sampler, diffusion),
        optimizer=instantiate(cfg.optimizer),
        lr_schedule=instantiate(cfg.lr_schedule) if cfg.get("lr_schedule") else None,
        config={k: plain[k] for k in ("classifier", "diffusion", "data")},
    )
    for logger in trainer.loggers:
        logger.log_hyperparams({**plain, "seed": seed})
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    log.info("Starting training%s", f" from {ckpt_path}" if ckpt_path else "")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    log.info("Done: checkpoints in %s", output_dir / "checkpoints")
    return trainer


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_classifier")
def main(cfg: DictConfig) -> None:
    train_classifier(cfg)


if __name__ == "__main__":
    main()
