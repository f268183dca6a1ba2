"""Sample a trained ADM into OpenAI's .npz format (sharded, resumable, split over devices) and score it.

    python scripts/sample.py ckpt=runs/train/.../checkpoints/last.ckpt num_samples=64
    python scripts/sample.py ckpt=... classifier_ckpt=... guidance.scale=2 sampler=ddim sampler.steps=ddim25
    python scripts/sample.py openai_ckpt=64x64_diffusion.pt model=adm_u_64 \\
        classifier_ckpt=64x64_classifier.pt classifier=adm_cls_64 guidance.scale=1.0 trainer.devices=8
    python scripts/sample.py openai_ckpt=x.pt 'flags="--attention_resolutions 32,16,8 --class_cond True ..."'
    python scripts/sample.py -m guidance.scale=0,1,4 ckpt=... classifier_ckpt=...   # + summary.csv / .png

Every process builds the networks, takes its shards (shard k goes to rank k % world_size), and writes them as
it goes; rank 0 then merges them into ``samples_NxHxWxC.npz``, draws ``grid.png`` and scores the set when
``evaluate.reference`` or ``evaluate.domain_ckpt`` is given (``metrics.json``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning_fabric import Fabric
from omegaconf import DictConfig, OmegaConf
from torch import nn

from adm.io.checkpoint import CONFIG_KEY, load_checkpoint
from adm.io.safe_load import safe_torch_load
from adm.nn import load_state_dict_checked
from adm.sampling.runner import (
    ImageDrawer,
    LabelPlan,
    ShardLayout,
    ShardStore,
    file_sha256,
    generate_shards,
    merge_shards,
    read_images,
    save_grid,
)

log = logging.getLogger("sample")

# OpenAI flags that describe the diffusion process (the rest of MODEL_FLAGS describe the network).
_DIFFUSION_FLAGS = {
    "diffusion_steps": "steps",
    "noise_schedule": "noise_schedule",
    "learn_sigma": "learn_sigma",
    "use_kl": "use_kl",
    "predict_xstart": "predict_xstart",
    "rescale_timesteps": "rescale_timesteps",
    "rescale_learned_sigmas": "rescale_learned_sigmas",
}
# Sampling flags of OpenAI's scripts that are settings of this script instead.
_SAMPLING_FLAGS = {
    "timestep_respacing": "sampler.steps",
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
    from adm.compat.models import model_and_diffusion_defaults

    flags = model_and_diffusion_defaults()
    flags.update(values)
    cfg: dict[str, Any] = {"_target_": "adm.diffusion.create_diffusion"}
    cfg.update({ours: flags[theirs] for theirs, ours in _DIFFUSION_FLAGS.items()})
    return cfg


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
        return Loaded(
            network=trained.unet,
            diffusion=trained.diffusion,
            diffusion_config=trained.config["diffusion"],
            fingerprint={"sha256": file_sha256(cfg.ckpt), "weights": trained.weights},
            info={
                "path": str(Path(cfg.ckpt).resolve()),
                "step": trained.step,
                "network": trained.config["model"],
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
        from adm.presets import build_network

        unet = load_state_dict_checked(build_network(_plain(cfg.model)), state)
        diffusion_cfg = _plain(cfg.diffusion)
        network_desc = _plain(cfg.model)
    else:
        from adm.presets import fitting_presets

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
            diffusion_config=trained.config["diffusion"],
        )
    state = _openai_state(path, "classifier_ckpt")
    if cfg.classifier_flags is not None:
        from adm.compat.flags import load_openai_checkpoint

        values = _parse_openai_flags(cfg.classifier_flags, "classifier_flags")
        network = load_openai_checkpoint(path, values, kind="classifier")
        info["network"] = {"flags": cfg.classifier_flags}
    elif cfg.get("classifier") is not None:
        from adm.presets import build_network

        network = load_state_dict_checked(build_network(_plain(cfg.classifier)), state)
        info["network"] = _plain(cfg.classifier)
    else:
        from adm.presets import fitting_presets

        fits = fitting_presets(state)
        hint = f" (presets that fit these weights: {', '.join(fits)})" if fits else ""
        raise ValueError(
            f"classifier_ckpt={path} holds OpenAI-style weights: add classifier=<preset> or "
            f"classifier_flags=...{hint}"
        )
    return Loaded(network=network.eval(), fingerprint={**fingerprint, "weights": "openai"}, info=info)


def check_classifier(unet: nn.Module, classifier: nn.Module, model: Loaded, guide: Loaded) -> None:
    """The classifier must read the model's images and label space (and, when known, its noise process)."""
    problems = []
    if classifier.image_size != unet.image_size:
        problems.append(f"it takes {classifier.image_size}px images, the model draws {unet.image_size}px")
    if classifier.in_channels != unet.in_channels:
        problems.append(f"it takes {classifier.in_channels} channels, the model draws {unet.in_channels}")
    if unet.num_classes is not None and classifier.num_classes != unet.num_classes:
        problems.append(f"it has {classifier.num_classes} classes, the model {unet.num_classes}")
    ours, theirs = model.diffusion_config, guide.diffusion_config
    if ours is not None and theirs is not None:
        for key in ("steps", "noise_schedule"):
            if ours.get(key) != theirs.get(key):
                problems.append(
                    f"it was trained on diffusion.{key}={theirs.get(key)}, the model uses {ours.get(key)}"
                )
    if problems:
        raise ValueError(
            "the classifier does not fit the diffusion model: "
            + "; ".join(problems)
            + ". Use a classifier trained for this model's data and process"
        )


# --- devices and the run ---------------------------------------------------------------------------------
def build_fabric(trainer: dict[str, Any]) -> Fabric:
    """Lightning Fabric from the ``trainer`` settings; several devices -> one spawned process per device."""
    strategy = trainer["strategy"]
    devices = trainer["devices"]
    many = (
        (isinstance(devices, int) and devices > 1) or isinstance(devices, list | tuple) and len(devices) > 1
    )
    if strategy == "auto" and (many or int(trainer["num_nodes"]) > 1):
        strategy = "ddp_spawn"
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


def _settings(cfg: dict[str, Any]) -> dict[str, Any]:
    sampler = {k: v for k, v in (cfg["sampler"] or {}).items() if k != "_partial_"}
    guidance = {k: v for k, v in (cfg["guidance"] or {}).items() if k != "_partial_"}
    return {"sampler": sampler, "guidance": guidance}


def build_run(fabric: Fabric, cfg: dict[str, Any]) -> tuple[ShardStore, ImageDrawer]:
    """Load the networks on this process's device and describe the run's files."""
    dcfg = DictConfig(cfg)
    model = load_model(dcfg)
    guide = load_classifier(dcfg)
    unet = model.network.to(fabric.device)
    guidance = None
    settings = _settings(cfg)
    scale = float((cfg["guidance"] or {}).get("scale", 0.0))
    if guide is not None:
        check_classifier(unet, guide.network, model, guide)
        classifier = guide.network.to(fabric.device)
        guidance = instantiate(dcfg.guidance)(classifier) if cfg["guidance"] is not None else None
    elif scale != 0:
        raise ValueError(f"guidance.scale={scale} needs a noisy classifier: add classifier_ckpt=PATH")
    sampler = instantiate(dcfg.sampler)

    num_classes = (
        unet.num_classes
        if unet.num_classes is not None
        else (guide.network.num_classes if guide is not None else None)
    )
    labels = LabelPlan(_plain(cfg["labels"]), num_classes, cfg["seed"]) if num_classes is not None else None
    if labels is None and cfg["labels"] not in ("random", None):
        raise ValueError(f"labels={cfg['labels']} but the model is unconditional and no classifier guides it")
    drawer = ImageDrawer(
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
        store.prepare()
        done = _merged_is_complete(store)
    done = fabric.broadcast(done, src=0)
    counts = {"generated": 0, "skipped": store.layout.num_shards}
    if not done:
        png_dir = Path(cfg["out_dir"]) / "png" if cfg["save_png"] else None
        counts = generate_shards(
            store,
            drawer,
            batch_size=cfg["batch_size"],
            rank=fabric.global_rank,
            world_size=fabric.world_size,
            progress=cfg["progress"],
            png_dir=png_dir,
        )
    fabric.barrier()
    if fabric.global_rank != 0:
        return None
    if done:
        log.info("%s is complete already: nothing to sample", store.merged_path)
    else:
        merge_shards(store, delete_shards=not cfg["keep_shards"])
        log.info("wrote %s", store.merged_path)
    out_dir = Path(cfg["out_dir"])
    images, _ = read_images(store.merged_path, cfg["grid_size"])
    save_grid(images, out_dir / "grid.png", nrow=cfg["grid_nrow"])
    result: dict[str, Any] = {
        "samples": str(store.merged_path),
        "grid": str(out_dir / "grid.png"),
        "generated_shards": counts["generated"],
        "skipped_shards": counts["skipped"],
    }
    metrics = score(cfg, store, fabric.device)
    if metrics is not None:
        result["metrics"] = metrics
    return result


def score(cfg: dict[str, Any], store: ShardStore, device: torch.device) -> dict[str, Any] | None:
    """Score the merged samples if ``evaluate.reference`` / ``.domain_ckpt`` is set -> metrics.json."""
    ecfg = cfg["evaluate"]
    if ecfg["reference"] is None and ecfg["domain_ckpt"] is None:
        return None
    from adm.metrics import build_extractor, evaluate

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
        ecfg["reference"],
        extractor,
        list(metrics) if metrics is not None else None,
        batch_size=ecfg["batch_size"],
        progress=cfg["progress"],
    )
    sampler = store.fingerprint["sampler"]
    record = {
        **results,
        "guidance_scale": float((cfg["guidance"] or {}).get("scale", 0.0)),
        "sampler": _sampler_name(sampler),
        "steps": sampler.get("steps"),
        "eta": sampler.get("eta"),
        "seed": cfg["seed"],
        "feature_extractor": kind,
        "reference": ecfg["reference"],
        "domain_ckpt": ecfg["domain_ckpt"],
        "samples": str(store.merged_path),
    }
    path = Path(cfg["out_dir"]) / "metrics.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float))
    log.info("scores (%s features, %.1f s): %s -> %s", kind, time.perf_counter() - start, shown, path)
    return record


def sample(cfg: DictConfig) -> dict[str, Any]:
    """Resolve the config, start the processes, sample; returns rank 0's summary (paths, counts, metrics)."""
    plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
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
    return fabric.launch(run_rank, plain)
