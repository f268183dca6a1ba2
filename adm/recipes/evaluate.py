"""Evaluate a sample set against a reference: FID, sFID, IS, precision, recall (+ class accuracy); and make
reference batches from image folders.

python scripts/evaluate.py samples=samples.npz reference=VIRTUAL_imagenet64_labeled.npz
python scripts/evaluate.py samples=samples.npz reference=path/to/my/images          # a folder of images
python scripts/evaluate.py samples=DIR_OF_SHARDS reference=ref.npz feature_extractor=domain domain_ckpt=d.pt
python scripts/evaluate.py samples=s.npz reference=ref.npz metrics=[fid,precision,recall] out=metrics.json
python scripts/make_reference.py folder=path/to/my/images image_size=64       # ref .npz with statistics
python scripts/evaluate.py samples=s.npz reference=ref.npz logger=wandb        # + an (offline) W&B run

A folder of images as reference is read with ADM's preprocessing at the samples' size and channels (labels
from class folders); the resulting batch is cached by the folder's content hash, and the reference's
Inception features are cached by the batch's content hash, so a guidance sweep computes them once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from adm.data.folder import find_images, folder_content_hash, read_folder_images
from adm.io.files import atomic_write_json
from adm.io.npz import NpzImages, open_samples, write_arrays
from adm.metrics import build_extractor, evaluate
from adm.metrics.evaluate import check_same_images, extract_features
from adm.metrics.fid import gaussian_stats
from adm.metrics.inception import default_cache_dir
from adm.metrics.names import METRIC_LABELS
from adm.metrics.reference import load_reference
from adm.tracking import log_evaluation, open_run, require_wandb, wandb_config

__all__ = [
    "evaluate_samples",
    "is_image_folder",
    "make_reference",
    "reference_from_folder",
    "resolve_reference",
]

log = logging.getLogger("evaluate")

LABELS = {**METRIC_LABELS, "num_samples": "Samples", "num_reference": "Reference images"}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def output_path(out: str | None, run_dir: str) -> Path:
    """`out` may name the json file or a folder for it; default: the run dir."""
    if out is None:
        return Path(run_dir) / "metrics.json"
    path = Path(out)
    return path if path.suffix == ".json" else path / "metrics.json"


def _cache(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


# --- references from image folders ------------------------------------------------------------------------
def is_image_folder(path: str | Path) -> bool:
    """A folder of images (no ``.npz`` sample shards): a reference read with ADM's preprocessing."""
    path = Path(path).expanduser()
    return path.is_dir() and not any(path.glob("*.npz"))


def reference_from_folder(
    folder: str | Path, image_size: int, channels: int, cache_dir: str | Path | None = None
) -> Path:
    """The reference batch (``arr_0`` images, ``arr_1`` labels from class folders) of an image folder at
    `image_size` px and `channels`, as an ``.npz`` in ``cache_dir/reference_folders``, named by the folder's
    content hash: made once, reused until a file changes."""
    folder = Path(folder).expanduser()
    files = find_images(folder, "reference")
    key = f"{folder_content_hash(folder, files)[:32]}_{image_size}px_{channels}ch"
    path = _cache(cache_dir) / "reference_folders" / f"{key}.npz"
    if path.is_file():
        log.info("Reference %s: %d images, cached at %s", folder, len(files), path)
        return path
    log.info(
        "Reading %d images of %s at %d px (ADM preprocessing) -> %s", len(files), folder, image_size, path
    )
    images, labels, _ = read_folder_images(folder, image_size, channels=channels)
    write_arrays(path, {"arr_0": images, **({"arr_1": labels} if labels is not None else {})})
    return path


def resolve_reference(
    reference: str | Path, image_shape: tuple[int, int, int], cache_dir: str | Path | None = None
) -> str:
    """`reference` as a reference-batch path: an image folder becomes its cached batch at the samples'
    (H, W, C); ``.npz`` files and folders of shards are returned as they are."""
    if not is_image_folder(reference):
        return str(reference)
    h, w, c = image_shape
    if h != w:
        raise ValueError(f"samples of {h}x{w} px: a reference folder is read as square images")
    return str(reference_from_folder(reference, h, c, cache_dir))


def make_reference(cfg: DictConfig) -> dict[str, Any]:
    """Write a reference batch in OpenAI's format from an image folder (``conf/make_reference.yaml``):
    ``arr_0`` uint8 (N, H, W, C) images (ADM preprocessing), ``arr_1`` labels (class folders), and with
    ``stats=true`` the Inception statistics ``mu``, ``sigma`` (pool_3) and ``mu_s``, ``sigma_s`` (sFID)."""
    out = Path(cfg.out) if cfg.out is not None else None
    device = resolve_device(cfg.device)
    extractor = None
    if cfg.stats:  # the weights first: a missing file fails before any image is read
        extractor = build_extractor("inception", inception_weights=cfg.inception_weights, device=device)
    images, labels, names = read_folder_images(
        cfg.folder, cfg.image_size, channels=cfg.channels, labels=cfg.labels
    )
    n, h, w, c = images.shape
    if out is None:
        out = Path(cfg.paths.output_dir) / f"reference_{n}x{h}x{w}x{c}.npz"
    arrays: dict[str, np.ndarray] = {"arr_0": images}
    if labels is not None:
        arrays["arr_1"] = labels
    if extractor is not None:
        feats = extract_features(
            images, extractor, ["pool", "spatial"], batch_size=cfg.batch_size, progress=cfg.progress
        )
        arrays["mu"], arrays["sigma"] = gaussian_stats(feats.features["pool"])
        arrays["mu_s"], arrays["sigma_s"] = gaussian_stats(feats.features["spatial"])
    write_arrays(out, arrays)
    classes = f"{len(names)} classes ({', '.join(names)})" if names else "no labels"
    stats = "with Inception statistics" if extractor is not None else "images only"
    log.info("Wrote %s: %d images %dx%dx%d, %s, %s", out, n, h, w, c, classes, stats)
    return {"reference": str(out), "num_images": n, "image_shape": [h, w, c], "classes": names}


# --- evaluation ---------------------------------------------------------------------------------------------
def print_table(results: dict[str, Any], title: str, notes: dict[str, str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(LABELS.get(key, key), f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, note in (notes or {}).items():
        table.add_row(LABELS.get(key, key), note)
    Console().print(table)


def skipped_metrics(extractor: Any, asked: Any) -> dict[str, str]:
    """Metrics left out of an evaluation with every metric (``metrics=null``): ``{"is": "skipped: ..."}``."""
    if asked is not None or getattr(extractor, "name", None) != "inception" or "logits" in extractor.provides:
        return {}
    return {"is": "skipped: these Inception weights have no logits layer (see inception_weights)"}


def evaluate_samples(cfg: DictConfig) -> dict[str, Any]:
    """Score ``cfg.samples`` against ``cfg.reference`` -> metrics.json, a printed table and, with
    ``logger=wandb``, a W&B run (``job_type="evaluate"``) with the scores and what was scored."""
    wandb = wandb_config(cfg)
    if wandb is not None:
        require_wandb()  # logger=wandb without the package: one clear error before anything is read
    # Check the files first: a malformed shard or reference fails before any network is loaded.
    samples = OmegaConf.to_container(cfg.samples) if OmegaConf.is_list(cfg.samples) else cfg.samples
    sample_source: NpzImages = open_samples(samples)
    log.info(
        "Samples: %d images %s in %d file(s)",
        len(sample_source),
        sample_source.image_shape,
        len(sample_source.paths),
    )
    device = resolve_device(cfg.device)
    if is_image_folder(cfg.reference):  # needs no network: check the weights after the images
        find_images(cfg.reference, "reference")
    else:
        check_same_images(sample_source, load_reference(cfg.reference))
    log.info("Feature extractor: %s on %s", cfg.feature_extractor, device)
    extractor = build_extractor(
        cfg.feature_extractor,
        inception_weights=cfg.inception_weights,
        domain_ckpt=cfg.domain_ckpt,
        cache_dir=cfg.cache_dir,
        device=device,
    )
    reference = resolve_reference(cfg.reference, sample_source.image_shape, cfg.cache_dir)
    results = evaluate(
        sample_source,
        reference,
        extractor,
        list(cfg.metrics) if cfg.metrics is not None else None,
        batch_size=cfg.batch_size,
        limit=cfg.num_samples,
        progress=cfg.progress,
        cache_dir=_cache(cfg.cache_dir) if cfg.get("cache_reference", True) else None,
    )
    notes = skipped_metrics(extractor, cfg.metrics)
    record = {
        **results,
        **({"skipped": notes} if notes else {}),
        "feature_extractor": cfg.feature_extractor,
        "weights": getattr(extractor, "source", cfg.domain_ckpt),
        "samples": samples if isinstance(samples, list) else str(samples),
        "reference": str(cfg.reference),
        **({"reference_batch": reference} if reference != str(cfg.reference) else {}),
    }
    path = output_path(cfg.out, cfg.paths.output_dir)
    atomic_write_json(path, record)
    print_table(results, f"Metrics ({cfg.feature_extractor} features)", notes)
    log.info("Wrote %s", path)
    if wandb is not None:
        settings = {
            **{k: v for k, v in record.items() if k not in results and k != "skipped"},
            "metrics": OmegaConf.to_container(cfg.metrics) if cfg.metrics is not None else None,
            "num_samples": cfg.num_samples,
            "metrics_json": str(path),
        }
        with open_run(wandb, cfg.paths.output_dir, job_type="evaluate", config=settings) as run:
            log_evaluation(run, results)
    return results


# --- scoring a sample run (scripts/sample.py, scripts/upsample.py with evaluate.reference / domain_ckpt) ----
def check_scoring(ecfg: dict[str, Any], image_shape: tuple[int, int, int]) -> None:
    """What scoring a run's samples will need, checked before anything is drawn: the Inception weights (a
    reference without a domain classifier) and a reference of the samples' size and channels. An image folder
    as ``evaluate.reference`` becomes its cached reference batch at the samples' size, stored in
    ``ecfg["reference_batch"]``."""
    if ecfg["reference"] is None:
        return
    from adm.metrics.inception import resolve_inception_weights

    if ecfg["domain_ckpt"] is None:
        resolve_inception_weights(ecfg["inception_weights"])  # FileNotFoundError saying where to put them
    ecfg["reference_batch"] = resolve_reference(ecfg["reference"], image_shape)
    check_same_images(np.zeros((1, *image_shape), dtype=np.uint8), load_reference(ecfg["reference_batch"]))


def score_samples(
    ecfg: dict[str, Any],
    samples: str | Path,
    out_dir: str | Path,
    device: torch.device,
    *,
    record: dict[str, Any],
    progress: bool = True,
) -> dict[str, Any] | None:
    """Score a run's merged samples when ``evaluate.reference`` / ``.domain_ckpt`` is set -> metrics.json.

    Args:
        ecfg: the run's ``evaluate`` settings (``conf/evaluate``).
        samples: the merged sample file. out_dir: where metrics.json goes.
        record: what the run was drawn with (sampler, steps, guidance, scale, seed, seconds per image, ...),
            recorded beside the scores.
    Returns:
        The record written to metrics.json, or None when nothing is to be scored.
    """
    if ecfg["reference"] is None and ecfg["domain_ckpt"] is None:
        return None
    kind = "domain" if ecfg["domain_ckpt"] is not None else "inception"
    extractor = build_extractor(
        kind, inception_weights=ecfg["inception_weights"], domain_ckpt=ecfg["domain_ckpt"], device=device
    )
    metrics = ecfg["metrics"]
    if metrics is None and ecfg["reference"] is None:
        metrics = ["accuracy"]  # a domain classifier alone: does guidance give the class asked for?
    start = time.perf_counter()
    results = evaluate(
        samples,
        ecfg.get("reference_batch", ecfg["reference"]),
        extractor,
        list(metrics) if metrics is not None else None,
        batch_size=ecfg["batch_size"],
        progress=progress,
        cache_dir=default_cache_dir() if kind == "inception" else None,  # a sweep computes the reference once
    )
    scored = {
        **results,
        **record,
        "feature_extractor": kind,
        "reference": ecfg["reference"],
        "domain_ckpt": ecfg["domain_ckpt"],
        "samples": str(samples),
    }
    path = Path(out_dir) / "metrics.json"
    atomic_write_json(path, scored)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in results.items() if isinstance(v, float))
    log.info("scores (%s features, %.1f s): %s -> %s", kind, time.perf_counter() - start, shown, path)
    return scored
