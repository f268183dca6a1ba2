"""Training callbacks: EMA of the weights (several rates, warm-up), periodic sample grids and the step-based
progress bar."""

from adm.callbacks.ema import EMA, ema_decay
from adm.callbacks.progress import StepProgressBar
from adm.callbacks.sample_grid import SampleGrid

__all__ = ["EMA", "SampleGrid", "StepProgressBar", "ema_decay"]
