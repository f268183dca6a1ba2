"""Does the MNIST upsampler beat bicubic upsampling? Domain FID of 14 -> 28 px digits vs real 28 px digits.

    python scripts/train_superres.py experiment=sr_mnist hydra.run.dir=runs/sr_mnist
    python scripts/sr_eval_mnist.py --ckpt runs/sr_mnist/checkpoints/last.ckpt --num 300 --steps 20
    python scripts/sr_eval_mnist.py --ckpt ... --base-samples base_samples.npz   # a base model's digits

Features are the penultimate activations of a small CNN trained on the real MNIST-5k training digits
(``adm.metrics.domain``; or ``--domain-ckpt``). The low-resolution inputs are the held-out digits
area-downsampled to 14 px, or the given base samples (28 px ones are area-downsampled first). Every
candidate set is scored against the real training digits: FID in the classifier's feature space and the
classifier's accuracy on the inputs' labels. Printed as a table; ``--out DIR`` also writes results.json and a
comparison grid (rows: low-res, bicubic, upsampler, real).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adm.data import MNIST5kDataModule, downsample_area
from adm.io.checkpoint import load_checkpoint
from adm.io.files import atomic_write_json
from adm.io.grid import save_grid
from adm.io.images import from_uint8, to_uint8
from adm.io.npz import BaseSamples
from adm.metrics import DomainClassifier, fid_from_features, train_domain_classifier
from adm.recipes.upsample import UpsampleDrawer
from adm.sampling import ddim_sample, ddpm_sample


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="upsampler checkpoint from scripts/train_superres.py")
    p.add_argument(
        "--base-samples", default=None, help=".npz of base samples (arr_0 uint8 NHWC, arr_1 labels)"
    )
    p.add_argument("--num", type=int, default=300, help="images per candidate set")
    p.add_argument("--sampler", choices=["ddim", "ddpm"], default="ddim")
    p.add_argument("--steps", type=int, default=20, help="upsampler sampling steps")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain-ckpt", default=None, help="a saved DomainClassifier (default: train one here)")
    p.add_argument("--domain-epochs", type=int, default=4)
    p.add_argument("--ema", type=float, default=None, help="EMA rate of the weights (default: the first)")
    p.add_argument("--out", default=None, help="folder for results.json and comparison.png")
    return p.parse_args()


def resize(low: np.ndarray, size: int, mode: str) -> np.ndarray:
    """uint8 (n, h, w, C) -> uint8 (n, size, size, C), resized in [-1, 1] (align_corners=False), clamped."""
    corners = False if mode in ("bilinear", "bicubic") else None
    x = F.interpolate(from_uint8(low), size=(size, size), mode=mode, align_corners=corners)
    return to_uint8(x.clamp(-1, 1))


@torch.no_grad()
def features(
    classifier: DomainClassifier, images: np.ndarray, batch: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features (n, D), predicted classes (n,)) of uint8 (n, H, W, C) images."""
    feats, preds = [], []
    for i in range(0, len(images), batch):
        f = classifier.features(from_uint8(images[i : i + batch]))
        feats.append(f.double().numpy())
        preds.append(classifier.head(f).argmax(dim=1).numpy())
    return np.concatenate(feats), np.concatenate(preds)


def main() -> None:
    args = parse_args()
    start = time.process_time()
    dm = MNIST5kDataModule(
        image_size=28,
        class_cond=True,
        batch_size=64,
        num_workers=0,
        val_fraction=0.1,
        split_seed=0,
        random_flip=False,
        random_crop=False,
    )
    train_images, train_labels = dm.reference_batch(4500, "train")
    if args.domain_ckpt:
        classifier = DomainClassifier.load(args.domain_ckpt)
    else:
        print(
            f"training the domain classifier on {len(train_images)} real digits ({args.domain_epochs} epochs)"
        )
        classifier = train_domain_classifier(
            train_images, train_labels, epochs=args.domain_epochs, seed=args.seed
        )
    real_feats, _ = features(classifier, train_images)

    # Low-res inputs (uint8 14 px) with labels, and the 28 px images they came from when they are real digits.
    if args.base_samples:
        base = BaseSamples.load(args.base_samples)
        if base.label_array is None:
            raise ValueError(f"{args.base_samples} has no labels (arr_1): the upsampler is class-conditional")
        source, labels = base.images[: args.num], base.label_array[: args.num]
        truth = source if source.shape[1] == 28 else None
        what = f"base samples {args.base_samples}"
    else:
        source, labels = dm.reference_batch(min(args.num, 500), "val")
        truth, what = source, "held-out real digits"
    low = to_uint8(downsample_area(from_uint8(source), 14)) if source.shape[1] != 14 else source

    trained = load_checkpoint(args.ckpt, ema=True if args.ema is None else args.ema)
    low_res_size = trained.unet.low_res_size
    if low_res_size != 14 or trained.unet.image_size != 28:
        raise ValueError(
            f"{args.ckpt} is a {low_res_size} -> {trained.unet.image_size} upsampler, not 14 -> 28"
        )
    sampler = (
        functools.partial(ddim_sample, steps=args.steps, eta=0.0)
        if args.sampler == "ddim"
        else functools.partial(ddpm_sample, steps=args.steps)
    )
    drawer = UpsampleDrawer(
        unet=trained.unet,
        diffusion=trained.diffusion,
        sampler=sampler,
        base=BaseSamples(low, labels),
        seed=args.seed,
        device="cpu",
        low_res_size=14,
    )
    print(f"upsampling {len(low)} {what} ({args.sampler}, {args.steps} steps, {trained.weights} weights)")
    upsampled = np.concatenate(
        [drawer(range(i, min(i + args.batch_size, len(low))))[0] for i in range(0, len(low), args.batch_size)]
    )

    candidates = {
        "bicubic 14->28": resize(low, 28, "bicubic"),
        "bilinear 14->28": resize(low, 28, "bilinear"),
        "upsampler 14->28": upsampled,
    }
    if truth is not None:
        candidates["real 28 px (floor)"] = truth
    results = {}
    print(
        f"\ndomain FID against {len(train_images)} real training digits ({real_feats.shape[1]}-d features), "
        f"{len(low)} images per set"
    )
    print(f"{'set':<22}{'FID':>9}{'accuracy':>10}")
    for name, images in candidates.items():
        feats, preds = features(classifier, images)
        fid = fid_from_features(feats, real_feats)
        acc = float((preds == labels).mean())
        results[name] = {"fid": fid, "accuracy": acc}
        print(f"{name:<22}{fid:>9.3f}{acc:>10.3f}")
    print(f"\nCPU time {time.process_time() - start:.0f} s")

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "ckpt": args.ckpt,
            "inputs": what,
            "num": len(low),
            "sampler": args.sampler,
            "steps": args.steps,
            "seed": args.seed,
            "weights": trained.weights,
            "results": results,
        }
        atomic_write_json(out / "results.json", record)
        k = min(16, len(low))
        rows = [resize(low[:k], 28, "nearest"), candidates["bicubic 14->28"][:k], upsampled[:k]]
        if truth is not None:
            rows.append(truth[:k])
        save_grid(np.concatenate(rows), out / "comparison.png", nrow=k)
        print(f"wrote {out / 'results.json'} and {out / 'comparison.png'}")


if __name__ == "__main__":
    main()
