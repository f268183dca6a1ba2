"""Drawing images by index: the one function every sampling loop of the project goes through.

``ADM.infer``, ``scripts/sample.py`` (and the demo), ``scripts/upsample.py``, the training-time sample grid
and the FID callback all call :func:`draw_images`. A sample is fixed by its noise seed
(``sample_seed(seed, i)`` for base images, ``upsample_seed(seed, i)`` for the upsampling stage, see
:mod:`adm.sampling.noise`), its label (:class:`LabelPlan`: labels by index) and its conditioning (e.g.
``low_res``), so the same ``(seed, index, label, sampler)`` gives the same image in every one of them,
whatever the batch size.

    >>> seeds = [sample_seed(0, i) for i in range(16)]
    >>> labels = LabelPlan("random", num_classes=1000, seed=0)(range(16))
    >>> ddim = partial(ddim_sample, steps=25, spacing="strided")
    >>> x_0 = draw_images(unet, diffusion, ddim, seeds, labels=labels,
    ...                   guidance=ClassifierGuidance(classifier, 1.0), batch_size=8, device="cuda")
    >>> x_0.shape                                        # (16, 3, 64, 64) float32 in [-1, 1]
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from adm.sampling.classifier_free import ClassifierFreeNetwork
from adm.sampling.guidance import Guidance
from adm.sampling.noise import PerSampleNoise

__all__ = ["LabelPlan", "draw_images", "labels_by_name", "random_label"]

_LABEL_STREAM = 0x1ABE1  # tells the label draws apart from any other use of (seed, index)


def random_label(seed: int, index: int, num_classes: int) -> int:
    """The uniform random class of sample `index` in a run seeded `seed` (its own stream: (seed, index))."""
    return int(np.random.default_rng([int(seed), int(index), _LABEL_STREAM]).integers(int(num_classes)))


class LabelPlan:
    """Class label of every sample: ``"random"`` (uniform, per-sample seeded), one int, or a list (cycled).

    Args:
        spec: "random" (or None), an int class, or a sequence of ints (sample i gets ``spec[i % len(spec)]``).
        num_classes: classes of the model (or of the guiding classifier).
        seed: the run's seed (random labels of sample i depend only on (seed, i): :func:`random_label`).
    """

    def __init__(self, spec: str | int | Sequence[int] | None, num_classes: int, seed: int) -> None:
        self.num_classes = int(num_classes)
        self.seed = int(seed)
        if spec is None:
            spec = "random"
        if isinstance(spec, str):
            if spec.strip().lower() != "random":
                try:
                    spec = int(spec)
                except ValueError:
                    raise ValueError(
                        f"labels must be 'random', a class index or a list of class indices, got {spec!r}"
                    ) from None
            else:
                spec = "random"
        if isinstance(spec, bool):
            raise ValueError(f"labels must be 'random', a class index or a list of classes, got {spec!r}")
        if isinstance(spec, int):
            spec = [spec]
        if not isinstance(spec, str):
            spec = [int(v) for v in spec]
            if not spec:
                raise ValueError("labels=[] is empty; give 'random', a class index or a non-empty list")
            bad = [v for v in spec if not 0 <= v < self.num_classes]
            if bad:
                raise ValueError(f"labels {bad} are outside the model's classes 0..{self.num_classes - 1}")
        self.spec: str | list[int] = spec

    def describe(self) -> str | list[int]:
        """Plain description (for a run's fingerprint)."""
        return self.spec

    def __call__(self, indices: Sequence[int]) -> np.ndarray:
        """int64 (len(indices),) labels of samples `indices`."""
        if self.spec == "random":
            return np.array([random_label(self.seed, i, self.num_classes) for i in indices], dtype=np.int64)
        spec = self.spec
        return np.array([spec[i % len(spec)] for i in indices], dtype=np.int64)


def labels_by_name(labels: Any, class_names: list[str] | None) -> Any:
    """``labels=`` with class names (``labels=seven``, ``labels=[zero,seven]``) as class indices, using the
    names the checkpoint records (``data.class_names``); indices and "random" pass through unchanged."""

    def index(value: Any) -> Any:
        if not isinstance(value, str) or value == "random" or value.strip().lstrip("-").isdigit():
            return value
        if not class_names:
            raise ValueError(
                f"labels={value}: this model records no class names; give class indices (e.g. labels=3)"
            )
        if value not in class_names:
            raise ValueError(f"labels={value}: no class of that name; the classes are {class_names}")
        return class_names.index(value)

    return [index(v) for v in labels] if isinstance(labels, list) else index(labels)


def _as_labels(labels: Any, count: int) -> torch.Tensor:
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (count,):
        raise ValueError(
            f"labels must be {count} integers (one per seed), got {y.dtype} of shape {tuple(y.shape)}"
        )
    return y.long()


def check_labels(net: nn.Module, y: torch.Tensor) -> None:
    """Refuse labels a class-conditional network has no data class for, once per draw (so that no sampler
    step has to look at label values on the device): anything outside 0..num_classes - 1, and for a
    classifier-free network its null label (the last class) too."""
    if isinstance(net, ClassifierFreeNetwork):
        limit = net.guidance.null_label
        note = f" ({limit} is the null label of this classifier-free network)"
    else:
        limit, note = int(net.num_classes), ""
    outside = (y < 0) | (y >= limit)
    if bool(outside.any()):
        bad = sorted({int(v) for v in y[outside].tolist()})
        raise ValueError(f"labels {bad} are not data classes 0..{limit - 1} of the network{note}")


@torch.no_grad()
def draw_images(
    net: nn.Module,
    diffusion: Any,
    sampler: Callable[..., torch.Tensor],
    seeds: Sequence[int] | torch.Tensor,
    *,
    labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
    conditioning: Mapping[str, torch.Tensor] | None = None,
    guidance: Guidance | None = None,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw one image per seed with a diffusion network and a sampler.

    Image i starts from ``PerSampleNoise`` with seed ``seeds[i]`` and draws every step's noise from it, so it
    does not depend on `batch_size` or on the other seeds.

    Args:
        net: the diffusion network, called as ``net(x_t, t_model, y=labels, **conditioning)``; attributes
            ``in_channels``, ``image_size`` and ``num_classes`` (``UNet``, ``SuperResUNet``, OpenAI's).
        diffusion: the network's (un-respaced) process; the sampler's ``steps`` respaces it.
        sampler: a sampler from adm.sampling, ``sampler(model_fn, diffusion, x_T, model_kwargs=...,
            guidance=..., noise=..., progress=...)``, with its options bound
            (e.g. ``functools.partial(ddim_sample, steps=25)``).
        seeds: one noise seed per image, (N,) (e.g. ``[sample_seed(seed, i) for i in indices]``).
        labels: (N,) int class labels, or None. They reach the network only when it is class-conditional
            (``net.num_classes is not None``; then they must be its classes, and a classifier-free network's
            null label is refused) and always reach the guidance (an unconditional network guided by a
            classifier still has labels).
        conditioning: further per-image inputs of the network, each (N, ...), e.g.
            ``{"low_res": (N, C, h, w) in [-1, 1]}`` for an upsampler. Labels go through `labels`.
        guidance: e.g. ``ClassifierGuidance(classifier, scale)``, or None.
        batch_size: images per sampler call (None: all at once).
        device: where to sample (None: the network's device).
        autocast: context-manager factory wrapped around each sampler call (e.g. Fabric's ``autocast`` or
            Lightning's ``precision_plugin.forward_context``), or None.
        progress: show the sampler's progress bar.
    Returns:
        x_0: float32 (N, C, image_size, image_size) in [-1, 1], on `device`.
    """
    seeds = [int(s) for s in (seeds.flatten().tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    count = len(seeds)
    if count == 0:
        raise ValueError("draw_images needs at least one seed (one per image)")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1 (or None for one batch), got {batch_size}")
    conditioning = dict(conditioning or {})
    if "y" in conditioning:
        raise ValueError("pass class labels as labels=..., not as conditioning['y']")
    for name, value in conditioning.items():
        if not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape[0] != count:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"conditioning[{name!r}] must be a tensor with one row per seed ({count}), got {shape}"
            )
    y = None if labels is None else _as_labels(labels, count)
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    conditional = getattr(net, "num_classes", None) is not None
    if conditional and y is None:
        raise ValueError("the network is class-conditional: give one label per seed (labels=...)")
    if conditional:
        check_labels(net, y)
    shape = (net.in_channels, net.image_size, net.image_size)
    autocast = autocast or contextlib.nullcontext

    def model_fn(x_t: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor | None = None, **kwargs):
        # Labels always reach the guidance (through model_kwargs); the network sees them only if it uses them.
        return net(x_t, t_model, **kwargs, **({"y": y} if conditional else {}))

    step = count if batch_size is None else int(batch_size)
    parts = []
    was_training = net.training
    net.eval()
    try:
        for first in range(0, count, step):
            rows = slice(first, min(first + step, count))
            noise = PerSampleNoise(seeds[rows])
            x_T = noise.initial(shape, device=device)
            model_kwargs = {name: value[rows].to(device) for name, value in conditioning.items()}
            if y is not None:
                model_kwargs["y"] = y[rows].to(device)
            with autocast():
                x_0 = sampler(
                    model_fn,
                    diffusion,
                    x_T,
                    model_kwargs=model_kwargs,
                    guidance=guidance,
                    noise=noise,
                    progress=progress,
                )
            parts.append(x_0.float().clamp(-1, 1))
    finally:
        net.train(was_training)
    return torch.cat(parts)
