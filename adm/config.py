"""The package's Hydra configs (``conf/``), composed and instantiated with Hydra's own machinery.

A network preset is a plain file of the ``model`` or ``classifier`` group: the network class (``_target_``)
and its architecture, with the image size, channels and class count read from the data
(``${data.image_size}`` ...). What it was made for is the overlay of the same name in ``conf/preset/``: the
data (e.g. ``/data: imagenet64``) and, for diffusion models, the process its weights need (``/diffusion:
cosine``). The scripts select the overlay by the chosen preset's name (``- preset: ${model}``), so
``model=adm_u_64`` brings ImageNet 64 and the cosine process, and ``data=...`` still wins. Presets are
composed through ``conf/presets.yaml`` as the training and sampling scripts compose them, from the installed
package (any working directory, no source tree needed).

    >>> list_presets("classifier")[:2]
    ['adm_cls_128', 'adm_cls_256']
    >>> with torch.device("meta"):
    ...     unet = build_network("adm_u_256")          # 554M parameters, no memory
    >>> fitting_presets(unet.state_dict())
    ['adm_u_256']
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

__all__ = [
    "CONFIG_MODULE",
    "KINDS",
    "build_diffusion",
    "build_network",
    "compose_config",
    "compose_preset",
    "fitting_presets",
    "list_presets",
    "load_preset",
    "preset_hint",
]

CONFIG_MODULE = "adm.conf"  # the configs ship inside the package
KINDS = ("model", "classifier")
_PRESETS_CONFIG = "presets"  # conf/presets.yaml: empty model and classifier slots, the chosen one's overlay
_VERSION_BASE = "1.3"


@contextmanager
def _package_configs() -> Iterator[None]:
    """Hydra initialised on ``adm.conf``; whatever Hydra state was there (a running app) is restored after."""
    global_hydra = GlobalHydra.instance()
    running = global_hydra.hydra if global_hydra.is_initialized() else None
    global_hydra.clear()
    try:
        with initialize_config_module(CONFIG_MODULE, version_base=_VERSION_BASE):
            yield
    finally:
        GlobalHydra.instance().clear()
        if running is not None:
            GlobalHydra.instance().initialize(running)


def compose_config(config_name: str, overrides: Sequence[str] = (), hydra_node: bool = False) -> DictConfig:
    """Compose a config of the package as its script would: ``compose_config("train", ["experiment=smoke"])``.

    Args:
        config_name: a primary config of ``conf/`` ("train", "sample", ...).
        overrides: command-line style overrides.
        hydra_node: keep the ``hydra`` node (``cfg.hydra.runtime.choices`` names the chosen group options).
    """
    with _package_configs():
        return compose(config_name, overrides=list(overrides), return_hydra_config=hydra_node)


def list_presets(kind: str = "model") -> list[str]:
    """Sorted preset names of one kind: ``"model"`` (UNets and upsamplers) or ``"classifier"``."""
    if kind not in KINDS:
        raise ValueError(f"unknown preset kind {kind!r}; choose one of {KINDS}")
    return _group_options(kind)


@functools.cache
def _group_options(group: str) -> list[str]:
    with _package_configs():
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def _kind_of(name: str) -> tuple[str, str]:
    """(kind, name) of ``"adm_u_64"`` or ``"model/adm_u_64"``; ValueError listing the presets if unknown."""
    kinds: tuple[str, ...] = KINDS
    if "/" in name:
        kind, name = name.split("/", 1)
        if kind not in KINDS:
            raise ValueError(f"unknown preset kind {kind!r} in {kind}/{name}; choose one of {KINDS}")
        kinds = (kind,)
    for kind in kinds:
        if name in _group_options(kind):
            return kind, name
    known = ", ".join(list_presets("model") + list_presets("classifier"))
    raise ValueError(f"unknown preset {name!r}; known presets: {known}")


@functools.cache
def _composed(kind: str, name: str) -> DictConfig:
    cfg = compose_config(_PRESETS_CONFIG, [f"{kind}={name}"], hydra_node=True)
    choices = cfg.hydra.runtime.choices
    out = OmegaConf.create({"kind": kind, "name": name, "diffusion_name": choices.get("diffusion")})
    out.data_name = choices.get("data")
    # Resolve the network and process now (their values come from the data); the data node itself keeps
    # its unresolved fields (batch size, paths), which only a training run fills in.
    out[kind] = OmegaConf.to_container(cfg[kind], resolve=True)
    out.diffusion = OmegaConf.to_container(cfg.diffusion, resolve=True) if cfg.get("diffusion") else None
    OmegaConf.set_readonly(out, True)
    return out


def compose_preset(name: str) -> DictConfig:
    """A preset composed with its data and process: a read-only config with the keys ``kind``, ``name``,
    ``data_name``, ``diffusion_name`` (None for classifiers), ``model`` or ``classifier`` (the resolved
    network config, with ``_target_``) and ``diffusion`` (the resolved process config, or None).

    Args:
        name: ``"adm_u_64"``, ``"adm_cls_64"``, ... (optionally ``"model/..."`` / ``"classifier/..."``).
    """
    return _composed(*_kind_of(name))


def load_preset(name: str) -> dict[str, Any]:
    """The resolved network config of a preset (constructor arguments and ``_target_``); model presets add
    ``"diffusion"``: the name of the process their weights need (``conf/diffusion/<name>.yaml``)."""
    preset = compose_preset(name)
    out: dict[str, Any] = OmegaConf.to_container(preset[preset.kind])  # type: ignore[assignment]
    if preset.diffusion_name is not None:
        out["diffusion"] = preset.diffusion_name
    return out


def _instantiate(cfg: Mapping[str, Any], what: str) -> Any:
    try:
        return instantiate(cfg, _convert_="all")
    except InstantiationException as err:  # a constructor's own message is the clear one
        if isinstance(err.__cause__, ValueError | TypeError):
            raise ValueError(f"cannot build the {what}: {err.__cause__}") from err.__cause__
        raise


def build_network(name_or_cfg: str | Mapping[str, Any]) -> nn.Module:
    """Build the network of a preset name, or of a ``{"_target_": ..., **kwargs}`` config.

    Works under ``with torch.device("meta"):`` (no memory for the parameters).
    """
    if isinstance(name_or_cfg, str):
        preset = compose_preset(name_or_cfg)
        cfg: Mapping[str, Any] = OmegaConf.to_container(preset[preset.kind])  # type: ignore[assignment]
    else:
        cfg = name_or_cfg
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
        cfg = {k: v for k, v in cfg.items() if k != "diffusion"}  # load_preset's process name
    if "_target_" not in cfg:
        raise ValueError("a network config needs a '_target_' (e.g. adm.nn.UNet)")
    return _instantiate(cfg, "network")


def build_diffusion(model_preset: str) -> Any:
    """The diffusion process (full length) the weights of a model preset were trained for."""
    preset = compose_preset(model_preset)
    if preset.diffusion is None:
        raise ValueError(
            f"{model_preset!r} is not a diffusion model preset (it selects no diffusion process); choose one "
            f"of {', '.join(list_presets('model'))}"
        )
    return _instantiate(OmegaConf.to_container(preset.diffusion), "diffusion process")


@functools.cache
def _preset_shapes(kind: str, name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        net = build_network(f"{kind}/{name}")
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


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
    if stem is None or len(stem) != 4:
        return []
    has_decoder = any(k.startswith("output_blocks.") for k in target)
    fits = []
    for kind in KINDS:
        if (kind == "model") != has_decoder:
            continue
        for name in list_presets(kind):
            try:
                net = compose_preset(f"{kind}/{name}")[kind]
                # cheap screening before building: width and input channels of the stem
                stem_in = net.in_channels * (2 if str(net._target_).endswith("SuperResUNet") else 1)
                if stem[1] != stem_in or stem[0] != int(net.model_channels * net.channel_mult[0]):
                    continue
                if _preset_shapes(kind, name) == target:
                    fits.append(name)
            except (ValueError, KeyError, TypeError):  # a preset that cannot be built is no match
                continue
    return fits


def preset_hint(state_dict_shapes: Mapping[str, Any]) -> str:
    """One line for a load error naming the presets that fit these weights (``load_state_dict_checked``'s
    ``hint``)."""
    fits = fitting_presets(state_dict_shapes)
    if fits:
        return f"presets that fit this checkpoint: {', '.join(fits)} (adm.config.build_network)"
    return "no preset in conf/model or conf/classifier fits this checkpoint"
