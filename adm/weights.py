"""One door from a weights file to networks: :func:`load_weights` reads any weights file once.

- One of our training checkpoints (``.ckpt``) describes itself: its network, its diffusion process, the EMA
  weights asked for, the null label of a classifier-free model and the data's class names.
- OpenAI's released ``.pt`` files are plain state dicts: they need the preset they fit (``model=adm_u_64``,
  ``classifier=adm_cls_64``, or a resolved preset config) or OpenAI's flags (``--attention_resolutions
  32,16,8 ...``); without either, the error names the presets that fit.

The file is read from disk once (its SHA-256, which identifies a sample run's weights, comes from the same
read). ``adm.ADM`` and the sample and upsample recipes load every network through here.

    >>> model = load_weights("runs/.../last.ckpt", kind="diffusion")
    >>> model.network, model.diffusion, model.null_label, model.fingerprint["sha256"]
    >>> guide = load_weights("64x64_classifier.pt", kind="classifier", preset="adm_cls_64")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from adm.config import build_network, compose_preset, fitting_presets, preset_hint
from adm.diffusion import GaussianDiffusion
from adm.io.checkpoint import CONFIG_KEY, is_trained_checkpoint, trained_checkpoint
from adm.io.safe_load import safe_torch_load_with_sha256
from adm.nn import load_state_dict_checked

__all__ = ["KINDS", "OptionNames", "Weights", "load_weights"]

KINDS = ("diffusion", "classifier")

# Sampling flags of OpenAI's scripts that are settings of our commands instead of network flags.
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


@dataclass(frozen=True)
class OptionNames:
    """How the caller spells its options, so that an error names what the user typed.

    ``OptionNames.for_command(kind)`` are the sample / upsample commands' names (``ckpt=``, ``openai_ckpt=``,
    ``model=``, ``flags=``; ``classifier_ckpt=``, ``classifier=``, ``classifier_flags=``).
    """

    ours: str  # the option that takes one of our checkpoints
    openai: str  # the option that takes OpenAI's weights
    preset: str  # the preset of OpenAI's weights
    flags: str  # OpenAI's flags instead of a preset
    advice: str | None = None  # how to load OpenAI's weights instead (default: from the names above)

    @classmethod
    def for_command(cls, kind: str) -> OptionNames:
        if kind == "classifier":
            return cls("classifier_ckpt", "classifier_ckpt", "classifier", "classifier_flags")
        return cls("ckpt", "openai_ckpt", "model", "flags")


@dataclass
class Weights:
    """A network read from a weights file, with what describes and identifies it.

    Attributes:
        network: the network in eval mode (``UNet``, ``SuperResUNet`` or ``EncoderUNet``; OpenAI's classes
            when built from flags).
        kind: "diffusion" (a UNet or an upsampler) or "classifier".
        diffusion: the process the network was trained on (full length); None for OpenAI's classifiers,
            which come without one.
        diffusion_config: that process as a plain config (``conf/diffusion`` layout), or None.
        null_label: the null label of a network trained with label dropout (classifier-free), else None.
        class_names: the data's class names the checkpoint records, else None.
        fingerprint: what identifies the weights (``sha256`` of the file, which weights: ``ema_<rate>``,
            ``raw`` or ``openai``): a sample run compares it when it is continued.
        info: what is recorded only (absolute path, training step, network description).
    """

    network: nn.Module
    kind: str
    diffusion: GaussianDiffusion | None
    diffusion_config: dict[str, Any] | None
    null_label: int | None = None
    class_names: list[str] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _plain(node: Any) -> Any:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _parse_flags(flags: str, option: str) -> dict[str, Any]:
    from adm.compat.flags import parse_flags

    values = parse_flags(flags)
    sampling = {k: v for k, v in values.items() if k in _SAMPLING_FLAGS}
    if sampling:
        hints = ", ".join(f"--{k} -> {_SAMPLING_FLAGS[k]}" for k in sampling)
        raise ValueError(
            f"{option} holds sampling flags, which are settings of this command instead: {hints}"
        )
    return values


def load_weights(
    path: str | os.PathLike,
    *,
    kind: str,
    source: str | None = None,
    preset: str | Mapping[str, Any] | None = None,
    flags: str | None = None,
    diffusion_config: Mapping[str, Any] | None = None,
    network: nn.Module | None = None,
    ema: bool | float = True,
    names: OptionNames | None = None,
) -> Weights:
    """Read a weights file once and build its network (and diffusion process).

    Args:
        path: one of our training checkpoints, or OpenAI's weights (a plain state dict).
        kind: what the caller needs: "diffusion" (a UNet or an upsampler) or "classifier".
        source: "adm" (the file must be one of our checkpoints), "openai" (it must be OpenAI-style weights),
            or None (either).
        preset: for OpenAI's weights: a preset name ("adm_u_64") or a resolved network config (with
            ``_target_``); not for our checkpoints, which describe themselves.
        flags: for OpenAI's weights instead of a preset: OpenAI's flags ("--attention_resolutions 32,16,8
            --class_cond True ...").
        diffusion_config: for OpenAI's diffusion weights given a preset config: the process config that goes
            with it (a preset name brings its own; flags describe it).
        network: for OpenAI's weights: load them into this network (e.g. one built from a preset, also
            under ``torch.device("meta")``) instead of building one.
        ema: our checkpoints: True (the EMA weights of the first rate, or the raw ones without EMA), False
            (the raw weights) or a rate.
        names: the caller's option names for the errors (default: the sample command's).
    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is of the other source, holds the other kind of network, is corrupt, needs a
            preset or flags (the presets that fit are named), or does not fit the preset / flags (missing,
            unexpected or mis-shaped keys).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    names = names or OptionNames.for_command(kind)
    contents, sha256 = safe_torch_load_with_sha256(path)
    path = Path(path)
    if is_trained_checkpoint(contents):
        if source == "openai":
            raise ValueError(
                f"{path} is one of our training checkpoints (it has '{CONFIG_KEY}'); pass it as "
                f"{names.ours}={path} without a preset or flags"
            )
        if preset is not None or flags is not None or network is not None:
            what = f"{names.preset}={preset!r}" if preset is not None else f"{names.flags}=..."
            raise ValueError(
                f"{names.ours}={path} is one of our training checkpoints and describes itself: drop {what}"
            )
        return _ours(contents, path, sha256, kind=kind, ema=ema, names=names)
    if source == "adm":
        other = names.advice or (
            f"for OpenAI's released weights use {names.openai}=PATH {names.preset}=<preset> "
            f"(or {names.flags}=...)"
        )
        raise ValueError(
            f"{names.ours}={path} is not one of our training checkpoints (no '{CONFIG_KEY}'); {other}"
        )
    if not isinstance(contents, dict) or not all(isinstance(v, torch.Tensor) for v in contents.values()):
        raise ValueError(
            f"{names.openai}={path} is not a plain state dict ({{name: tensor}}) as OpenAI's weights are"
        )
    return _openai(
        contents,
        path,
        sha256,
        kind=kind,
        preset=preset,
        flags=flags,
        diffusion_config=diffusion_config,
        network=network,
        names=names,
    )


def _ours(
    contents: dict[str, Any], path: Path, sha256: str, *, kind: str, ema: bool | float, names: OptionNames
) -> Weights:
    trained = trained_checkpoint(contents, path, ema=ema)
    del contents
    if trained.kind != kind:
        if kind == "classifier":
            raise ValueError(f"{names.ours}={path} holds a diffusion model, not a noisy classifier")
        raise ValueError(f"{names.ours}={path} holds a noisy classifier; pass it as classifier_ckpt=...")
    config = trained.config
    return Weights(
        network=trained.network,
        kind=kind,
        diffusion=trained.diffusion,
        diffusion_config=config["diffusion"],
        null_label=(config.get("classifier_free") or {}).get("null_label"),
        class_names=(config.get("data") or {}).get("class_names"),
        fingerprint={"sha256": sha256, "weights": trained.weights},
        info={
            "path": str(path.resolve()),
            "step": trained.step,
            "network": config["model" if kind == "diffusion" else "classifier"],
        },
    )


def _openai(
    state: dict[str, torch.Tensor],
    path: Path,
    sha256: str,
    *,
    kind: str,
    preset: str | Mapping[str, Any] | None,
    flags: str | None,
    diffusion_config: Mapping[str, Any] | None,
    network: nn.Module | None,
    names: OptionNames,
) -> Weights:
    if flags is not None and preset is not None:
        raise ValueError(f"give {names.preset}=<preset> or {names.flags}=..., not both")
    diffusion_cfg: dict[str, Any] | None = None
    if network is not None:
        if any(p.is_meta for p in network.parameters()):
            network.to_empty(device="cpu")  # built under torch.device("meta"): allocate, then load
        load_state_dict_checked(network, state, hint=preset_hint)
        described: Any = {"network": type(network).__name__}
    elif flags is not None:
        from adm.compat.diffusion import diffusion_config as flags_diffusion_config
        from adm.compat.flags import network_from_flags

        values = _parse_flags(flags, names.flags)
        network = network_from_flags(state, values, kind="model" if kind == "diffusion" else "classifier")
        diffusion_cfg = flags_diffusion_config(values) if kind == "diffusion" else None
        described = {"flags": flags}
    elif preset is not None:
        if isinstance(preset, str):
            composed = compose_preset(preset)
            network_cfg = _plain(composed[composed.kind])
            if kind == "diffusion" and composed.diffusion is not None:
                diffusion_cfg = _plain(composed.diffusion)
        else:
            network_cfg = _plain(preset)
        network = load_state_dict_checked(build_network(network_cfg), state, hint=preset_hint)
        described = network_cfg
    else:
        fits = fitting_presets(state)
        hint = f" (presets that fit these weights: {', '.join(fits)})" if fits else ""
        if kind == "classifier":
            raise ValueError(
                f"{names.openai}={path} holds OpenAI-style weights: add {names.preset}=<preset> or "
                f"{names.flags}=...{hint}"
            )
        raise ValueError(
            f'{names.openai}={path} needs {names.preset}=<preset> or {names.flags}="--..."{hint}'
        )
    del state
    if diffusion_config is not None:
        diffusion_cfg = _plain(diffusion_config)
    diffusion = instantiate(diffusion_cfg) if diffusion_cfg is not None else None
    return Weights(
        network=network.eval(),
        kind=kind,
        diffusion=diffusion,
        diffusion_config=diffusion_cfg,
        fingerprint={"sha256": sha256, "weights": "openai"},
        info={"path": str(path.resolve()), "network": described},
    )
