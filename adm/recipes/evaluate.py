"""Evaluate a sample set against a reference batch: FID, sFID, IS, precision, recall (+ class accuracy).

python scripts/evaluate.py samples=samples.npz reference=VIRTUAL_imagenet64_labeled.npz
python scripts/evaluate.py samples=DIR_OF_SHARDS reference=ref.npz feature_extractor=domain domain_ckpt=d.pt
python scripts/evaluate.py samples=s.npz reference=ref.npz metrics=[fid,precision,recall] out=metrics.json
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from adm.io.files import atomic_write_json
from adm.io.samples import load_reference, open_samples
from adm.metrics import build_extractor, evaluate
from adm.metrics.names import METRIC_LABELS

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


def print_table(results: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results.items():
        table.add_row(LABELS.get(key, key), f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def evaluate_samples(cfg: DictConfig) -> dict[str, Any]:
    # Check the files first: a malformed shard or reference fails before any network is loaded.
    samples = OmegaConf.to_container(cfg.samples) if OmegaConf.is_list(cfg.samples) else cfg.samples
    sample_source, reference = open_samples(samples), load_reference(cfg.reference)
    log.info(
        "Samples: %d images %s in %d file(s)",
        len(sample_source),
        sample_source.image_shape,
        len(sample_source.paths),
    )
    device = resolve_device(cfg.device)
    log.info("Feature extractor: %s on %s", cfg.feature_extractor, device)
    extractor = build_extractor(
        cfg.feature_extractor,
        inception_weights=cfg.inception_weights,
        domain_ckpt=cfg.domain_ckpt,
        cache_dir=cfg.cache_dir,
        device=device,
    )
    results = evaluate(
        sample_source,
        reference,
        extractor,
        list(cfg.metrics) if cfg.metrics is not None else None,
        batch_size=cfg.batch_size,
        limit=cfg.num_samples,
        progress=cfg.progress,
    )
    record = {
        **results,
        "feature_extractor": cfg.feature_extractor,
        "weights": getattr(extractor, "source", cfg.domain_ckpt),
        "samples": samples if isinstance(samples, list) else str(samples),
        "reference": str(cfg.reference),
    }
    path = output_path(cfg.out, cfg.paths.output_dir)
    atomic_write_json(path, record)
    print_table(results, f"Metrics ({cfg.feature_extractor} features)")
    log.info("Wrote %s", path)
    return results
