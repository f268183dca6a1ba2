"""The metrics we report, in one table: name, features read, what each needs of a reference, display label.

Every list of metric names in the package (the evaluator's choices, the FID callback's reference needs, the
sweep summary's columns, the evaluate recipe's table, the demo's columns) is taken from :data:`METRIC_TABLE`.

Reference needs:
    "none": computed from the samples alone (IS, class accuracy);
    "stats": needs the reference's Gaussian statistics; precomputed ``mu``/``sigma`` of a reference batch do;
    "features": needs the reference's per-image features (precision / recall: k-nearest-neighbour balls).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "METRICS",
    "METRIC_KINDS",
    "METRIC_LABELS",
    "METRIC_TABLE",
    "NEEDS_REFERENCE",
    "Metric",
    "metric",
    "metric_names",
]


@dataclass(frozen=True)
class Metric:
    """One reported metric.

    Attributes:
        name: its key in results, ``metrics.json`` and ``summary.csv`` (e.g. "fid"); logged as
            ``sample/<name>``.
        kind: the feature kind it reads ("pool", "spatial" or "logits"; see ``adm.metrics.extractor``).
        reference: "none", "stats" or "features" (see the module docstring).
        label: how tables and plots show it.
        lower_is_better: True for distances (FID, sFID).
    """

    name: str
    kind: str
    reference: str
    label: str
    lower_is_better: bool = False

    @property
    def needs_reference(self) -> bool:
        return self.reference != "none"


METRIC_TABLE: tuple[Metric, ...] = (
    Metric("fid", "pool", "stats", "FID", lower_is_better=True),
    Metric("sfid", "spatial", "stats", "sFID", lower_is_better=True),
    Metric("is", "logits", "none", "Inception Score"),
    Metric("precision", "pool", "features", "Precision"),
    Metric("recall", "pool", "features", "Recall"),
    Metric("accuracy", "logits", "none", "Class accuracy"),
)

METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE)
METRIC_KINDS: dict[str, str] = {m.name: m.kind for m in METRIC_TABLE}
METRIC_LABELS: dict[str, str] = {m.name: m.label for m in METRIC_TABLE}
NEEDS_REFERENCE: frozenset[str] = frozenset(m.name for m in METRIC_TABLE if m.needs_reference)
_BY_NAME = {m.name: m for m in METRIC_TABLE}


def metric(name: str) -> Metric:
    """The table's row for `name`; ValueError naming the valid names when there is none."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose from {list(METRICS)}") from None


def metric_names(*names: str) -> tuple[str, ...]:
    """`names` checked against the table (a selection in a consumer's own order)."""
    return tuple(metric(n).name for n in names)
