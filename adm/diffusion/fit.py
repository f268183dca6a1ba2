"""Does a noisy classifier fit the diffusion model it is to guide?

Guidance evaluates the classifier on the model's x_t at the model's timesteps, so the classifier must read
the model's images (size, channels), know its labels, and have been trained on the same noising: the same
schedule over the same number of steps (respacing for sampling aside). The sample recipe, the demo and
``adm.ADM`` all ask this one function.
"""

from __future__ import annotations

from typing import Any

from adm.diffusion.gaussian import GaussianDiffusion

__all__ = ["check_classifier_fits"]


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
