"""Summary of a sampling sweep: one row per run (guidance scale, sampler, scores) -> summary.csv, summary.png.

``python scripts/sample.py -m guidance.scale=0,1,4 ...`` runs one job per scale in
``<sweep dir>/<job number>``; each job writes ``sample_info.json`` (its settings) and, when scored,
``metrics.json``. At the end of the multirun, :class:`SweepSummary` (registered under ``hydra.callbacks``
in ``conf/sample.yaml``) collects them:

- ``summary.csv``: job, overrides, guidance (classifier / cfg), guidance_scale, sampler, steps, num_samples,
  fid, sfid, is, precision, recall, accuracy, seconds_per_image (empty where a run was not scored);
- ``summary.png``: each score against the guidance scale (one line per combination of the other swept
  settings), plus precision against recall: the paper's fidelity / diversity trade-off;
- with ``logger=wandb``: the jobs' W&B runs share one group (the sweep folder's name) and one more run of
  that group (``job_type="sweep-summary"``) holds the table, ``summary.png`` and FID against the guidance
  scale (:func:`adm.tracking.log_sweep_summary`).
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from adm.metrics.names import METRIC_TABLE, METRICS

__all__ = [
    "METRIC_COLUMNS",
    "SweepSummary",
    "collect_runs",
    "format_summary",
    "plot_summary",
    "row_series",
    "row_setting",
    "write_summary",
]

log = logging.getLogger(__name__)

METRIC_COLUMNS = METRICS
_TITLES = {m.name: m.label + (" (lower is better)" if m.lower_is_better else "") for m in METRIC_TABLE}
_COLUMNS = (
    "job",
    "overrides",
    "guidance",
    "guidance_scale",
    "sampler",
    "steps",
    "num_samples",
    *METRIC_COLUMNS,
    "seconds_per_image",
)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def collect_runs(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder of `sweep_dir` with a ``sample_info.json``, sorted by guidance scale, job."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for job_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        info = _read_json(job_dir / "sample_info.json")
        if info is None:
            continue
        drawn = info.get("drawn_with") or {}  # the sampler and guidance, by their registered names
        metrics = _read_json(job_dir / "metrics.json") or {}
        row: dict[str, Any] = {
            "dir": str(job_dir),
            "job": job_dir.name,
            "overrides": " ".join(_overrides(job_dir)),
            "guidance": drawn.get("guidance"),
            "guidance_scale": float(drawn.get("guidance_scale") or 0.0),
            "sampler": drawn.get("sampler"),
            "steps": drawn.get("steps"),
            "num_samples": info.get("num_samples"),
        }
        row.update({m: metrics.get(m) for m in METRIC_COLUMNS})
        row["seconds_per_image"] = metrics.get("seconds_per_image")
        rows.append(row)
    rows.sort(key=lambda r: (r["guidance_scale"], int(r["job"]) if r["job"].isdigit() else r["job"]))
    return rows


def write_summary(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write the rows as CSV (job, overrides, guidance_scale, sampler, steps, num_samples, scores)."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in _COLUMNS})
    return path


# Overrides that the sampler / guidance parts of a row's label already show.
_SHOWN_OVERRIDES = frozenset({"guidance.scale", "sampler", "sampler.steps", "guidance"})


def _parsed_overrides(row: dict[str, Any]) -> dict[str, str]:
    pairs = (o.split("=", 1) for o in str(row.get("overrides") or "").split() if "=" in o)
    return {k.lstrip("+"): v for k, v in pairs}


def row_series(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """What tells the jobs apart besides the guidance scale: (the words naming it, one label per row).

    Each part only where it differs between the jobs: the sampler and its steps ("ddim-25"), the guidance
    kind ("classifier", "cfg"), any other swept override ("seed=1"). A row's label is "" when nothing but
    the scale differs, and for rows that carry their own "label" (e.g. "real digits").
    """
    jobs = [i for i, r in enumerate(rows) if not r.get("label")]
    parsed = [_parsed_overrides(r) for r in rows]

    def differs(value: Any) -> bool:
        return len({value(i) for i in jobs}) > 1

    sampler = differs(lambda i: (rows[i].get("sampler"), rows[i].get("steps")))
    guidance = differs(lambda i: rows[i].get("guidance"))
    keys = sorted({k for i in jobs for k in parsed[i]} - _SHOWN_OVERRIDES)
    others = [k for k in keys if differs(lambda i, k=k: parsed[i].get(k))]
    words = [w for w, shown in (("sampler", sampler), ("guidance", guidance), ("settings", others)) if shown]
    labels = []
    for i, row in enumerate(rows):
        parts = []
        if row.get("label"):
            labels.append("")
            continue
        if sampler:
            steps = row.get("steps")
            parts.append(f"{row.get('sampler')}" + ("" if steps is None else f"-{steps}"))
        if guidance:
            parts.append(str(row.get("guidance") or "none"))
        parts += [f"{k}={parsed[i][k]}" for k in others if k in parsed[i]]
        labels.append(" ".join(parts))
    return words, labels


def row_setting(row: Mapping[str, Any], series_label: str) -> str:
    """A row's name in summaries: its own "label" if it carries one, else its series label (from
    :func:`row_series`) and guidance scale, e.g. "ddim-25 classifier 2" or just "2"."""
    if row.get("label"):
        return str(row["label"])
    return f"{series_label} {float(row['guidance_scale']):g}".strip()


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a plain-text table: the guidance scale, then every score that some row has ('-' where a
    row has none). When the jobs differ in more than the scale (sampler, steps, guidance kind, another
    swept setting), the first column names every setting that differs, e.g. "ddim-25 classifier 2". A
    row's "label" (e.g. "real digits") stands in the first column instead."""
    present = [m for m in METRIC_COLUMNS if any(r.get(m) is not None for r in rows)]
    words, series = row_series(rows)
    first = [row_setting(r, label) for r, label in zip(rows, series)]
    title = " ".join([*words, "scale"]) if words else "guidance scale"
    width = max([len(title), *map(len, first)])
    lines = [f"{title:>{width}}" + "".join(f" {m:>10}" for m in present)]
    lines.append("-" * len(lines[0]))
    for row, name in zip(rows, first):
        cells = []
        for m in present:
            v = row.get(m)
            shown = "-" if v is None or v != v else f"{float(v):.3f}"  # v != v: NaN
            cells.append(f" {shown:>10}")
        lines.append(f"{name:>{width}}" + "".join(cells))
    return "\n".join(lines)


def _series_labels(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Per row: the settings other than the guidance scale whose values differ between runs ("" if none)."""
    return row_series(rows)[1]


def _plot_grids(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    from PIL import Image

    shown = [r for r in rows if (Path(r["dir"]) / "grid.png").is_file()]
    if not shown:
        return None
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.4), squeeze=False)
    for ax, row, label in zip(axes[0], shown, _series_labels(shown)):
        with Image.open(Path(row["dir"]) / "grid.png") as grid:
            ax.imshow(grid.convert("RGB"))
        ax.set_title(f"guidance scale {row['guidance_scale']:g}\n{label}".strip(), fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_summary(rows: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Scores against guidance scale (one panel per score present) and precision vs recall.

    Runs that were not scored are shown as their sample grids side by side instead. None: nothing to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    present = [m for m in METRIC_COLUMNS if any(r.get(m) is not None for r in rows)]
    if not present:
        return _plot_grids(rows, path)
    trade_off = "precision" in present and "recall" in present
    panels = len(present) + int(trade_off)
    ncols = min(panels, 3)
    nrows = -(-panels // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.2 * nrows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[panels:]:
        ax.axis("off")
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row, label in zip(rows, _series_labels(rows)):
        series[label or "runs"].append(row)
    for ax, metric in zip(axes, present):
        for label, points in series.items():
            points = [p for p in points if p.get(metric) is not None]
            ax.plot([p["guidance_scale"] for p in points], [p[metric] for p in points], "o-", label=label)
        ax.set_xlabel("guidance scale")
        ax.set_title(_TITLES[metric])
        ax.grid(alpha=0.3)
    if trade_off:
        ax = axes[panels - 1]
        for label, points in series.items():
            points = [p for p in points if p.get("precision") is not None and p.get("recall") is not None]
            ax.plot([p["recall"] for p in points], [p["precision"] for p in points], "o-", label=label)
            for p in points:
                ax.annotate(f"{p['guidance_scale']:g}", (p["recall"], p["precision"]), fontsize=7)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("fidelity vs diversity (labels: scale)")
        ax.grid(alpha=0.3)
    if len(series) > 1:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class SweepSummary(Callback):
    """Hydra callback: after a multirun, write summary.csv and summary.png into the sweep folder, and with
    ``logger=wandb`` log them into a W&B run of the sweep's group.

    Args:
        filename: stem of the two files.
    """

    def __init__(self, filename: str = "summary") -> None:
        self.filename = filename

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = collect_runs(sweep_dir)
        if not rows:
            log.warning("no sample runs found in %s: no summary written", sweep_dir)
            return
        log.info("sweep summary (%d runs):\n%s", len(rows), format_summary(rows))
        csv_path = write_summary(rows, sweep_dir / f"{self.filename}.csv")
        png_path = plot_summary(rows, sweep_dir / f"{self.filename}.png")
        log.info("sweep summary: %s%s", csv_path, f", {png_path}" if png_path else " (no scores to plot)")
        from adm.tracking import log_sweep_summary, wandb_config

        wandb = wandb_config(config, skip=("save_dir",))  # the summary run lives in the sweep folder
        if wandb is not None:
            series = _series_labels(rows)
            named = [{**row, "setting": row_setting(row, label)} for row, label in zip(rows, series)]
            run_id = log_sweep_summary(wandb, named, series, sweep_dir, png_path)
            log.info("sweep summary: W&B run %s (job_type sweep-summary) in %s", run_id, sweep_dir / "wandb")
