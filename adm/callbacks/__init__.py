"""Every Lightning callback of the project: EMA of the weights (several rates, warm-up), periodic sample
grids, the FID callback, the step-based progress bar, ``last.ckpt`` with the final state, bit-exact resume
(random streams, epoch ends) and SLURM pre-emption."""

from adm.callbacks.checkpoint import LastCheckpoint
from adm.callbacks.ema import EMA, ema_decay
from adm.callbacks.preemption import Preempted, PreemptionCheckpoint, RankVote
from adm.callbacks.progress import StepProgressBar
from adm.callbacks.resume import EpochEndResume, RandomStreams
from adm.callbacks.sample_grid import SampleGrid

__all__ = [
    "EMA",
    "EpochEndResume",
    "LastCheckpoint",
    "Preempted",
    "PreemptionCheckpoint",
    "RandomStreams",
    "RankVote",
    "SampleGrid",
    "StepProgressBar",
    "ema_decay",
]
