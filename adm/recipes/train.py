"""Training recipes: build data / network / process / module from a composed config, then fit.

One recipe (:func:`fit`) serves the diffusion model (:func:`train`), the noisy classifier
(:func:`train_classifier`) and the upsampler (:func:`train_superres`); ``scripts/train*.py`` and the
``adm-train*`` console scripts call them (``adm.cli``).

    python scripts/train.py experiment=smoke                                  # seconds, CPU
    python scripts/train.py model=adm_u_64 data=imagenet64 trainer=ddp trainer.devices=8 batch_size=2048
    python scripts/train.py hydra.run.dir=DIR ckpt_path=last    # resume DIR/checkpoints/last.ckpt
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from adm.lit import ClassifierModule, DiffusionModule
from adm.lit.common import per_device_batch_size
from adm.lit.superres import SuperResModule

log = logging.getLogger("train")


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, letting a constructor's ValueError / FileNotFoundError through as is."""
    try:
        return hydra_instantiate(node, *args, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, ValueError | FileNotFoundError):
            raise err.__cause__ from None
        raise


def build_trainer_and_data(cfg: DictConfig) -> tuple[pl.Trainer, pl.LightningDataModule]:
    """Trainer (with callbacks and loggers), then the datamodule with the per-device share of `batch_size`."""
    log.info("Instantiating callbacks: %s", ", ".join(k for k, v in cfg.callbacks.items() if v))
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
    log.info("Instantiating loggers: %s", ", ".join(k for k, v in (cfg.get("logger") or {}).items() if v))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    log.info("Instantiating trainer <%s> (precision %s)", cfg.trainer._target_, cfg.trainer.precision)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    accumulate = trainer.accumulate_grad_batches
    per_device = per_device_batch_size(cfg.batch_size, trainer.num_devices, trainer.num_nodes, accumulate)
    log.info(
        "Global batch %d = %d device(s) x %d node(s) x %d accumulation x %d per device",
        cfg.batch_size,
        trainer.num_devices,
        trainer.num_nodes,
        accumulate,
        per_device,
    )
    with open_dict(cfg):
        cfg.data.batch_size = per_device
    log.info("Instantiating datamodule <%s>", cfg.data._target_)
    return trainer, instantiate(cfg.data)


# The values a network reads from its data by interpolation (``image_size: ${data.image_size}`` ...).
DATA_VALUES = ("image_size", "channels", "num_classes")


def check_data_values(cfg: DictConfig, network_key: str) -> None:
    """The data config declares what the network reads from it; a noisy classifier needs labelled data."""
    for key in DATA_VALUES:
        if OmegaConf.is_missing(cfg.data, key):  # "???" in the YAML
            example = "N (the class count of the images) or data.num_classes=null (unconditional)"
            raise ValueError(
                f"data.{key} is not set for <{cfg.data.get('_target_')}>: give data.{key}="
                + (example if key == "num_classes" else "...")
            )
        if key not in cfg.data:
            raise ValueError(
                f"the data config <{cfg.data.get('_target_')}> declares no '{key}'; the network reads "
                f"data.{key}: add {key}: ... to the data YAML (num_classes: null for unlabelled data)"
            )
    if network_key == "classifier" and cfg.data.num_classes is None:
        raise ValueError(
            "the data is unconditional (data.num_classes=null): a noisy classifier needs labels; use "
            "labelled data (data.num_classes=N)"
        )


def save_resolved_config(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Print the resolved config, write it to output_dir/resolved_config.yaml; return it as a plain dict."""
    plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    text = OmegaConf.to_yaml(plain)
    if rank_zero_only.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "resolved_config.yaml").write_text(text)
        print(text)
    return plain


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """None, "last" (output_dir/checkpoints/last.ckpt when it exists) or an existing file."""
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            log.info("ckpt_path=last: no %s yet, starting from scratch", last)
            return None
        return str(last)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path} does not exist; give a .ckpt file or ckpt_path=last")
    return str(ckpt_path)


def fit(cfg: DictConfig, network_key: str, make_module: Callable[..., pl.LightningModule]) -> pl.Trainer:
    """The recipe every training script shares: build trainer, data, network, process and module, then fit.

    Args:
        network_key: config key of the network ("model" or "classifier"); its size, channels and classes are
            the data's (``${data.image_size}`` ... in the preset), which the datamodule checks against its
            images.
        make_module: builds the LightningModule: ``make_module(network, diffusion=, timestep_sampler=,
            optimizer=, lr_schedule=, config=)``.
    Returns:
        the trainer (see ``trainer.callback_metrics``).
    """
    seed = pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    check_data_values(cfg, network_key)
    trainer, datamodule = build_trainer_and_data(cfg)
    net_cfg = cfg[network_key]
    plain = save_resolved_config(cfg, output_dir)
    log.info("Instantiating %s <%s>, diffusion and timestep sampler", network_key, net_cfg._target_)
    diffusion = instantiate(cfg.diffusion)
    module = make_module(
        instantiate(net_cfg),
        diffusion=diffusion,
        timestep_sampler=instantiate(cfg.timestep_sampler, diffusion),
        optimizer=instantiate(cfg.optimizer),
        lr_schedule=instantiate(cfg.lr_schedule) if cfg.get("lr_schedule") else None,
        config={k: plain[k] for k in (network_key, "diffusion", "data")},
    )
    for logger in trainer.loggers:
        logger.log_hyperparams({**plain, "seed": seed})
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    log.info("Starting training%s", f" from {ckpt_path}" if ckpt_path else "")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    log.info("Done: checkpoints in %s", output_dir / "checkpoints")
    return trainer


def train(cfg: DictConfig) -> pl.Trainer:
    """Train the diffusion model ``cfg.model`` (a UNet) on ``cfg.data``."""
    return fit(cfg, "model", lambda unet, **kw: DiffusionModule(unet=unet, **kw))


def train_classifier(cfg: DictConfig) -> pl.Trainer:
    """Train the noisy classifier ``cfg.classifier`` on ``cfg.data``."""
    return fit(cfg, "classifier", lambda classifier, **kw: ClassifierModule(classifier=classifier, **kw))


def train_superres(cfg: DictConfig) -> pl.Trainer:
    """Train the upsampler ``cfg.model`` on ``cfg.data`` (low-res inputs of ``cfg.model.low_res_size`` px)."""
    return fit(cfg, "model", lambda unet, **kw: SuperResModule(unet=unet, **kw))
