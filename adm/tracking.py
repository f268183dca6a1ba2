"""Weights & Biases for the recipes Lightning does not run: sample jobs, evaluations, sweep summaries.

Training logs through Lightning's ``WandbLogger``, built from ``conf/logger/wandb.yaml``. ``logger=wandb``
selects that same config for ``scripts/sample.py`` and ``scripts/evaluate.py``; its keys (project, name,
save_dir, offline, tags, group, id, and any other ``wandb.init`` argument added with
``+logger.wandb.KEY=...``) open a run here with ``wandb.init``. Offline by default: the run is written to
``<save_dir>/wandb/offline-run-*`` and uploaded later with ``wandb sync``.

What lands on the dashboard:

- a sample job (``job_type="sample"``): the scores of ``metrics.json`` as ``sample/<metric>`` (the names
  the training FID callback logs), ``sample/seconds_per_image``, the settings as the run's config (sampler,
  steps, guidance kind and scale, num_samples, seed ...), a ``samples`` table (index, label, class, image;
  the first ``table_rows`` samples) and the ``grid`` image captioned with its classes;
- an evaluation (``job_type="evaluate"``): the scores and what was scored (samples, reference, features);
- a sweep (``-m``): every job in one group (the sweep folder's name), plus one run of that group with
  ``job_type="sweep-summary"``: the summary table, ``summary.png`` and FID against the guidance scale;
- every run: the summary keeps the best value of each score (``define_metric``: the minimum of FID and
  sFID, the maximum of IS, precision, recall and accuracy), training runs too
  (:func:`define_training_metrics`).

A run directory keeps its W&B run id (``<run dir>/wandb_id``): the same job run again continues its run.
``wandb`` is imported only when a W&B logger is configured.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from adm.errors import WandbMissingError
from adm.io.grid import label_captions
from adm.metrics.names import METRIC_TABLE, METRICS

__all__ = [
    "METRIC_PREFIX",
    "WandbMissingError",
    "define_metrics",
    "define_training_metrics",
    "grid_caption",
    "init_kwargs",
    "log_evaluation",
    "log_sample_job",
    "log_sweep_summary",
    "open_run",
    "require_wandb",
    "samples_table",
    "scores",
    "wandb_config",
]

METRIC_PREFIX = "sample/"  # the training FID callback's names: one panel per score across runs
# Keys of conf/logger/wandb.yaml that only Lightning's WandbLogger reads.
_LIGHTNING_ONLY = frozenset(
    {"_target_", "log_model", "prefix", "checkpoint_name", "experiment", "add_file_policy", "save_dir"}
)


def wandb_run_id(output_dir: Path) -> str:
    """The W&B run id of this run directory (``output_dir/wandb_id``), created once and reused on resume."""
    path = output_dir / "wandb_id"
    if not path.is_file():
        output_dir.mkdir(parents=True, exist_ok=True)
        new = os.urandom(4).hex()
        try:
            with open(path, "x") as f:  # the first process to get here wins; the others read its id
                f.write(new)
        except FileExistsError:
            pass
    return path.read_text().strip()


def require_wandb() -> Any:
    """The ``wandb`` module; a :class:`WandbMissingError` saying how to install it when it is missing."""
    try:
        import wandb
    except ImportError:
        raise WandbMissingError(
            "logger=wandb needs the wandb package, which is not installed: pip install wandb (or drop "
            "logger=wandb)"
        ) from None
    return wandb


# --- the config ---------------------------------------------------------------------------------------------
def wandb_config(cfg: Any, skip: Sequence[str] = ()) -> dict[str, Any] | None:
    """The ``logger.wandb`` node of a recipe's config as a plain dict, or None when no W&B logger is set.

    Keys in `skip` are left out unresolved (a sweep's summary has no run directory to resolve
    ``save_dir`` against).
    """
    logger = cfg.get("logger") if isinstance(cfg, Mapping) or OmegaConf.is_dict(cfg) else None
    node = logger.get("wandb") if logger else None
    if not node:
        return None
    plain: dict[str, Any] = {}
    for key in node:
        if key in skip:
            continue
        value = node[key]
        plain[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return plain


def _hydra_job() -> tuple[str | None, int | None]:
    """(sweep folder's name, job number) when this process runs a job of a Hydra multirun, else Nones."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        return None, None
    return Path(str(hydra.sweep.dir)).name, int(hydra.job.num)


def init_kwargs(
    node: Mapping[str, Any],
    run_dir: str | Path,
    *,
    job_type: str,
    config: Mapping[str, Any] | None = None,
    group: str | None = None,
    name_suffix: str | None = None,
) -> dict[str, Any]:
    """``wandb.init`` arguments for the ``logger.wandb`` settings `node`, as Lightning's WandbLogger builds
    them (``save_dir`` -> ``dir``, ``offline`` -> ``mode``), for a run of `run_dir`.

    The id, when the node gives none, is `run_dir`'s own (``wandb_id``: a rerun continues the run); the
    group, when none is given, is `group` (a sweep's folder name).
    """
    kwargs = {k: v for k, v in node.items() if k not in _LIGHTNING_ONLY}
    save_dir = node.get("save_dir") or kwargs.get("dir") or run_dir
    kwargs["dir"] = str(save_dir)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    offline = kwargs.pop("offline", False)
    if offline:
        kwargs["mode"] = "offline"
    version = kwargs.pop("version", None)
    kwargs["id"] = kwargs.get("id") or version or wandb_run_id(Path(run_dir))
    kwargs["resume"] = kwargs.get("resume") or "allow"
    kwargs.setdefault("reinit", "create_new")  # its own run even while another one (training's) is active
    if kwargs.get("group") is None and group is not None:
        kwargs["group"] = group
    if name_suffix and kwargs.get("name"):
        kwargs["name"] = f"{kwargs['name']}-{name_suffix}"
    kwargs["tags"] = [str(t) for t in kwargs.get("tags") or []] or None
    kwargs["job_type"] = job_type
    if config is not None:
        kwargs["config"] = dict(config)
    return kwargs


@contextlib.contextmanager
def open_run(
    node: Mapping[str, Any],
    run_dir: str | Path,
    *,
    job_type: str,
    config: Mapping[str, Any] | None = None,
    group: str | None = None,
    name_suffix: str | None = None,
) -> Iterator[Any]:
    """A W&B run for `run_dir` from the ``logger.wandb`` settings, with the score summaries defined;
    finished on leaving (marked failed when the block raises).

    In a job of a Hydra multirun the run joins the sweep's group (the sweep folder's name) and its name
    gets the job number, unless `group` / `name_suffix` say otherwise.
    """
    wandb = require_wandb()
    sweep, job = _hydra_job()
    kwargs = init_kwargs(
        node,
        run_dir,
        job_type=job_type,
        config=config,
        group=group if group is not None else sweep,
        name_suffix=name_suffix if name_suffix is not None else (None if job is None else str(job)),
    )
    run = wandb.init(**kwargs)
    define_metrics(run)
    failed = True
    try:
        yield run
        failed = False
    finally:
        run.finish(exit_code=1 if failed else 0)


# --- what is logged -----------------------------------------------------------------------------------------
def define_metrics(run: Any, prefix: str = METRIC_PREFIX, **options: Any) -> None:
    """The summary of every score is its best value: the minimum of FID and sFID (lower is better), the
    maximum of IS, precision, recall and class accuracy. `options` go to every ``define_metric`` call."""
    for m in METRIC_TABLE:
        run.define_metric(f"{prefix}{m.name}", summary="min" if m.lower_is_better else "max", **options)


def define_training_metrics(loggers: Sequence[Any]) -> None:
    """:func:`define_metrics` on the runs of the Lightning ``WandbLogger`` among `loggers` (the FID
    callback's ``sample/<metric>``, charted against the trainer's global step as Lightning does)."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger):
            define_metrics(logger.experiment, step_metric="trainer/global_step", step_sync=True)


def scores(results: Mapping[str, Any], prefix: str = METRIC_PREFIX) -> dict[str, float]:
    """The scores among `results` (``metrics.json``) as ``{prefix + name: value}``."""
    out = {}
    for name in METRICS:
        value = results.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{name}"] = float(value)
    return out


def _image(wandb: Any, image: np.ndarray, caption: str | None = None) -> Any:
    """A uint8 (H, W, C) array as a ``wandb.Image`` (grey images as (H, W))."""
    return wandb.Image(image[..., 0] if image.shape[-1] == 1 else image, caption=caption)


def samples_table(images: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str] | None) -> Any:
    """A ``wandb.Table`` with one row per sample: index, label, class (its name, else the index), image."""
    wandb = require_wandb()
    table = wandb.Table(columns=["index", "label", "class", "image"])
    names = label_captions(labels, class_names) if labels is not None else [""] * len(images)
    for i, image in enumerate(images):
        label = int(labels[i]) if labels is not None else None
        table.add_data(i, label, names[i], _image(wandb, image))
    return table


def grid_caption(labels: np.ndarray | None, class_names: Sequence[str] | None, count: int) -> str:
    """The grid's caption: the classes of its images in order (names, else label indices)."""
    if labels is None or len(labels) == 0:
        return f"{count} unconditional samples"
    return f"{count} samples: " + ", ".join(label_captions(labels, class_names))


def _class_names(out_dir: Path) -> list[str] | None:
    """The class names the sampled checkpoint records (``sample_info.json``: model.class_names)."""
    from adm.io.shards import INFO_FILE

    try:
        info = json.loads((out_dir / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    names = (info.get("model") or {}).get("class_names")
    return None if names is None else [str(n) for n in names]


def log_sample_job(run: Any, result: Mapping[str, Any], *, grid_size: int, table_rows: int) -> None:
    """Log one sample job's outcome (the summary :func:`adm.recipes.sample.sample` returns): its scores,
    seconds per image, the samples table and the grid captioned with its classes."""
    from adm.io.npz import read_images

    wandb = require_wandb()
    samples = Path(result["samples"])
    class_names = _class_names(samples.parent)
    images, labels = read_images(samples, max(int(grid_size), int(table_rows), 0))
    record: dict[str, Any] = scores(result.get("metrics") or {})
    seconds = result.get("seconds_per_image") or (result.get("metrics") or {}).get("seconds_per_image")
    if seconds is not None:
        record[f"{METRIC_PREFIX}seconds_per_image"] = float(seconds)
    if table_rows > 0:
        rows = min(int(table_rows), len(images))
        record["samples"] = samples_table(
            images[:rows], None if labels is None else labels[:rows], class_names
        )
    grid = Path(result["grid"])
    if grid.is_file():
        shown = min(int(grid_size), len(images))
        caption = grid_caption(None if labels is None else labels[:shown], class_names, shown)
        record["grid"] = wandb.Image(str(grid), caption=caption)
    run.log(record)


def log_evaluation(run: Any, results: Mapping[str, Any]) -> None:
    """Log an evaluation's scores (and the sample / reference counts) as one step."""
    record: dict[str, Any] = scores(results)
    for key in ("num_samples", "num_reference"):
        if isinstance(results.get(key), int | float):
            record[f"{METRIC_PREFIX}{key}"] = results[key]
    run.log(record)


# --- sweeps -------------------------------------------------------------------------------------------------
_SUMMARY_COLUMNS = ("setting", "job", "guidance", "guidance_scale", "sampler", "steps", "num_samples")


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if value != value else value  # NaN: an empty cell
    return str(value)


def _job_run_id(row: Mapping[str, Any]) -> str | None:
    path = Path(str(row.get("dir", ""))) / "wandb_id"
    return path.read_text().strip() if path.is_file() else None


def log_sweep_summary(
    node: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    series: Sequence[str],
    sweep_dir: str | Path,
    plot: str | Path | None = None,
) -> str:
    """Log a sweep's summary into one run of the sweep's group (``job_type="sweep-summary"``): the table
    (one row per job, with the job's own W&B run id), `plot` (``summary.png``), FID against the guidance
    scale (one line per series) and one point per job, so that the run's summary holds the sweep's best
    scores.

    Args:
        node: the ``logger.wandb`` settings (``save_dir`` and ``id`` are not read: the run lives in
            `sweep_dir`, whose ``wandb_id`` keeps its id).
        rows: :func:`adm.recipes.sweep.collect_runs`, each with its "setting" (the row's name in the
            table, :func:`adm.recipes.sweep.row_setting`).
        series: per row, the settings other than the guidance scale that differ between jobs ("" if none).
        sweep_dir: the multirun's folder; its name is the group unless ``logger.wandb.group`` is set.
    Returns:
        the summary run's id.
    """
    wandb = require_wandb()
    sweep_dir = Path(sweep_dir)
    node = {k: v for k, v in node.items() if k not in ("id", "version", "save_dir")}
    node["dir"] = str(sweep_dir)
    metrics = [m for m in (*METRICS, "seconds_per_image") if any(r.get(m) is not None for r in rows)]
    columns = [*_SUMMARY_COLUMNS, *metrics, "wandb_run"]
    data = []
    for row in rows:
        values = {**row, "wandb_run": _job_run_id(row)}
        data.append([_cell(values.get(c)) for c in columns])
    with open_run(
        node,
        sweep_dir,
        job_type="sweep-summary",
        config={"jobs": len(rows), "sweep_dir": str(sweep_dir.resolve())},
        group=node.get("group") or sweep_dir.name,
        name_suffix="sweep-summary",
    ) as run:
        run.define_metric("guidance_scale")
        define_metrics(run, step_metric="guidance_scale")
        for row in rows:
            point = scores(row)
            if point:
                run.log({"guidance_scale": float(row["guidance_scale"]), **point})
        record: dict[str, Any] = {"summary": wandb.Table(columns=columns, data=data)}
        if plot is not None and Path(plot).is_file():
            record["summary_plot"] = wandb.Image(
                str(plot), caption=f"{sweep_dir.name}: scores vs guidance scale"
            )
        lines: dict[str, list[tuple[float, float]]] = {}
        for row, label in zip(rows, series):
            if row.get("fid") is not None:
                lines.setdefault(label or "FID", []).append((float(row["guidance_scale"]), float(row["fid"])))
        if lines:
            record["fid_vs_guidance_scale"] = wandb.plot.line_series(
                xs=[[x for x, _ in sorted(points)] for points in lines.values()],
                ys=[[y for _, y in sorted(points)] for points in lines.values()],
                keys=list(lines),
                title="FID vs guidance scale",
                xname="guidance scale",
            )
        run.log(record)
        return str(run.id)
