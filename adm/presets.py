"""Network presets: the Hydra files ``conf/model/<name>.yaml`` and ``conf/classifier/<name>.yaml``.

Each preset spells out every constructor argument of the network it builds (``_target_`` plus kwargs); model
presets also select the diffusion process their weights were trained for (``defaults: - override
/diffusion: cosine``), returned by :func:`load_preset` under the key ``"diffusion"``.

    >>> with torch.device("meta"):
    ...     unet = build_network("adm_u_256")          # 554M parameters, no memory
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import adm

__all__ = ["KINDS", "build_network", "conf_dir", "fitting_presets", "list_presets", "load_preset"]

KINDS = ("model", "classifier")


def conf_dir() -> Path:
    """The configs: ``$ADM_CONF_DIR`` if set, else the package's own ``adm/conf``."""
    env = os.environ.get("ADM_CONF_DIR")
    return Path(env) if env else Path(adm.__file__).resolve().parent / "conf"


def list_presets(kind: str = "model") -> list[str]:
    """Sorted preset names of one kind: ``"model"`` (UNets and upsamplers) or ``"classifier"``."""
    if kind not in KINDS:
        raise ValueError(f"unknown preset kind {kind!r}; choose one of {KINDS}")
    folder = conf_dir() / kind
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _locate(name: str) -> tuple[str, Path]:
    kinds: tuple[str, ...] = KINDS
    if "/" in name:  # "model/adm_u_64"
        kind, name = name.split("/", 1)
        kinds = (kind,)
    for kind in kinds:
        path = conf_dir() / kind / f"{name}.yaml"
        if path.is_file():
            return kind, path
    known = ", ".join(list_presets("model") + list_presets("classifier"))
    raise ValueError(f"unknown preset {name!r} (looked in {conf_dir()}); known presets: {known}")


def load_preset(name: str) -> dict[str, Any]:
    """Constructor kwargs of a preset with ``_target_``; model presets add ``"diffusion"`` (its group name).

    Args:
        name: ``"adm_u_64"``, ``"adm_cls_64"``, ... (optionally prefixed ``"model/"`` / ``"classifier/"``).
    """
    kind, path = _locate(name)
    cfg = OmegaConf.load(path)
    if kind not in cfg:
        raise ValueError(f"preset file {path} has no top-level '{kind}:' section")
    try:
        out: dict[str, Any] = OmegaConf.to_container(cfg[kind], resolve=True)  # type: ignore[assignment]
    except Exception as err:  # an interpolation pointing outside the file
        raise ValueError(f"preset {path} cannot be resolved on its own: {err}") from err
    for entry in cfg.get("defaults", []) or []:
        if isinstance(entry, Mapping | DictConfig):
            for key, value in entry.items():
                group = str(key).replace("override", "").strip().lstrip("/")
                if group == "diffusion":
                    out["diffusion"] = value
    return out


def _resolve_target(target: str) -> type[nn.Module]:
    module_name, _, attr = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import network class {target!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"{target!r} is not an nn.Module class")
    return cls


def build_network(name_or_cfg: str | Mapping[str, Any]) -> nn.Module:
    """Build the network of a preset name or of a ``{"_target_": ..., **kwargs}`` mapping.

    Works under ``with torch.device("meta"):`` (no memory for the parameters).
    """
    if isinstance(name_or_cfg, str):
        cfg: dict[str, Any] = load_preset(name_or_cfg)
    elif isinstance(name_or_cfg, DictConfig):
        cfg = OmegaConf.to_container(name_or_cfg, resolve=True)  # type: ignore[assignment]
    else:
        cfg = dict(name_or_cfg)
    cfg.pop("diffusion", None)
    if "_target_" not in cfg:
        raise ValueError("network config needs a '_target_' (e.g. adm.nn.UNet)")
    cls = _resolve_target(cfg.pop("_target_"))
    return cls(**cfg)


_SHAPES_CACHE: dict[tuple[str, float], dict[str, tuple[int, ...]]] = {}


def _preset_shapes(kind: str, name: str) -> dict[str, tuple[int, ...]]:
    path = conf_dir() / kind / f"{name}.yaml"
    key = (str(path), path.stat().st_mtime)
    if key not in _SHAPES_CACHE:
        with torch.device("meta"):
            net = build_network(f"{kind}/{name}")
        _SHAPES_CACHE[key] = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    return _SHAPES_CACHE[key]


def fitting_presets(state_dict_shapes: Mapping[str, Any]) -> list[str]:
    """Names of the presets whose state-dict map (keys and shapes) equals the given one.

    Args:
        state_dict_shapes: ``{key: shape}`` (tuples, lists or ``torch.Size``) or a state dict of tensors.
    """
    target = {
        k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(int(d) for d in v)
        for k, v in state_dict_shapes.items()
    }
    stem = target.get("input_blocks.0.0.weight")  # (channels, stem input channels, 3, 3)
    has_decoder = any(k.startswith("output_blocks.") for k in target)
    fits = []
    for kind in KINDS:
        for name in list_presets(kind):
            try:
                cfg = load_preset(f"{kind}/{name}")
                # cheap screening before building: width of the stem and presence of a decoder
                stem_in = cfg["in_channels"] * (2 if str(cfg["_target_"]).endswith("SuperResUNet") else 1)
                if stem is None or len(stem) != 4 or stem[1] != stem_in or (kind == "model") != has_decoder:
                    continue
                if stem[0] != int(cfg["model_channels"] * cfg["channel_mult"][0]):
                    continue
                shapes = _preset_shapes(kind, name)
            except (ValueError, KeyError, TypeError):  # a preset that cannot be built is no match
                continue
            if shapes == target:
                fits.append(name)
    return fits
