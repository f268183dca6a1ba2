"""DPM-Solver++ against the exact probability-flow ODE solution of Gaussian data, DDIM, and guidance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adm.diffusion import GaussianDiffusion
from adm.sampling import (
    SAMPLERS,
    ClassifierGuidance,
    PerSampleNoise,
    ddim_sample,
    dpm_solver_timesteps,
    dpmpp_2m_sample,
    dpmpp_3m_sample,
    dpmpp_sample,
)

MU, STD = 0.3, 0.5  # data x_0 ~ N(MU, STD^2) in every dimension


def process(schedule: str = "linear", mean_type: str = "epsilon", var_type: str = "fixed_large"):
    return GaussianDiffusion.from_schedule(
        schedule, 1000, mean_type=mean_type, var_type=var_type, loss_type="mse", rescale_timesteps=False
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def oracle(diffusion: GaussianDiffusion, mean_type: str = "epsilon", learn_sigma: bool = False):
    """The optimal network for N(MU, STD^2) data: E[eps | x_t] or E[x_0 | x_t] in closed form.

    x_t = a x_0 + s eps (a^2 = alpha_bar, s^2 = 1 - a^2) has mean a MU and variance v = a^2 STD^2 + s^2, so
    E[eps | x_t] = s (x_t - a MU) / v and E[x_0 | x_t] = MU + a STD^2 (x_t - a MU) / v.
    """
    alpha_bar = diffusion.base_alphas_cumprod

    def model_fn(x_t, t_model, **_):
        abar = alpha_bar[t_model].view(-1, *([1] * (x_t.ndim - 1)))
        a, s = abar.sqrt(), (1 - abar).sqrt()
        v = abar * STD**2 + 1 - abar
        centred = x_t.double() - a * MU
        out = s * centred / v if mean_type == "epsilon" else MU + a * STD**2 * centred / v
        out = out.float()
        if learn_sigma:  # a variance channel the solver must ignore
            out = torch.cat([out, torch.full_like(out, 0.3)], dim=1)
        return out

    return model_fn


def exact_ode_solution(diffusion: GaussianDiffusion, x_T: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE from step T-1 to the data, for Gaussian data: an affine map per dimension.

    The ODE keeps the quantile of x_t in its marginal N(a MU, v): x_0 = MU + STD (x_T - a MU) / sqrt(v).
    """
    abar = float(diffusion.base_alphas_cumprod[-1])
    v = abar * STD**2 + 1 - abar
    return (MU + STD * (x_T.double() - math.sqrt(abar) * MU) / math.sqrt(v)).float()


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    ("sampler", "mean_type", "learn_sigma"),
    [
        (dpmpp_2m_sample, "epsilon", False),
        (dpmpp_2m_sample, "start_x", False),
        (dpmpp_2m_sample, "epsilon", True),
        (dpmpp_3m_sample, "epsilon", False),
    ],
)
def test_oracle_recovers_gaussian_data_in_few_steps(sampler, mean_type, learn_sigma):
    var_type = "learned_range" if learn_sigma else "fixed_large"
    d = process("linear", mean_type, var_type)
    x_T = PerSampleNoise(range(4000)).initial((1, 2, 2))
    x_0 = sampler(oracle(d, mean_type, learn_sigma), d, x_T, clip_denoised=False, steps=20)
    assert abs(x_0.mean().item() - MU) < 0.015
    assert abs(x_0.std().item() / STD - 1) < 0.03
    # Each sample lands near where the exact ODE takes it (DDIM at 20 steps: 10% off).
    assert rel_error(x_0, exact_ode_solution(d, x_T)) < 0.02


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_converges_to_the_exact_ode_solution_and_to_ddim(schedule):
    d = process(schedule)
    x_T = PerSampleNoise(range(64)).initial((1, 2, 2))
    exact = exact_ode_solution(d, x_T)
    model = oracle(d)

    def run(steps, order):
        return dpmpp_sample(model, d, x_T, clip_denoised=False, steps=steps, order=order)

    first = [rel_error(run(n, 1), exact) for n in (20, 40, 80)]  # DDIM at the same (log-SNR) time points
    second = [rel_error(run(n, 2), exact) for n in (20, 40, 80)]
    assert all(e2 < e1 / 3 for e1, e2 in zip(first, second, strict=True))
    # Second order: halving the step size divides the error by ~4; first order (DDIM) by ~2.
    assert second[0] / second[1] > 3.0 and second[1] / second[2] > 3.0
    assert 1.7 < first[0] / first[1] < 2.3 and 1.7 < first[1] / first[2] < 2.3
    # DDIM over all 1000 steps is (close to) the ODE solution too: 2M approaches it as steps grow.
    ddim = ddim_sample(model, d, x_T, clip_denoised=False)
    to_ddim = [
        rel_error(dpmpp_2m_sample(model, d, x_T, clip_denoised=False, steps=n), ddim) for n in (20, 80)
    ]
    assert to_ddim[1] < to_ddim[0] / 4 and to_ddim[1] < 5e-3


def test_order_one_is_ddim_and_3m_beats_2m_with_enough_steps():
    d = process("linear")
    x_T = PerSampleNoise(range(16)).initial((1, 2, 2))
    model = oracle(d)
    # Order 1 with the same time points is DDIM (eta = 0).
    ddim = ddim_sample(model, d, x_T, clip_denoised=False, steps=25, spacing="strided")
    first = dpmpp_sample(model, d, x_T, clip_denoised=False, steps=25, spacing="strided", order=1)
    assert rel_error(first, ddim) < 1e-5
    exact = exact_ode_solution(d, x_T)
    for n in (20, 40):
        second, third = (
            rel_error(s(model, d, x_T, clip_denoised=False, steps=n), exact)
            for s in (dpmpp_2m_sample, dpmpp_3m_sample)
        )
        assert third < second / 3


def test_log_snr_timesteps():
    d = process("linear")
    steps = dpm_solver_timesteps(d, 10, "logsnr")
    assert steps[0] == 999 and steps[-1] == 0 and len(steps) == 10 and steps == sorted(steps, reverse=True)
    abar = d.base_alphas_cumprod
    lam = 0.5 * (abar.log() - (1 - abar).log())
    gaps = torch.diff(lam[steps])
    assert gaps.std() / gaps.mean() < 0.05  # uniform in lambda up to rounding to training steps
    assert dpm_solver_timesteps(d, 10, "strided") == list(range(900, -1, -100))
    assert dpm_solver_timesteps(d.respace(7), None, None) == sorted(d.respace(7).timestep_map.tolist())[::-1]
    with pytest.raises(ValueError, match="logsnr"):
        dpm_solver_timesteps(d, 10, "karras")


class PointwiseNet(nn.Module):
    def forward(self, x, t, y=None):
        scale = (t.float() / 1000).view(-1, 1, 1, 1)
        shift = 0 if y is None else 0.01 * y.float().view(-1, 1, 1, 1)
        return 0.7 * torch.tanh(x) * scale + shift


class TinyClassifier(nn.Module):
    def __init__(self, numel: int, classes: int = 5) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(classes, numel, generator=generator) * 0.3)
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return torch.tanh(x.flatten(1)) @ self.weight.T


@pytest.mark.parametrize("sampler", [dpmpp_2m_sample, dpmpp_3m_sample])
def test_guidance_scale_zero_is_unguided_and_guidance_is_ddims_score_form(sampler):
    d = process("linear")
    classifier = TinyClassifier(3 * 4 * 4)
    y = torch.tensor([0, 3])
    x_T = PerSampleNoise([1, 2]).initial((3, 4, 4))

    def run(guidance, **options):
        return sampler(PointwiseNet(), d, x_T, model_kwargs={"y": y}, guidance=guidance, steps=8, **options)

    unguided = run(None)
    assert torch.equal(run(ClassifierGuidance(classifier, 0.0)), unguided)
    assert classifier.calls == 0
    guided = run(ClassifierGuidance(classifier, 5.0))
    assert classifier.calls == 8 and not torch.allclose(guided, unguided)
    # Order 1 is DDIM, guidance included (eps <- eps - sigma_t * grad).
    ddim = ddim_sample(
        PointwiseNet(), d, x_T, model_kwargs={"y": y}, guidance=ClassifierGuidance(classifier, 5.0), steps=8
    )
    first = dpmpp_sample(
        PointwiseNet(),
        d,
        x_T,
        model_kwargs={"y": y},
        guidance=ClassifierGuidance(classifier, 5.0),
        steps=8,
        spacing="even",
        order=1,
    )
    assert rel_error(first, ddim) < 1e-5


def test_thresholding_seeds_callback_progress_and_bad_options(capsys):
    d = process("linear")
    seeds = [11, 12, 13]
    x_T = PerSampleNoise(seeds).initial((3, 4, 4)) * 3
    seen = []
    out = dpmpp_2m_sample(
        lambda x, t: -2 * x,  # wild x_0 predictions
        d.respace(1000),
        x_T,
        steps=6,
        clip_denoised=False,
        thresholding="dynamic",
        callback=seen.append,
        progress=True,
    )
    assert out.abs().max() <= 1 + 1e-6  # the last step returns a thresholded x_0 prediction
    assert [s["step"] for s in seen] == list(range(6)) and seen[0]["t"] == 999 and seen[-1]["t"] == 0
    assert torch.equal(seen[0]["x_t"], x_T) and torch.equal(seen[-1]["x_prev"], out)
    assert "6/6" in capsys.readouterr().err
    # Sample i depends on its own seed only.
    batch = dpmpp_2m_sample(PointwiseNet(), d, x_T, steps=6)
    for i in range(3):
        assert torch.equal(dpmpp_2m_sample(PointwiseNet(), d, x_T[i : i + 1], steps=6)[0], batch[i])
    assert SAMPLERS["dpmpp_2m"] is dpmpp_2m_sample and SAMPLERS["dpmpp_3m"] is dpmpp_3m_sample
    with pytest.raises(ValueError, match="order"):
        dpmpp_sample(PointwiseNet(), d, x_T, order=4)
    with pytest.raises(ValueError, match="thresholding"):
        dpmpp_2m_sample(PointwiseNet(), d, x_T, thresholding="static")
    with pytest.raises(ValueError, match="whole number"):
        dpmpp_2m_sample(PointwiseNet(), d, x_T, steps=0)
