"""Training checkpoints that describe themselves: atomic writes, safe loading, networks rebuilt from the file.

A checkpoint written by ``scripts/train.py`` / ``scripts/train_classifier.py`` is a Lightning ``.ckpt``
holding only plain Python types and tensors (it loads with ``torch.load(weights_only=True)``) plus:

- ``"adm_config"``: the resolved plain-dict config of the networks and the process,
  ``{"model" | "classifier": {"_target_": "adm.nn.UNet", ...}, "diffusion": {...}, "data": {...}}``;
- ``"state_dict"``: the module's weights; with the EMA callback these are the EMA weights of the first
  rate (Lightning's weight-averaging layout), the raw weights are in ``"current_model_state"`` and the other
  rates in ``"adm_ema"["state_dicts"]``.

:func:`checkpoint_payload` writes these entries (training adds them to Lightning's checkpoint through it).

    >>> ckpt = load_checkpoint("runs/.../checkpoints/last.ckpt")      # EMA weights by default
    >>> ckpt.unet, ckpt.diffusion, ckpt.config["model"]["image_size"]
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from adm.io.files import atomic_torch_save

__all__ = [
    "CONFIG_KEY",
    "EMA_KEY",
    "AtomicCheckpointIO",
    "TrainedCheckpoint",
    "check_plain",
    "checkpoint_payload",
    "ema_entry",
    "is_trained_checkpoint",
    "load_checkpoint",
    "trained_checkpoint",
]

CONFIG_KEY = "adm_config"
EMA_KEY = "adm_ema"
RAW_KEY = "current_model_state"  # Lightning's WeightAveraging name for the raw weights
_NETWORK_KEYS = {"model": "unet", "classifier": "classifier"}  # config section -> LightningModule attribute
_NETWORK_TARGETS = ("adm.nn.UNet", "adm.nn.SuperResUNet", "adm.nn.EncoderUNet")
_DIFFUSION_TARGET = "adm.diffusion.GaussianDiffusion.from_schedule"


# --- writing ------------------------------------------------------------------------------------------------
def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ValueError unless `obj` holds only dicts, lists, tuples, str, int, float, bool, None, tensors."""
    if obj is None or isinstance(obj, str | int | float | bool | torch.Tensor):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str | int | float):
                raise ValueError(f"{where}: key {k!r} of type {type(k).__name__} is not a plain type")
            check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise ValueError(
        f"{where} holds a {type(obj).__module__}.{type(obj).__name__}; checkpoints keep only plain types and "
        "tensors (convert configs with OmegaConf.to_container(cfg, resolve=True))"
    )


def checkpoint_payload(
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor] | None = None,
    *,
    raw_weights: Mapping[str, torch.Tensor] | None = None,
    ema_rate: float | None = None,
    ema_warmup: bool = True,
    global_step: int = 0,
) -> dict[str, Any]:
    """The entries of a training checkpoint that :func:`load_checkpoint` reads, laid out as training writes
    them (``TrainModule.on_save_checkpoint`` adds the config to Lightning's checkpoint with this function).

    Args:
        config: the resolved plain-dict config: a ``"model"`` or ``"classifier"`` section, ``"diffusion"``,
            optionally ``"data"`` and ``"classifier_free"``. Copied.
        weights: the network's own state dict, written with the LightningModule's prefix (``"unet."`` for a
            model, ``"classifier."`` for a classifier); with `ema_rate` the EMA weights. None writes only the
            config.
        raw_weights: the online weights, with `ema_rate` (Lightning's ``"current_model_state"``).
        ema_rate: the rate of the EMA weights (a run with one EMA rate); None: trained without EMA.
        ema_warmup: the EMA callback's warm-up setting (recorded in ``"adm_ema"``).
        global_step: optimizer steps taken.

    Returns:
        ``{"adm_config": ...}``; given `weights` also ``"state_dict"`` and ``"global_step"``, and with
        `ema_rate` ``"current_model_state"`` and ``"adm_ema"``.

    Raises:
        ValueError: a config without exactly one network section and a ``"diffusion"`` section, or holding
            something other than plain types; an EMA rate without raw weights or the other way round.
    """
    sections = [k for k in _NETWORK_KEYS if k in config]
    if len(sections) != 1 or "diffusion" not in config:
        raise ValueError(
            f"a checkpoint config needs one of {list(_NETWORK_KEYS)} and a 'diffusion' section; got keys "
            f"{sorted(config)}"
        )
    check_plain(dict(config), CONFIG_KEY)
    payload: dict[str, Any] = {CONFIG_KEY: copy.deepcopy(dict(config))}
    if weights is None:
        return payload
    if (ema_rate is None) != (raw_weights is None):
        raise ValueError("give raw_weights together with ema_rate (the weights are then the EMA ones)")
    prefix = _NETWORK_KEYS[sections[0]] + "."
    payload["state_dict"] = {prefix + k: v for k, v in weights.items()}
    payload["global_step"] = int(global_step)
    if ema_rate is not None:
        payload[RAW_KEY] = {prefix + k: v for k, v in raw_weights.items()}
        payload[EMA_KEY] = ema_entry([ema_rate], warmup=ema_warmup, state_dicts={}, n_averaged={})
    return payload


def ema_entry(
    rates: Sequence[float],
    *,
    warmup: bool,
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    n_averaged: Mapping[str, torch.Tensor],
) -> dict[str, Any]:
    """The ``"adm_ema"`` entry of a checkpoint (written by the EMA callback): all rates, the first one's
    weights being ``"state_dict"``; the others' weights and update counts keyed by ``repr(rate)``."""
    return {
        "rates": [float(r) for r in rates],
        "warmup": bool(warmup),
        "state_dicts": dict(state_dicts),
        "n_averaged": dict(n_averaged),
    }


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: atomic local writes (temp file + fsync + rename), weights-only reads.

    Passed to the Trainer as a plugin (``conf/trainer/default.yaml``), so every checkpoint Lightning writes,
    ``last.ckpt`` included, is all-or-nothing, and resuming never unpickles arbitrary objects.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        from adm.io.safe_load import safe_torch_load

        return safe_torch_load(path, map_location=map_location if map_location is not None else "cpu")


# --- reading ------------------------------------------------------------------------------------------------
@dataclass
class TrainedCheckpoint:
    """What :func:`load_checkpoint` returns.

    Attributes:
        network: the UNet / SuperResUNet (kind "diffusion") or EncoderUNet (kind "classifier"), in eval mode.
        diffusion: the training process (``adm.diffusion.GaussianDiffusion``, not respaced).
        config: the checkpoint's "adm_config" (plain dict: "model" or "classifier", "diffusion", "data").
        kind: "diffusion" or "classifier".
        weights: which weights were loaded: "raw" or "ema_<rate>" (e.g. "ema_0.9999").
        ema_rates: the EMA rates stored in the file (empty if it was trained without EMA).
        step: optimizer steps taken when it was written (Lightning's global_step).
        path: the file.
    """

    network: nn.Module
    diffusion: Any
    config: dict[str, Any]
    kind: str
    weights: str
    ema_rates: tuple[float, ...]
    step: int
    path: Path

    @property
    def unet(self) -> nn.Module:
        """The diffusion network (raises for a classifier checkpoint)."""
        if self.kind != "diffusion":
            raise ValueError(f"{self.path} holds a noisy classifier, not a diffusion model")
        return self.network

    @property
    def classifier(self) -> nn.Module:
        """The noisy classifier (raises for a diffusion-model checkpoint)."""
        if self.kind != "classifier":
            raise ValueError(f"{self.path} holds a diffusion model, not a noisy classifier")
        return self.network


def _build(cfg: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> Any:
    target = cfg.get("_target_")
    if target not in allowed:
        raise ValueError(
            f"checkpoint {what} config names _target_={target!r}; expected one of {list(allowed)}"
        )
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    if what == "diffusion":
        from adm.diffusion import GaussianDiffusion

        return GaussianDiffusion.from_schedule(**kwargs)
    from adm import nn as adm_nn  # the allowed targets are the network classes of adm.nn

    return getattr(adm_nn, target.rsplit(".", 1)[1])(**kwargs)


def _select_weights(
    ckpt: dict[str, Any], ema: bool | float
) -> tuple[dict[str, torch.Tensor], str, tuple[float, ...]]:
    info = ckpt.get(EMA_KEY)
    rates = tuple(float(r) for r in info["rates"]) if info else ()
    if ema is False:
        return ckpt.get(RAW_KEY, ckpt["state_dict"]), "raw", rates
    if not rates:
        if ema is True:  # trained without EMA: the weights in the file are the raw ones
            return ckpt["state_dict"], "raw", rates
        raise ValueError(
            f"asked for EMA rate {ema}, but this checkpoint was trained without EMA; use ema=False"
        )
    rate = rates[0] if ema is True else float(ema)
    if rate == rates[0]:
        return ckpt["state_dict"], f"ema_{rate:g}", rates
    extra = info.get("state_dicts", {})
    if repr(rate) in extra:
        return extra[repr(rate)], f"ema_{rate:g}", rates
    raise ValueError(
        f"no EMA weights with rate {rate} in this checkpoint; it holds rates {list(rates)} (or ema=False)"
    )


def load_checkpoint(
    path: str | os.PathLike, *, ema: bool | float = True, map_location: str | torch.device = "cpu"
) -> TrainedCheckpoint:
    """Rebuild the network and diffusion process of a training checkpoint (nothing else is needed).

    Args:
        path: a ``.ckpt`` written by ``scripts/train.py`` or ``scripts/train_classifier.py``.
        ema: True -> the EMA weights of the first configured rate (the raw weights if trained without EMA);
            False -> the raw (online) weights; a float -> the EMA weights of that rate.
        map_location: device of the returned network.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not one of our checkpoints, a corrupt / truncated file (read with ``weights_only=True``:
            nothing is unpickled), an unknown EMA rate, or weights that do not fit the network.
    """
    from adm.io.safe_load import safe_torch_load

    return trained_checkpoint(safe_torch_load(path), path, ema=ema, map_location=map_location)


def is_trained_checkpoint(contents: Any) -> bool:
    """Whether the contents of a weights file are one of our training checkpoints (else e.g. OpenAI's plain
    state dicts)."""
    return isinstance(contents, dict) and CONFIG_KEY in contents


def trained_checkpoint(
    ckpt: Any,
    path: str | os.PathLike,
    *,
    ema: bool | float = True,
    map_location: str | torch.device = "cpu",
) -> TrainedCheckpoint:
    """:func:`load_checkpoint` of contents already read from `path` (``safe_torch_load``)."""
    from adm.diffusion.openai_flags import LEGACY_TARGET, legacy_diffusion_config
    from adm.nn import load_state_dict_checked

    path = Path(path)
    if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"{path} is not an adm training checkpoint (no '{CONFIG_KEY}' / 'state_dict'); OpenAI's released "
            ".pt files load with adm.compat.guided_diffusion.load_openai_checkpoint or adm.ADM.load_openai"
        )
    config = ckpt[CONFIG_KEY]
    section = "model" if "model" in config else "classifier" if "classifier" in config else None
    if section is None or "diffusion" not in config:
        raise ValueError(f"{path}: '{CONFIG_KEY}' needs a 'model' or 'classifier' and a 'diffusion' section")
    if config["diffusion"].get("_target_") == LEGACY_TARGET:
        # Written before our own diffusion vocabulary: OpenAI-style flags, translated.
        config = {**config, "diffusion": legacy_diffusion_config(config["diffusion"])}
    state, weights, rates = _select_weights(ckpt, ema)
    prefix = _NETWORK_KEYS[section] + "."
    net_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not net_state:
        raise ValueError(f"{path}: no '{prefix}*' weights in the checkpoint's state dict")

    net_cfg = config[section]
    if net_cfg.get("_target_") == "adm.nn.SuperResUNet" and "low_res_size" not in net_cfg:
        # Older upsampler checkpoints kept the low-res side at the top level of their config.
        net_cfg = {**net_cfg, "low_res_size": config.get("low_res_size")}
    network = _build(net_cfg, _NETWORK_TARGETS, "network")
    load_state_dict_checked(network, net_state)
    network.to(map_location).eval()
    diffusion = _build(config["diffusion"], (_DIFFUSION_TARGET,), "diffusion")
    return TrainedCheckpoint(
        network=network,
        diffusion=diffusion,
        config=config,
        kind="diffusion" if section == "model" else "classifier",
        weights=weights,
        ema_rates=rates,
        step=int(ckpt.get("global_step", 0)),
        path=path,
    )
