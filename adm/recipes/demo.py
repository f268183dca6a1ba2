"""`make demo`: classifier guidance in miniature on MNIST-5k, from training to a scored guidance sweep.

    python scripts/demo.py                                        # ~11 minutes on a quiet 2-core CPU
    python scripts/demo.py scales=[0,1,2,4,8,16] reuse=true       # re-sample with the trained networks
    python scripts/demo.py 'diffusion_overrides=["trainer.max_steps=3000"]'

1. a small CNN learns the real digits (train split): the independent ruler of step 4;
2. the class-conditional ADM trains through scripts/train.py's recipe (experiment=demo_diffusion);
3. the noisy classifier trains through scripts/train_classifier.py's recipe (experiment=demo_classifier);
4. both come back from their checkpoints; every guidance scale samples the same seeds and balanced labels;
   the CNN scores each scale (accuracy w.r.t. the requested class; FID / precision / recall of its features
   against the held-out digits); a table is printed and written to ${output_dir}/summary.json, with the best
   scale's samples in ${output_dir}/samples_grid.png (one row per class) and every scale's in grids/.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from adm.demo import DomainRuler, balanced_labels, best_scale, class_grid, draw_samples, format_table
from adm.io.checkpoint import TrainedCheckpoint, load_checkpoint
from adm.metrics.domain import DomainClassifier, train_domain_classifier
from adm.metrics.images import float_to_uint8
from adm.recipes.train import train, train_classifier
from adm.sampling.noise import sample_seed

log = logging.getLogger("demo")

TARGET_ACCURACY = 0.8


def scale_key(scale: float) -> str:
    """The summary key of a guidance scale: 0 -> "0", 2.0 -> "2", 0.5 -> "0.5"."""
    return f"{float(scale):g}"


def train_network(
    config_name: str, overrides: list[str], run_dir: Path, fit: Callable[[DictConfig], Any], reuse: bool
) -> Path:
    """Compose `config_name` (conf/train*.yaml) with `overrides`, fit into `run_dir`; return its last.ckpt."""
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


def check_same_process(model: TrainedCheckpoint, classifier: TrainedCheckpoint) -> None:
    """The classifier must have learned the noisy images of the model's diffusion process."""
    keys = ("steps", "noise_schedule")
    a = {k: model.config["diffusion"].get(k) for k in keys}
    b = {k: classifier.config["diffusion"].get(k) for k in keys}
    if a != b:
        raise ValueError(
            f"the classifier was trained on the process {b} but the diffusion model on {a}; train both with "
            "the same `diffusion` config"
        )


def real_digits(
    images: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_class` images of each class (as many for all), ordered like :func:`balanced_labels`."""
    per_class = min(per_class, *(int((labels == k).sum()) for k in range(num_classes)))
    order = np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(num_classes)])
    picked = order.reshape(num_classes, -1).T.reshape(-1)  # 0, 1, ..., K-1, 0, 1, ...
    return images[picked], labels[picked]


def run_demo(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """Train, sample every scale, score, write the outputs; returns the summary ({scale: metrics})."""
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

    # 1. The ruler: a small CNN trained on the real train digits, evaluated against the held-out ones.
    tick = time.perf_counter()
    datamodule = instantiate(cfg.data)
    num_classes = datamodule.num_classes
    train_images, train_labels = datamodule.reference_batch(cfg.domain.num_train, "train")
    ref_images, ref_labels = datamodule.reference_batch(cfg.domain.num_reference, "val")
    domain_path = out / "domain_classifier.pt"
    if cfg.reuse and domain_path.is_file():
        domain = DomainClassifier.load(domain_path)
    else:
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
    ruler = DomainRuler(domain, ref_images, ref_labels)
    log.info("Domain CNN accuracy on %d held-out digits: %.3f", len(ref_images), ruler.reference_accuracy)
    real_x, real_y = real_digits(train_images, train_labels, num_classes, cfg.samples_per_class)
    real_row = ruler.score(real_x, real_y)  # what real digits score: the floor / ceiling of every metric
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

    # 4. Guidance sweep: same seeds and labels at every scale, so rows of the grids are comparable.
    tick = time.perf_counter()
    model = load_checkpoint(model_ckpt, ema=bool(cfg.ema))
    classifier = load_checkpoint(classifier_ckpt)
    check_same_process(model, classifier)
    classifier.classifier.requires_grad_(False)
    log.info(
        "[4/4] Sampling with %s weights (step %d); classifier step %d",
        model.weights,
        model.step,
        classifier.step,
    )
    sampler = instantiate(cfg.sampler)
    guidance_factory = instantiate(cfg.guidance)
    labels = balanced_labels(num_classes, cfg.samples_per_class)
    seeds = [sample_seed(cfg.seed, n) for n in range(len(labels))]
    summary: dict[str, dict[str, float]] = {}
    (out / "grids").mkdir(exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    grids = {}
    for scale in cfg.scales:
        key = scale_key(scale)
        log.info("scale %s: %d samples, %s", key, len(labels), OmegaConf.to_container(cfg.sampler))
        guidance = guidance_factory(classifier.classifier, scale=float(scale))
        x_0 = draw_samples(
            model.unet,
            model.diffusion,
            labels,
            seeds,
            sampler=sampler,
            guidance=guidance,
            batch_size=cfg.sample_batch_size,
            progress=True,
        )
        summary[key] = {k: round(v, 4) for k, v in ruler.score(x_0, labels).items()}
        log.info("scale %s: %s", key, summary[key])
        grids[key] = class_grid(x_0, labels, num_classes, cfg.grid_columns)
        save_image(grids[key], out / "grids" / f"scale_{key}.png")
        np.savez(
            out / "samples" / f"scale_{key}.npz", arr_0=float_to_uint8(x_0).numpy(), arr_1=labels.numpy()
        )
    timings["sample_and_score"] = time.perf_counter() - tick

    best = best_scale(summary)
    save_image(grids[best], out / "samples_grid.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    timings["total"] = time.perf_counter() - started
    met = summary[best]["accuracy"] >= TARGET_ACCURACY and (
        "0" not in summary or summary[best]["accuracy"] > summary["0"]["accuracy"]
    )
    details = {
        "best_scale": best,
        "target_met": met,
        "real_digits": {k: round(v, 4) for k, v in real_row.items()},
        "domain_cnn_heldout_accuracy": round(ruler.reference_accuracy, 4),
        "samples_per_scale": len(labels),
        "sampler": OmegaConf.to_container(cfg.sampler),
        "weights": model.weights,
        "diffusion_steps_trained": model.step,
        "classifier_steps_trained": classifier.step,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "load_average": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
        "torch_threads": torch.get_num_threads(),
    }
    (out / "details.json").write_text(json.dumps(details, indent=2) + "\n")

    table = format_table({**summary, "real": real_row})
    print(
        f"\nGuidance on MNIST-5k: {len(labels)} samples per scale; 'real' = {len(real_x)} real train digits"
    )
    print(table)
    print(
        f"\nbest scale {best}: accuracy {summary[best]['accuracy']:.3f} "
        f"(target >= {TARGET_ACCURACY} and above scale 0: {'met' if met else 'NOT met'}); "
        f"total {timings['total'] / 60:.1f} min"
    )
    print(f"wrote {out / 'summary.json'}, {out / 'samples_grid.png'} (scale {best}), {out / 'grids'}/")
    if not all(math.isfinite(v) for row in summary.values() for v in row.values()):
        log.warning("some metrics are not finite: %s", summary)
    return summary
