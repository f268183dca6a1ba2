"""Guidance: the kinds (a registry), the one function that decides how a draw is guided, and classifier
guidance itself (Dhariwal & Nichol 2021, Algorithms 1 and 2).

:func:`plan_guidance` takes a guidance kind (``None`` | a name in :data:`GUIDANCE_KINDS`) and a scale and
returns a :class:`GuidancePlan`: the network to sample (classifier-free networks wrapped), the per-step
correction (the classifier gradient) and what metrics and W&B record. ``adm.ADM``, the sample and upsample
recipes and the training callbacks all go through it, so guidance has one set of names everywhere:
``guidance=<kind> guidance.scale=<s>`` on the command line, ``infer(guidance=<kind>, scale=<s>)`` in Python.

Classifier guidance:

A guidance object computes s * grad_x log p(y | x_t, t) and the sampler applies it:
  - ancestral (DDPM) steps shift the mean: mu <- mu + Sigma * grad  ("condition_mean");
  - DDIM corrects the noise estimate: eps <- eps - sqrt(1 - alpha_bar_t) * grad  ("condition_score"),
    after which pred_x0 is recomputed from eps and *not* clipped again.
The classifier receives the same timesteps as the diffusion network (``diffusion.model_timesteps(t)``).
A guidance object with ``enabled == False`` (scale 0) is skipped entirely, so the sampler does exactly what
it does without guidance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from adm.diffusion.gaussian import GaussianDiffusion
from adm.sampling.classifier_free import ClassifierFreeGuidance

__all__ = [
    "GUIDANCE_KINDS",
    "ClassifierGuidance",
    "CondFnGuidance",
    "Guidance",
    "GuidanceKind",
    "GuidancePlan",
    "check_classifier_fits",
    "is_active",
    "plan_guidance",
]


@runtime_checkable
class Guidance(Protocol):
    """What samplers expect of a guidance object."""

    enabled: bool

    def __call__(self, x_t: torch.Tensor, t_model: torch.Tensor, **model_kwargs) -> torch.Tensor:
        """The scaled gradient d/dx_t of log p(y | x_t, t), shaped like x_t."""
        ...


def is_active(guidance: Guidance | None) -> bool:
    """True when a sampler must compute and apply the guidance gradient."""
    return guidance is not None and bool(getattr(guidance, "enabled", True))


class ClassifierGuidance:
    """s * grad_x log softmax(classifier(x_t, t))[y] for a noisy-image classifier.

    Args:
        classifier: module called as classifier(x_t, t_model) -> logits (B, num_classes), in eval() mode.
        scale: guidance scale s (0 disables guidance).
    The label comes from the sampler's ``model_kwargs["y"]`` (int64 (B,)); y is given to the classifier
    even when the diffusion network is unconditional.
    """

    def __init__(self, classifier: nn.Module, scale: float) -> None:
        scale = float(scale)
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        self.classifier = classifier
        self.scale = scale

    @property
    def enabled(self) -> bool:
        return self.scale != 0.0

    def __repr__(self) -> str:
        return f"ClassifierGuidance(classifier={type(self.classifier).__name__}, scale={self.scale})"

    def log_prob_grad(self, x_t: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Unscaled d/dx_t sum_i log p(y_i | x_t[i], t[i]), shaped like x_t (float32)."""
        with torch.enable_grad():
            x_in = x_t.detach().requires_grad_(True)
            log_probs = F.log_softmax(self.classifier(x_in, t_model), dim=-1)
            selected = log_probs[torch.arange(y.shape[0], device=y.device), y]
            return torch.autograd.grad(selected.sum(), x_in)[0]

    def __call__(
        self, x_t: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor | None = None, **_
    ) -> torch.Tensor:
        if y is None:
            raise ValueError(
                "classifier guidance needs labels: pass model_kwargs={'y': labels} to the sampler"
            )
        return self.log_prob_grad(x_t, t_model, y) * self.scale


class CondFnGuidance:
    """Adapter for a reference-style ``cond_fn(x, t, **model_kwargs) -> scaled gradient``."""

    enabled = True

    def __init__(self, cond_fn: Callable[..., torch.Tensor]) -> None:
        self.cond_fn = cond_fn

    def __call__(self, x_t: torch.Tensor, t_model: torch.Tensor, **model_kwargs) -> torch.Tensor:
        return self.cond_fn(x_t, t_model, **model_kwargs)


def check_classifier_fits(
    unet: Any,
    classifier: Any,
    *,
    model_process: GaussianDiffusion | None = None,
    classifier_process: GaussianDiffusion | None = None,
) -> None:
    """Raise one ValueError listing every way ``classifier`` does not fit the model ``unet``.

    Args:
        unet: the diffusion network (attributes ``image_size``, ``in_channels``, ``num_classes``).
        classifier: the noisy classifier (``adm.nn.EncoderUNet`` or alike: the same attributes).
        model_process: the process the model was trained for, if known.
        classifier_process: the process the classifier was trained on, if known (OpenAI's released
            classifiers come without one); the noising is compared only when both are given.
    """
    problems = []
    size, model_size = getattr(classifier, "image_size", None), getattr(unet, "image_size", None)
    if size is not None and model_size is not None and size != model_size:
        problems.append(f"it takes {size}px images, the model draws {model_size}px")
    channels, model_channels = getattr(classifier, "in_channels", None), getattr(unet, "in_channels", None)
    if channels is not None and model_channels is not None and channels != model_channels:
        problems.append(f"it takes {channels} channels, the model draws {model_channels}")
    classes, model_classes = getattr(classifier, "num_classes", None), getattr(unet, "num_classes", None)
    if classes is not None and model_classes is not None and classes != model_classes:
        problems.append(f"it has {classes} classes, the model {model_classes}")
    if (
        model_process is not None
        and classifier_process is not None
        and not model_process.same_noising(classifier_process)
    ):
        problems.append(
            f"it was trained on the noising {classifier_process.describe_noising()}, the model uses "
            f"{model_process.describe_noising()}"
        )
    if problems:
        raise ValueError(
            "the classifier does not fit the diffusion model: "
            + "; ".join(problems)
            + ". Use a classifier trained for this model's data and diffusion process (the same `diffusion` "
            "config)"
        )


# --------------------------------------------------------------------------------- guidance kinds (registry)
@dataclass(frozen=True)
class GuidancePlan:
    """How one draw is guided: what :func:`plan_guidance` decided.

    Attributes:
        network: the network to sample. A network trained with a null label (classifier-free) is wrapped as a
            network of the data's classes (``ClassifierFreeNetwork``) whose output is guided at ``scale`` when
            ``kind == "cfg"`` and is the conditional model otherwise.
        guidance: the per-step correction the sampler applies (``ClassifierGuidance``), or None.
        kind: the guidance kind (a key of :data:`GUIDANCE_KINDS`), or None when unguided.
        scale: the guidance scale (0 when unguided).
    """

    network: Any
    guidance: Guidance | None
    kind: str | None
    scale: float

    @property
    def record(self) -> dict[str, Any]:
        """What metrics.json, sweep summaries and W&B record of the guidance."""
        return {"guidance": self.kind, "guidance_scale": self.scale}


@dataclass(frozen=True)
class GuidanceKind:
    """A guidance kind: its name, what it needs, and how it is applied.

    Attributes:
        name: the name users type (``guidance=<name>``).
        uses_classifier: its correction comes from a noisy classifier (checked to fit the model).
        build: ``build(inputs) -> (network to sample, per-step guidance or None)``, or None when what the
            kind needs is missing (then a scale of 0 samples unguided and any other scale is an error).
        needs: what a non-zero scale needs, for that error.
    """

    name: str
    uses_classifier: bool
    build: Callable[[GuidanceInputs], tuple[Any, Guidance | None] | None]
    needs: str


@dataclass(frozen=True)
class GuidanceInputs:
    """What a guidance kind is built from (see :func:`plan_guidance`)."""

    network: Any  # the diffusion network as trained (with its null class, if it has one)
    data_network: Any  # the same network seen as a network of the data's classes (conditional, unguided)
    scale: float
    null_label: int | None
    classifier: Any


def _classifier(inputs: GuidanceInputs) -> tuple[Any, Guidance | None] | None:
    if inputs.classifier is None:
        return None
    return inputs.data_network, ClassifierGuidance(inputs.classifier, inputs.scale)


def _classifier_free(inputs: GuidanceInputs) -> tuple[Any, Guidance | None] | None:
    if inputs.null_label is None:
        return None
    return ClassifierFreeGuidance(inputs.scale, inputs.null_label).wrap_network(inputs.network), None


GUIDANCE_KINDS: dict[str, GuidanceKind] = {
    "classifier": GuidanceKind(
        "classifier",
        uses_classifier=True,
        build=_classifier,
        needs="a noisy classifier: add classifier_ckpt=PATH (in Python: ADM(..., classifier=...))",
    ),
    "cfg": GuidanceKind(
        "cfg",
        uses_classifier=False,
        build=_classifier_free,
        needs="a model trained with a null label (module.label_dropout > 0, e.g. scripts/train.py "
        "experiment=demo_cfg); this one has none: use guidance=classifier with a noisy classifier",
    ),
}


def plan_guidance(
    kind: str | None,
    scale: float,
    *,
    network: Any,
    null_label: int | None = None,
    classifier: Any = None,
    model_process: GaussianDiffusion | None = None,
    classifier_process: GaussianDiffusion | None = None,
) -> GuidancePlan:
    """Decide how a draw is guided: the one place that checks and builds guidance of every kind.

    Args:
        kind: None (unguided) or a key of :data:`GUIDANCE_KINDS` ("classifier", "cfg").
        scale: the guidance scale, finite and >= 0 (0 samples exactly as unguided).
        network: the diffusion network (``num_classes``, ``image_size``, ``in_channels``).
        null_label: the null label of a network trained with label dropout, else None.
        classifier: a noisy classifier for the kinds that use one; checked to fit the model. A kind that
            uses none ignores it (so one sweep can cover ``guidance=classifier,cfg``).
        model_process, classifier_process: the processes of the model and the classifier, when known: a
            classifier trained on another noising is refused.
    Raises:
        ValueError: an unknown kind, a scale that is negative or not a number, a classifier that does not fit
            the model, or a non-zero scale without what the kind needs.
    """
    if kind is not None and kind not in GUIDANCE_KINDS:
        raise ValueError(f"unknown guidance kind {kind!r}; use one of {sorted(GUIDANCE_KINDS)} (or none)")
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise ValueError(f"guidance.scale must be a number >= 0, got {scale!r}")
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance.scale must be a finite number >= 0, got {scale}")
    if kind is None and scale != 0:
        raise ValueError(
            f"guidance.scale={scale:g} without a guidance kind: give guidance=<kind> "
            f"({', '.join(GUIDANCE_KINDS)})"
        )
    # A network trained with a null label, seen as a network of the data's classes: labels never draw it.
    data_network = (
        network if null_label is None else ClassifierFreeGuidance(0.0, null_label).wrap_network(network)
    )
    spec = GUIDANCE_KINDS[kind] if kind is not None else None
    if classifier is not None and (spec is None or spec.uses_classifier):
        check_classifier_fits(
            data_network, classifier, model_process=model_process, classifier_process=classifier_process
        )
    if spec is None:
        return GuidancePlan(data_network, None, None, 0.0)
    built = spec.build(
        GuidanceInputs(
            network=network,
            data_network=data_network,
            scale=scale,
            null_label=null_label,
            classifier=classifier if spec.uses_classifier else None,
        )
    )
    if built is None:
        if scale != 0:
            raise ValueError(f"guidance={kind} guidance.scale={scale:g} needs {spec.needs}")
        return GuidancePlan(data_network, None, kind, 0.0)
    guided_network, guidance = built
    return GuidancePlan(guided_network, guidance, kind, scale)
