"""OpenAI's ``guided_diffusion.script_util``: flag defaults, model / diffusion factories, argparse helpers."""

from adm.compat.diffusion import (
    create_classifier_and_diffusion,
    create_gaussian_diffusion,
    create_model_and_diffusion,
    sr_create_model_and_diffusion,
)
from adm.compat.flags import add_dict_to_argparser, args_to_dict, str2bool
from adm.compat.models import (
    NUM_CLASSES,
    classifier_and_diffusion_defaults,
    classifier_defaults,
    create_classifier,
    create_model,
    diffusion_defaults,
    model_and_diffusion_defaults,
    sr_create_model,
    sr_model_and_diffusion_defaults,
)

__all__ = [
    "NUM_CLASSES",
    "add_dict_to_argparser",
    "args_to_dict",
    "classifier_and_diffusion_defaults",
    "classifier_defaults",
    "create_classifier",
    "create_classifier_and_diffusion",
    "create_gaussian_diffusion",
    "create_model",
    "create_model_and_diffusion",
    "diffusion_defaults",
    "model_and_diffusion_defaults",
    "sr_create_model",
    "sr_create_model_and_diffusion",
    "sr_model_and_diffusion_defaults",
    "str2bool",
]
