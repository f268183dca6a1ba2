"""Classifier-free guidance (Ho & Salimans 2022): one network's guided prediction, with and without label.

A network trained with label dropout (``DiffusionModule(label_dropout=p)``: each label is replaced by the
null label, the network's last class, with probability p) is both a conditional and an unconditional model.
At scale w the guided noise prediction is

    eps~(x_t, y) = eps(x_t, y) + w * (eps(x_t, y) - eps(x_t, null)),

so w = 0 is the conditional model. The combination has coefficients that sum to one, so it is the same for
networks that predict x_0 (or the previous x): the guided output combines the first C channels of the two
outputs alike. A learned variance (channels C..2C) is taken from the conditional pass.

Guidance of this kind wraps the model instead of correcting a sampler step, so it works with every sampler:
``guidance.wrap(model_fn)`` for a model function, ``guidance.wrap_network(net)`` for a network (what
``draw_images``, the sample recipe and ``ADM.infer`` are given). Both make one batched call of 2B images
(conditional, then unconditional) per step.

The labels are checked once per draw, where they are chosen (``adm.sampling.draw.check_labels``), never in
the per-step call: comparing device tensors there would stall the GPU on every step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ClassifierFreeGuidance", "ClassifierFreeNetwork", "null_label_of"]


def null_label_of(num_classes: int | None) -> int:
    """The null label of a network trained with label dropout: its last class (data classes + 1 in all)."""
    if num_classes is None or int(num_classes) < 2:
        raise ValueError(
            "classifier-free guidance needs a class-conditional network with a null class (num_classes = "
            f"data classes + 1), got num_classes={num_classes}; train one with module.label_dropout > 0"
        )
    return int(num_classes) - 1


class ClassifierFreeGuidance:
    """Guided model outputs at scale w from batched conditional + unconditional passes.

    Args:
        scale: w >= 0 (0: the conditional model, exactly).
        null_label: the label that means "no class" (the network's last class, see :func:`null_label_of`).
    """

    def __init__(self, scale: float, null_label: int) -> None:
        scale = float(scale)
        if scale < 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale}")
        if isinstance(null_label, bool) or int(null_label) < 0:
            raise ValueError(f"null_label must be a class index >= 0, got {null_label!r}")
        self.scale = scale
        self.null_label = int(null_label)

    @property
    def enabled(self) -> bool:
        return self.scale != 0.0

    def __repr__(self) -> str:
        return f"ClassifierFreeGuidance(scale={self.scale}, null_label={self.null_label})"

    def __call__(self, *args, **kwargs) -> torch.Tensor:
        raise ValueError(
            "classifier-free guidance wraps the model, not the sampler step: sample guidance.wrap(model_fn) "
            "(or guidance.wrap_network(net)) with guidance=None"
        )

    def guided(
        self, model_fn: Callable[..., torch.Tensor], x_t: torch.Tensor, t_model: torch.Tensor, **model_kwargs
    ) -> torch.Tensor:
        """The guided output of ``model_fn(x_t, t_model, y=..., **rest)`` for labels ``model_kwargs["y"]``.

        Without labels (y None) every sample is unconditional: the null label is used. The labels must be
        data classes (``draw_images`` checks them once per draw); this per-step call does not look at their
        values, so it never waits for the device.
        """
        y = model_kwargs.pop("y", None)
        null = torch.full((x_t.shape[0],), self.null_label, dtype=torch.int64, device=x_t.device)
        if y is None:
            return model_fn(x_t, t_model, y=null, **model_kwargs)
        if not self.enabled:
            return model_fn(x_t, t_model, y=y, **model_kwargs)
        # One pass over 2B images: the conditional half, then the unconditional (null-label) half.
        twice = {k: torch.cat([v, v]) for k, v in model_kwargs.items()}
        out = model_fn(torch.cat([x_t, x_t]), torch.cat([t_model, t_model]), y=torch.cat([y, null]), **twice)
        cond, uncond = out.chunk(2)
        channels = x_t.shape[1]
        # eps~ = eps(y) + w (eps(y) - eps(null)) on the prediction; a learned variance stays conditional.
        guided = cond[:, :channels] + self.scale * (cond[:, :channels] - uncond[:, :channels])
        return torch.cat([guided, cond[:, channels:]], dim=1)

    def wrap(self, model_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """A model function ``(x_t, t_model, y=..., **rest) -> guided output`` for any sampler."""

        def guided_fn(x_t: torch.Tensor, t_model: torch.Tensor, **model_kwargs) -> torch.Tensor:
            return self.guided(model_fn, x_t, t_model, **model_kwargs)

        return guided_fn

    def wrap_network(self, net: nn.Module) -> ClassifierFreeNetwork:
        """`net` (trained with a null class) as a network of the data's classes whose output is guided."""
        return ClassifierFreeNetwork(net, self)


class ClassifierFreeNetwork(nn.Module):
    """A network with a null class seen as a class-conditional network of the data's classes, guided.

    ``num_classes`` is the data's (the null label excluded), so label plans never draw the null label;
    ``in_channels``, ``image_size`` are the network's. ``forward(x, t, y)`` returns the guided output.
    """

    def __init__(self, net: nn.Module, guidance: ClassifierFreeGuidance) -> None:
        super().__init__()
        if null_label_of(getattr(net, "num_classes", None)) != guidance.null_label:
            raise ValueError(
                f"null_label={guidance.null_label} is not the last class of a network with "
                f"num_classes={net.num_classes}; the null label of such a network is {net.num_classes - 1}"
            )
        self.net = net
        self.guidance = guidance
        self.num_classes = guidance.null_label
        self.in_channels = net.in_channels
        self.image_size = net.image_size

    def forward(self, x_t: torch.Tensor, t_model: torch.Tensor, y: torch.Tensor | None = None, **kwargs):
        return self.guidance.guided(self.net, x_t, t_model, y=y, **kwargs)
