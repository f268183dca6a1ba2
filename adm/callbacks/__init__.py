"""Training callbacks: EMA of the weights (several rates, warm-up) and periodic sample grids."""

from adm.callbacks.ema import EMA, ema_decay
from adm.callbacks.sample_grid import SampleGrid

__all__ = ["EMA", "SampleGrid", "ema_decay"]
