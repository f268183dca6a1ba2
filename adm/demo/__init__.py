"""Pieces of the guidance demo (``scripts/demo.py``): guided sample sweeps and their scores in a domain CNN.

- :func:`balanced_labels`, :func:`draw_samples`: every class equally often, every sample from its own seed;
- :class:`DomainRuler`: a classifier trained on the real images scores samples (class accuracy; FID /
  precision / recall of its penultimate features against held-out real images);
- :func:`class_grid`, :func:`format_table`, :func:`best_scale`: what the demo shows.
"""

from adm.demo.sweep import (
    METRICS,
    DomainRuler,
    balanced_labels,
    best_scale,
    class_grid,
    draw_samples,
    format_table,
)

__all__ = [
    "METRICS",
    "DomainRuler",
    "balanced_labels",
    "best_scale",
    "class_grid",
    "draw_samples",
    "format_table",
]
