"""`make demo`: classifier guidance in miniature on MNIST-5k, from training to a scored guidance sweep.

    python scripts/demo.py                                        # ~11 minutes on a quiet 2-core CPU
    python scripts/demo.py scales=[0,1,2,4,8,16] reuse=true       # re-sample with the trained networks
    python scripts/demo.py 'diffusion_overrides=["trainer.max_steps=3000"]'

1. a small CNN learns the real digits (train split): the independent ruler of step 4; the held-out digits
   become the reference sample file ``${output_dir}/reference.npz``;
2. the class-conditional ADM trains through scripts/train.py's recipe (experiment=demo_diffusion);
3. the noisy classifier trains through scripts/train_classifier.py's recipe (experiment=demo_classifier);
4. every guidance scale is one run of scripts/sample.py's recipe (same seeds, balanced labels), scored by the
   CNN (accuracy w.r.t. the requested class; FID / precision / recall of its features against the held-out
   digits) into ``${output_dir}/samples/scale_<s>/metrics.json``; the sweep summary of those runs is printed
   and written (``summary.csv``, ``summary.png``, ``summary.json``), with the best scale's samples in
   ``${output_dir}/samples_grid.png`` (one row per class) and every scale's in ``grids/``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig

from adm.io.grid import by_class, save_grid
from adm.io.npz import read_images, save_npz
from adm.metrics import build_extractor, evaluate, reference_features, train_domain_classifier
from adm.metrics.names import metric_names
from adm.recipes.sample import sample
from adm.recipes.sweep import collect_runs, format_summary, plot_summary, write_summary
from adm.recipes.train import train, train_classifier

log = logging.getLogger("demo")

TARGET_ACCURACY = 0.8
METRICS = metric_names("accuracy", "fid", "precision", "recall")


def scale_key(scale: float) -> str:
    """The summary key of a guidance scale: 0 -> "0", 2.0 -> "2", 0.5 -> "0.5"."""
    return f"{float(scale):g}"


def train_network(
    config_name: str, overrides: list[str], run_dir: Path, fit: Callable[[DictConfig], Any], reuse: bool
) -> Path:
    """Compose `config_name` (conf/train*.yaml) with `overrides`, fit into `run_dir`; return its last.ckpt.

    With `reuse`, a ``last.ckpt`` already in `run_dir` is returned without training.
    """
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if reuse and ckpt.is_file():
        log.info("reuse=true: keeping %s", ckpt)
        return ckpt
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an earlier demo's run: its checkpoints must not mix with this one's
    cfg = compose(config_name=config_name, overrides=[*overrides, f"paths.output_dir={run_dir}"])
    log.info(
        "%s %s (%d steps, global batch %d)",
        config_name,
        " ".join(overrides),
        cfg.trainer.max_steps,
        cfg.batch_size,
    )
    fit(cfg)
    if not ckpt.is_file():
        raise FileNotFoundError(f"training finished without writing {ckpt}")
    return ckpt


def real_digits(
    images: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_class` images of each class (as many for all), ordered 0, 1, ..., K-1, 0, 1, ... like the
    labels the samples are drawn with."""
    per_class = min(per_class, *(int((labels == k).sum()) for k in range(num_classes)))
    order = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(num_classes)])
    picked = order.reshape(num_classes, -1).T.reshape(-1)  # 0, 1, ..., K-1, 0, 1, ...
    return images[picked], labels[picked]


def _path(value: str | Path) -> str:
    """A file path as a quoted Hydra override value (any character but a newline survives)."""
    text = str(Path(value).resolve())
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sample_overrides(
    cfg: DictConfig,
    scale: float,
    *,
    model_ckpt: Path,
    classifier_ckpt: Path,
    domain_ckpt: Path,
    reference: Path,
    num_classes: int,
    out_dir: Path,
) -> list[str]:
    """The sample recipe's overrides (conf/sample.yaml) for guidance scale `scale`: what
    ``python scripts/sample.py <overrides>`` would be given to draw and score the same set."""
    labels = ",".join(str(k) for k in range(num_classes))
    return [
        f"ckpt={_path(model_ckpt)}",
        f"use_ema={str(bool(cfg.ema)).lower()}",
        f"classifier_ckpt={_path(classifier_ckpt)}",
        f"guidance.scale={float(scale)}",
        f"labels=[{labels}]",  # cycled: 0, 1, ..., K-1, 0, 1, ...
        f"num_samples={num_classes * int(cfg.samples_per_class)}",
        f"batch_size={int(cfg.sample_batch_size)}",
        f"seed={int(cfg.seed)}",
        f"grid_size={num_classes * int(cfg.grid_columns)}",
        f"grid_nrow={num_classes}",  # grid.png: one column per class
        f"evaluate.domain_ckpt={_path(domain_ckpt)}",
        f"evaluate.reference={_path(reference)}",
        f"evaluate.metrics=[{','.join(METRICS)}]",
        *cfg.sample_overrides,
        f"paths.output_dir={_path(out_dir)}",
        f"out_dir={_path(out_dir)}",
    ]


def sample_scales(
    cfg: DictConfig,
    *,
    model_ckpt: Path,
    classifier_ckpt: Path,
    domain_ckpt: Path,
    reference: Path,
    num_classes: int,
    out_dir: Path,
) -> list[dict[str, Any]]:
    """Run the sample recipe once per scale of ``cfg.scales`` into ``out_dir/scale_<s>``; returns the sweep
    summary's rows of those runs (:func:`adm.recipes.sweep.collect_runs`: settings and ``metrics.json``
    scores), by scale.

    `out_dir` is emptied first: every call draws its samples afresh. The recipe refuses a classifier that was
    trained on another noising process than the model's.
    """
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for scale in cfg.scales:
        overrides = sample_overrides(
            cfg,
            scale,
            model_ckpt=model_ckpt,
            classifier_ckpt=classifier_ckpt,
            domain_ckpt=domain_ckpt,
            reference=reference,
            num_classes=num_classes,
            out_dir=out_dir / f"scale_{scale_key(scale)}",
        )
        log.info("scale %s: python scripts/sample.py %s", scale_key(scale), " ".join(overrides))
        sample(compose(config_name="sample", overrides=overrides))
    return collect_runs(out_dir)


def best_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The row of the highest accuracy (ties: lower FID, then the smaller scale)."""
    if not rows:
        raise ValueError("no scales to choose from: give scales=[...] with at least one value")
    return min(rows, key=lambda r: (-r["accuracy"], r["fid"], r["guidance_scale"]))


def _scores(row: dict[str, Any]) -> dict[str, float]:
    return {m: round(float(row[m]), 4) for m in METRICS}


def run_demo(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Train, sample and score every scale, write the outputs; returns the summary ({scale: metrics})."""
    if not cfg.scales:
        raise ValueError("scales=[] is empty: give the guidance scales to sample, e.g. scales=[0,1,2,4,8]")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    load_start = os.getloadavg()
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    log.info(
        "Writing to %s (torch threads: %d, load average %.2f)", out, torch.get_num_threads(), load_start[0]
    )

    # 1. The ruler: a small CNN trained on the real train digits; the held-out ones are the reference.
    tick = time.perf_counter()
    datamodule = instantiate(cfg.data)
    num_classes = datamodule.num_classes
    train_images, train_labels = datamodule.reference_batch(cfg.domain.num_train, "train")
    reference = save_npz(out / "reference.npz", *datamodule.reference_batch(cfg.domain.num_reference, "val"))
    domain_path = out / "domain_classifier.pt"
    if not (cfg.reuse and domain_path.is_file()):
        log.info(
            "[1/4] Training the domain CNN on %d real digits (%d epochs)",
            len(train_images),
            cfg.domain.epochs,
        )
        domain = train_domain_classifier(
            train_images,
            train_labels,
            epochs=cfg.domain.epochs,
            seed=cfg.seed,
            num_classes=num_classes,
            width=cfg.domain.width,
            batch_size=cfg.domain.batch_size,
            max_offset=cfg.domain.max_offset,
            max_noise=cfg.domain.max_noise,
            progress=True,
        )
        domain.save(domain_path)
    # Real digits through the same scoring as the samples: the floor / ceiling of every metric.
    extractor = build_extractor("domain", domain_ckpt=domain_path)
    batch_size = int(cfg.data.batch_size)
    heldout = evaluate(reference, None, extractor, ["accuracy"], batch_size=batch_size)["accuracy"]
    log.info("Domain CNN accuracy on %d held-out digits: %.3f", cfg.domain.num_reference, heldout)
    real_x, real_y = real_digits(train_images, train_labels, num_classes, cfg.samples_per_class)
    ref_features = reference_features(reference, extractor, METRICS, batch_size=batch_size)
    real_row = evaluate(real_x, ref_features, extractor, METRICS, labels=real_y, batch_size=batch_size)
    timings["domain_cnn"] = time.perf_counter() - tick

    # 2-3. The diffusion model and the noisy classifier, through the training scripts' recipes.
    tick = time.perf_counter()
    log.info("[2/4] Training the class-conditional ADM (experiment=%s)", cfg.diffusion_experiment)
    model_ckpt = train_network(
        "train",
        [f"experiment={cfg.diffusion_experiment}", *cfg.diffusion_overrides],
        out / "runs" / "diffusion",
        train,
        cfg.reuse,
    )
    timings["train_diffusion"] = time.perf_counter() - tick
    tick = time.perf_counter()
    log.info("[3/4] Training the noisy classifier (experiment=%s)", cfg.classifier_experiment)
    classifier_ckpt = train_network(
        "train_classifier",
        [f"experiment={cfg.classifier_experiment}", *cfg.classifier_overrides],
        out / "runs" / "classifier",
        train_classifier,
        cfg.reuse,
    )
    timings["train_classifier"] = time.perf_counter() - tick

    # 4. Guidance sweep: one sample-recipe run per scale, same seeds and labels, so grid rows are comparable.
    tick = time.perf_counter()
    log.info("[4/4] Sampling scales %s with the sample recipe", list(cfg.scales))
    rows = sample_scales(
        cfg,
        model_ckpt=model_ckpt,
        classifier_ckpt=classifier_ckpt,
        domain_ckpt=domain_path,
        reference=reference,
        num_classes=num_classes,
        out_dir=out / "samples",
    )
    (out / "grids").mkdir(exist_ok=True)
    for row in rows:
        (samples,) = Path(row["dir"]).glob("samples_*.npz")  # the recipe's merged sample file
        images, labels = read_images(samples, row["num_samples"])
        grid = by_class(images, labels, num_classes, cfg.grid_columns)
        key = scale_key(row["guidance_scale"])
        save_grid(grid, out / "grids" / f"scale_{key}.png", nrow=cfg.grid_columns)
    timings["sample_and_score"] = time.perf_counter() - tick

    summary = {scale_key(r["guidance_scale"]): _scores(r) for r in rows}
    best = best_row(rows)
    best_key = scale_key(best["guidance_scale"])
    shutil.copyfile(out / "grids" / f"scale_{best_key}.png", out / "samples_grid.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_summary(rows, out / "summary.csv")
    plot_summary(rows, out / "summary.png")
    timings["total"] = time.perf_counter() - started
    met = best["accuracy"] >= TARGET_ACCURACY and (
        "0" not in summary or summary[best_key]["accuracy"] > summary["0"]["accuracy"]
    )
    info = json.loads((Path(best["dir"]) / "sample_info.json").read_text())
    details = {
        "best_scale": best_key,
        "target_met": met,
        "real_digits": _scores(real_row),
        "domain_cnn_heldout_accuracy": round(heldout, 4),
        "samples_per_scale": best["num_samples"],
        "sampler": info["fingerprint"]["sampler"],
        "weights": info["fingerprint"]["model"]["weights"],
        "diffusion_steps_trained": info["model"]["step"],
        "classifier_steps_trained": info["classifier"]["step"],
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "load_average": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
        "torch_threads": torch.get_num_threads(),
    }
    (out / "details.json").write_text(json.dumps(details, indent=2) + "\n")

    print(
        f"\nGuidance on MNIST-5k: {best['num_samples']} samples per scale; "
        f"'real digits' = {len(real_x)} real train digits"
    )
    print(format_summary([*rows, {"label": "real digits", **real_row}]))
    print(
        f"\nbest scale {best_key}: accuracy {best['accuracy']:.3f} "
        f"(target >= {TARGET_ACCURACY} and above scale 0: {'met' if met else 'NOT met'}); "
        f"total {timings['total'] / 60:.1f} min"
    )
    print(f"wrote {out / 'summary.json'}, {out / 'samples_grid.png'} (scale {best_key}), {out / 'grids'}/")
    if not all(math.isfinite(v) for row in summary.values() for v in row.values()):
        log.warning("some metrics are not finite: %s", summary)
    return summary
