"""Sample a trained ADM into OpenAI's .npz format (sharded, resumable, split over devices) and score it.

    python scripts/sample.py ckpt=runs/train/.../checkpoints/last.ckpt num_samples=64
    python scripts/sample.py ckpt=... classifier_ckpt=... guidance.scale=2 sampler=ddim sampler.steps=25
    python scripts/sample.py openai_ckpt=64x64_diffusion.pt model=adm_u_64 \\
        classifier_ckpt=64x64_classifier.pt classifier=adm_cls_64 guidance.scale=1.0 trainer.devices=8
    python scripts/sample.py openai_ckpt=x.pt 'flags="--attention_resolutions 32,16,8 --class_cond True ..."'
    python scripts/sample.py -m guidance.scale=0,1,4 ckpt=... classifier_ckpt=...   # + summary.csv / .png
    python scripts/sample.py ckpt=... logger=wandb tags=[adm64,baseline]   # + an (offline) W&B run

Every process builds the networks, takes its shards (shard k goes to rank k % world_size), and writes them as
it goes; rank 0 then merges them into ``samples_NxHxWxC.npz``, draws ``grid.png`` and scores the set when
``evaluate.reference`` or ``evaluate.domain_ckpt`` is given (``metrics.json``). With ``logger=wandb`` the
scores, the settings, a table of the first ``table_rows`` samples and the grid go to a W&B run of the run
directory (:mod:`adm.tracking`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from lightning_fabric import Fabric
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from adm import tracking
from adm.diffusion import check_classifier_fits
from adm.io.checkpoint import CONFIG_KEY, load_checkpoint
from adm.io.files import atomic_write_json, file_sha256
from adm.io.grid import label_captions, save_grid
from adm.io.images import to_uint8
from adm.io.npz import read_images, write_pngs
from adm.io.safe_load import safe_torch_load
from adm.io.shards import ShardLayout, ShardStore, merge_shards
from adm.nn import load_state_dict_checked
from adm.sampling import ClassifierFreeGuidance, Guidance, LabelPlan, draw_images, sample_seed

log = logging.getLogger("sample")

# Sampling flags of OpenAI's scripts that are settings of this script instead.
_SAMPLING_FLAGS = {
    "timestep_respacing": "sampler.steps (+ sampler.spacing)",
    "use_ddim": "sampler=ddim",
    "classifier_scale": "guidance.scale",
    "num_samples": "num_samples",
    "batch_size": "batch_size",
    "clip_denoised": "sampler.clip_denoised",
    "model_path": "openai_ckpt",
    "classifier_path": "classifier_ckpt",
}


@dataclass
class Loaded:
    """A network with what identifies it: `fingerprint` (compared on resume) and `info` (recorded only)."""

    network: nn.Module
    fingerprint: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    diffusion: Any = None
    diffusion_config: dict[str, Any] | None = None
    null_label: int | None = None  # trained with label dropout: the label meaning "no class" (guidance=cfg)


# --- networks --------------------------------------------------------------------------------------------
def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _openai_state(path: str, arg: str) -> dict[str, torch.Tensor]:
    state = safe_torch_load(path)
    if isinstance(state, dict) and CONFIG_KEY in state:
        raise ValueError(
            f"{path} is one of our training checkpoints (it has '{CONFIG_KEY}'); pass it as "
            f"{'ckpt' if arg == 'openai_ckpt' else 'classifier_ckpt'}={path} without a preset or flags"
        )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{arg}={path} is not a plain state dict ({{name: tensor}}) as OpenAI's weights are")
    return state


def _diffusion_from_flags(values: dict[str, Any]) -> dict[str, Any]:
    """Our diffusion config for OpenAI's flags (adm.compat holds the one flag -> process mapping)."""
    from adm.compat.diffusion import diffusion_config

    return diffusion_config(values)


def _parse_openai_flags(flags: str, arg: str) -> dict[str, Any]:
    from adm.compat.flags import parse_flags

    values = parse_flags(flags)
    ignored = {k: v for k, v in values.items() if k in _SAMPLING_FLAGS}
    if ignored:
        hints = ", ".join(f"--{k} -> {_SAMPLING_FLAGS[k]}" for k in ignored)
        raise ValueError(f"{arg} holds sampling flags, which are settings of this script instead: {hints}")
    return values


def load_model(cfg: DictConfig) -> Loaded:
    """The diffusion network and process: ``ckpt=`` (ours) or ``openai_ckpt=`` + ``model=`` / ``flags=``."""
    if (cfg.ckpt is None) == (cfg.openai_ckpt is None):
        raise ValueError(
            "give exactly one of ckpt=PATH (one of our training checkpoints) or openai_ckpt=PATH (OpenAI's "
            "weights, with model=<preset> or flags=...)"
        )
    if cfg.ckpt is not None:
        if cfg.get("model") is not None or cfg.flags is not None:
            raise ValueError(
                "ckpt=... describes its own network: drop model=... / flags=... (they are for openai_ckpt)"
            )
        try:
            trained = load_checkpoint(cfg.ckpt, ema=bool(cfg.use_ema))
        except ValueError as err:
            if "not an adm training checkpoint" in str(err):
                raise ValueError(
                    f"ckpt={cfg.ckpt} is not one of our training checkpoints (no '{CONFIG_KEY}'); for "
                    "OpenAI's released weights use openai_ckpt=PATH model=<preset> (or flags=...)"
                ) from None
            raise
        if trained.kind != "diffusion":
            raise ValueError(f"ckpt={cfg.ckpt} holds a noisy classifier; pass it as classifier_ckpt=...")
        classifier_free = trained.config.get("classifier_free") or {}
        return Loaded(
            network=trained.unet,
            diffusion=trained.diffusion,
            diffusion_config=trained.config["diffusion"],
            null_label=classifier_free.get("null_label"),
            fingerprint={"sha256": file_sha256(cfg.ckpt), "weights": trained.weights},
            info={
                "path": str(Path(cfg.ckpt).resolve()),
                "step": trained.step,
                "network": trained.config["model"],
                "class_names": (trained.config.get("data") or {}).get("class_names"),
            },
        )

    path = cfg.openai_ckpt
    if cfg.flags is not None and cfg.get("model") is not None:
        raise ValueError("give model=<preset> or flags=..., not both")
    state = _openai_state(path, "openai_ckpt")
    if cfg.flags is not None:
        from adm.compat.flags import load_openai_checkpoint

        values = _parse_openai_flags(cfg.flags, "flags")
        unet = load_openai_checkpoint(path, values, kind="model")
        diffusion_cfg = _diffusion_from_flags(values)
        network_desc: Any = {"flags": cfg.flags}
    elif cfg.get("model") is not None:
        from adm.config import build_network, preset_hint

        unet = load_state_dict_checked(build_network(_plain(cfg.model)), state, hint=preset_hint)
        diffusion_cfg = _plain(cfg.diffusion)
        network_desc = _plain(cfg.model)
    else:
        from adm.config import fitting_presets

        fits = fitting_presets(state)
        hint = f" (presets that fit these weights: {', '.join(fits)})" if fits else ""
        raise ValueError(f'openai_ckpt={path} needs model=<preset> or flags="--..."{hint}')
    return Loaded(
        network=unet.eval(),
        diffusion=instantiate(diffusion_cfg),
        diffusion_config=diffusion_cfg,
        fingerprint={"sha256": file_sha256(path), "weights": "openai"},
        info={"path": str(Path(path).resolve()), "network": network_desc},
    )


def load_classifier(cfg: DictConfig) -> Loaded | None:
    """The noisy classifier: ``classifier_ckpt=`` (ours, or OpenAI's + ``classifier=`` / flags)."""
    path = cfg.classifier_ckpt
    if path is None:
        if cfg.get("classifier") is not None or cfg.classifier_flags is not None:
            raise ValueError(
                "classifier=... / classifier_flags=... describe OpenAI weights: add classifier_ckpt=PATH"
            )
        return None
    state = safe_torch_load(path)
    fingerprint = {"sha256": file_sha256(path)}
    info: dict[str, Any] = {"path": str(Path(path).resolve())}
    if isinstance(state, dict) and CONFIG_KEY in state:
        del state
        trained = load_checkpoint(path)
        if trained.kind != "classifier":
            raise ValueError(f"classifier_ckpt={path} holds a diffusion model, not a noisy classifier")
        return Loaded(
            network=trained.classifier,
            fingerprint={**fingerprint, "weights": trained.weights},
            info={**info, "step": trained.step, "network": trained.config["classifier"]},
            diffusion=trained.diffusion,
            diffusion_config=trained.config["diffusion"],
        )
    state = _openai_state(path, "classifier_ckpt")
    if cfg.classifier_flags is not None:
        from adm.compat.flags import load_openai_checkpoint

        values = _parse_openai_flags(cfg.classifier_flags, "classifier_flags")
        network = load_openai_checkpoint(path, values, kind="classifier")
        info["network"] = {"flags": cfg.classifier_flags}
    elif cfg.get("classifier") is not None:
        from adm.config import build_network, preset_hint

        network = load_state_dict_checked(build_network(_plain(cfg.classifier)), state, hint=preset_hint)
        info["network"] = _plain(cfg.classifier)
    else:
        from adm.config import fitting_presets

        fits = fitting_presets(state)
        hint = f" (presets that fit these weights: {', '.join(fits)})" if fits else ""
        raise ValueError(
            f"classifier_ckpt={path} holds OpenAI-style weights: add classifier=<preset> or "
            f"classifier_flags=...{hint}"
        )
    return Loaded(network=network.eval(), fingerprint={**fingerprint, "weights": "openai"}, info=info)


def check_classifier(unet: nn.Module, classifier: nn.Module, model: Loaded, guide: Loaded) -> None:
    """The classifier must read the model's images and label space (and, when known, its noise process)."""
    check_classifier_fits(unet, classifier, model_process=model.diffusion, classifier_process=guide.diffusion)


# --- devices and the run ---------------------------------------------------------------------------------
def build_fabric(trainer: dict[str, Any]) -> Fabric:
    """Lightning Fabric from the ``trainer`` settings.

    Several devices or nodes: the processes a cluster started (``srun`` under SLURM, ``torchrun``) join one
    DDP group; started by hand, one process per device is spawned.
    """
    strategy = trainer["strategy"]
    devices = trainer["devices"]
    many = (
        (isinstance(devices, int) and devices > 1) or isinstance(devices, list | tuple) and len(devices) > 1
    )
    if strategy == "auto" and (many or int(trainer["num_nodes"]) > 1):
        launched = (SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1) or (
            TorchElasticEnvironment.detect()
        )
        strategy = "ddp" if launched else "ddp_spawn"
    return Fabric(
        accelerator=trainer["accelerator"],
        devices=devices,
        num_nodes=trainer["num_nodes"],
        strategy=strategy,
        precision=trainer["precision"],
    )


def _sampler_name(sampler_cfg: dict[str, Any]) -> str:
    target = str(sampler_cfg.get("_target_", ""))
    name = target.rsplit(".", 1)[-1]
    return name[: -len("_sample")] if name.endswith("_sample") else name


def guidance_name(guidance_cfg: dict[str, Any] | None) -> str | None:
    """The kind of a ``guidance`` config: "classifier", "cfg" (classifier-free) or None."""
    if not guidance_cfg:
        return None
    target = str(guidance_cfg.get("_target_", "")).rsplit(".", 1)[-1]
    return {"ClassifierGuidance": "classifier", "ClassifierFreeGuidance": "cfg"}.get(target, target)


def _settings(cfg: dict[str, Any]) -> dict[str, Any]:
    sampler = {k: v for k, v in (cfg["sampler"] or {}).items() if k != "_partial_"}
    guidance = {k: v for k, v in (cfg["guidance"] or {}).items() if k != "_partial_"}
    return {"sampler": sampler, "guidance": guidance}


class ShardDrawer:
    """Sample indices -> images: ``draw(indices) -> (uint8 (n, H, W, C), labels int64 (n,) | None)``.

    Sample i gets the noise seed ``sample_seed(seed, i)`` and the label ``labels([i])``, goes through
    :func:`adm.sampling.draw_images` and is quantised as OpenAI's sample files are (``to_uint8``), so it is
    the image ``ADM.infer`` and the training-time sample grid draw for the same seed, index, label, sampler.

    Args:
        unet: the diffusion network (labels reach it only when it is class-conditional).
        diffusion: its (un-respaced) process; sampler: the sampler, options bound.
        guidance: e.g. ``ClassifierGuidance(classifier, scale)``, or None.
        labels: the labels by index, or None for unlabelled samples (unconditional, unguided).
        seed: the run's seed. device: where to sample. autocast: e.g. Fabric's ``autocast``, or None.
    """

    def __init__(
        self,
        *,
        unet: nn.Module,
        diffusion: Any,
        sampler: Callable[..., torch.Tensor],
        guidance: Guidance | None,
        labels: LabelPlan | None,
        seed: int,
        device: torch.device | str,
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        if unet.num_classes is not None and labels is None:
            raise ValueError("a class-conditional network needs labels (a LabelPlan)")
        self.unet, self.diffusion, self.sampler, self.guidance = unet.eval(), diffusion, sampler, guidance
        self.labels, self.seed, self.device, self.autocast = labels, int(seed), torch.device(device), autocast

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the images written."""
        return (self.unet.image_size, self.unet.image_size, self.unet.in_channels)

    def __call__(self, indices: range) -> tuple[np.ndarray, np.ndarray | None]:
        labels = self.labels(indices) if self.labels is not None else None
        x_0 = draw_images(
            self.unet,
            self.diffusion,
            self.sampler,
            [sample_seed(self.seed, i) for i in indices],
            labels=labels,
            guidance=self.guidance,
            device=self.device,
            autocast=self.autocast,
        )
        return to_uint8(x_0), labels


def generate_shards(
    store: ShardStore,
    draw: Callable[[range], tuple[np.ndarray, np.ndarray | None]],
    *,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    labels: Callable[[range], np.ndarray | None] | None = None,
    progress: bool = True,
    png_dir: str | os.PathLike | None = None,
) -> dict[str, int]:
    """Generate this rank's missing shards (shard k belongs to rank k % world_size); valid ones are skipped.

    Args:
        store: the run's files (``store.prepare()`` must have run, on rank 0).
        draw: ``draw(indices) -> (images uint8 (n, H, W, C), labels (n,) | None)``.
        batch_size: samples per call of `draw` (per device); a batch never straddles two shards, so every
            shard is cut into the same batches whatever the device count.
        rank, world_size: this process among all sampling processes.
        labels: the run's labels by index (checked against finished shards); defaults to ``draw.labels``.
        progress: show a progress bar (rank 0).
        png_dir: also write every generated image as ``{index:06d}.png`` there.
    Returns:
        {"generated": shards written, "skipped": shards already done} for this rank.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if labels is None:
        labels = getattr(draw, "labels", None)
    mine = store.layout.shards_of(rank, world_size)
    todo = []
    for k in mine:
        problem = store.check_shard(k, store.expected_labels(k, labels))
        if problem is None:
            continue
        if problem != "missing":
            log.warning("regenerating %s: %s", store.shard_path(k), problem)
        todo.append(k)
    skipped = len(mine) - len(todo)
    if skipped:
        log.info("rank %d: %d of its %d shards are already done, skipped", rank, skipped, len(mine))
    total = sum(len(store.layout.indices(k)) for k in todo)
    bar = tqdm(
        total=total,
        desc=f"sampling (rank {rank})",
        unit="img",
        disable=not progress or rank != 0,
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    try:
        for k in todo:
            indices = store.layout.indices(k)
            image_parts, label_parts = [], []
            for first in range(indices.start, indices.stop, batch_size):
                batch = range(first, min(first + batch_size, indices.stop))
                images, batch_labels = draw(batch)
                image_parts.append(images)
                if batch_labels is not None:
                    label_parts.append(batch_labels)
                bar.update(len(batch))
            images = np.concatenate(image_parts)
            shard_labels = np.concatenate(label_parts) if label_parts else None
            store.write_shard(k, images, shard_labels)
            if png_dir is not None:
                write_pngs(Path(png_dir), indices, images, shard_labels)
    finally:
        bar.close()
    if total:
        seconds = time.perf_counter() - start
        rate = total / max(seconds, 1e-9)
        log.info("rank %d: %d samples in %.1f s (%.2f img/s)", rank, total, seconds, rate)
    return {"generated": len(todo), "skipped": skipped}


def labels_by_name(labels: Any, class_names: list[str] | None) -> Any:
    """``labels=`` with class names (``labels=seven``, ``labels=[zero,seven]``) as class indices, using the
    names the checkpoint records (``data.class_names``); indices and "random" pass through unchanged."""

    def index(value: Any) -> Any:
        if not isinstance(value, str) or value == "random" or value.strip().lstrip("-").isdigit():
            return value
        if not class_names:
            raise ValueError(
                f"labels={value}: this model records no class names; give class indices (e.g. labels=3)"
            )
        if value not in class_names:
            raise ValueError(f"labels={value}: no class of that name; the classes are {class_names}")
        return class_names.index(value)

    return [index(v) for v in labels] if isinstance(labels, list) else index(labels)


def build_run(fabric: Fabric, cfg: dict[str, Any]) -> tuple[ShardStore, ShardDrawer]:
    """Load the networks on this process's device and describe the run's files."""
    dcfg = DictConfig(cfg)
    model = load_model(dcfg)
    guide = load_classifier(dcfg)
    unet = model.network.to(fabric.device)
    guidance = None
    settings = _settings(cfg)
    scale = float((cfg["guidance"] or {}).get("scale", 0.0))
    factory = instantiate(dcfg.guidance) if cfg["guidance"] is not None else None
    classifier_free = getattr(factory, "func", None) is ClassifierFreeGuidance
    if model.null_label is not None:
        # Trained with a null class: sampled as a network of the data's classes (labels never draw the null
        # one), guided by guidance=cfg at its scale, else the plain conditional model.
        cfg_scale = scale if classifier_free else 0.0
        unet = ClassifierFreeGuidance(cfg_scale, model.null_label).wrap_network(unet)
    elif classifier_free and scale != 0:
        raise ValueError(
            f"guidance=cfg guidance.scale={scale} needs a model trained with a null label (label_dropout > "
            "0, e.g. scripts/train.py experiment=demo_cfg); this one has none: use guidance=classifier with "
            "classifier_ckpt=PATH"
        )
    if classifier_free and guide is not None:
        # Kept working so that one sweep can cover guidance=classifier,cfg with a classifier_ckpt for both.
        log.warning("guidance=cfg uses no classifier: classifier_ckpt=%s is ignored", cfg["classifier_ckpt"])
        guide = None
    if not classifier_free and guide is not None:
        check_classifier(unet, guide.network, model, guide)
        classifier = guide.network.to(fabric.device)
        guidance = factory(classifier) if factory is not None else None
    elif not classifier_free and scale != 0:
        raise ValueError(f"guidance.scale={scale} needs a noisy classifier: add classifier_ckpt=PATH")
    sampler = instantiate(dcfg.sampler)

    num_classes = (
        unet.num_classes
        if unet.num_classes is not None
        else (guide.network.num_classes if guide is not None else None)
    )
    plan = labels_by_name(_plain(cfg["labels"]), model.info.get("class_names"))
    labels = LabelPlan(plan, num_classes, cfg["seed"]) if num_classes is not None else None
    if labels is None and cfg["labels"] not in ("random", None):
        raise ValueError(f"labels={cfg['labels']} but the model is unconditional and no classifier guides it")
    drawer = ShardDrawer(
        unet=unet,
        diffusion=model.diffusion,
        sampler=sampler,
        guidance=guidance,
        labels=labels,
        seed=cfg["seed"],
        device=fabric.device,
        autocast=fabric.autocast,
    )
    fingerprint = {
        "model": model.fingerprint,
        "classifier": guide.fingerprint if guide is not None else None,
        **settings,
        "labels": labels.describe() if labels is not None else None,
        "seed": cfg["seed"],
        "shard_size": cfg["shard_size"],
        "precision": str(cfg["trainer"]["precision"]),
    }
    info = {
        "model": model.info,
        "classifier": guide.info if guide is not None else None,
        "num_classes": num_classes,
        "batch_size": cfg["batch_size"],
        "world_size": fabric.world_size,
        "device": str(fabric.device),
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


def _merged_is_complete(store: ShardStore) -> bool:
    path = store.merged_path
    if not path.is_file():
        return False
    try:
        images, _ = read_images(path, 0)
    except Exception:  # noqa: BLE001 - any unreadable file is simply redone
        return False
    return images.shape[1:] == store.image_shape


def run_rank(fabric: Fabric, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """One sampling process: its shards, then (rank 0) merge, grid and scores. Returns rank 0's summary."""
    if not logging.getLogger().handlers:  # a spawned process: Hydra's logging lives in the parent only
        level = logging.INFO if fabric.global_rank == 0 else logging.WARNING
        logging.basicConfig(level=level, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    store, drawer = build_run(fabric, cfg)
    done = False
    if fabric.global_rank == 0:
        check_scoring(cfg, drawer.image_shape)  # before the run records its settings or draws anything
        store.prepare()
        done = _merged_is_complete(store)
    done = fabric.broadcast(done, src=0)
    counts = {"generated": 0, "skipped": store.layout.num_shards}
    if not done:
        png_dir = Path(cfg["out_dir"]) / "png" if cfg["save_png"] else None
        started = time.perf_counter()
        counts = generate_shards(
            store,
            drawer,
            batch_size=cfg["batch_size"],
            rank=fabric.global_rank,
            world_size=fabric.world_size,
            progress=cfg["progress"],
            png_dir=png_dir,
        )
        if counts["generated"] and not counts["skipped"]:  # this run drew every image: time per image
            elapsed = time.perf_counter() - started
            counts["seconds_per_image"] = elapsed * fabric.world_size / cfg["num_samples"]
    fabric.barrier()
    if fabric.global_rank != 0:
        return None
    if done:
        log.info("%s is complete already: nothing to sample", store.merged_path)
    else:
        merge_shards(store, delete_shards=not cfg["keep_shards"])
        log.info("wrote %s", store.merged_path)
    out_dir = Path(cfg["out_dir"])
    images, grid_labels = read_images(store.merged_path, cfg["grid_size"])
    class_names = (store.info.get("model") or {}).get("class_names")
    captions = None
    if cfg["grid_captions"] and grid_labels is not None:
        captions = label_captions(grid_labels, class_names)  # each image's class name (or index) under it
    save_grid(images, out_dir / "grid.png", nrow=cfg["grid_nrow"], captions=captions)
    result: dict[str, Any] = {
        "samples": str(store.merged_path),
        "grid": str(out_dir / "grid.png"),
        "generated_shards": counts["generated"],
        "skipped_shards": counts["skipped"],
    }
    if "seconds_per_image" in counts:
        result["seconds_per_image"] = counts["seconds_per_image"]
    metrics = score(cfg, store, fabric.device, seconds_per_image=counts.get("seconds_per_image"))
    if metrics is not None:
        result["metrics"] = metrics
    return result


def check_scoring(cfg: dict[str, Any], image_shape: tuple[int, int, int]) -> None:
    """What scoring will need, checked before sampling: the Inception weights (a reference without a domain
    classifier), a reference of the samples' size and channels. An image folder as ``evaluate.reference``
    becomes its cached reference batch at the samples' size (``evaluate.reference_batch``)."""
    ecfg = cfg["evaluate"]
    if ecfg["reference"] is None:
        return
    from adm.metrics.evaluate import check_same_images
    from adm.metrics.inception import resolve_inception_weights
    from adm.metrics.reference import load_reference
    from adm.recipes.evaluate import resolve_reference

    if ecfg["domain_ckpt"] is None:
        resolve_inception_weights(ecfg["inception_weights"])  # FileNotFoundError saying where to put them
    ecfg["reference_batch"] = resolve_reference(ecfg["reference"], image_shape)
    check_same_images(np.zeros((1, *image_shape), dtype=np.uint8), load_reference(ecfg["reference_batch"]))


def score(
    cfg: dict[str, Any], store: ShardStore, device: torch.device, seconds_per_image: float | None = None
) -> dict[str, Any] | None:
    """Score the merged samples if ``evaluate.reference`` / ``.domain_ckpt`` is set -> metrics.json.

    ``seconds_per_image``: wall time of drawing them (when this run drew them all), recorded alongside.
    """
    ecfg = cfg["evaluate"]
    if ecfg["reference"] is None and ecfg["domain_ckpt"] is None:
        return None
    from adm.metrics import build_extractor, evaluate
    from adm.metrics.inception import default_cache_dir

    kind = "domain" if ecfg["domain_ckpt"] is not None else "inception"
    extractor = build_extractor(
        kind, inception_weights=ecfg["inception_weights"], domain_ckpt=ecfg["domain_ckpt"], device=device
    )
    metrics = ecfg["metrics"]
    if metrics is None and ecfg["reference"] is None:
        metrics = ["accuracy"]  # a domain classifier alone: does guidance give the class asked for?
    start = time.perf_counter()
    results = evaluate(
        store.merged_path,
        ecfg.get("reference_batch", ecfg["reference"]),
        extractor,
        list(metrics) if metrics is not None else None,
        batch_size=ecfg["batch_size"],
        progress=cfg["progress"],
        cache_dir=default_cache_dir() if kind == "inception" else None,  # a sweep computes the reference once
    )
    sampler = store.fingerprint["sampler"]
    record = {
        **results,
        "guidance_scale": float((cfg["guidance"] or {}).get("scale", 0.0)),
        "guidance": guidance_name(cfg["guidance"]),
        "sampler": _sampler_name(sampler),
        "steps": sampler.get("steps"),
        "eta": sampler.get("eta"),
        "seconds_per_image": seconds_per_image,
        "seed": cfg["seed"],
        "feature_extractor": kind,
        "reference": ecfg["reference"],
        "domain_ckpt": ecfg["domain_ckpt"],
        "samples": str(store.merged_path),
    }
    path = Path(cfg["out_dir"]) / "metrics.json"
    atomic_write_json(path, record)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float))
    log.info("scores (%s features, %.1f s): %s -> %s", kind, time.perf_counter() - start, shown, path)
    return record


def run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings of a sample job as a W&B run's config (flat, to filter and group runs by)."""
    sampler = cfg["sampler"] or {}
    return {
        "sampler": _sampler_name(sampler),
        "steps": sampler.get("steps"),
        "eta": sampler.get("eta"),
        "guidance": guidance_name(cfg["guidance"]),
        "guidance_scale": float((cfg["guidance"] or {}).get("scale", 0.0)),
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
        return fabric.launch(run_rank, plain)
    with tracking.open_run(wandb, plain["out_dir"], job_type="sample", config=run_config(plain)) as run:
        result = fabric.launch(run_rank, plain)
        tracking.log_sample_job(run, result, grid_size=plain["grid_size"], table_rows=plain["table_rows"])
    return result
