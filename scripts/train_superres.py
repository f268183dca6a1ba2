"""Train an ADM upsampler: the steps of scripts/train.py with a SuperResModule instead of a DiffusionModule.

python scripts/train_superres.py experiment=sr_mnist                     # MNIST 14 -> 28 on CPU
python scripts/train_superres.py experiment=sr_64_256 trainer.devices=8  # the paper's 64 -> 256 recipe
python scripts/train_superres.py hydra.run.dir=DIR ckpt_path=last        # resume DIR/checkpoints/last.ckpt
"""

from __future__ import annotations

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig
from train import fit

from adm.lit.superres import SuperResModule


def train(cfg: DictConfig) -> pl.Trainer:
    """Train the upsampler ``cfg.model`` on ``cfg.data`` (low-res inputs of ``cfg.low_res_size`` pixels)."""
    low_res_size = cfg.low_res_size
    return fit(cfg, "model", lambda unet, **kw: SuperResModule(unet=unet, low_res_size=low_res_size, **kw))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_superres")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
