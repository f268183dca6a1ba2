"""A small class-folder dataset made from the embedded MNIST-5k digits, to try the custom-data recipes.

    python -m adm.data.examples my_images                      # zero/ one/ seven/, 500 each, 32-px RGB PNGs
    python -m adm.data.examples my_images --classes 3 5 8 --size 64 --grey

Each digit is resized to `size` px (bicubic) and, unless `--grey`, drawn in a random stroke colour on
white-ish paper, so the folder is RGB data that a model has to learn colour for. Files are written as
``ROOT/<class name>/<index>.png``; the class names are the English digit names, which
``data=imagefolder`` sorts and stores in checkpoints (``labels=[zero,seven]`` at sampling time).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from adm.data.datamodules import load_mnist5k

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digit_folders(
    root: str | Path,
    classes: Sequence[int] = (0, 1, 7),
    *,
    size: int = 32,
    colour: bool = True,
    per_class: int | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """Write MNIST-5k digits of `classes` as ``root/<name>/<index>.png``; returns {class name: file count}.

    `per_class` caps the digits per class (default: all, 500). With `colour`, each image gets a stroke colour
    drawn uniformly from the RGB cube's darker half and paper of brightness U(0.85, 1), both per image.
    An existing non-empty class folder is an error: nothing is overwritten.
    """
    root = Path(root)
    images, labels = load_mnist5k()
    rng = np.random.default_rng(seed)
    counts: dict[str, int] = {}
    for digit in classes:
        if not 0 <= int(digit) <= 9:
            raise ValueError(f"classes are digits 0-9, got {digit}")
        name = DIGIT_NAMES[int(digit)]
        folder = root / name
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} is not empty; give another root or remove it first")
        folder.mkdir(parents=True, exist_ok=True)
        picked = np.flatnonzero(labels == int(digit))[:per_class]
        for i, index in enumerate(picked):
            ink = Image.fromarray(images[index]).resize((size, size), Image.BICUBIC)
            alpha = np.asarray(ink, dtype=np.float32)[..., None] / 255.0  # (size, size, 1) stroke coverage
            if colour:
                stroke = rng.uniform(0.0, 0.6, size=3)
                paper = np.full(3, rng.uniform(0.85, 1.0))
                rgb = paper * (1 - alpha) + stroke * alpha
                pixels = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, "RGB").save(folder / f"{i:04d}.png")
            else:
                Image.fromarray(np.clip(np.rint(alpha[..., 0] * 255), 0, 255).astype(np.uint8), "L").save(
                    folder / f"{i:04d}.png"
                )
        counts[name] = len(picked)
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder to create (ROOT/<class name>/*.png)")
    parser.add_argument("--classes", type=int, nargs="+", default=[0, 1, 7], help="digits to export")
    parser.add_argument("--size", type=int, default=32, help="image size in px (default 32)")
    parser.add_argument("--per-class", type=int, default=None, help="at most this many per class (500)")
    parser.add_argument("--grey", action="store_true", help="white-on-black grey digits instead of colour")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    colour = not args.grey
    counts = write_digit_folders(
        args.root, args.classes, size=args.size, colour=colour, per_class=args.per_class, seed=args.seed
    )
    listing = ", ".join(f"{name} {count}" for name, count in counts.items())
    print(f"Wrote {sum(counts.values())} images to {args.root}: {listing}")


if __name__ == "__main__":
    main()
