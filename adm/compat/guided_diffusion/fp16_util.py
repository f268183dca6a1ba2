"""OpenAI's ``guided_diffusion.fp16_util``: casting a network's convolutions to float16 and back.

Mixed-precision training itself (OpenAI's ``MixedPrecisionTrainer`` with master weights and a hand-rolled
loss scale) is Lightning's job here: ``train_util.TrainLoop(use_fp16=True)`` trains with
``precision="16-mixed"`` (autocast + gradient scaling) on GPUs.
"""

from adm.compat.models import convert_module_to_f16, convert_module_to_f32

__all__ = ["INITIAL_LOG_LOSS_SCALE", "convert_module_to_f16", "convert_module_to_f32", "zero_grad"]

INITIAL_LOG_LOSS_SCALE = 20.0


def zero_grad(model_params) -> None:
    """Drop the gradients of ``model_params`` (as OpenAI's helper: detach and zero in place)."""
    for param in model_params:
        if param.grad is not None:
            param.grad.detach_()
            param.grad.zero_()
