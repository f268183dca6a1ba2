"""Loading state dicts with one clear error when a checkpoint does not fit the network."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

__all__ = ["load_state_dict_checked", "shape_map"]

_SHOW = 10  # keys listed per category in error messages


def shape_map(state: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a state dict (or of a module's state dict), in key order."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    return {k: tuple(v.shape) for k, v in state.items()}


def _listing(title: str, items: list[str]) -> str:
    shown = "\n".join(f"    {item}" for item in items[:_SHOW])
    more = f"\n    ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"  {title} ({len(items)}):\n{shown}{more}"


def load_state_dict_checked(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    hint: Callable[[dict[str, tuple[int, ...]]], str] | None = None,
) -> nn.Module:
    """``module.load_state_dict(state_dict, strict=True)`` with a readable error instead of a wall of keys.

    Args:
        hint: called with the checkpoint's ``{key: shape}`` map when it does not fit; its line ends the error
            (``adm.config.preset_hint`` names the presets whose networks fit the checkpoint).
    Raises:
        ValueError: listing missing, unexpected and mis-shaped keys (the first few of each, with counts),
            then the hint.
    Returns:
        ``module``.
    """
    expected = shape_map(module)
    given = shape_map(state_dict)
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    misshaped = [
        f"{k}: checkpoint {list(given[k])} vs network {list(expected[k])}"
        for k in expected
        if k in given and given[k] != expected[k]
    ]
    if missing or unexpected or misshaped:
        parts = [f"checkpoint does not fit {type(module).__name__}:"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if misshaped:
            parts.append(_listing("mis-shaped keys", misshaped))
        prefixes = {k.split(".", 1)[0] for k in unexpected if "." in k}
        if unexpected and len(prefixes) == 1 and len(unexpected) == len(given):
            parts.append(f"  hint: every key starts with {prefixes.pop()!r}.; strip that prefix first")
        if hint is not None:
            parts.append(f"  {hint(given)}")
        raise ValueError("\n".join(parts))
    module.load_state_dict(dict(state_dict), strict=True)
    return module
