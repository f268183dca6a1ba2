"""LightningModules (short: they delegate to adm.nn, adm.diffusion and adm.sampling) and training helpers."""

from adm.lit.classifier import ClassifierModule
from adm.lit.diffusion import DiffusionModule
from adm.lit.optim import WarmupLinearAnneal, warmup_linear_anneal
from adm.lit.preemption import Preempted, PreemptionCheckpoint, RankVote
from adm.lit.resume import EpochEndResume, RandomStreams

__all__ = [
    "ClassifierModule",
    "DiffusionModule",
    "EpochEndResume",
    "Preempted",
    "PreemptionCheckpoint",
    "RandomStreams",
    "RankVote",
    "WarmupLinearAnneal",
    "warmup_linear_anneal",
]
