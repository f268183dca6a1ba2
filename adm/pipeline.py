"""``adm.ADM``: a ready-to-sample ADM (UNet + diffusion process + optional noisy classifier), and two-stage
sampling (base model -> upsampler) as plain functions.

>>> model = ADM.from_preset("adm_u_64", classifier="adm_cls_64")
>>> model.load_openai("64x64_diffusion.pt", "64x64_classifier.pt")
>>> out = model.to("cuda").infer(16, labels=207, classifier_scale=1.0, sampler="ddpm", steps=250, seed=0)
>>> out["samples"].shape, out["samples"].dtype      # (16, 64, 64, 3), torch.uint8 (NHWC, like OpenAI's .npz)
>>> ours = ADM.from_checkpoint("runs/.../last.ckpt", classifier_ckpt="runs/.../classifier.ckpt")

Every sampling path goes through :func:`adm.sampling.draw_images` with the seed rule ``sample_seed(seed, i)``
(``upsample_seed(seed, i)`` for the upsampling stage), so ``infer(seed=s)`` draws the images that
``scripts/sample.py seed=s`` and the training-time sample grid draw for the same labels and sampler.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from adm.diffusion import GaussianDiffusion, check_classifier_fits
from adm.io.images import from_uint8, to_uint8
from adm.nn import SuperResUNet
from adm.sampling import (
    SAMPLERS,
    ClassifierFreeGuidance,
    ClassifierGuidance,
    Guidance,
    LabelPlan,
    draw_images,
    random_label,
    sample_seed,
    upsample_seed,
)

__all__ = ["ADM", "sample_two_stage", "upsample"]


def _null_label(trained: Any) -> int | None:
    """The null label a training checkpoint records (trained with label dropout), else None."""
    return (trained.config.get("classifier_free") or {}).get("null_label")


_INDEX_BITS = 32  # sample_seed(seed, i) == (seed << 32) + i


class ADM(nn.Module):
    """An ADM diffusion model ready for sampling.

    Args:
        unet: ``adm.nn.UNet`` (``forward(x, t, y=None)``) or an upsampler ``adm.nn.SuperResUNet``
            (``forward(x, t, low_res, y=None)``); attributes ``num_classes``, ``learn_sigma``, ``image_size``,
            ``in_channels``.
        diffusion: the process the UNet was trained for (``adm.diffusion.GaussianDiffusion``), full length;
            sampling respaces it (``infer(steps=...)``).
        classifier: optional noisy classifier (``adm.nn.EncoderUNet``) for classifier guidance.

    Build it from a preset (:meth:`from_preset`, then :meth:`load_openai` for OpenAI's released weights) or
    from one of our training checkpoints (:meth:`from_checkpoint`).
    """

    def __init__(
        self,
        unet: nn.Module,
        diffusion: GaussianDiffusion,
        classifier: nn.Module | None = None,
        null_label: int | None = None,
    ) -> None:
        super().__init__()
        if bool(getattr(unet, "learn_sigma", diffusion.learn_sigma)) != diffusion.learn_sigma:
            raise ValueError(
                f"the UNet has learn_sigma={unet.learn_sigma} but the diffusion process "
                f"{'learns' if diffusion.learn_sigma else 'fixes'} the variance; use the same learn_sigma"
            )
        # The null label of a network trained with label dropout (classifier-free guidance), else None.
        self.null_label = None if null_label is None else int(null_label)
        if classifier is not None:  # its process is unknown here; from_checkpoint compares that too
            check_classifier_fits(self._data_classes_view(unet), classifier, model_process=diffusion)
        self.unet = unet
        self.diffusion = diffusion
        self.classifier = classifier

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, model_name: str, classifier: str | None = None) -> ADM:
        """Build the networks of ``conf/model/<model_name>.yaml`` (+ ``conf/classifier/<classifier>.yaml``).

        The diffusion process is the one the preset selects (``defaults: - override /diffusion: ...``), the
        image size, channels and classes those of the data it selects (``override /data: ...``): the presets
        are composed by Hydra (:mod:`adm.config`). Weights are freshly initialised: call :meth:`load_openai`
        next. Works under ``with torch.device("meta"):`` (no parameter memory; :meth:`load_openai` then
        materialises it).
        """
        from adm.config import build_diffusion, build_network

        diffusion = build_diffusion(model_name)  # first: raises for a classifier preset
        unet = build_network(model_name)
        clf = build_network(classifier) if classifier is not None else None
        return cls(unet, diffusion, clf)

    @staticmethod
    def _load_into(module: nn.Module, path: str | os.PathLike, what: str) -> None:
        from adm.config import preset_hint
        from adm.io.safe_load import safe_torch_load
        from adm.nn import load_state_dict_checked

        state = safe_torch_load(path)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}) for the {what}")
        if any(p.is_meta for p in module.parameters()):
            module.to_empty(device="cpu")  # built under torch.device("meta"): allocate, then load
        load_state_dict_checked(module, state, hint=preset_hint)

    def load_openai(
        self, diffusion_ckpt: str | os.PathLike, classifier_ckpt: str | os.PathLike | None = None
    ) -> ADM:
        """Load OpenAI's released weights (e.g. ``64x64_diffusion.pt``, ``64x64_classifier.pt``) unchanged.

        Files are read with ``weights_only=True``; a checkpoint that does not fit raises one ValueError naming
        missing / unexpected / mis-shaped keys and the presets that fit. Returns ``self``.
        """
        if classifier_ckpt is not None and self.classifier is None:
            raise ValueError(
                "classifier_ckpt given but this ADM has no classifier: use from_preset(..., classifier=...)"
            )
        self._load_into(self.unet, diffusion_ckpt, "UNet")
        if classifier_ckpt is not None:
            self._load_into(self.classifier, classifier_ckpt, "classifier")
        return self

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        ema: bool | float = True,
        *,
        classifier_ckpt: str | os.PathLike | None = None,
        classifier: str | None = None,
    ) -> ADM:
        """Load one of our training checkpoints (``scripts/train.py`` / ``train_superres.py``), which describe
        their own network and diffusion process, optionally with a noisy classifier for guidance.

        Args:
            path: a diffusion-model ``.ckpt`` (a ``UNet`` or an upsampler ``SuperResUNet``).
            ema: True: the EMA weights of the first rate (the raw ones if trained without EMA); False: the raw
                weights; a float: the EMA weights of that rate.
            classifier_ckpt: a noisy classifier: one of our ``scripts/train_classifier.py`` checkpoints (its
                EMA weights), or OpenAI's released weights (e.g. ``64x64_classifier.pt``, then give
                `classifier`).
            classifier: the classifier preset of OpenAI's weights (e.g. "adm_cls_64"); not for our
                checkpoints, which describe themselves.
        Raises:
            ValueError: the file is not a diffusion checkpoint of ours, or the classifier does not fit the
                model (image size, channels, classes, or the noise process it was trained on).
        """
        from adm.io.checkpoint import load_checkpoint

        trained = load_checkpoint(path, ema=ema)
        if trained.kind != "diffusion":
            raise ValueError(
                f"{path} holds a noisy classifier; load a diffusion checkpoint and give this one as "
                "classifier_ckpt=..."
            )
        clf = None
        if classifier_ckpt is not None:
            clf = cls._classifier_for(trained, classifier_ckpt, classifier)
        elif classifier is not None:
            raise ValueError(
                f"classifier={classifier!r} names the preset of OpenAI classifier weights: give the weights "
                "too (classifier_ckpt=PATH)"
            )
        return cls(trained.unet, trained.diffusion, clf, null_label=_null_label(trained))

    @staticmethod
    def _classifier_for(trained: Any, path: str | os.PathLike, preset: str | None) -> nn.Module:
        """The classifier of `path` (ours, or OpenAI's with a preset), checked against the model `trained`."""
        from adm.config import build_network, fitting_presets, preset_hint
        from adm.diffusion import check_classifier_fits
        from adm.io.checkpoint import CONFIG_KEY, load_checkpoint
        from adm.io.safe_load import safe_torch_load
        from adm.nn import load_state_dict_checked

        state = safe_torch_load(path)
        classifier_process = None  # OpenAI's classifiers come without their process
        if isinstance(state, dict) and CONFIG_KEY in state:
            del state
            if preset is not None:
                raise ValueError(
                    f"{path} is one of our classifier checkpoints and describes itself: drop "
                    f"classifier={preset!r}"
                )
            guide = load_checkpoint(path)
            if guide.kind != "classifier":
                raise ValueError(f"classifier_ckpt={path} holds a diffusion model, not a noisy classifier")
            network, classifier_process = guide.classifier, guide.diffusion
        else:
            if not isinstance(state, dict):
                raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
            if preset is None:
                fits = fitting_presets(state)
                hint = f" (presets that fit these weights: {', '.join(fits)})" if fits else ""
                raise ValueError(
                    f"classifier_ckpt={path} holds OpenAI-style weights: add classifier=<preset>{hint}"
                )
            network = load_state_dict_checked(build_network(preset), state, hint=preset_hint).eval()
        unet = trained.unet
        if _null_label(trained) is not None:  # the classifier knows the data's classes, not the null one
            unet = ClassifierFreeGuidance(0.0, _null_label(trained)).wrap_network(unet)
        check_classifier_fits(
            unet, network, model_process=trained.diffusion, classifier_process=classifier_process
        )
        return network

    def _data_classes_view(self, unet: nn.Module) -> nn.Module:
        """`unet` as a network of the data's classes (without its null label, if it has one)."""
        if self.null_label is None:
            return unet
        return ClassifierFreeGuidance(0.0, self.null_label).wrap_network(unet)

    # ------------------------------------------------------------------ sampling
    @property
    def num_classes(self) -> int | None:
        """Number of labels sampling can ask for (UNet's, else the classifier's); None if unconditional."""
        n = getattr(self.unet, "num_classes", None)
        if n is not None and self.null_label is not None:
            return self.null_label  # the null label (the last class) is not a class to draw
        return n if n is not None else getattr(self.classifier, "num_classes", None)

    @property
    def is_upsampler(self) -> bool:
        """True when the network is an upsampler (``SuperResUNet``): sampling needs ``low_res`` images."""
        return isinstance(self.unet, SuperResUNet)

    def _labels(
        self,
        batch_size: int,
        labels: int | Sequence[int] | torch.Tensor | None,
        seed: int | None,
        seeds: list[int],
    ) -> torch.Tensor | None:
        n = self.num_classes
        if labels is None:
            if n is None:
                return None
            if self.is_upsampler and getattr(self.unet, "num_classes", None) is not None:
                raise ValueError(
                    "this upsampler is class-conditional: give the labels of the low_res images (labels=...)"
                )
            if seed is not None:  # as scripts/sample.py labels=random: label i from (seed, i)
                return torch.from_numpy(LabelPlan("random", n, seed)(range(batch_size)))
            # one seed per image: the label comes from the (seed, index) that sample_seed packed into it
            if any(s < 0 for s in seeds):
                raise ValueError("random labels need seeds >= 0; give labels=... or non-negative seeds")
            mask = (1 << _INDEX_BITS) - 1
            drawn = [random_label(s >> _INDEX_BITS, s & mask, n) for s in seeds]
            return torch.tensor(drawn, dtype=torch.int64)
        if n is None:
            raise ValueError("labels given but neither the UNet nor a classifier is class-conditional")
        if isinstance(labels, bool):
            raise ValueError("labels must be an int, a sequence of ints or an int64 tensor")
        labels = torch.full((batch_size,), labels) if isinstance(labels, int) else torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (batch_size,):
            raise ValueError(
                f"labels must be one int or {batch_size} ints, got {tuple(labels.shape)} {labels.dtype}"
            )
        if int(labels.min()) < 0 or int(labels.max()) >= n:
            raise ValueError(
                f"labels must lie in [0, {n - 1}], got values {labels.min().item()}..{labels.max().item()}"
            )
        return labels.long()

    @torch.no_grad()
    def infer(
        self,
        batch_size: int,
        labels: int | Sequence[int] | torch.Tensor | None = None,
        classifier_scale: float = 0.0,
        sampler: str = "ddpm",
        steps: int | Sequence[int] | None = None,
        eta: float = 0.0,
        seed: int | Sequence[int] = 0,
        show_progress: bool = False,
        low_res: torch.Tensor | None = None,
        spacing: str | None = None,
        cfg_scale: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Sample ``batch_size`` images.

        Args:
            batch_size: number of images.
            labels: None (random labels for class-conditional models / guidance: label i from (seed, i), as
                ``scripts/sample.py labels=random``), one int for every image, or ``batch_size`` ints in
                [0, num_classes).
            classifier_scale: classifier-guidance scale s (needs a classifier; 0 = no guidance).
            sampler: "ddpm" (ancestral, learned variance), "ddim", "dpmpp_2m" or "dpmpp_3m" (DPM-Solver++;
                `spacing` may also be "logsnr", their default).
            steps: how many of the 1000 training steps to sample (e.g. 250; per-section counts with
                ``spacing="sections"``); None samples all of them.
            eta: DDIM noise (0 = deterministic); only for ``sampler="ddim"``.
            seed: run seed (image i uses ``sample_seed(seed, i)``, as scripts/sample.py does; an upsampler
                ``upsample_seed(seed, i)``, as scripts/upsample.py does) or one seed per image. Image i's
                noise comes from its own generator, so it does not change with ``batch_size`` or device.
            show_progress: show a progress bar.
            low_res: for an upsampler (:attr:`is_upsampler`): the images to enlarge, float (B, C, h, w) in
                [-1, 1] (``adm.io.images.from_uint8`` converts sample-file images).
            spacing: how the `steps` are spread: "even" (default), "strided" (OpenAI's "ddimN") or
                "sections".
            cfg_scale: classifier-free guidance scale w (a model trained with label dropout; 0 = the
                conditional model).
        Returns:
            {"samples": uint8 (B, H, W, C) images (OpenAI's quantisation ``((x + 1) * 127.5).clamp(0, 255)``
            truncated, as in their .npz files), "labels": int64 (B,) labels used (-1 when unconditional)}.
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {sorted(SAMPLERS)}")
        if classifier_scale < 0:
            raise ValueError(f"classifier_scale must be >= 0, got {classifier_scale}")
        if classifier_scale > 0 and self.classifier is None:
            raise ValueError(
                "classifier guidance needs a classifier: ADM.from_preset(model, classifier=...) + load_openai"
            )
        if eta != 0.0 and sampler != "ddim":
            raise ValueError("eta is a DDIM setting; use sampler='ddim' or leave eta=0")
        device = next(self.unet.parameters()).device
        if device.type == "meta":
            raise ValueError("the networks are on the meta device: load weights first (load_openai)")
        conditioning = self._conditioning(batch_size, low_res, device)
        seed_rule = upsample_seed if self.is_upsampler else sample_seed
        run_seed = int(seed) if isinstance(seed, int) else None
        seeds = (
            [seed_rule(run_seed, i) for i in range(batch_size)]
            if run_seed is not None
            else [int(s) for s in seed]
        )
        if len(seeds) != batch_size:
            raise ValueError(
                f"got {len(seeds)} seeds for batch_size {batch_size}; give one per image or one int"
            )
        y = self._labels(batch_size, labels, run_seed, seeds)
        guidance = ClassifierGuidance(self.classifier, classifier_scale) if classifier_scale > 0 else None
        net = self.unet
        if self.null_label is not None:
            net = ClassifierFreeGuidance(cfg_scale, self.null_label).wrap_network(self.unet)
        elif cfg_scale != 0:
            raise ValueError(
                "cfg_scale needs a model trained with label dropout (a null label); this one has none: use "
                "classifier_scale with a classifier"
            )
        options = {"eta": eta} if sampler == "ddim" else {}
        was_training = self.training
        self.eval()
        try:
            x_0 = draw_images(
                net,
                self.diffusion,
                functools.partial(SAMPLERS[sampler], steps=steps, spacing=spacing, **options),
                seeds,
                labels=y,
                conditioning=conditioning,
                guidance=guidance,
                device=device,
                progress=show_progress,
            )
        finally:
            self.train(was_training)
        samples = torch.from_numpy(to_uint8(x_0))
        out_labels = torch.full((batch_size,), -1, dtype=torch.int64) if y is None else y
        return {"samples": samples, "labels": out_labels}

    def _conditioning(
        self, batch_size: int, low_res: torch.Tensor | None, device: torch.device
    ) -> dict[str, torch.Tensor]:
        if not self.is_upsampler:
            if low_res is not None:
                raise ValueError("low_res is for upsamplers; this ADM draws images from noise alone")
            return {}
        channels, size = self.unet.in_channels, self.unet.image_size
        if low_res is None:
            raise ValueError(
                f"this ADM is an upsampler: give low_res=(B, {channels}, h, w) images in [-1, 1] to enlarge"
            )
        _check_low_res(low_res, batch_size, channels, size)
        return {"low_res": low_res.to(device)}


# ---------------------------------------------------------------------- upsampling (ADM-U)
def _check_low_res(low_res: torch.Tensor, count: int, channels: int, size: int) -> None:
    if not isinstance(low_res, torch.Tensor) or low_res.ndim != 4 or low_res.shape[1] != channels:
        shape = tuple(low_res.shape) if isinstance(low_res, torch.Tensor) else type(low_res).__name__
        raise ValueError(f"low_res must be (B, {channels}, h, w) for this upsampler, got {shape}")
    if low_res.shape[-1] > size or low_res.shape[-2] > size:
        raise ValueError(
            f"low_res is {tuple(low_res.shape[-2:])} px but the upsampler makes {size} px images; give the "
            "base model's samples (e.g. 64 px for adm_sr_64_256)"
        )
    if low_res.shape[0] != count:
        raise ValueError(f"need one low_res image per sample: {low_res.shape[0]} images for {count} samples")


def upsample(
    unet: nn.Module,
    diffusion: GaussianDiffusion,
    sampler: Callable[..., torch.Tensor],
    low_res: torch.Tensor,
    *,
    seeds: Sequence[int],
    y: torch.Tensor | None = None,
    autocast: Callable[[], Any] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sample the upsampler given low-resolution images (and labels for a class-conditional upsampler).

    Args:
        unet: a ``SuperResUNet`` (or OpenAI's ``SuperResModel``), ``unet(x_t, t, low_res=..., y=...)``.
        diffusion: the upsampler's (un-respaced) process; the sampler's ``steps`` respaces it.
        sampler: a sampler from adm.sampling with its options bound
            (e.g. ``functools.partial(ddpm_sample, steps=250)``).
        low_res: (B, C, h, w) in [-1, 1] on the device to sample on.
        seeds: one noise seed per image (``upsample_seed(seed, i)`` for sample i of a run seeded `seed`).
        y: (B,) int64 labels (required when ``unet.num_classes`` is set, ignored otherwise).
        autocast: context-manager factory around the sampler calls, or None.
    Returns:
        x_0: float32 (B, C, image_size, image_size) in [-1, 1], on low_res's device.
    """
    _check_low_res(low_res, len(seeds), unet.in_channels, unet.image_size)
    if unet.num_classes is not None and y is None:
        raise ValueError(
            "the upsampler is class-conditional: give the labels of the base samples (arr_1 of the .npz)"
        )
    return draw_images(
        unet,
        diffusion,
        sampler,
        seeds,
        labels=y if unet.num_classes is not None else None,
        conditioning={"low_res": low_res},
        device=low_res.device,
        autocast=autocast,
        progress=progress,
    )


def sample_two_stage(
    base_unet: nn.Module,
    base_diffusion: GaussianDiffusion,
    upsampler: nn.Module,
    upsampler_diffusion: GaussianDiffusion,
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

    Sample i uses the base noise ``sample_seed(seed, i)`` and the upsampling noise ``upsample_seed(seed, i)``;
    the upsampler sees the base image as a sample file stores it (uint8), exactly as
    ``scripts/upsample.py base=...`` does, so both give the same images.

    >>> base, images, labels = sample_two_stage(
    ...     base_unet, base_diffusion, sr_unet, sr_diffusion, labels=[207] * 16, seed=0,
    ...     base_sampler=partial(ddpm_sample, steps=250), upsampler_sampler=partial(ddpm_sample, steps=250),
    ...     guidance=ClassifierGuidance(classifier, 1.0), device="cuda",
    ... )                                                   # uint8 (16, 64, 64, 3), (16, 256, 256, 3), (16,)

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
    indices = range(int(num_samples))
    y = LabelPlan(spec, classes, seed)(indices)
    base_x0 = draw_images(
        base_unet,
        base_diffusion,
        base_sampler,
        [sample_seed(seed, i) for i in indices],
        labels=y,
        guidance=guidance,
        device=device,
    )
    base_images = to_uint8(base_x0)
    x_0 = upsample(
        upsampler,
        upsampler_diffusion,
        upsampler_sampler,
        from_uint8(base_images).to(device),
        seeds=[upsample_seed(seed, i) for i in indices],
        y=torch.from_numpy(y).to(device),
    )
    return base_images, to_uint8(x_0), y
