"""Training recipes: build data / network / process / module from a composed config, then fit.

One recipe (:func:`fit`) serves the diffusion model (:func:`train`), the noisy classifier
(:func:`train_classifier`) and the upsampler (:func:`train_superres`); ``scripts/train*.py`` and the
``adm-train*`` console scripts call them (``adm.cli``).

    python scripts/train.py experiment=smoke                                  # seconds, CPU
    python scripts/train.py model=adm_u_64 data=imagenet64 trainer=ddp trainer.devices=8 batch_size=2048
    python scripts/train.py resume=DIR        # continue the run in DIR: its overrides, its last checkpoint
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import get_class
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.utilities import rank_zero_only

from adm.config import preset_hint
from adm.data import ImageFolderDataModule, folder_values
from adm.errors import MissingPathError, UsageError
from adm.io.init_weights import check_resume, load_init_weights
from adm.lit import ClassifierModule, DiffusionModule
from adm.lit.common import per_device_batch_size
from adm.lit.superres import SuperResModule
from adm.recipes.runs import (
    check_checkpoint_matches,
    check_saved_config,
    cluster_plugins,
    find_checkpoint,
    preflight,
    trainer_kwargs,
)
from adm.tracking import define_training_metrics, wandb_run_id

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
    plugins = cluster_plugins()  # SLURM under the submitit launcher (adm.recipes.runs)
    if plugins:
        plugins = [*instantiate(cfg.trainer.get("plugins") or []), *plugins]
    extra = {"plugins": plugins} if plugins else {}
    trainer = instantiate(trainer_kwargs(cfg.trainer), callbacks=callbacks, logger=loggers or False, **extra)
    define_training_metrics(trainer.loggers)  # W&B: the summary keeps the best FID (min), accuracy (max) ...
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


def resolve_auto_data(cfg: DictConfig) -> None:
    """``data.num_classes: auto`` / ``data.channels: auto`` (``data=imagefolder``'s defaults): read them from
    the image folder once, before anything is built, and put the integers into `cfg`, so that the networks
    (``${data.num_classes}``), label dropout, the saved config and the checkpoints never see ``auto``. A class
    count given is checked against the folder at the same time (:func:`adm.data.folder_values`)."""
    data = cfg.data
    auto = [key for key in ("num_classes", "channels") if data.get(key) == "auto"]
    if not auto:
        return
    if not issubclass(get_class(data._target_), ImageFolderDataModule):
        raise UsageError(
            f"data.{auto[0]}=auto is read from an image folder (data=imagefolder), and <{data._target_}> "
            f"reads none: give data.{auto[0]}=N"
        )
    if OmegaConf.is_missing(data, "path"):
        raise UsageError("data.path is not set: give data.path=/path/to/images (one sub-folder per class)")
    found = folder_values(data.path, labels=data.labels, num_classes=data.num_classes, channels=data.channels)
    read = []
    with open_dict(cfg):
        if "num_classes" in auto:
            data.num_classes = len(found.class_names)
            shown = ", ".join(found.class_names[:12]) + (", ..." if len(found.class_names) > 12 else "")
            read.append(f"num_classes={data.num_classes} ({shown})")
        if "channels" in auto:
            data.channels = found.channels
            read.append(f"channels={data.channels} ({'grey' if data.channels == 1 else 'RGB'})")
    log.info("Read from the folder %s: data.%s", data.path, ", data.".join(read))


def save_resolved_config(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Print the resolved config, write it to output_dir/resolved_config.yaml; return it as a plain dict.

    A run directory keeps its first config: an existing resolved_config.yaml is never rewritten, and one
    that trains something else raises a UsageError (a continuation may change how long it runs and how
    often it saves: ``adm.recipes.runs.CONTINUATION_KEYS``).
    """
    plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    text = OmegaConf.to_yaml(plain)
    write = check_saved_config(text, output_dir)
    if rank_zero_only.rank == 0:
        if write:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "resolved_config.yaml").write_text(text)
        print(text)
    return plain


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """The checkpoint to resume from, or None to start.

    - None: start; refused (UsageError) when output_dir already holds a checkpoint of this run, unless
      this is a requeued SLURM job (``SLURM_RESTART_COUNT`` > 0), which continues from it as Lightning does;
    - "last": the newest of output_dir/checkpoints/last.ckpt and output_dir/hpc_ckpt_<n>.ckpt (written
      on a SLURM pre-emption); none there is a UsageError;
    - "auto": as "last" when there is one, else start (the same command starts and continues a run);
    - a path: that file.
    """
    found = find_checkpoint(output_dir)
    if ckpt_path in (None, "") and found is not None and int(os.environ.get("SLURM_RESTART_COUNT", 0)) > 0:
        log.info("Requeued SLURM job: continuing from %s", found)
        return str(found)
    if ckpt_path in (None, ""):
        if found is not None:
            raise UsageError(
                f"{output_dir} already holds {found.name} of this run: continue it with ckpt_path=last (or "
                "ckpt_path=auto), or train in a new directory (drop hydra.run.dir, or give a new one)"
            )
        return None
    if ckpt_path in ("last", "auto"):
        if found is None and ckpt_path == "last":
            raise UsageError(
                f"ckpt_path=last: no checkpoint in {output_dir} (checkpoints/last.ckpt or hpc_ckpt_*.ckpt); "
                "give the run directory that holds one (resume=DIR or hydra.run.dir=DIR), or ckpt_path=auto "
                "to start when there is none"
            )
        if found is None:
            log.info("ckpt_path=auto: no checkpoint in %s yet, starting from scratch", output_dir)
        return None if found is None else str(found)
    if not Path(ckpt_path).is_file():
        raise MissingPathError(
            f"ckpt_path={ckpt_path} does not exist; give a .ckpt file, ckpt_path=last or ckpt_path=auto"
        )
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
    preflight(cfg)  # GPU, CPU cores, data folder: one UsageError before anything is built
    resolve_auto_data(cfg)  # data.num_classes / data.channels: auto -> the folder's, as integers
    if (cfg.get("logger") or {}).get("wandb") and cfg.logger.wandb.get("id") is None:
        with open_dict(cfg):
            cfg.logger.wandb.id = wandb_run_id(output_dir)  # a resumed run continues the same W&B run
    trainer, datamodule = build_trainer_and_data(cfg)
    net_cfg = cfg[network_key]
    log.info("Instantiating %s <%s>, diffusion and timestep sampler", network_key, net_cfg._target_)
    network = instantiate(net_cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt_path is not None:
        check_resume(ckpt_path, trainer.max_steps)
    # before the run directory records its config: a wrong init_ckpt leaves nothing to clash with the rerun
    init_from_weights(cfg, network_key, network, resuming=ckpt_path is not None)
    plain = save_resolved_config(cfg, output_dir)
    diffusion = instantiate(cfg.diffusion)
    if ckpt_path is not None:
        check_checkpoint_matches(ckpt_path, plain, network_key)
    module = make_module(
        network,
        diffusion=diffusion,
        timestep_sampler=instantiate(cfg.timestep_sampler, diffusion),
        optimizer=instantiate(cfg.optimizer),
        lr_schedule=instantiate(cfg.lr_schedule) if cfg.get("lr_schedule") else None,
        config=checkpoint_config(plain, network_key, datamodule),
    )
    for logger in trainer.loggers:
        logger.log_hyperparams({**plain, "seed": seed})
    log.info("Starting training%s", f" from {ckpt_path}" if ckpt_path else "")
    before = checkpoint_stamps(output_dir / "checkpoints")
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    log_written(output_dir / "checkpoints", before, trainer.global_step)
    return trainer


def checkpoint_config(plain: dict[str, Any], network_key: str, datamodule: Any) -> dict[str, Any]:
    """The config every checkpoint carries: network, process and data, the data with its class names
    (``data.class_names``, index order) so that sampling can ask for classes by name."""
    config = {k: plain[k] for k in (network_key, "diffusion", "data")}
    names = getattr(datamodule, "class_names", None)
    if names is not None:
        config["data"] = {**config["data"], "class_names": [str(n) for n in names]}
    return config


def init_from_weights(cfg: DictConfig, network_key: str, network: Any, resuming: bool) -> None:
    """``init_ckpt=PATH``: load a released / trained network's weights into `network` (a new run: step 0).

    ``init_ema`` (default true) picks the EMA weights of one of our checkpoints, false the raw ones. A resumed
    run (``ckpt_path``) takes its weights from the resumed checkpoint, so init_ckpt is not read then.
    """
    init_ckpt = cfg.get("init_ckpt")
    if cfg.get("init_required") and init_ckpt in (None, ""):
        raise ValueError(
            "init_ckpt is not set: this experiment fine-tunes existing weights; give init_ckpt=PATH (an "
            "OpenAI released .pt file such as 64x64_diffusion.pt, or a .ckpt of ours)"
        )
    if init_ckpt in (None, ""):
        return
    if resuming:
        log.info("Resuming: the weights come from ckpt_path, init_ckpt=%s is not read", init_ckpt)
        return
    ema = cfg.get("init_ema", True)
    load_init_weights(network, init_ckpt, section=network_key, ema=ema, hint=preset_hint)


def checkpoint_stamps(checkpoint_dir: Path) -> dict[str, int]:
    """``{file name: modification time (ns)}`` of the checkpoints in `checkpoint_dir`."""
    return {p.name: p.stat().st_mtime_ns for p in checkpoint_dir.glob("*.ckpt") if p.is_file()}


@rank_zero_only
def log_written(checkpoint_dir: Path, before: dict[str, int], step: int) -> None:
    """Log the checkpoints this run wrote (new or rewritten since `before`), or that it wrote none."""
    now = checkpoint_stamps(checkpoint_dir)
    written = sorted(name for name, stamp in now.items() if before.get(name) != stamp)
    if written:
        log.info("Done at step %d: wrote %s in %s", step, ", ".join(written), checkpoint_dir)
    else:
        log.info("Done at step %d: no checkpoint was written (nothing trained, or no checkpoint saver)", step)


def train(cfg: DictConfig) -> pl.Trainer:
    """Train the diffusion model ``cfg.model`` (a UNet) on ``cfg.data``; ``cfg.module`` holds the module's own
    settings (``conf/module/diffusion.yaml``: ``label_dropout`` for classifier-free guidance)."""
    settings = OmegaConf.to_container(cfg.module, resolve=True) if cfg.get("module") else {}
    return fit(cfg, "model", lambda unet, **kw: DiffusionModule(unet=unet, **settings, **kw))


def train_classifier(cfg: DictConfig) -> pl.Trainer:
    """Train the noisy classifier ``cfg.classifier`` on ``cfg.data``."""
    return fit(cfg, "classifier", lambda classifier, **kw: ClassifierModule(classifier=classifier, **kw))


def train_superres(cfg: DictConfig) -> pl.Trainer:
    """Train the upsampler ``cfg.model`` on ``cfg.data`` (low-res inputs of ``cfg.model.low_res_size`` px)."""
    return fit(cfg, "model", lambda unet, **kw: SuperResModule(unet=unet, **kw))
