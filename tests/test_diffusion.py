"""Diffusion maths against closed forms: schedules, respacing, q / posterior, losses, timestep samplers."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from adm.diffusion import (
    GaussianDiffusion,
    LossSecondMomentSampler,
    LossType,
    ModelMeanType,
    ModelVarType,
    UniformSampler,
    create_diffusion,
    create_timestep_sampler,
    discretized_gaussian_log_likelihood,
    normal_kl,
    space_timesteps,
)
from adm.diffusion.schedules import cosine_betas, linear_betas


def _diffusion(schedule="linear", steps=1000, **kwargs) -> GaussianDiffusion:
    return create_diffusion(
        steps=steps, noise_schedule=schedule, learn_sigma=kwargs.pop("learn_sigma", True), **kwargs
    )


# ------------------------------------------------------------ schedules
def test_linear_schedule_endpoints_scale_with_steps():
    assert linear_betas(1000)[0].item() == pytest.approx(1e-4, rel=1e-12)
    assert linear_betas(1000)[-1].item() == pytest.approx(0.02, rel=1e-12)
    assert linear_betas(250)[-1].item() == pytest.approx(0.08, rel=1e-12)
    assert linear_betas(1000).dtype == torch.float64


def test_cosine_schedule_matches_alpha_bar_formula():
    steps = 1000
    abar = torch.cumprod(1 - cosine_betas(steps), 0)

    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = torch.tensor([f((i + 1) / steps) / f(0) for i in range(steps)], dtype=torch.float64)
    # Only the last beta is clipped at 0.999 (alpha_bar(1) = 0 would make it 1).
    assert torch.allclose(abar[:-1], expected[:-1], rtol=1e-10, atol=0)
    assert cosine_betas(steps)[-1].item() == 0.999
    assert float(cosine_betas(steps).max()) <= 0.999


def test_unknown_schedule_is_a_value_error():
    with pytest.raises(ValueError, match="noise_schedule"):
        create_diffusion(steps=10, noise_schedule="quadratic", learn_sigma=False)


# ------------------------------------------------------------ respacing
def test_space_timesteps_known_cases():
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(1000, "10,5,3") == [0, 37, 74, 111, 148, 185, 222, 259, 296, 333] + [
        334, 417, 500, 583, 666, 667, 833, 999
    ]  # fmt: skip
    kept = space_timesteps(1000, 25)
    assert len(kept) == 25 and kept[0] == 0 and kept[-1] == 999
    assert kept[4] == 166  # 4 * 999/24 = 166.5 rounds half to even
    assert space_timesteps(1000, None) == list(range(1000)) == space_timesteps(1000, "")
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(1000, "ddim1000") == list(range(1000))
    assert space_timesteps(1000, 1) == [0]
    assert space_timesteps(10, "3,1") == [0, 2, 4, 5]


@pytest.mark.parametrize(
    ("spacing", "match"),
    [
        ("ddim600", "integer stride"),
        ("ddim0", "integer stride"),
        ("ddimx", "ddimN"),
        ("400,400,400", "cannot keep"),
        (1001, "cannot keep"),
        (0, "at least one step"),
        ("5,0", "at least one step"),
        ("abc", "bad timestep spacing"),
        (2.5, "int or a string"),
    ],
)
def test_space_timesteps_errors(spacing, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(1000, spacing)


def test_respacing_keeps_alpha_bar_and_maps_timesteps():
    base = _diffusion("cosine")
    spaced = base.respace("10,5,3")
    kept = torch.tensor(space_timesteps(1000, "10,5,3"))
    assert torch.equal(spaced.timestep_map, kept)
    assert torch.allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-9, atol=0)
    t = torch.tensor([0, 5, 17])
    assert torch.equal(spaced.model_timesteps(t), kept[t])
    # Respacing is relative to the original process, whatever was respaced before.
    assert torch.equal(spaced.respace(250).betas, base.respace(250).betas)
    assert base.respace(None).num_timesteps == 1000


def test_rescaled_timesteps_are_floats_on_the_1000_scale():
    d = create_diffusion(steps=500, noise_schedule="linear", learn_sigma=False, rescale_timesteps=True)
    spaced = d.respace(50)
    t = torch.tensor([0, 1, 49])
    out = spaced.model_timesteps(t)
    assert out.dtype == torch.float32
    assert torch.equal(out, spaced.timestep_map[t].float() * 2.0)


# ------------------------------------------------------------ q and posterior
def test_q_sample_and_posterior_match_bayes_rule():
    d = _diffusion("cosine").respace(50)
    torch.manual_seed(0)
    x_0, eps = torch.randn(4, 3, 5, 5).clamp(-1, 1), torch.randn(4, 3, 5, 5)
    t = torch.tensor([0, 1, 25, 49])
    abar = d.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = d.q_sample(x_0, t, eps)
    assert torch.allclose(x_t.double(), abar.sqrt() * x_0 + (1 - abar).sqrt() * eps, atol=1e-6)
    # q(x_{t-1} | x_t, x_0) from Bayes: precision = 1/(1 - abar_prev) + alpha_t/beta_t.
    beta = d.betas[t].view(-1, 1, 1, 1)
    abar_prev = d.alphas_cumprod_prev[t].view(-1, 1, 1, 1)
    alpha = 1 - beta
    precision = torch.where(abar_prev < 1, 1 / (1 - abar_prev).clamp(min=1e-300), torch.inf) + alpha / beta
    variance = 1 / precision
    mean = variance * (
        torch.where(abar_prev < 1, abar_prev.sqrt() / (1 - abar_prev).clamp(min=1e-300), torch.zeros(()))
        * x_0
        + alpha.sqrt() / beta * x_t.double()
    )
    mean = torch.where(abar_prev < 1, mean, x_0.double())  # t = 0: x_{-1} is x_0 itself
    ours_mean, ours_var, ours_logvar = d.q_posterior(x_0, x_t, t)
    assert torch.allclose(ours_mean.double(), mean, atol=1e-5)
    assert torch.allclose(ours_var[1:].double(), variance.expand_as(x_0)[1:], rtol=1e-5)
    # The clipped log variance at t = 0 repeats beta_tilde_1.
    assert torch.allclose(ours_logvar[0], torch.full_like(ours_logvar[0], math.log(d.posterior_variance[1])))


def test_mean_parametrisations_agree():
    """eps, x_0 and x_{t-1} outputs that describe the same prediction give the same p(x_{t-1} | x_t)."""
    torch.manual_seed(1)
    x_0, eps = torch.rand(3, 2, 4, 4) * 1.6 - 0.8, torch.randn(3, 2, 4, 4)
    t = torch.tensor([1, 7, 19])
    outs = {}
    for mean_type in ModelMeanType:
        d = GaussianDiffusion(
            betas=cosine_betas(20), model_mean_type=mean_type, model_var_type="fixed_small", loss_type="mse"
        )
        x_t = d.q_sample(x_0, t, eps)
        output = {"epsilon": eps, "start_x": x_0, "previous_x": d.q_posterior(x_0, x_t, t)[0]}[
            mean_type.value
        ]
        outs[mean_type] = d.p_mean_variance(output, x_t, t, clip_denoised=False)
    for mean_type in ModelMeanType:
        assert torch.allclose(outs[mean_type]["pred_x0"], x_0, atol=1e-4), mean_type
        assert torch.allclose(outs[mean_type]["mean"], outs[ModelMeanType.EPSILON]["mean"], atol=1e-5), (
            mean_type
        )


def test_variance_types():
    torch.manual_seed(2)
    x_t, t = torch.randn(3, 1, 2, 2), torch.tensor([0, 3, 9])
    betas = cosine_betas(10)

    def build(var_type):
        return GaussianDiffusion(
            betas=betas, model_mean_type="epsilon", model_var_type=var_type, loss_type="mse"
        )

    small = build("fixed_small").p_mean_variance(torch.zeros_like(x_t), x_t, t)
    assert torch.allclose(small["variance"][:, 0, 0, 0].double(), build("fixed_small").posterior_variance[t])
    large = build("fixed_large").p_mean_variance(torch.zeros_like(x_t), x_t, t)
    assert torch.allclose(large["variance"][1:, 0, 0, 0].double(), betas[t[1:]])
    learned_range = build("learned_range")
    for v, table in ((1.0, torch.log(betas)), (-1.0, learned_range.posterior_log_variance_clipped)):
        out = learned_range.p_mean_variance(
            torch.cat([torch.zeros_like(x_t), torch.full_like(x_t, v)], 1), x_t, t
        )
        assert torch.allclose(out["log_variance"][:, 0, 0, 0].double(), table[t], atol=1e-6)
    log_var = torch.randn_like(x_t)
    out = build("learned").p_mean_variance(torch.cat([torch.zeros_like(x_t), log_var], 1), x_t, t)
    assert torch.equal(out["log_variance"], log_var)
    with pytest.raises(ValueError, match="channels"):
        learned_range.p_mean_variance(torch.zeros_like(x_t), x_t, t)
    with pytest.raises(ValueError, match="channels"):
        build("fixed_small").p_mean_variance(torch.zeros(3, 2, 2, 2), x_t, t)


# ------------------------------------------------------------ likelihood terms
def test_normal_kl_matches_torch_distributions():
    torch.manual_seed(3)
    m1, m2, lv1, lv2 = torch.randn(4, 10).double().unbind(0)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    assert torch.allclose(normal_kl(m1, lv1, m2, lv2), expected, atol=1e-12)
    assert torch.allclose(normal_kl(m1, lv1, 0.0, 0.0), normal_kl(m1, lv1, torch.zeros(10), torch.zeros(10)))


def test_discretized_gaussian_is_a_distribution_over_256_values():
    values = torch.arange(256).double() / 127.5 - 1  # the 8-bit grid in [-1, 1]
    for mean, log_scale in ((0.1, math.log(0.3)), (-0.95, math.log(0.05)), (0.5, math.log(2.0))):
        logp = discretized_gaussian_log_likelihood(
            values, means=torch.full_like(values, mean), log_scales=torch.full_like(values, log_scale)
        )
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=2e-3)  # (tanh approximation of the CDF)
    # A narrow Gaussian centred on a grid value puts nearly all mass on it.
    logp = discretized_gaussian_log_likelihood(
        values[100:101],
        means=values[100:101],
        log_scales=torch.full((1,), math.log(1e-3), dtype=torch.float64),
    )
    assert logp.exp().item() == pytest.approx(1.0, abs=2e-4)  # the bin spans +-3.9 sigma


# ------------------------------------------------------------ training losses
def _noised_batch(d: GaussianDiffusion, channels=2):
    torch.manual_seed(4)
    x_0 = (torch.randint(0, 256, (4, channels, 4, 4)) / 127.5 - 1).float()
    eps = torch.randn_like(x_0)
    t = torch.tensor([0, 1, d.num_timesteps // 2, d.num_timesteps - 1])
    return x_0, d.q_sample(x_0, t, eps), t, eps


def test_hybrid_loss_vb_trains_only_the_variance():
    d = _diffusion("cosine", rescale_learned_sigmas=False)
    x_0, x_t, t, eps = _noised_batch(d)
    output = torch.randn(4, 4, 4, 4, requires_grad=True)
    terms = d.training_losses(output, x_0, x_t, t, eps)
    assert torch.allclose(terms["mse"], ((eps - output[:, :2]) ** 2).mean(dim=(1, 2, 3)))
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    (grad,) = torch.autograd.grad(terms["vb"].sum(), output)
    assert grad[:, :2].abs().max() == 0 and grad[:, 2:].abs().max() > 0
    (grad,) = torch.autograd.grad(terms["mse"].sum(), output)
    assert grad[:, 2:].abs().max() == 0


def test_rescaled_losses():
    for steps in (1000, 250):
        mse = _diffusion("linear", rescale_learned_sigmas=False).respace(steps)
        rescaled = _diffusion("linear", rescale_learned_sigmas=True).respace(steps)
        assert (mse.loss_type, rescaled.loss_type) == (LossType.MSE, LossType.RESCALED_MSE)
        x_0, x_t, t, eps = _noised_batch(mse)
        output = torch.randn(4, 4, 4, 4)
        plain, scaled = (
            mse.training_losses(output, x_0, x_t, t, eps),
            rescaled.training_losses(output, x_0, x_t, t, eps),
        )
        assert torch.allclose(scaled["vb"], plain["vb"] * steps / 1000)
        assert torch.equal(scaled["mse"], plain["mse"])
    kl = _diffusion("linear", use_kl=True).respace(100)
    assert kl.loss_type == LossType.RESCALED_KL
    x_0, x_t, t, eps = _noised_batch(kl)
    output = torch.randn(4, 4, 4, 4)
    terms = kl.training_losses(output, x_0, x_t, t, eps)
    vb = kl.vb_terms_bpd(output, x_0, x_t, t, clip_denoised=False)["output"]
    assert torch.allclose(terms["loss"], vb * 100)
    fixed = _diffusion("linear", learn_sigma=False)
    terms = fixed.training_losses(torch.randn(4, 2, 4, 4), x_0, x_t, t, eps)
    assert torch.equal(terms["loss"], terms["mse"]) and not terms["vb"].any()


def test_vb_terms_are_kl_and_decoder_nll():
    d = _diffusion("linear").respace(10)
    x_0, x_t, t, eps = _noised_batch(d)
    output = torch.randn(4, 4, 4, 4)
    out = d.vb_terms_bpd(output, x_0, x_t, t)["output"]
    pmv = d.p_mean_variance(output, x_t, t, clip_denoised=False)
    true_mean, _, true_logvar = d.q_posterior(x_0, x_t, t)
    kl = normal_kl(true_mean, true_logvar, pmv["mean"], pmv["log_variance"]).mean(dim=(1, 2, 3)) / math.log(2)
    assert torch.allclose(out[1:], kl[1:])
    nll = -discretized_gaussian_log_likelihood(x_0, means=pmv["mean"], log_scales=0.5 * pmv["log_variance"])
    assert torch.allclose(out[0], nll[0].mean() / math.log(2))


# ------------------------------------------------------------ timestep samplers
def test_uniform_sampler():
    d = _diffusion("linear").respace(50)
    t, w = UniformSampler(d).sample(4000, "cpu", generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and int(t.min()) >= 0 and int(t.max()) == 49
    assert torch.equal(w, torch.ones(4000))
    assert abs(t.float().mean().item() - 24.5) < 1.0


def test_loss_second_moment_sampler_is_unbiased_and_resumes_exactly():
    d = _diffusion("linear").respace(20)
    sampler = create_timestep_sampler("loss-second-moment", d)
    assert isinstance(sampler, LossSecondMomentSampler)
    assert torch.equal(sampler.weights(), torch.ones(20, dtype=torch.float64))  # uniform until warmed up
    losses = torch.arange(1, 21, dtype=torch.float64)
    for _ in range(sampler.history_per_term):
        sampler.update_with_losses(torch.arange(20), losses)
    assert sampler.warmed_up
    p = sampler.weights() / sampler.weights().sum()
    expected = losses / losses.sum() * (1 - 0.001) + 0.001 / 20
    assert torch.allclose(p, expected)
    # Importance weights keep the objective unbiased: sum_t p_t w_t L_t = mean_t L_t.
    assert (p * (1 / (20 * p)) * losses).sum().item() == pytest.approx(losses.mean().item())
    # The FIFO keeps the last values only.
    sampler.update_with_losses(torch.tensor([3]), torch.tensor([100.0]))
    assert sampler.loss_history[3, -1].item() == 100.0 and sampler.loss_history[3, 0].item() == 4.0
    # Round trip through torch.save / weights_only load.
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)
    buffer.seek(0)
    restored = LossSecondMomentSampler(d)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    a = sampler.sample(64, "cpu", generator=torch.Generator().manual_seed(5))
    b = restored.sample(64, "cpu", generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="shape"):
        LossSecondMomentSampler(d, history_per_term=5).load_state_dict(sampler.state_dict())
    with pytest.raises(ValueError, match="pair up"):
        sampler.update_with_losses(torch.tensor([1, 2]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="unknown timestep sampler"):
        create_timestep_sampler("importance", d)


# ------------------------------------------------------------ configs
@pytest.mark.parametrize(("name", "schedule"), [("cosine", "cosine"), ("linear", "linear")])
def test_diffusion_configs_instantiate(repo_root, name, schedule):
    cfg = OmegaConf.load(repo_root / "adm" / "conf" / "diffusion" / f"{name}.yaml")
    cfg = OmegaConf.merge({"model": {"learn_sigma": True}}, {"diffusion": cfg})
    d = instantiate(cfg.diffusion)
    assert isinstance(d, GaussianDiffusion) and d.num_timesteps == 1000
    assert d.model_var_type == ModelVarType.LEARNED_RANGE and d.loss_type == LossType.RESCALED_MSE
    assert torch.equal(d.betas, create_diffusion(steps=1000, noise_schedule=schedule, learn_sigma=True).betas)
