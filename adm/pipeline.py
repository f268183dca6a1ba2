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

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from adm.diffusion import GaussianDiffusion
from adm.io.images import from_uint8, to_uint8
from adm.nn import SuperResUNet
from adm.sampling import (
    SAMPLERS,
    Guidance,
    GuidancePlan,
    LabelPlan,
    build_sampler,
    draw_images,
    labels_by_name,
    plan_guidance,
    random_label,
    sample_seed,
    upsample_seed,
)
from adm.weights import OptionNames, Weights, load_weights

__all__ = ["ADM", "sample_two_stage", "upsample"]

_INDEX_BITS = 32  # sample_seed(seed, i) == (seed << 32) + i
# The Python API's option names, for the errors of the weights door.
_MODEL_NAMES = OptionNames(
    "path",
    "diffusion_ckpt",
    "model_name",
    "flags",
    advice="OpenAI's released weights load with ADM.from_preset(<preset>).load_openai(PATH)",
)
_CLASSIFIER_NAMES = OptionNames("classifier_ckpt", "classifier_ckpt", "classifier", "classifier_flags")


class ADM(nn.Module):
    """An ADM diffusion model ready for sampling: the one object every entry point draws images through.

    Args:
        unet: ``adm.nn.UNet`` (``forward(x, t, y=None)``) or an upsampler ``adm.nn.SuperResUNet``
            (``forward(x, t, low_res, y=None)``); attributes ``num_classes``, ``learn_sigma``, ``image_size``,
            ``in_channels``.
        diffusion: the process the UNet was trained for (``adm.diffusion.GaussianDiffusion``), full length;
            sampling respaces it (``infer(steps=...)``).
        classifier: optional noisy classifier (``adm.nn.EncoderUNet``) for classifier guidance.
        null_label: the null label of a network trained with label dropout (classifier-free guidance).
        classifier_process: the process the classifier was trained on, when known (checked to be the
            model's noising).
        class_names: the data's class names (index order), so that ``infer(labels=...)`` takes names too.

    Build it from a preset (:meth:`from_preset`, then :meth:`load_openai` for OpenAI's released weights), from
    one of our training checkpoints (:meth:`from_checkpoint`) or from :func:`adm.weights.load_weights`
    results (:meth:`from_weights`).
    """

    def __init__(
        self,
        unet: nn.Module,
        diffusion: GaussianDiffusion,
        classifier: nn.Module | None = None,
        null_label: int | None = None,
        classifier_process: GaussianDiffusion | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if bool(getattr(unet, "learn_sigma", diffusion.learn_sigma)) != diffusion.learn_sigma:
            raise ValueError(
                f"the UNet has learn_sigma={unet.learn_sigma} but the diffusion process "
                f"{'learns' if diffusion.learn_sigma else 'fixes'} the variance; use the same learn_sigma"
            )
        # The null label of a network trained with label dropout (classifier-free guidance), else None.
        self.null_label = None if null_label is None else int(null_label)
        self.unet = unet
        self.diffusion = diffusion
        self.classifier = classifier
        self.classifier_process = classifier_process
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        if classifier is not None:
            self.plan("classifier", 0.0)  # checks that the classifier fits the model

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, model_name: str, classifier: str | None = None) -> ADM:
        """Build the networks of ``conf/model/<model_name>.yaml`` (+ ``conf/classifier/<classifier>.yaml``).

        The diffusion process is the one the preset selects, the image size, channels and classes those of
        the data it selects: the presets are composed by Hydra (:mod:`adm.config`). Weights are freshly
        initialised: call :meth:`load_openai` next. Works under ``with torch.device("meta"):`` (no parameter
        memory; :meth:`load_openai` then materialises it).
        """
        from adm.config import build_diffusion, build_network

        diffusion = build_diffusion(model_name)  # first: raises for a classifier preset
        unet = build_network(model_name)
        clf = build_network(classifier) if classifier is not None else None
        return cls(unet, diffusion, clf)

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
        load_weights(diffusion_ckpt, kind="diffusion", source="openai", network=self.unet, names=_MODEL_NAMES)
        if classifier_ckpt is not None:
            load_weights(
                classifier_ckpt,
                kind="classifier",
                source="openai",
                network=self.classifier,
                names=_CLASSIFIER_NAMES,
            )
        return self

    @classmethod
    def from_weights(cls, model: Weights, classifier: Weights | None = None) -> ADM:
        """The ADM of a diffusion network and an optional classifier read by :func:`adm.weights.load_weights`
        (checked: the classifier must fit the model's images, labels and, when both are known, noising)."""
        if model.kind != "diffusion" or model.diffusion is None:
            raise ValueError("from_weights needs a diffusion network with its process (kind='diffusion')")
        if classifier is not None and classifier.kind != "classifier":
            raise ValueError("the classifier weights hold a diffusion model, not a noisy classifier")
        return cls(
            model.network,
            model.diffusion,
            classifier.network if classifier is not None else None,
            null_label=model.null_label,
            classifier_process=classifier.diffusion if classifier is not None else None,
            class_names=model.class_names,
        )

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
            ema: True: the EMA weights of the first rate (the raw weights if trained without EMA); False:
                the raw weights; a float: the EMA weights of that rate.
            classifier_ckpt: a noisy classifier: one of our ``scripts/train_classifier.py`` checkpoints (its
                EMA weights), or OpenAI's released weights (e.g. ``64x64_classifier.pt``, then give
                `classifier`).
            classifier: the classifier preset of OpenAI's weights (e.g. "adm_cls_64"); not for our
                checkpoints, which describe themselves.
        Raises:
            ValueError: the file is not a diffusion checkpoint of ours, or the classifier does not fit the
                model (image size, channels, classes, or the noise process it was trained on).
        """
        model = load_weights(path, kind="diffusion", source="adm", ema=ema, names=_MODEL_NAMES)
        guide = None
        if classifier_ckpt is not None:
            guide = load_weights(
                classifier_ckpt, kind="classifier", preset=classifier, names=_CLASSIFIER_NAMES
            )
        elif classifier is not None:
            raise ValueError(
                f"classifier={classifier!r} names the preset of OpenAI classifier weights: give the weights "
                "too (classifier_ckpt=PATH)"
            )
        return cls.from_weights(model, guide)

    # ------------------------------------------------------------------ guidance and drawing
    def plan(self, guidance: str | None, scale: float = 0.0) -> GuidancePlan:
        """How to guide with this model: :func:`adm.sampling.plan_guidance` of its networks.

        Args:
            guidance: None (unguided), "classifier" (needs the classifier) or "cfg" (needs a model trained
                with label dropout), or any kind of ``adm.sampling.GUIDANCE_KINDS``.
            scale: the guidance scale (0: as unguided).
        """
        return plan_guidance(
            guidance,
            scale,
            network=self.unet,
            null_label=self.null_label,
            classifier=self.classifier,
            model_process=self.diffusion,
            classifier_process=self.classifier_process,
        )

    def draw(
        self,
        seeds: Sequence[int],
        *,
        sampler: Callable[..., torch.Tensor],
        plan: GuidancePlan | None = None,
        labels: torch.Tensor | np.ndarray | Sequence[int] | None = None,
        conditioning: dict[str, torch.Tensor] | None = None,
        device: torch.device | str | None = None,
        autocast: Callable[[], Any] | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Draw one image per seed (:func:`adm.sampling.draw_images`) with a guidance plan (:meth:`plan`).

        Returns x_0: float32 (N, C, H, W) in [-1, 1] on `device` (default: the network's).
        """
        plan = plan if plan is not None else self.plan(None)
        device = device if device is not None else next(self.unet.parameters()).device
        return draw_images(
            plan.network,
            self.diffusion,
            sampler,
            seeds,
            labels=labels,
            conditioning=conditioning,
            guidance=plan.guidance,
            device=device,
            autocast=autocast,
            progress=progress,
        )

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
        if isinstance(labels, str) or (
            isinstance(labels, list | tuple) and any(isinstance(v, str) for v in labels)
        ):  # class names, as scripts/sample.py labels=[zero,seven] takes them
            named = labels_by_name(labels if isinstance(labels, str) else list(labels), self.class_names)
            labels = [_index(v) for v in named] if isinstance(named, list) else _index(named)
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

    @staticmethod
    def _guidance_arguments(
        guidance: str | None, scale: float, classifier_scale: float | None, cfg_scale: float | None
    ) -> tuple[str | None, float]:
        """``guidance=`` / ``scale=``, or their older spelling ``classifier_scale=`` / ``cfg_scale=``."""
        older = {k: v for k, v in (("classifier", classifier_scale), ("cfg", cfg_scale)) if v is not None}
        if not older:
            return guidance, scale
        if guidance is not None or scale != 0.0:
            raise ValueError("give guidance=<kind> and scale=..., not classifier_scale / cfg_scale as well")
        warnings.warn(
            "classifier_scale= / cfg_scale= are guidance='classifier' / 'cfg' with scale=...",
            DeprecationWarning,
            stacklevel=3,
        )
        active = {k: v for k, v in older.items() if v != 0}
        if len(active) > 1:
            raise ValueError("one guidance kind at a time: guidance='classifier' or 'cfg' with scale=...")
        kind, value = next(iter(active.items()), next(iter(older.items())))
        return kind, value

    @torch.no_grad()
    def infer(
        self,
        batch_size: int,
        labels: int | str | Sequence[int | str] | torch.Tensor | None = None,
        guidance: str | None = None,
        scale: float = 0.0,
        sampler: str = "ddpm",
        steps: int | Sequence[int] | None = None,
        eta: float = 0.0,
        seed: int | Sequence[int] = 0,
        show_progress: bool = False,
        low_res: torch.Tensor | None = None,
        spacing: str | None = None,
        *,
        classifier_scale: float | None = None,
        cfg_scale: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Sample ``batch_size`` images.

        Args:
            batch_size: number of images.
            labels: None (random labels for class-conditional models / guidance: label i from (seed, i), as
                ``scripts/sample.py labels=random``), one int for every image, or ``batch_size`` ints in
                [0, num_classes); class names (one, or one per image) where the checkpoint records them.
            guidance: the guidance kind, as ``scripts/sample.py guidance=<kind>``: None (unguided),
                "classifier" (the noisy classifier) or "cfg" (classifier-free: a model trained with label
                dropout).
            scale: the guidance scale, as ``guidance.scale=<s>`` (0: as unguided).
            sampler: "ddpm" (ancestral, learned variance), "ddim", "dpmpp_2m" or "dpmpp_3m" (DPM-Solver++;
                `spacing` may also be "logsnr", their default): a name of ``adm.sampling.SAMPLERS``.
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
            classifier_scale, cfg_scale: the older spelling of ``guidance="classifier"`` / ``"cfg"`` with
                ``scale`` (deprecated).
        Returns:
            {"samples": uint8 (B, H, W, C) images (OpenAI's quantisation ``((x + 1) * 127.5).clamp(0, 255)``
            truncated, as in their .npz files), "labels": int64 (B,) labels used (-1 when unconditional)}.
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {sorted(SAMPLERS)}")
        if eta != 0.0 and sampler != "ddim":
            raise ValueError("eta is a DDIM setting; use sampler='ddim' or leave eta=0")
        guidance, scale = self._guidance_arguments(guidance, scale, classifier_scale, cfg_scale)
        plan = self.plan(guidance, scale)
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
        options = {"eta": eta} if sampler == "ddim" else {}
        was_training = self.training
        self.eval()
        try:
            x_0 = self.draw(
                seeds,
                sampler=build_sampler(sampler, steps=steps, spacing=spacing, **options),
                plan=plan,
                labels=y,
                conditioning=conditioning,
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
def _index(value: Any) -> Any:
    """A label given as text: its index when it is a number, else an error (names were mapped already)."""
    if isinstance(value, str):
        if not value.strip().lstrip("-").isdigit():
            raise ValueError(f"labels={value!r}: give class names, class indices, or None for random labels")
        return int(value)
    return value


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
    return ADM(unet, diffusion).draw(
        seeds,
        sampler=sampler,
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
