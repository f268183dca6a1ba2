"""`python scripts/compare_samplers.py`: the paper's samplers against DPM-Solver++, unguided, with classifier
guidance and with classifier-free guidance, on the MNIST-5k demo networks, scored by the demo's ruler.

    python scripts/compare_samplers.py                                   # train what is missing, run the grid
    python scripts/compare_samplers.py 'guidance.classifier=[1,2,4]' 'guidance.cfg=[0.5,1,2]'
    python scripts/compare_samplers.py '~samplers.ddpm_250' \
        '+samplers.dpmpp_3m_15=["sampler=dpmpp_3m","sampler.steps=15"]'    # drop a row, add one

1. the ruler (domain CNN) and the reference digits of ``make demo`` (``${demo_dir}``) are reused, or made;
2. one diffusion network trained with label dropout (``experiment=demo_cfg``: the conditional and the
   unconditional model in one) serves every row, so the rows differ only in sampler and guidance; the noisy
   classifier is the demo's (``${demo_dir}/runs/classifier``) or trained (``experiment=demo_classifier``);
3. every cell (sampler x guidance x scale) is one run of the sample recipe (``scripts/sample.py``, same
   seeds and balanced labels), scored into its ``metrics.json`` with the seconds per image of the drawing;
   finished cells are kept, so the same command again resumes. Cheap samplers run first.
4. ``compare.csv`` / ``compare.json`` / ``compare.png`` and the table on stdout, with two findings: the fewest
   DPM-Solver++ steps within 5% of DDPM-250's FID at each guidance scale, and classifier-free against
   classifier guidance at matched accuracy.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from adm.io.npz import save_npz
from adm.metrics import train_domain_classifier
from adm.recipes.demo import METRICS, _path, train_network
from adm.recipes.sample import sample
from adm.recipes.train import train, train_classifier

log = logging.getLogger("compare_samplers")

WITHIN = 0.05  # "as good as DDPM-250": FID at most 5% above it
COLUMNS = ("sampler", "steps", "guidance", "scale", *METRICS, "seconds_per_image")


def ruler(cfg: DictConfig, datamodule: Any) -> tuple[Path, Path]:
    """(domain CNN, reference .npz): ``make demo``'s in ``demo_dir`` when present, else made here."""
    demo = Path(cfg.demo_dir)
    domain, reference = demo / "domain_classifier.pt", demo / "reference.npz"
    if domain.is_file() and reference.is_file():
        log.info("ruler: reusing %s and %s", domain, reference)
        return domain, reference
    out = Path(cfg.output_dir)
    domain, reference = out / "domain_classifier.pt", out / "reference.npz"
    save_npz(reference, *datamodule.reference_batch(cfg.domain.num_reference, "val"))
    if not domain.is_file():
        images, labels = datamodule.reference_batch(cfg.domain.num_train, "train")
        log.info("ruler: training the domain CNN on %d real digits", len(images))
        train_domain_classifier(
            images,
            labels,
            epochs=cfg.domain.epochs,
            seed=cfg.seed,
            num_classes=datamodule.num_classes,
            width=cfg.domain.width,
            batch_size=cfg.domain.batch_size,
            max_offset=cfg.domain.max_offset,
            max_noise=cfg.domain.max_noise,
            progress=True,
        ).save(domain)
    return domain, reference


def networks(cfg: DictConfig) -> tuple[Path, Path]:
    """(diffusion checkpoint with a null label, noisy classifier checkpoint): given, reused or trained."""
    out = Path(cfg.output_dir)
    model = cfg.model_ckpt
    if model is None:
        model = train_network(
            "train",
            [f"experiment={cfg.model_experiment}", *cfg.model_overrides],
            out / "runs" / "model",
            train,
            reuse=True,
        )
    classifier = cfg.classifier_ckpt
    demo_classifier = Path(cfg.demo_dir) / "runs" / "classifier" / "checkpoints" / "last.ckpt"
    if classifier is None and demo_classifier.is_file():
        classifier = demo_classifier
    if classifier is None:
        classifier = train_network(
            "train_classifier",
            [f"experiment={cfg.classifier_experiment}", *cfg.classifier_overrides],
            out / "runs" / "classifier",
            train_classifier,
            reuse=True,
        )
    return Path(model), Path(classifier)


def cells(cfg: DictConfig) -> list[tuple[str, str, float]]:
    """(sampler key, guidance kind, scale) of every run: unguided, then each kind's scales; cheap first."""
    guided = [(kind, float(s)) for kind in ("classifier", "cfg") for s in (cfg.guidance.get(kind) or [])]
    modes = ([("none", 0.0)] if cfg.unguided else []) + guided
    samplers = sorted(cfg.samplers, key=lambda k: _steps(cfg.samplers[k]))
    return [(key, kind, scale) for key in samplers for kind, scale in modes]


def _steps(overrides: list[str]) -> int:
    """Network calls per image of a sampler's overrides (sampler.steps=N, or its config's default)."""
    for item in overrides:
        if item.startswith("sampler.steps="):
            return int(item.split("=", 1)[1])
    name = next((o.split("=", 1)[1] for o in overrides if o.startswith("sampler=")), "ddpm")
    default = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "sampler" / f"{name}.yaml")
    return int(default.steps)


def cell_overrides(
    cfg: DictConfig,
    cell: tuple[str, str, float],
    *,
    model: Path,
    classifier: Path,
    domain: Path,
    reference: Path,
) -> list[str]:
    """The sample recipe's overrides of one cell: what ``python scripts/sample.py <overrides>`` is given."""
    key, kind, scale = cell
    num_classes = int(cfg.data.num_classes)
    labels = ",".join(str(k) for k in range(num_classes))
    if kind == "classifier":
        guidance = ["guidance=classifier", f"guidance.scale={scale}", f"classifier_ckpt={_path(classifier)}"]
    else:  # "none": the same network without guidance (classifier-free scale 0 is the conditional model)
        guidance = ["guidance=cfg", f"guidance.scale={scale}"]
    return [
        f"ckpt={_path(model)}",
        *cfg.samplers[key],
        *guidance,
        f"labels=[{labels}]",
        f"num_samples={num_classes * int(cfg.samples_per_class)}",
        f"batch_size={int(cfg.sample_batch_size)}",
        f"seed={int(cfg.seed)}",
        f"grid_size={num_classes * 4}",
        f"grid_nrow={num_classes}",
        f"evaluate.domain_ckpt={_path(domain)}",
        f"evaluate.reference={_path(reference)}",
        f"evaluate.metrics=[{','.join(METRICS)}]",
        "progress=false",
        *cfg.sample_overrides,
    ]


def cell_dir(out: Path, cell: tuple[str, str, float]) -> Path:
    key, kind, scale = cell
    return out / "cells" / key / f"{kind}_{scale:g}"


def _row(cell: tuple[str, str, float], steps: int, metrics: dict[str, Any]) -> dict[str, Any]:
    key, kind, scale = cell
    return {
        "sampler": key,
        "steps": steps,
        "guidance": kind,
        "scale": scale,
        **{m: metrics.get(m) for m in METRICS},
        "seconds_per_image": metrics.get("seconds_per_image"),
    }


def run_cells(cfg: DictConfig, paths: dict[str, Path]) -> list[dict[str, Any]]:
    """Run (or keep) every cell; rows in the order run. A cell with a ``metrics.json`` is done.

    Once ``budget_minutes`` of this call have passed no new cell starts; finished ones are still collected.
    """
    out = Path(cfg.output_dir)
    rows, skipped = [], []
    todo = cells(cfg)
    deadline = time.perf_counter() + 60 * float(cfg.budget_minutes) if cfg.budget_minutes else None
    for n, cell in enumerate(todo, 1):
        folder = cell_dir(out, cell)
        done = folder / "metrics.json"
        steps = _steps(list(cfg.samplers[cell[0]]))
        if not done.is_file():
            if deadline is not None and time.perf_counter() > deadline:
                log.warning("budget_minutes=%s spent: cell %s %s %g not run", cfg.budget_minutes, *cell)
                skipped.append(cell)
                continue
            overrides = cell_overrides(cfg, cell, **paths)
            overrides += [f"paths.output_dir={_path(folder)}", f"out_dir={_path(folder)}"]
            log.info(
                "[%d/%d] %s %s %g: python scripts/sample.py %s", n, len(todo), *cell, " ".join(overrides)
            )
            sample(compose(config_name="sample", overrides=overrides))
        rows.append(_row(cell, steps, json.loads(done.read_text())))
    if skipped:
        log.warning("%d of %d cells not run (budget_minutes=%s)", len(skipped), len(todo), cfg.budget_minutes)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: sampler, steps, guidance, scale, the scores, seconds per image."""
    head = ["sampler", "steps", "guidance", "scale", *METRICS, "s / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        spi = r["seconds_per_image"]
        cells_ = [r["sampler"], str(r["steps"]), r["guidance"], f"{r['scale']:g}"]
        cells_ += ["-" if r[m] is None else f"{r[m]:.3f}" for m in METRICS]
        cells_ += ["-" if spi is None else f"{spi:.3f}"]
        lines.append("| " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def fewest_steps(rows: list[dict[str, Any]], baseline: str, family: str) -> list[dict[str, Any]]:
    """Per guided (kind, scale) with a `baseline` row: the fewest-step `family` row within 5% of its FID."""
    found = []
    for base in (r for r in rows if r["sampler"] == baseline and r["fid"] is not None):
        same = [
            r
            for r in rows
            if r["sampler"].startswith(family)
            and (r["guidance"], r["scale"]) == (base["guidance"], base["scale"])
            and r["fid"] is not None
        ]
        good = sorted((r for r in same if r["fid"] <= base["fid"] * (1 + WITHIN)), key=lambda r: r["steps"])
        found.append(
            {
                "guidance": base["guidance"],
                "scale": base["scale"],
                "baseline_fid": base["fid"],
                "steps": good[0]["steps"] if good else None,
                "sampler": good[0]["sampler"] if good else None,
                "fid": good[0]["fid"] if good else None,
                "tried": sorted(r["steps"] for r in same),
            }
        )
    return found


def matched_accuracy(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sampler and CFG scale: the classifier-guided row of that sampler with the nearest accuracy."""
    pairs = []
    for r in (r for r in rows if r["guidance"] == "cfg" and r["accuracy"] is not None):
        peers = [c for c in rows if c["sampler"] == r["sampler"] and c["guidance"] == "classifier"]
        if not peers:
            continue
        c = min(peers, key=lambda c: abs(c["accuracy"] - r["accuracy"]))
        pairs.append(
            {
                "sampler": r["sampler"],
                "cfg_scale": r["scale"],
                "cfg_accuracy": r["accuracy"],
                "cfg_fid": r["fid"],
                "classifier_scale": c["scale"],
                "classifier_accuracy": c["accuracy"],
                "classifier_fid": c["fid"],
            }
        )
    return pairs


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """FID against seconds per image and accuracy against FID, one marker per guidance kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"none": "o", "classifier": "s", "cfg": "^"}
    for (kind, scale), points in _groups(rows).items():
        label = kind if kind == "none" else f"{kind} {scale:g}"
        timed = [p for p in points if p["seconds_per_image"] is not None and p["fid"] is not None]
        axes[0].plot(
            [p["seconds_per_image"] for p in timed],
            [p["fid"] for p in timed],
            markers[kind] + "-",
            label=label,
        )
        for p in timed:
            axes[0].annotate(p["sampler"], (p["seconds_per_image"], p["fid"]), fontsize=6)
        scored = [p for p in points if p["fid"] is not None and p["accuracy"] is not None]
        axes[1].plot([p["fid"] for p in scored], [p["accuracy"] for p in scored], markers[kind], label=label)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("seconds per image (CPU)")
    axes[0].set_ylabel("domain FID (lower is better)")
    axes[1].set_xlabel("domain FID")
    axes[1].set_ylabel("accuracy (requested class)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["guidance"], r["scale"]), []).append(r)
    return groups


def run_compare(cfg: DictConfig) -> dict[str, Any]:
    """Reuse or train the networks, run every cell, write and print the comparison; returns its summary."""
    if not cfg.samplers:
        raise ValueError("samplers={} is empty: give at least one, e.g. {ddim_25: [sampler=ddim]}")
    started = time.perf_counter()
    load_start = os.getloadavg()
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.fresh and (out / "cells").exists():
        shutil.rmtree(out / "cells")
    domain, reference = ruler(cfg, instantiate(cfg.data))
    model, classifier = networks(cfg)
    trained = time.perf_counter()
    rows = run_cells(
        cfg, {"model": model, "classifier": classifier, "domain": domain, "reference": reference}
    )
    summary = {
        "rows": rows,
        "fewest_dpm_solver_steps": fewest_steps(rows, cfg.baseline, cfg.solver_family),
        "cfg_vs_classifier_at_matched_accuracy": matched_accuracy(rows),
        "networks": {"model": str(model), "classifier": str(classifier)},
        "samples_per_cell": int(cfg.data.num_classes) * int(cfg.samples_per_class),
        "seconds": {
            "networks": round(trained - started, 1),
            "cells": round(time.perf_counter() - trained, 1),
        },
        "load_average": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
        "torch_threads": torch.get_num_threads(),
    }
    (out / "compare.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "compare.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    if rows:
        plot(rows, out / "compare.png")
    print(f"\nSamplers on MNIST-5k ({summary['samples_per_cell']} samples per cell, domain-CNN features)")
    print(format_table(rows))
    for item in summary["fewest_dpm_solver_steps"]:
        if item["guidance"] == "none":
            what = "unguided"
        else:
            what = f"{item['guidance']} guidance {item['scale']:g}"
        verdict = (
            f"{item['sampler']} ({item['steps']} steps) FID {item['fid']:.3f}"
            if item["steps"] is not None
            else f"none of {item['tried']} steps"
        )
        print(f"{what}: {cfg.baseline} FID {item['baseline_fid']:.3f}; within {WITHIN:.0%}: {verdict}")
    for p in summary["cfg_vs_classifier_at_matched_accuracy"]:
        print(
            f"{p['sampler']}: cfg {p['cfg_scale']:g} (accuracy {p['cfg_accuracy']:.3f}, "
            f"FID {p['cfg_fid']:.3f}) vs classifier {p['classifier_scale']:g} "
            f"(accuracy {p['classifier_accuracy']:.3f}, FID {p['classifier_fid']:.3f})"
        )
    print(
        f"networks {summary['seconds']['networks']:.0f} s, cells {summary['seconds']['cells']:.0f} s; "
        f"load average {summary['load_average']['start']} -> {summary['load_average']['end']}; "
        f"wrote {out / 'compare.csv'}"
    )
    return summary
