"""OpenAI-style command-line flags and loading of OpenAI's released checkpoints.

Paste the flags of OpenAI's README as they are::

    MODEL_FLAGS = "--attention_resolutions 32,16,8 --class_cond True --image_size 64 ..."
    kwargs = parse_flags(MODEL_FLAGS)  # {"attention_resolutions": "32,16,8", "class_cond": True, ...}
    unet = load_openai_checkpoint("64x64_diffusion.pt", MODEL_FLAGS)

Values get the types OpenAI's argparsers give them (booleans from "True"/"False", ints, floats, strings
such as ``"32,16,8"``). Checkpoints are read with ``torch.load(weights_only=True)``: nothing in them
is executed.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from adm.compat.models import (
    classifier_defaults,
    create_classifier,
    create_model,
    model_and_diffusion_defaults,
    sr_create_model,
    sr_model_and_diffusion_defaults,
)
from adm.io.safe_load import safe_torch_load
from adm.nn.loading import load_state_dict_checked

__all__ = [
    "add_dict_to_argparser",
    "args_to_dict",
    "known_flags",
    "load_openai_checkpoint",
    "network_from_flags",
    "parse_flags",
    "str2bool",
]

# Flags of OpenAI's sampling / training scripts beyond the model, classifier and diffusion defaults.
_SCRIPT_FLAGS: dict[str, Any] = dict(
    clip_denoised=True,
    num_samples=10000,
    batch_size=16,
    use_ddim=False,
    model_path="",
    classifier_path="",
    classifier_scale=1.0,
    base_samples="",
    data_dir="",
    val_data_dir="",
    schedule_sampler="uniform",
    lr=1e-4,
    weight_decay=0.0,
    lr_anneal_steps=0,
    microbatch=-1,
    ema_rate="0.9999",
    log_interval=10,
    save_interval=10000,
    eval_interval=5,
    resume_checkpoint="",
    fp16_scale_growth=1e-3,
    noised=True,
    iterations=150000,
    anneal_lr=False,
)


def known_flags() -> dict[str, Any]:
    """Every flag of OpenAI's scripts with its default (the default's type is the flag's type)."""
    flags = dict(_SCRIPT_FLAGS)
    flags.update(model_and_diffusion_defaults())
    flags.update(classifier_defaults())
    flags.update(sr_model_and_diffusion_defaults())
    return flags


def str2bool(value: str | bool) -> bool:
    """OpenAI's boolean flag parser: yes/true/t/y/1 and no/false/f/n/0 (any case)."""
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("yes", "true", "t", "y", "1"):
        return True
    if text in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (True/False), got {value!r}")


def add_dict_to_argparser(parser: argparse.ArgumentParser, default_dict: Mapping[str, Any]) -> None:
    """Add ``--key`` options typed like their defaults (booleans via :func:`str2bool`, None as str)."""
    for key, value in default_dict.items():
        value_type: Any = type(value)
        if value is None:
            value_type = str
        elif isinstance(value, bool):
            value_type = str2bool
        parser.add_argument(f"--{key}", default=value, type=value_type)


def args_to_dict(args: argparse.Namespace, keys: Iterable[str]) -> dict[str, Any]:
    """``{key: getattr(args, key)}`` for the given keys."""
    return {key: getattr(args, key) for key in keys}


def _convert(name: str, raw: Any, default: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        if isinstance(default, bool):
            return str2bool(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except (ValueError, argparse.ArgumentTypeError) as err:
        raise ValueError(f"flag --{name}: cannot read {raw!r} as {type(default).__name__} ({err})") from None
    return raw


def parse_flags(flags: str | Sequence[str]) -> dict[str, Any]:
    """Parse OpenAI flag strings (``"--class_cond True --num_channels 192"``) into typed kwargs.

    Accepts ``--name value`` and ``--name=value``; several strings (MODEL_FLAGS, SAMPLE_FLAGS) may be joined.
    Raises ValueError on unknown flag names, missing values and values of the wrong type.
    """
    tokens = shlex.split(flags) if isinstance(flags, str) else [t for f in flags for t in shlex.split(f)]
    known = known_flags()
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ValueError(f"expected a flag like --name, got {token!r} in {flags!r}")
        if "=" in token:
            name, raw = token[2:].split("=", 1)
            i += 1
        else:
            name = token[2:]
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ValueError(
                    f"flag --{name} has no value (OpenAI flags always take one, e.g. --{name} True)"
                )
            raw = tokens[i + 1]
            i += 2
        if name not in known:
            raise ValueError(f"unknown flag --{name}; OpenAI's scripts know: {', '.join(sorted(known))}")
        out[name] = _convert(name, raw, known[name])
    return out


def _merge_flags(flags: str | Sequence[str] | Mapping[str, Any] | None, extra: Mapping[str, Any]) -> dict:
    merged: dict[str, Any] = {}
    if isinstance(flags, Mapping):
        merged.update(flags)
    elif flags is not None:
        merged.update(parse_flags(flags))
    merged.update(extra)
    known = known_flags()
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise ValueError(f"unknown flag(s) {unknown}; OpenAI's scripts know: {', '.join(sorted(known))}")
    return {k: _convert(k, v, known[k]) for k, v in merged.items()}


def _infer_kind(state: Mapping[str, torch.Tensor], flags: Mapping[str, Any]) -> str:
    if not any(k.startswith("output_blocks.") for k in state):
        return "classifier"
    if "large_size" in flags or "small_size" in flags:
        return "superres"
    stem = state.get("input_blocks.0.0.weight")
    if stem is not None and stem.ndim == 4 and stem.shape[1] == 6:  # 3 image + 3 low-res channels
        return "superres"
    return "model"


def _call_with(factory: Any, values: Mapping[str, Any]) -> nn.Module:
    names = inspect.signature(factory).parameters
    return factory(**{k: v for k, v in values.items() if k in names})


def load_openai_checkpoint(
    path: str | os.PathLike,
    flags: str | Sequence[str] | Mapping[str, Any] | None = None,
    *,
    kind: str | None = None,
    map_location: Any = "cpu",
    **flag_values: Any,
) -> nn.Module:
    """Build the network an OpenAI checkpoint needs and load its weights (strict, read with weights_only).

    Args:
        path: an OpenAI ``.pt`` file (a plain state dict), e.g. ``64x64_diffusion.pt``.
        flags: the README's flags as a string (``"--attention_resolutions 32,16,8 --class_cond True ..."``)
            or a dict; missing flags take OpenAI's script defaults.
        kind: ``"model"``, ``"classifier"`` or ``"superres"``; inferred from the weights when None.
        map_location: passed to ``torch.load``.
        **flag_values: more flags as keyword arguments (override ``flags``).
    Returns:
        The network in eval mode: ``UNetModel`` / ``EncoderUNetModel`` / ``SuperResModel`` built with OpenAI's
        factories (call ``.convert_to_fp16()`` yourself for half-precision GPU inference, as OpenAI's scripts
        do with ``--use_fp16 True``). Without any flags, the preset whose shapes fit is built instead.
    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a plain weights file (nothing is executed), or the flags do not match
            the weights (missing / unexpected / mis-shaped keys and the fitting preset are listed).
    """
    state = safe_torch_load(path, map_location=map_location)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} does not hold a plain state dict ({{name: tensor}}) as OpenAI's checkpoints do"
        )
    return network_from_flags(state, flags, kind=kind, **flag_values)


def network_from_flags(
    state: Mapping[str, torch.Tensor],
    flags: str | Sequence[str] | Mapping[str, Any] | None = None,
    *,
    kind: str | None = None,
    **flag_values: Any,
) -> nn.Module:
    """:func:`load_openai_checkpoint` for a state dict already read (``{name: tensor}``)."""
    values = _merge_flags(flags, flag_values)
    if flags is None and not flag_values:
        from adm.config import build_network, fitting_presets

        fits = fitting_presets(state)
        if fits:
            return load_state_dict_checked(build_network(fits[0]), state).eval()
    kind = kind or _infer_kind(state, values)
    if kind == "model":
        defaults = model_and_diffusion_defaults()
        defaults.update(values)
        net = _call_with(create_model, defaults)
    elif kind == "classifier":
        defaults = classifier_defaults()
        defaults.update(values)
        net = _call_with(create_classifier, defaults)
    elif kind == "superres":
        defaults = sr_model_and_diffusion_defaults()
        defaults.update(values)
        net = _call_with(sr_create_model, defaults)
    else:
        raise ValueError(f"unknown kind {kind!r}; use 'model', 'classifier' or 'superres'")
    return load_state_dict_checked(net, state).eval()
