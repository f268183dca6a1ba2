"""LightningModules (short: they delegate to adm.nn, adm.diffusion and adm.sampling) and their optimizer
schedules. The Lightning callbacks are in :mod:`adm.callbacks`."""

from adm.lit.classifier import ClassifierModule
from adm.lit.diffusion import DiffusionModule
from adm.lit.optim import WarmupLinearAnneal, warmup_linear_anneal

__all__ = [
    "ClassifierModule",
    "DiffusionModule",
    "WarmupLinearAnneal",
    "warmup_linear_anneal",
]
