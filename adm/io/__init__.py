"""Checkpoint and file input/output: safe loading (``safe_torch_load``) and self-describing checkpoints."""

from adm.io.safe_load import safe_torch_load

__all__ = ["safe_torch_load"]
