"""Command-line entry points: one Hydra main per recipe, used by ``scripts/*.py`` and the ``adm-*`` console
scripts alike (``pyproject.toml``). Configs are composed from the package's own ``conf/``.

    adm-train experiment=smoke                 # == python scripts/train.py experiment=smoke
    adm-sample ckpt=last.ckpt num_samples=64   # == python scripts/sample.py ...
    adm-train resume=runs/train/DIR            # continue a run: its saved overrides, its last checkpoint

A mistake in the command or the environment (:class:`adm.errors.UsageError`: no GPU, no data, a
run directory that holds another config ...) prints one line, ``error: ...``, and exits with status 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from adm.errors import UsageError
from adm.recipes.runs import expand_resume

log = logging.getLogger("adm")

_CONF = "conf"  # relative to this module: the package adm.conf (the top-level conf/ folder of a checkout)
_VERSION = "1.3"


def _fail(err: UsageError) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def usage_errors(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Inside ``hydra.main``: a UsageError of the recipe becomes one line on stderr and exit status 2."""

    @functools.wraps(task)
    def run(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except UsageError as err:
            _fail(err)

    return run


def resumable(main: Callable[[], Any]) -> Callable[[], Any]:
    """Outside ``hydra.main``: ``resume=DIR`` becomes DIR's saved overrides (``adm.recipes.runs``)."""

    @functools.wraps(main)
    def run() -> Any:
        try:
            sys.argv[1:] = expand_resume(sys.argv[1:])
        except UsageError as err:
            _fail(err)
        return main()

    return run


@resumable
@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="train")
@usage_errors
def train(cfg: DictConfig) -> None:
    """Train a diffusion model (``conf/train.yaml``)."""
    from adm.recipes.train import train as recipe

    recipe(cfg)


@resumable
@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="train_classifier")
@usage_errors
def train_classifier(cfg: DictConfig) -> None:
    """Train a noisy classifier for guidance (``conf/train_classifier.yaml``)."""
    from adm.recipes.train import train_classifier as recipe

    recipe(cfg)


@resumable
@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="train_superres")
@usage_errors
def train_superres(cfg: DictConfig) -> None:
    """Train an upsampler (``conf/train_superres.yaml``)."""
    from adm.recipes.train import train_superres as recipe

    recipe(cfg)


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="sample")
@usage_errors
def sample(cfg: DictConfig) -> None:
    """Draw a sample set (``conf/sample.yaml``)."""
    from adm.recipes.sample import sample as recipe

    log.info("done: %s", json.dumps(recipe(cfg)))


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="upsample")
@usage_errors
def upsample(cfg: DictConfig) -> None:
    """Upsample base samples (``conf/upsample.yaml``)."""
    from adm.recipes.upsample import upsample as recipe

    log.info("done: %s", json.dumps(recipe(cfg)))


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="evaluate")
@usage_errors
def evaluate(cfg: DictConfig) -> None:
    """Score a sample set against a reference batch (``conf/evaluate.yaml``)."""
    from adm.recipes.evaluate import evaluate_samples as recipe

    recipe(cfg)


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="make_reference")
@usage_errors
def make_reference(cfg: DictConfig) -> None:
    """Write a reference batch (images, labels, Inception statistics) from an image folder."""
    from adm.recipes.evaluate import make_reference as recipe

    recipe(cfg)


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="demo")
@usage_errors
def demo(cfg: DictConfig) -> None:
    """``make demo``: train, sweep the guidance scale, score (``conf/demo.yaml``)."""
    from adm.recipes.demo import run_demo as recipe

    recipe(cfg)


@hydra.main(version_base=_VERSION, config_path=_CONF, config_name="compare_samplers")
@usage_errors
def compare_samplers(cfg: DictConfig) -> None:
    """Samplers x guidance (none, classifier, classifier-free) on the demo networks."""
    from adm.recipes.compare_samplers import run_compare as recipe

    recipe(cfg)
