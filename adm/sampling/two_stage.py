"""Upsampling (ADM-U): base samples -> upsampler, and the two-stage pipeline base (+ guidance) -> upsampler.

Sample i of a run seeded ``seed`` depends only on ``(seed, i)`` in both stages: the base stage draws its noise
from ``runner.sample_seed(seed, i)`` (as ``scripts/sample.py`` does), the upsampling stage from
:func:`upsample_seed` ``(seed, i)``. The upsampler always sees the base image as it is stored in a sample file
(uint8, ``arr_0``), so upsampling a saved ``.npz`` gives exactly the images of the one-call two-stage run.

    >>> base_images, images, labels = sample_two_stage(
    ...     base_unet, base_diffusion, sr_unet, sr_diffusion, labels=[207] * 16, seed=0,
    ...     base_sampler=partial(ddpm_sample, steps=250), upsampler_sampler=partial(ddpm_sample, steps=250),
    ...     guidance=ClassifierGuidance(classifier, 1.0), device="cuda",
    ... )                                                   # uint8 (16, 64, 64, 3), (16, 256, 256, 3), (16,)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from adm.sampling.guidance import Guidance
from adm.sampling.noise import PerSampleNoise
from adm.sampling.runner import ImageDrawer, LabelPlan, to_uint8

__all__ = ["BaseSamples", "UpsampleDrawer", "from_uint8", "sample_two_stage", "upsample", "upsample_seed"]


def upsample_seed(seed: int, index: int) -> int:
    """Noise seed of sample `index`'s upsampling stage in a run seeded `seed` (a 63-bit hash of both).

    Independent of the base stage's ``sample_seed(seed, index)`` and of every other sample's seeds.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"seed and sample index must be >= 0, got seed={seed}, index={index}")
    digest = hashlib.sha256(f"adm-upsample:{int(seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def from_uint8(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, C) sample-file images -> float32 (n, C, h, w) in [-1, 1] (``u / 127.5 - 1``)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (n, h, w, C), got {images.dtype} {tuple(images.shape)}")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def upsample(
    unet: nn.Module,
    diffusion: Any,
    sampler: Callable[..., torch.Tensor],
    low_res: torch.Tensor,
    *,
    seeds: Sequence[int],
    y: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample the upsampler given low-resolution images (and labels for a class-conditional upsampler).

    Args:
        unet: a ``SuperResUNet`` (or OpenAI's ``SuperResModel``), ``unet(x_t, t, low_res=..., y=...)``.
        diffusion: the upsampler's (un-respaced) process; the sampler's ``steps`` respaces it.
        sampler: ``sampler(model_fn, diffusion, x_T, model_kwargs=..., noise=...) -> x_0`` from adm.sampling,
            options bound (e.g. ``functools.partial(ddpm_sample, steps=250)``).
        low_res: (B, C, h, w) in [-1, 1] on the device to sample on.
        seeds: one noise seed per image (e.g. ``upsample_seed(seed, i)``).
        y: (B,) int64 labels (required when ``unet.num_classes`` is set, ignored otherwise).
    Returns:
        x_0: (B, C, image_size, image_size), roughly in [-1, 1].
    """
    channels, size = unet.in_channels, unet.image_size
    if low_res.ndim != 4 or low_res.shape[1] != channels:
        raise ValueError(
            f"low_res must be (B, {channels}, h, w) for this upsampler, got {tuple(low_res.shape)}"
        )
    if low_res.shape[-1] > size or low_res.shape[-2] > size:
        raise ValueError(
            f"low_res is {tuple(low_res.shape[-2:])} px but the upsampler makes {size} px images; give the "
            "base model's samples (e.g. 64 px for adm_sr_64_256)"
        )
    if len(seeds) != low_res.shape[0]:
        raise ValueError(f"need one seed per image: {len(seeds)} seeds for {low_res.shape[0]} images")
    model_kwargs: dict[str, torch.Tensor] = {"low_res": low_res}
    if unet.num_classes is not None:
        if y is None:
            raise ValueError(
                "the upsampler is class-conditional: give the labels of the base samples (arr_1 of the .npz)"
            )
        model_kwargs["y"] = y.to(low_res.device)
    noise = PerSampleNoise(seeds)
    x_T = noise.initial((channels, size, size), device=low_res.device)
    was_training = unet.training
    unet.eval()
    try:
        return sampler(unet, diffusion, x_T, model_kwargs=model_kwargs, noise=noise, progress=progress)
    finally:
        unet.train(was_training)


class BaseDraw(Protocol):
    """What feeds the upsampler: ``base(indices) -> (uint8 (n, h, w, C), labels (n,) | None)``."""

    def __call__(self, indices: range) -> tuple[np.ndarray, np.ndarray | None]: ...


class BaseSamples:
    """Base images in OpenAI's sample layout: ``images`` uint8 (N, h, w, C), ``labels`` int64 (N,) or None.

    ``base(indices)`` returns those images and labels; ``base.labels(indices)`` the labels alone (None when
    there are none), which is what :func:`~adm.sampling.runner.generate_shards` checks finished shards by.
    :meth:`load` reads them from an ``.npz`` sample file (``arr_0``, ``arr_1``).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray | None, *, source: str = "arrays") -> None:
        self.source = source
        self.images = np.asarray(images)
        self.label_array = None if labels is None else np.asarray(labels).astype(np.int64)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise ValueError(
                f"{source}: base images must be uint8 (N, h, w, 1 or 3) as in OpenAI's sample files, got "
                f"{self.images.dtype} {self.images.shape}"
            )
        if self.label_array is not None and self.label_array.shape != (len(self.images),):
            raise ValueError(
                f"{source}: need one label per image, got labels of shape {self.label_array.shape}"
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> BaseSamples:
        """Read ``arr_0`` (images) and, if present, ``arr_1`` (labels) of an ``.npz`` sample file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"base samples not found: {path} (an .npz with arr_0 images, arr_1 labels)"
            )
        try:
            with np.load(path, allow_pickle=False) as data:
                if "arr_0" not in data:
                    raise ValueError(f"{path} has no 'arr_0' (images); found {sorted(data.files)}")
                images = np.asarray(data["arr_0"])
                labels = np.asarray(data["arr_1"]) if "arr_1" in data else None
        except (OSError, EOFError) as err:
            raise ValueError(f"{path} is not a readable .npz sample file: {err}") from None
        return cls(images, labels, source=str(path))

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(h, w, C) of the base images."""
        return tuple(int(v) for v in self.images.shape[1:])  # type: ignore[return-value]

    def _check(self, indices: range) -> None:
        if indices.stop > len(self.images):
            raise ValueError(f"asked for base sample {indices.stop - 1}, but {self.source} holds {len(self)}")

    def labels(self, indices: range) -> np.ndarray | None:
        self._check(indices)
        return None if self.label_array is None else self.label_array[indices.start : indices.stop]

    def __call__(self, indices: range) -> tuple[np.ndarray, np.ndarray | None]:
        self._check(indices)
        return self.images[indices.start : indices.stop], self.labels(indices)


class UpsampleDrawer:
    """Draws upsampled samples by index: base images (from a file or a base model) -> upsampler.

    The same ``draw(indices) -> (uint8 (n, H, W, C), labels)`` interface as ``runner.ImageDrawer``, so
    ``runner.generate_shards`` writes its output as sharded ``.npz`` files.

    Args:
        unet: the upsampler (``SuperResUNet`` / ``SuperResModel``).
        diffusion: its (un-respaced) process.
        sampler: the upsampling sampler, options bound.
        base: :class:`BaseSamples` (e.g. ``BaseSamples.load(path)``) or ``runner.ImageDrawer`` (the base
            model, with its guidance).
        seed: the run's seed; image i's upsampling noise comes from ``upsample_seed(seed, i)``.
        device: where to sample.
        low_res_size: the low-res side the upsampler was trained for (checked against the base images),
            or None.
        autocast: context manager factory wrapped around the upsampler's batches, or None.
    """

    def __init__(
        self,
        *,
        unet: nn.Module,
        diffusion: Any,
        sampler: Callable[..., torch.Tensor],
        base: BaseDraw,
        seed: int,
        device: torch.device | str,
        low_res_size: int | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        self.unet = unet.eval()
        self.diffusion = diffusion
        self.sampler = sampler
        self.base = base
        self.seed = int(seed)
        self.device = torch.device(device)
        self.low_res_size = None if low_res_size is None else int(low_res_size)
        self.autocast = autocast or contextlib.nullcontext
        self.conditional = getattr(unet, "num_classes", None) is not None

    @property
    def labels(self) -> Callable[[range], np.ndarray | None] | None:
        """The labels of samples by index (those of the base stage)."""
        return getattr(self.base, "labels", None)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the upsampled images."""
        return (self.unet.image_size, self.unet.image_size, self.unet.in_channels)

    def both(self, indices: range) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(base images uint8 (n, h, w, C), upsampled images uint8 (n, H, W, C), labels (n,) | None)."""
        base_images, labels = self.base(indices)
        h, w = base_images.shape[1:3]
        if self.low_res_size is not None and (h, w) != (self.low_res_size, self.low_res_size):
            raise ValueError(
                f"the base images are {h}x{w} but this upsampler was trained on {self.low_res_size} px "
                "inputs; give base samples of that size"
            )
        if self.conditional and labels is None:
            raise ValueError(
                "the upsampler is class-conditional but the base samples have no labels (arr_1); sample the "
                "base model with labels, or use an unconditional upsampler"
            )
        low_res = from_uint8(base_images).to(self.device)
        y = None if labels is None else torch.as_tensor(labels, dtype=torch.int64, device=self.device)
        seeds = [upsample_seed(self.seed, i) for i in indices]
        with self.autocast():
            x_0 = upsample(self.unet, self.diffusion, self.sampler, low_res, seeds=seeds, y=y)
        return base_images, to_uint8(x_0), labels

    def __call__(self, indices: range) -> tuple[np.ndarray, np.ndarray | None]:
        """Upsampled images uint8 (n, H, W, C) and labels (n,) | None of samples `indices`."""
        _, images, labels = self.both(indices)
        return images, labels


def sample_two_stage(
    base_unet: nn.Module,
    base_diffusion: Any,
    upsampler: nn.Module,
    upsampler_diffusion: Any,
    *,
    labels: Sequence[int] | str,
    num_samples: int | None = None,
    seed: int,
    base_sampler: Callable[..., torch.Tensor],
    upsampler_sampler: Callable[..., torch.Tensor],
    guidance: Guidance | None = None,
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ADM-G + ADM-U in one call: the base model (with guidance) draws samples 0..n-1, the upsampler enlarges.

    Sample i uses the base noise ``runner.sample_seed(seed, i)`` and the upsampling noise
    ``upsample_seed(seed, i)``, as ``scripts/upsample.py base=...`` does, so both give the same images.

    Args:
        base_unet, base_diffusion: the base model and its (un-respaced) process.
        upsampler, upsampler_diffusion: the upsampler (``SuperResUNet``) and its process.
        labels: one class per sample, or "random" (then give num_samples).
        num_samples: how many samples (default: len(labels)).
        seed: the run's seed.
        base_sampler, upsampler_sampler: samplers with their options bound (``functools.partial``).
        guidance: e.g. ``ClassifierGuidance(classifier, scale)`` for the base stage, or None.
        device: where both stages run.
    Returns:
        base images uint8 (n, h, w, C), upsampled images uint8 (n, H, W, C), labels int64 (n,).
    """
    if isinstance(labels, str):
        if num_samples is None:
            raise ValueError(f"labels={labels!r} needs num_samples")
        spec: str | list[int] = labels
    else:
        spec = [int(v) for v in labels]
        num_samples = len(spec) if num_samples is None else num_samples
        if num_samples != len(spec):
            raise ValueError(
                f"got {len(spec)} labels for num_samples={num_samples}; give one label per sample"
            )
    classes = base_unet.num_classes if base_unet.num_classes is not None else upsampler.num_classes
    if classes is None:
        raise ValueError("neither network is class-conditional: the upsampling stack here needs labels")
    base = ImageDrawer(
        unet=base_unet,
        diffusion=base_diffusion,
        sampler=base_sampler,
        guidance=guidance,
        labels=LabelPlan(spec, classes, seed),
        seed=seed,
        device=device,
    )
    drawer = UpsampleDrawer(
        unet=upsampler,
        diffusion=upsampler_diffusion,
        sampler=upsampler_sampler,
        base=base,
        seed=seed,
        device=device,
    )
    base_images, images, out_labels = drawer.both(range(int(num_samples)))
    return base_images, images, np.asarray(out_labels, dtype=np.int64)
