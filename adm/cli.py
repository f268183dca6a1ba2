"""Command-line entry points: one Hydra main per recipe, used by ``scripts/*.py`` and the ``adm-*`` console
scripts alike (``pyproject.toml``). Configs are composed from the package's own ``adm/conf``.

    adm-train experiment=smoke                 # == python scripts/train.py experiment=smoke
    adm-sample ckpt=last.ckpt num_samples=64   # == python scripts/sample.py ...
"""

from __future__ import annotations

import json
import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger("adm")

_CONF = "conf"  # relative to this file: adm/conf
_VERSION = "1.3"


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="train")
def train(cfg: DictConfig) -> None:
    """Train a diffusion model (``conf/train.yaml``)."""
    from adm.recipes.train import train as recipe

    recipe(cfg)


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="train_classifier")
def train_classifier(cfg: DictConfig) -> None:
    """Train a noisy classifier for guidance (``conf/train_classifier.yaml``)."""
    from adm.recipes.train import train_classifier as recipe

    recipe(cfg)


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="train_superres")
def train_superres(cfg: DictConfig) -> None:
    """Train an upsampler (``conf/train_superres.yaml``)."""
    from adm.recipes.train import train_superres as recipe

    recipe(cfg)


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="sample")
def sample(cfg: DictConfig) -> None:
    """Draw a sample set (``conf/sample.yaml``)."""
    from adm.recipes.sample import sample as recipe

    log.info("done: %s", json.dumps(recipe(cfg)))


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="upsample")
def upsample(cfg: DictConfig) -> None:
    """Upsample base samples (``conf/upsample.yaml``)."""
    from adm.recipes.upsample import upsample as recipe

    log.info("done: %s", json.dumps(recipe(cfg)))


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="evaluate")
def evaluate(cfg: DictConfig) -> None:
    """Score a sample set against a reference batch (``conf/evaluate.yaml``)."""
    from adm.recipes.evaluate import evaluate_samples as recipe

    recipe(cfg)


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="demo")
def demo(cfg: DictConfig) -> None:
    """``make demo``: train, sweep the guidance scale, score (``conf/demo.yaml``)."""
    from adm.recipes.demo import run_demo as recipe

    recipe(cfg)
