"""Train a noisy-image classifier for classifier guidance: compose, build data / classifier / process, fit.

Shares its building steps with scripts/train.py (imported from the same folder).

    python scripts/train_classifier.py experiment=smoke_classifier             # seconds, CPU
    python scripts/train_classifier.py experiment=classifier_imagenet128 trainer.devices=8
    python scripts/train_classifier.py hydra.run.dir=DIR ckpt_path=last        # resume
"""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig
from train import fit

from adm.lit import ClassifierModule


def train_classifier(cfg: DictConfig) -> pl.Trainer:
    """Train the noisy classifier ``cfg.classifier`` on ``cfg.data``."""
    return fit(cfg, "classifier", lambda classifier, **kw: ClassifierModule(classifier=classifier, **kw))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_classifier")
def main(cfg: DictConfig) -> None:
    train_classifier(cfg)


if __name__ == "__main__":
    main()
