"""Start a new training run from existing weights (fine-tuning), as opposed to resuming one.

``init_ckpt=PATH`` in the training recipes reads the weights of a network from either

- an OpenAI released ``.pt`` file (a plain ``{name: tensor}`` state dict, e.g. ``64x64_diffusion.pt``), or
- one of our training checkpoints (``.ckpt``; EMA weights by default, the raw ones with ``ema=False``),

into a freshly built network. Every tensor that fits is loaded strictly. The class-dependent tensors are the
exception: when the checkpoint was trained on another number of classes, the diffusion model's label
embedding (``label_emb.weight``) or the classifier's last projection (under ``out.``) keeps its fresh
initialisation, and one log line says so. Anything else that does not fit raises one error listing the keys
and naming the presets that fit the checkpoint (the caller passes ``hint``, e.g. ``adm.config.preset_hint``).

Only weights travel: optimizer, step counter, learning-rate schedule and EMA start afresh (the EMA callback
copies the network when training starts, so it begins from the loaded weights).

    >>> unet = UNet(...)                     # num_classes=3
    >>> report = load_init_weights(unet, "64x64_diffusion.pt")
    >>> report.reinitialised
    ('label_emb.weight',)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adm.io.checkpoint import CONFIG_KEY, _select_weights
from adm.io.safe_load import safe_torch_load
from adm.nn.loading import load_state_dict_checked, shape_map

__all__ = ["InitReport", "check_resume", "load_init_weights", "read_init_state"]

log = logging.getLogger(__name__)

# config section of our checkpoints -> prefix of that network's keys in the LightningModule's state dict
_PREFIXES = {"model": "unet.", "classifier": "classifier."}


@dataclass(frozen=True)
class InitReport:
    """What :func:`load_init_weights` did.

    Attributes:
        source: "openai" (plain state dict) or "adm" (one of our training checkpoints).
        weights: "openai", "raw" or "ema_<rate>".
        step: optimizer steps of the checkpoint's run (0 for OpenAI files); the new run starts at 0 anyway.
        loaded: number of tensors copied from the checkpoint.
        reinitialised: keys left at their fresh initialisation because the class count differs.
        classes: (classes of the checkpoint, classes of the network); None means unconditional.
    """

    source: str
    weights: str
    step: int
    loaded: int
    reinitialised: tuple[str, ...]
    classes: tuple[int | None, int | None]


def read_init_state(
    path: str | os.PathLike, section: str, *, ema: bool | float = True
) -> tuple[dict[str, torch.Tensor], str, str, int]:
    """The network weights held by `path`: ``(state_dict, source, weights, step)``.

    Args:
        section: "model" (diffusion model or upsampler) or "classifier": which network of one of our
            checkpoints is wanted (an OpenAI file holds one network and is taken as is).
        ema: for our checkpoints, as in :func:`adm.io.checkpoint.load_checkpoint`.
    Raises:
        FileNotFoundError / ValueError: no such file, an unsafe or unreadable file, a checkpoint of the other
            network kind, or a file that holds no weights we know.
    """
    if section not in _PREFIXES:
        raise ValueError(f"section must be one of {list(_PREFIXES)}, not {section!r}")
    path = Path(path)
    ckpt = safe_torch_load(path)
    if isinstance(ckpt, dict) and CONFIG_KEY in ckpt and "state_dict" in ckpt:
        config = ckpt[CONFIG_KEY]
        if section not in config:
            other = "noisy classifier" if "classifier" in config else "diffusion model"
            wanted = "noisy classifier" if section == "classifier" else "diffusion model"
            raise ValueError(
                f"init_ckpt={path} holds a {other}; this run trains a {wanted}: give a {wanted} checkpoint"
            )
        state, weights, _ = _select_weights(ckpt, ema)
        prefix = _PREFIXES[section]
        net_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not net_state:
            raise ValueError(f"init_ckpt={path}: no '{prefix}*' weights in the checkpoint's state dict")
        return net_state, "adm", weights, int(ckpt.get("global_step", 0))
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return dict(ckpt), "openai", "openai", 0
    what = (
        "a Lightning checkpoint without our config"
        if isinstance(ckpt, dict) and "state_dict" in ckpt
        else ("neither a plain state dict ({name: tensor}) nor one of our training checkpoints")
    )
    raise ValueError(
        f"init_ckpt={path} is {what}; give an OpenAI released .pt file or a .ckpt written by "
        "scripts/train*.py"
    )


def _class_count(network: nn.Module) -> int | None:
    return getattr(network, "num_classes", None)


def _class_keys(
    network: nn.Module, given: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]
) -> tuple[list[str], list[str], int | None]:
    """(network keys to keep fresh, checkpoint keys to drop, the checkpoint's class count).

    Class-dependent tensors are the label embedding of a UNet and the classifier head's tensors under ``out.``
    whose first dimension is the class count; they qualify only when nothing but that dimension differs.
    """
    keep_fresh: list[str] = []
    drop: list[str] = []
    ckpt_classes: int | None = None
    from adm.nn.classifier import EncoderUNet

    head = "out." if isinstance(network, EncoderUNet) else "label_emb."
    for k, shape in expected.items():
        if not k.startswith(head):
            continue
        if k not in given:
            if head == "label_emb.":  # an unconditional checkpoint: the network gains a label embedding
                keep_fresh.append(k)
            continue
        old = given[k]
        if old != shape and len(old) == len(shape) and old[1:] == shape[1:]:
            keep_fresh.append(k)
            ckpt_classes = old[0]
    if head == "label_emb.":
        # a conditional checkpoint for an unconditional network: its label embedding is dropped
        drop = [k for k in given if k.startswith(head) and k not in expected]
        if drop:
            ckpt_classes = given[drop[0]][0]
        elif "label_emb.weight" in given:
            ckpt_classes = given["label_emb.weight"][0]
    return keep_fresh, drop, ckpt_classes


def load_init_weights(
    network: nn.Module,
    path: str | os.PathLike,
    *,
    section: str = "model",
    ema: bool | float = True,
    hint: Callable[[dict[str, tuple[int, ...]]], str] | None = None,
) -> InitReport:
    """Load the weights of `path` into `network` for fine-tuning (see the module docstring).

    Args:
        network: the freshly built UNet / SuperResUNet / EncoderUNet of the new run.
        section: "model" or "classifier" (see :func:`read_init_state`).
        ema: our checkpoints: True -> EMA weights of the first rate, False -> raw weights, float -> that rate.
        hint: called with the checkpoint's ``{key: shape}`` when it does not fit; its line ends the error.
    Raises:
        ValueError: the file cannot be used, or tensors other than the class-dependent ones do not fit
            (nothing in `network` is changed then).
    """
    state, source, weights, step = read_init_state(path, section, ema=ema)
    given = shape_map(state)
    expected = shape_map(network)
    keep_fresh, drop, ckpt_classes = _class_keys(network, given, expected)
    current = network.state_dict()
    merged = {k: v for k, v in state.items() if k not in drop}
    merged.update({k: current[k] for k in keep_fresh})
    load_state_dict_checked(network, merged, hint=(lambda _: hint(given)) if hint is not None else None)
    net_classes = _class_count(network)
    if keep_fresh or drop:
        what = "label embedding" if any(k.startswith("label_emb.") for k in keep_fresh + drop) else "head"
        action = "dropped" if drop and not keep_fresh else "re-initialised"
        log.info(
            "init_ckpt: the %s is %s (%s): the checkpoint has %s classes, this run %s",
            what,
            action,
            ", ".join(keep_fresh + drop),
            ckpt_classes if ckpt_classes is not None else "no",
            net_classes if net_classes is not None else "none (unconditional)",
        )
    else:
        ckpt_classes = net_classes
    loaded = len(merged) - len(keep_fresh)
    log.info(
        "init_ckpt: %d tensors of %s loaded from %s (%s weights%s); optimizer, step and EMA start afresh",
        loaded,
        type(network).__name__,
        path,
        weights,
        f", trained {step} steps" if source == "adm" else "",
    )
    return InitReport(
        source=source,
        weights=weights,
        step=step,
        loaded=loaded,
        reinitialised=tuple(keep_fresh),
        classes=(ckpt_classes, net_classes),
    )


def check_resume(path: str | os.PathLike, max_steps: int) -> int:
    """Check that `path` is a training checkpoint a run can resume and train further; return its step.

    The file is memory-mapped, so large checkpoints are not read twice (Lightning reads it to resume).

    Args:
        max_steps: the run's ``trainer.max_steps`` (-1 or None: no step limit, nothing to compare).
    Raises:
        ValueError: a plain state dict (OpenAI's weights: start a new run with ``init_ckpt=``), a file that is
            not a training checkpoint, or a checkpoint already past ``max_steps`` (nothing would be trained).
            A checkpoint exactly at ``max_steps`` (a finished run started again) only logs a warning.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format file (or unsafe): the checked loader says which, clearly
        ckpt = safe_torch_load(path)
    if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(
            f"ckpt_path={path} is a plain state dict (e.g. OpenAI's released weights), not a training "
            "checkpoint to resume: start a new run from these weights with init_ckpt=" + str(path)
        )
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ValueError(
            f"ckpt_path={path} is not a training checkpoint written by scripts/train*.py (no 'state_dict' / "
            "'global_step'); to start from its weights use init_ckpt=PATH"
        )
    step = int(ckpt["global_step"])
    if max_steps is not None and max_steps >= 0 and step > max_steps:
        raise ValueError(
            f"ckpt_path={path} was written at step {step}, and trainer.max_steps={max_steps}: resuming would "
            f"train nothing. Raise trainer.max_steps above {step} to continue that run, or start a new run "
            f"from its weights with init_ckpt={path} (step 0, fresh optimizer)"
        )
    if max_steps is not None and step == max_steps:
        log.warning("ckpt_path=%s is already at trainer.max_steps=%d: nothing to train", path, max_steps)
    return step
