"""Sample a trained ADM into OpenAI's .npz format (sharded, resumable, split over devices) and score it.

    python scripts/sample.py ckpt=runs/train/.../checkpoints/last.ckpt num_samples=64
    python scripts/sample.py ckpt=... classifier_ckpt=... guidance.scale=2 sampler=ddim sampler.steps=25
    python scripts/sample.py openai_ckpt=64x64_diffusion.pt model=adm_u_64 \\
        classifier_ckpt=64x64_classifier.pt classifier=adm_cls_64 guidance.scale=1.0 trainer.devices=8
    python scripts/sample.py openai_ckpt=x.pt 'flags="--attention_resolutions 32,16,8 --class_cond True ..."'
    python scripts/sample.py -m guidance.scale=0,1,4 ckpt=... classifier_ckpt=...   # + summary.csv / .png
    python scripts/sample.py ckpt=... logger=wandb tags=[adm64,baseline]   # + an (offline) W&B run

The networks come through the weights door (:func:`adm.weights.load_weights`) into an ``adm.ADM``, which
decides the guidance (:meth:`adm.ADM.plan`) and draws every image, as ``ADM.infer`` does. The run itself
(shards, devices, merge, grid, scores) is :mod:`adm.recipes.sharded`. With ``logger=wandb`` the scores, the
settings, a table of the first ``table_rows`` samples and the grid go to a W&B run of the run directory
(:mod:`adm.tracking`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from lightning_fabric import Fabric
from omegaconf import DictConfig, OmegaConf

from adm import tracking
from adm.io.images import to_uint8
from adm.io.shards import ShardLayout, ShardStore
from adm.pipeline import ADM
from adm.recipes.sharded import build_fabric, run_rank
from adm.sampling import GuidancePlan, LabelPlan, describe_sampler, labels_by_name, sample_seed
from adm.weights import Weights, load_weights

log = logging.getLogger("sample")


# --- networks --------------------------------------------------------------------------------------------
def load_model(cfg: dict[str, Any]) -> Weights:
    """The diffusion network and process: ``ckpt=`` (ours) or ``openai_ckpt=`` + ``model=`` / ``flags=``."""
    if (cfg["ckpt"] is None) == (cfg["openai_ckpt"] is None):
        raise ValueError(
            "give exactly one of ckpt=PATH (one of our training checkpoints) or openai_ckpt=PATH (OpenAI's "
            "weights, with model=<preset> or flags=...)"
        )
    if cfg["ckpt"] is not None:
        if cfg.get("model") is not None or cfg["flags"] is not None:
            raise ValueError(
                "ckpt=... describes its own network: drop model=... / flags=... (they are for openai_ckpt)"
            )
        return load_weights(cfg["ckpt"], kind="diffusion", source="adm", ema=bool(cfg["use_ema"]))
    return load_weights(
        cfg["openai_ckpt"],
        kind="diffusion",
        source="openai",
        preset=cfg.get("model"),
        flags=cfg["flags"],
        diffusion_config=cfg.get("diffusion") if cfg.get("model") is not None else None,
    )


def load_classifier(cfg: dict[str, Any]) -> Weights | None:
    """The noisy classifier: ``classifier_ckpt=`` (ours, or OpenAI's + ``classifier=`` / flags), or None."""
    if cfg["classifier_ckpt"] is None:
        if cfg.get("classifier") is not None or cfg["classifier_flags"] is not None:
            raise ValueError(
                "classifier=... / classifier_flags=... describe OpenAI weights: add classifier_ckpt=PATH"
            )
        return None
    return load_weights(
        cfg["classifier_ckpt"], kind="classifier", preset=cfg.get("classifier"), flags=cfg["classifier_flags"]
    )


def guidance_setting(cfg: dict[str, Any]) -> tuple[str | None, float]:
    """(kind, scale) of the ``guidance`` settings (``guidance=null``: unguided)."""
    guidance = cfg["guidance"] or {}
    return guidance.get("kind"), guidance.get("scale", 0.0)


class ShardDrawer:
    """Sample indices -> images: ``draw(indices) -> (uint8 (n, H, W, C), labels int64 (n,) | None)``.

    Sample i gets the noise seed ``sample_seed(seed, i)`` and the label ``labels([i])``, is drawn by
    :meth:`adm.ADM.draw` with the run's guidance plan and quantised as OpenAI's sample files are
    (``to_uint8``), so it is the image ``ADM.infer`` and the training-time sample grid draw for the same seed,
    index, label, sampler.

    Args:
        model: the ADM (its networks on `device`). plan: its guidance plan (``model.plan(kind, scale)``).
        sampler: the sampler, options bound (a partial of a function of ``adm.sampling.SAMPLERS``).
        labels: the labels by index, or None for unlabelled samples (unconditional, unguided).
        seed: the run's seed. device: where to sample. autocast: e.g. Fabric's ``autocast``, or None.
    """

    def __init__(
        self,
        *,
        model: ADM,
        plan: GuidancePlan,
        sampler: Callable[..., torch.Tensor],
        labels: LabelPlan | None,
        seed: int,
        device: torch.device | str,
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        if plan.network.num_classes is not None and labels is None:
            raise ValueError("a class-conditional network needs labels (a LabelPlan)")
        self.model, self.plan, self.sampler = model.eval(), plan, sampler
        self.labels, self.seed, self.device, self.autocast = labels, int(seed), torch.device(device), autocast

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images written."""
        unet = self.model.unet
        return (unet.image_size, unet.image_size, unet.in_channels)

    @property
    def record(self) -> dict[str, Any]:
        """What the images are drawn with, as metrics.json, the sweep summary and W&B record it."""
        return {**self.plan.record, **describe_sampler(self.sampler)}

    def __call__(self, indices: range) -> tuple[np.ndarray, np.ndarray | None]:
        labels = self.labels(indices) if self.labels is not None else None
        x_0 = self.model.draw(
            [sample_seed(self.seed, i) for i in indices],
            sampler=self.sampler,
            plan=self.plan,
            labels=labels,
            device=self.device,
            autocast=self.autocast,
        )
        return to_uint8(x_0), labels


def build_run(fabric: Fabric, cfg: dict[str, Any]) -> tuple[ShardStore, ShardDrawer]:
    """Load the networks on this process's device and describe the run's files."""
    kind, scale = guidance_setting(cfg)
    model = load_model(cfg)
    guide = None
    if kind == "cfg" and cfg["classifier_ckpt"] is not None:
        # Kept working so that one sweep can cover guidance=classifier,cfg with a classifier_ckpt for both.
        log.warning("guidance=cfg uses no classifier: classifier_ckpt=%s is ignored", cfg["classifier_ckpt"])
    else:
        guide = load_classifier(cfg)
    adm_model = ADM.from_weights(model, guide).to(fabric.device)
    plan = adm_model.plan(kind, scale)
    sampler = instantiate(cfg["sampler"])
    num_classes = adm_model.num_classes
    plan_spec = labels_by_name(cfg["labels"], model.class_names)
    labels = LabelPlan(plan_spec, num_classes, cfg["seed"]) if num_classes is not None else None
    if labels is None and cfg["labels"] not in ("random", None):
        raise ValueError(f"labels={cfg['labels']} but the model is unconditional and no classifier guides it")
    drawer = ShardDrawer(
        model=adm_model,
        plan=plan,
        sampler=sampler,
        labels=labels,
        seed=cfg["seed"],
        device=fabric.device,
        autocast=fabric.autocast,
    )
    fingerprint = {
        "model": model.fingerprint,
        "classifier": guide.fingerprint if guide is not None else None,
        "sampler": {k: v for k, v in cfg["sampler"].items() if k != "_partial_"},
        "guidance": dict(cfg["guidance"] or {}),
        "labels": labels.describe() if labels is not None else None,
        "seed": cfg["seed"],
        "shard_size": cfg["shard_size"],
        "precision": str(cfg["trainer"]["precision"]),
    }
    info = {
        "model": {**model.info, "class_names": model.class_names},
        "classifier": guide.info if guide is not None else None,
        "num_classes": num_classes,
        "batch_size": cfg["batch_size"],
        "world_size": fabric.world_size,
        "device": str(fabric.device),
        "drawn_with": drawer.record,
    }
    store = ShardStore(
        cfg["out_dir"],
        fingerprint=fingerprint,
        layout=ShardLayout(cfg["num_samples"], cfg["shard_size"]),
        image_shape=drawer.image_shape,
        with_labels=labels is not None,
        info=info,
    )
    return store, drawer


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings of a sample job as a W&B run's config (flat, to filter and group runs by)."""
    kind, scale = guidance_setting(cfg)
    return {
        **describe_sampler(instantiate(cfg["sampler"])),
        "guidance": kind,
        "guidance_scale": float(scale),
        "num_samples": cfg["num_samples"],
        "seed": cfg["seed"],
        "labels": cfg["labels"],
        "batch_size": cfg["batch_size"],
        "precision": str(cfg["trainer"]["precision"]),
        "ckpt": cfg["ckpt"] if cfg["ckpt"] is not None else cfg["openai_ckpt"],
        "use_ema": cfg["use_ema"],
        "classifier_ckpt": cfg["classifier_ckpt"],
        "reference": cfg["evaluate"]["reference"],
        "domain_ckpt": cfg["evaluate"]["domain_ckpt"],
        "out_dir": cfg["out_dir"],
    }


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Resolve the config, start the processes, sample; returns rank 0's summary (paths, counts, metrics)."""
    plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    wandb = tracking.wandb_config(plain)
    if wandb is not None:
        tracking.require_wandb()  # logger=wandb without the package: one clear error before anything is drawn
    files = {
        "ckpt": plain["ckpt"],
        "openai_ckpt": plain["openai_ckpt"],
        "classifier_ckpt": plain["classifier_ckpt"],
        "evaluate.domain_ckpt": plain["evaluate"]["domain_ckpt"],
        "evaluate.reference": plain["evaluate"]["reference"],
    }
    for key, value in files.items():
        if value is not None and not Path(value).exists():
            raise FileNotFoundError(f"{key}={value}: no such file")
    fabric = build_fabric(plain["trainer"])
    log.info(
        "sampling %d images into %s (%d device(s), %s)",
        plain["num_samples"],
        plain["out_dir"],
        fabric.world_size,
        plain["trainer"]["precision"],
    )
    if wandb is None or fabric.global_rank != 0:
        return fabric.launch(run_rank, plain, build_run)
    with tracking.open_run(wandb, plain["out_dir"], job_type="sample", config=run_config(plain)) as run:
        result = fabric.launch(run_rank, plain, build_run)
        tracking.log_sample_job(run, result, grid_size=plain["grid_size"], table_rows=plain["table_rows"])
    return result
