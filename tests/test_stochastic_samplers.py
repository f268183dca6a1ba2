"""The samplers in the noise level sigma: the sigma <-> t map, Gaussian data recovered through draw_images,
diffusers' schedulers as oracles (same denoiser, sigmas and noise), per-sample noise, DDIM's guidance form,
network calls, and the registry with its configs."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from adm.config import compose_config
from adm.diffusion import GaussianDiffusion
from adm.sampling import (
    SAMPLERS,
    CondFnGuidance,
    Denoiser,
    NoiseLevels,
    PerSampleNoise,
    ddim_step,
    dpmpp_2m_sde_sample,
    draw_images,
    edm_sample,
    euler_ancestral_sample,
    network_calls,
    sampler_name,
    sigma_schedule,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

NEW_SAMPLERS = {
    "euler_ancestral": euler_ancestral_sample,
    "edm": edm_sample,
    "dpmpp_2m_sde": dpmpp_2m_sde_sample,
}
MU, STD = 0.1, 0.3  # data x_0 ~ N(MU, STD^2) in every dimension (well inside [-1, 1])


def process(
    schedule: str = "linear", mean_type: str = "epsilon", var_type: str = "fixed_large", rescale: bool = False
) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule(
        schedule, 1000, mean_type=mean_type, var_type=var_type, loss_type="mse", rescale_timesteps=rescale
    )


class GaussianOracle(nn.Module):
    """The optimal network for N(MU, STD^2) data at any (fractional) time.

    Its noise level at time t interpolates log sigma between the discrete times with numpy (independent of
    adm.sampling.sigma); x_t = a x_0 + s eps has mean a MU and variance v = a^2 STD^2 + s^2, so
    E[eps | x_t] = s (x_t - a MU) / v and E[x_0 | x_t] = MU + a STD^2 (x_t - a MU) / v.
    """

    def __init__(self, diffusion: GaussianDiffusion, learn_sigma: bool = False) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.num_classes = 2, 4, None
        self.anchor = nn.Parameter(torch.zeros(()))  # draw_images looks up a device
        alpha_bar = diffusion.base_alphas_cumprod.double().numpy()
        self.log_sigmas = 0.5 * (np.log1p(-alpha_bar) - np.log(alpha_bar))
        self.steps = len(alpha_bar)
        self.rescale = diffusion.rescale_timesteps
        self.predict_x0 = diffusion.model_mean_type.value == "start_x"
        self.learn_sigma = learn_sigma
        self.times: list[float] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, y=None) -> torch.Tensor:
        t = t.double().cpu().numpy() * (self.steps / 1000 if self.rescale else 1.0)
        self.times.extend(t.tolist())
        sigma = np.exp(np.interp(t, np.arange(self.steps), self.log_sigmas))
        abar = torch.from_numpy(1 / (1 + sigma**2)).view(-1, 1, 1, 1)
        a, s = abar.sqrt(), (1 - abar).sqrt()
        v = abar * STD**2 + 1 - abar
        centred = x_t.double() - a * MU
        out = (MU + a * STD**2 * centred / v if self.predict_x0 else s * centred / v).float()
        if self.learn_sigma:  # a variance half the samplers must ignore
            out = torch.cat([out, torch.full_like(out, 0.3)], dim=1)
        return out


# --- the sigma <-> t map ------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_sigma_to_t_hits_the_discrete_times_is_monotone_and_round_trips(schedule):
    levels = NoiseLevels(process(schedule))
    torch.testing.assert_close(levels.sigma_to_t(levels.sigmas), torch.arange(1000, dtype=torch.float64))
    grid = torch.logspace(math.log10(levels.sigma_min) - 1, math.log10(levels.sigma_max) + 1, 5000)
    t = levels.sigma_to_t(grid.double())
    assert bool((t[1:] >= t[:-1]).all()) and float(t[0]) == 0.0 and float(t[-1]) == 999.0  # clamped ends
    inside = grid[(grid > levels.sigma_min) & (grid < levels.sigma_max)].double()
    assert bool((levels.sigma_to_t(inside).diff() > 0).all())
    torch.testing.assert_close(levels.t_to_sigma(levels.sigma_to_t(inside)), inside, rtol=1e-12, atol=0)
    fractional = torch.linspace(0, 999, 777, dtype=torch.float64)
    torch.testing.assert_close(levels.sigma_to_t(levels.t_to_sigma(fractional)), fractional)


def test_sigma_to_t_agrees_with_diffusers_and_follows_rescale_timesteps():
    schedulers = pytest.importorskip("diffusers.schedulers")
    d = process("linear")
    levels = NoiseLevels(d)
    scheduler = schedulers.DPMSolverMultistepScheduler(trained_betas=d.betas.numpy())
    sigmas = np.exp(np.linspace(np.log(levels.sigma_min), np.log(levels.sigma_max), 301))[1:-1]
    theirs = scheduler._sigma_to_t(sigmas, levels.log_sigmas.numpy())
    np.testing.assert_allclose(levels.sigma_to_t(torch.from_numpy(sigmas)).numpy(), theirs, atol=1e-9)
    # The network time follows diffusion.model_timesteps: t, or t * 1000 / T with rescale_timesteps.
    short = GaussianDiffusion.from_schedule(
        "linear", 250, mean_type="epsilon", var_type="fixed_large", loss_type="mse", rescale_timesteps=True
    )
    sigma = float(NoiseLevels(short).sigmas[100])
    assert NoiseLevels(short).model_time(sigma) == pytest.approx(400.0)
    assert levels.model_time(float(levels.sigmas[100])) == pytest.approx(100.0)


def test_sigma_schedules():
    d = process("linear")
    levels = NoiseLevels(d)
    for name in ("karras", "logsnr", "discrete"):
        sigmas = sigma_schedule(d, 10, name)
        assert sigmas.shape == (11,) and float(sigmas[-1]) == 0.0 and bool((sigmas.diff() < 0).all())
        assert float(sigmas[0]) == pytest.approx(levels.sigma_max)
        assert float(sigmas[-2]) == pytest.approx(levels.sigma_min)
    assert torch.allclose(sigma_schedule(d, 10, "logsnr")[:-1].log().diff().diff(), torch.zeros(8).double())
    discrete = sigma_schedule(d, 4, "discrete")[:-1]
    torch.testing.assert_close(discrete, levels.sigmas[[999, 666, 333, 0]])
    custom = sigma_schedule(d, 5, "karras", sigma_min=0.1, sigma_max=80.0)
    assert float(custom[0]) == pytest.approx(80.0) and float(custom[-2]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="sigma_max"):
        sigma_schedule(d, 5, "karras", sigma_max=1e4)
    with pytest.raises(ValueError, match="schedule must be one of"):
        sigma_schedule(d, 5, "cosine")


def test_karras_sigmas_match_diffusers():
    schedulers = pytest.importorskip("diffusers.schedulers")
    d = process("linear")
    scheduler = schedulers.DPMSolverMultistepScheduler(trained_betas=d.betas.numpy(), use_karras_sigmas=True)
    scheduler.set_timesteps(12)
    ours = sigma_schedule(d, 12, "karras")
    # diffusers' float32 alpha_bar loses ~1e-4 of sigma(0) to cancellation in 1 - alpha_bar.
    torch.testing.assert_close(scheduler.sigmas.double(), ours, rtol=2e-4, atol=0)
    exact = scheduler._convert_to_karras(NoiseLevels(d).sigmas.flip(0).numpy(), 12)
    np.testing.assert_allclose(ours[:-1].numpy(), exact, rtol=1e-12)


# --- Gaussian data through draw_images --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "options", "schedule", "mean_type", "learn_sigma"),
    [
        ("euler_ancestral", {"steps": 400}, "linear", "epsilon", False),
        ("euler_ancestral", {"steps": 400, "schedule": "logsnr", "eta": 0.5}, "cosine", "start_x", False),
        ("edm", {"steps": 101}, "linear", "epsilon", False),
        ("edm", {"steps": 101, "S_churn": 40.0, "S_tmin": 0.05, "S_tmax": 50.0}, "linear", "epsilon", True),
        ("dpmpp_2m_sde", {"steps": 100}, "linear", "epsilon", False),
        ("dpmpp_2m_sde", {"steps": 100, "schedule": "discrete"}, "cosine", "start_x", True),
    ],
)
def test_gaussian_data_recovered_through_draw_images(name, options, schedule, mean_type, learn_sigma):
    # Enough steps that the discretisation error of the std (first order for Euler ancestral: ~0.05 at 25
    # steps, ~0.003 at 400; Heun and 2M: ~0.003 at 100 calls) stays below the sampling error's scale.
    d = process(schedule, mean_type, "learned_range" if learn_sigma else "fixed_large")
    net = GaussianOracle(d, learn_sigma)
    sampler = functools.partial(SAMPLERS[name], **options)
    x_0 = draw_images(net, d, sampler, range(512), device="cpu")
    assert x_0.shape == (512, 2, 4, 4)
    assert abs(x_0.mean().item() - MU) < 0.01, x_0.mean().item()
    assert abs(x_0.std().item() - STD) < 0.012, x_0.std().item()
    assert len(net.times) == 512 * network_calls(name, options["steps"])


@pytest.mark.parametrize(
    ("name", "options", "order"),
    [("euler_ancestral", {"eta": 0.0}, 1), ("edm", {}, 2), ("dpmpp_2m_sde", {"eta": 0.0}, 2)],
)
def test_deterministic_settings_solve_the_ode_at_their_order(name, options, order):
    """Without noise each sampler solves the probability-flow ODE, whose solution for Gaussian data keeps
    the quantile: x_0 = MU + STD (x_T - a MU) / sqrt(v) at the first level; doubling the network calls
    divides the error by about 2^order."""
    d = process("linear")
    x_T = torch.randn(64, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    a = 1 / math.sqrt(1 + NoiseLevels(d).sigma_max ** 2)
    exact = MU + STD * (x_T.double() - a * MU) / math.sqrt(a**2 * STD**2 + 1 - a**2)

    def error(steps):
        out = SAMPLERS[name](GaussianOracle(d), d, x_T, steps=steps, clip_denoised=False, **options)
        return ((out.double() - exact).norm() / exact.norm()).item()

    coarse, fine = error(41), error(81)
    assert fine < 0.05 and coarse / fine > 2**order * 0.75, (coarse, fine)


# --- diffusers' schedulers as oracles -----------------------------------------------------------------------
def recorded_noise(seed: int):
    """A noise source drawing from one seeded generator, keeping every draw."""
    generator, draws = torch.Generator().manual_seed(seed), []

    def noise(x):
        draws.append(torch.randn(x.shape, generator=generator))
        return draws[-1]

    return noise, draws


def test_euler_ancestral_matches_diffusers():
    schedulers = pytest.importorskip("diffusers.schedulers")
    d = process("linear")
    denoiser = Denoiser(GaussianOracle(d), d)
    scheduler = schedulers.EulerAncestralDiscreteScheduler(trained_betas=d.betas.numpy())
    scheduler.set_timesteps(15)
    x_T = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise, _ = recorded_noise(1)
    ours = euler_ancestral_sample(
        GaussianOracle(d), d, x_T, noise=noise, sigmas=scheduler.sigmas.double(), clip_denoised=False
    )
    generator = torch.Generator().manual_seed(1)  # diffusers draws its noise in the same order and shape
    x = x_T * math.sqrt(1 + float(scheduler.sigmas[0]) ** 2)
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[i])
        scheduler.scale_model_input(x, t)
        eps = (x - denoiser(x, sigma)) / sigma
        x = scheduler.step(eps, t, x, generator=generator).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)
    assert (ours - x_T).abs().max() > 0.1


def test_dpmpp_2m_sde_matches_diffusers_sde_dpmsolver_pp():
    schedulers = pytest.importorskip("diffusers.schedulers")
    d = process("linear")
    denoiser = Denoiser(GaussianOracle(d), d)
    scheduler = schedulers.DPMSolverMultistepScheduler(
        trained_betas=d.betas.numpy(),
        algorithm_type="sde-dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        prediction_type="sample",
        use_karras_sigmas=True,
    )
    scheduler.set_timesteps(12)
    x_T = torch.randn(4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    noise, draws = recorded_noise(2)
    ours = dpmpp_2m_sde_sample(
        GaussianOracle(d), d, x_T, noise=noise, sigmas=scheduler.sigmas.double(), clip_denoised=False
    )
    assert len(draws) == 11  # every step but the last onto sigma = 0
    x = x_T.clone()  # diffusers keeps the variance-preserving x_t
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[i])
        denoised = denoiser(x * math.sqrt(1 + sigma**2), sigma)
        z = draws[i] if i < len(draws) else torch.zeros_like(x)
        x = scheduler.step(denoised, t, x, variance_noise=z).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-5)
    # With the same sigmas, our own karras schedule gives the same samples.
    noise, _ = recorded_noise(2)
    again = dpmpp_2m_sde_sample(GaussianOracle(d), d, x_T, noise=noise, steps=12, clip_denoised=False)
    torch.testing.assert_close(again, ours, rtol=0, atol=1e-3)


# --- per-sample noise, guidance, network calls, options -----------------------------------------------------
@pytest.mark.parametrize("name", sorted(NEW_SAMPLERS))
def test_a_sample_does_not_depend_on_its_batch(name):
    d = process("linear")
    sampler = functools.partial(SAMPLERS[name], steps=9, **({"S_churn": 10.0} if name == "edm" else {}))
    batch = draw_images(GaussianOracle(d), d, sampler, [11, 22, 33], device="cpu")
    alone = draw_images(GaussianOracle(d), d, sampler, [22], device="cpu")
    other = draw_images(GaussianOracle(d), d, sampler, [44, 22], device="cpu")
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(other[1:2], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(batch[0], batch[2])


def test_denoiser_guidance_is_ddims_score_form_at_the_discrete_times():
    d = process("linear")

    def model_fn(x_t, t, y=None):
        return 0.7 * torch.tanh(x_t) * (t.float() / 1000).view(-1, 1, 1, 1)

    seen = []

    def cond_fn(x_t, t, y=None):
        seen.append(t)
        return torch.sin(3 * x_t) * (1 + t.float() / 1000).view(-1, 1, 1, 1)

    guidance = CondFnGuidance(cond_fn)
    denoiser = Denoiser(model_fn, d, guidance=guidance)
    x_t = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    for step in (0, 250, 999):
        t = torch.full((3,), step)
        ddim = ddim_step(
            model_fn,
            d,
            x_t,
            t,
            model_kwargs={},
            guidance=guidance,
            noise=torch.randn_like,
            clip_denoised=False,
        )
        sigma = float(NoiseLevels(d).sigmas[step])
        ours = denoiser(x_t * math.sqrt(1 + sigma**2), sigma)
        torch.testing.assert_close(ours, ddim["pred_x0"], rtol=1e-4, atol=1e-5)
        assert float(seen[-1][0]) == pytest.approx(step)
    unguided = Denoiser(model_fn, d)(x_t, 3.0)
    assert not torch.allclose(denoiser(x_t, 3.0), unguided)


@pytest.mark.parametrize(
    ("name", "steps", "calls"), [("euler_ancestral", 7, 7), ("edm", 7, 7), ("edm", 8, 7)]
)
def test_network_calls_callback_and_progress(name, steps, calls, capsys):
    d = process("linear")
    net = GaussianOracle(d)
    x_T = PerSampleNoise([1, 2]).initial((2, 4, 4))
    seen = []
    out = SAMPLERS[name](
        net, d, x_T, noise=PerSampleNoise([3, 4]), steps=steps, callback=seen.append, progress=True
    )
    assert len(net.times) == 2 * calls == 2 * network_calls(name, steps)
    assert [s["step"] for s in seen] == list(range(len(seen)))
    assert torch.allclose(seen[0]["x_t"], x_T, atol=1e-5) and torch.equal(
        seen[-1]["x_prev"].clamp(-1, 1), out
    )
    assert out.abs().max() <= 1 and seen[0]["t"] == pytest.approx(999.0)
    assert capsys.readouterr().err  # the progress bar
    assert network_calls("dpmpp_2m_sde", 25) == 25 and network_calls("edm", 25) == 25
    assert network_calls("ddim", [3, 2]) == 5


def test_bad_options_are_refused():
    d = process("linear")
    net, x_T = GaussianOracle(d), torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="eta"):
        euler_ancestral_sample(net, d, x_T, eta=-1.0)
    with pytest.raises(ValueError, match="S_churn"):
        edm_sample(net, d, x_T, S_churn=-1.0)
    with pytest.raises(ValueError, match="strictly descending"):
        dpmpp_2m_sde_sample(net, d, x_T, sigmas=[1.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="steps"):
        dpmpp_2m_sde_sample(net, d, x_T, steps=0)
    with pytest.raises(ValueError, match="PREVIOUS_X"):
        euler_ancestral_sample(net, process(mean_type="previous_x"), x_T)


# --- registry and configs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(NEW_SAMPLERS))
def test_registered_and_built_from_its_config(name):
    assert SAMPLERS[name] is NEW_SAMPLERS[name]
    cfg = compose_config("sample", [f"sampler={name}", "ckpt=x"])
    sampler = instantiate(cfg.sampler)
    assert isinstance(sampler, functools.partial) and sampler.func is NEW_SAMPLERS[name]
    assert sampler_name(sampler) == name
    assert sampler.keywords["steps"] == 25 and sampler.keywords["schedule"] == "karras"
