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
    Spacing,
    SpacingMethod,
    UniformSampler,
    create_timestep_sampler,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from adm.diffusion.schedules import cosine_betas, linear_betas
from adm.sampling import check_classifier_fits


def _diffusion(
    schedule="linear",
    steps=1000,
    *,
    mean_type="epsilon",
    var_type="learned_range",
    loss_type="rescaled_mse",
    rescale_timesteps=False,
) -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule(
        schedule,
        steps,
        mean_type=mean_type,
        var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "quadratic"}, "unknown schedule 'quadratic'; choose one of: cosine, linear"),
        ({"mean_type": "eps"}, "unknown mean_type 'eps'; choose one of: epsilon, start_x, previous_x"),
        (
            {"var_type": "learned_sigma"},
            "unknown var_type .*fixed_small, fixed_large, learned, learned_range",
        ),
        ({"loss_type": "hybrid"}, "unknown loss_type 'hybrid'; choose one of: mse, rescaled_mse, kl"),
    ],
)
def test_unknown_names_are_one_value_error_listing_the_choices(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _diffusion(**{"steps": 10, **kwargs})


def test_process_vocabulary_builds_the_enums():
    d = _diffusion("cosine", mean_type="start_x", var_type="fixed_small", loss_type="kl")
    assert (d.model_mean_type, d.model_var_type, d.loss_type) == (
        ModelMeanType.START_X,
        ModelVarType.FIXED_SMALL,
        LossType.KL,
    )
    assert d.schedule == "cosine" and not d.learn_sigma and d.respace(10).schedule == "cosine"
    assert _diffusion(var_type=ModelVarType.LEARNED).learn_sigma


# ------------------------------------------------------------ respacing
def test_spacing_known_cases():
    assert Spacing.strided(10).timesteps(1000) == list(range(0, 1000, 100))
    assert Spacing.strided(25).timesteps(1000) == list(range(0, 1000, 40))  # 0..960, OpenAI's "ddim25"
    assert Spacing.sections(10, 5, 3).timesteps(1000) == [0, 37, 74, 111, 148, 185, 222, 259, 296, 333] + [
        334, 417, 500, 583, 666, 667, 833, 999
    ]  # fmt: skip
    kept = Spacing.even(25).timesteps(1000)
    assert len(kept) == 25 and kept[0] == 0 and kept[-1] == 999
    assert kept[4] == 166  # 4 * 999/24 = 166.5 rounds half to even
    assert Spacing.even(1000).timesteps(1000) == list(range(1000))
    assert Spacing.strided(1000).timesteps(1000) == list(range(1000))
    assert Spacing.even(1).timesteps(1000) == [0]
    assert Spacing.sections(3, 1).timesteps(10) == [0, 2, 4, 5]
    assert Spacing.sections(25) == Spacing((25,), "sections") and str(Spacing.strided(25)) == "25 strided"


def test_spacing_of_sampler_options():
    assert Spacing.of(None) is None
    assert Spacing.of(25) == Spacing.even(25) == Spacing.of(25, "even")
    assert Spacing.of(25, "strided") == Spacing.strided(25) == Spacing.of(25, SpacingMethod.STRIDED)
    assert Spacing.of([10, 5, 3], "sections") == Spacing.sections(10, 5, 3)
    assert Spacing.of(Spacing.strided(5)) == Spacing.strided(5) == Spacing.of(Spacing.strided(5), "strided")


@pytest.mark.parametrize(
    ("steps", "spacing", "match"),
    [
        (600, "strided", "integer stride"),
        (0, "strided", "at least one step"),
        (400, "ddim", "unknown spacing 'ddim'; choose one of: even, strided, sections"),
        ([400, 400, 400], "sections", "cannot keep"),
        (1001, "even", "cannot keep"),
        (0, None, "at least one step"),
        ([5, 0], "sections", "at least one step"),
        ([10, 20], "even", "per-section counts: use spacing='sections'"),
        ("ddim25", None, "steps=N spacing='strided'"),
        ("250", None, "got the string"),
        (2.5, None, "whole numbers"),
        (True, None, "whole numbers"),
        (None, "strided", "needs a number of steps"),
        (Spacing.even(5), "strided", "drop spacing='strided'"),
    ],
)
def test_spacing_errors(steps, spacing, match):
    with pytest.raises(ValueError, match=match):
        Spacing.of(steps, spacing).timesteps(1000)


def test_respacing_keeps_alpha_bar_and_maps_timesteps():
    base = _diffusion("cosine")
    spaced = base.respace(Spacing.sections(10, 5, 3))
    kept = torch.tensor(Spacing.sections(10, 5, 3).timesteps(1000))
    assert torch.equal(spaced.timestep_map, kept)
    assert torch.allclose(spaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-9, atol=0)
    t = torch.tensor([0, 5, 17])
    assert torch.equal(spaced.model_timesteps(t), kept[t])
    # Respacing is relative to the original process, whatever was respaced before.
    assert torch.equal(spaced.respace(250).betas, base.respace(250).betas)
    assert base.respace(None).num_timesteps == 1000


def test_rescaled_timesteps_are_floats_on_the_1000_scale():
    d = _diffusion("linear", 500, var_type="fixed_large", rescale_timesteps=True)
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
    d = _diffusion("cosine", loss_type="mse")
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
        mse = _diffusion("linear", loss_type="mse").respace(steps)
        rescaled = _diffusion("linear", loss_type="rescaled_mse").respace(steps)
        assert (mse.loss_type, rescaled.loss_type) == (LossType.MSE, LossType.RESCALED_MSE)
        x_0, x_t, t, eps = _noised_batch(mse)
        output = torch.randn(4, 4, 4, 4)
        plain, scaled = (
            mse.training_losses(output, x_0, x_t, t, eps),
            rescaled.training_losses(output, x_0, x_t, t, eps),
        )
        assert torch.allclose(scaled["vb"], plain["vb"] * steps / 1000)
        assert torch.equal(scaled["mse"], plain["mse"])
    kl = _diffusion("linear", loss_type="rescaled_kl").respace(100)
    assert kl.loss_type == LossType.RESCALED_KL
    x_0, x_t, t, eps = _noised_batch(kl)
    output = torch.randn(4, 4, 4, 4)
    terms = kl.training_losses(output, x_0, x_t, t, eps)
    vb = kl.vb_terms_bpd(output, x_0, x_t, t, clip_denoised=False)["output"]
    assert torch.allclose(terms["loss"], vb * 100)
    fixed = _diffusion("linear", var_type="fixed_large")
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
@pytest.mark.parametrize(
    ("name", "schedule", "mean_type"),
    [
        ("cosine", "cosine", "epsilon"),
        ("linear", "linear", "epsilon"),
        ("linear_xstart", "linear", "start_x"),
    ],
)
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_diffusion_configs_instantiate(repo_root, name, schedule, mean_type, learn_sigma):
    cfg = OmegaConf.load(repo_root / "conf" / "diffusion" / f"{name}.yaml")
    cfg = OmegaConf.merge({"model": {"learn_sigma": learn_sigma}}, {"diffusion": cfg})
    d = instantiate(cfg.diffusion)
    assert isinstance(d, GaussianDiffusion) and d.num_timesteps == 1000 and d.schedule == schedule
    # Whether the variance is learned comes from the network's learn_sigma alone.
    assert d.learn_sigma is learn_sigma
    assert d.model_var_type == (ModelVarType.LEARNED_RANGE if learn_sigma else ModelVarType.FIXED_LARGE)
    assert d.model_mean_type == ModelMeanType(mean_type) and d.loss_type == LossType.RESCALED_MSE
    assert torch.equal(d.betas, linear_betas(1000) if schedule == "linear" else cosine_betas(1000))


def test_var_type_resolver(repo_root):
    cfg = OmegaConf.create(
        {"model": {"learn_sigma": False}, "v": "${adm.var_type:${model.learn_sigma},fixed_small}"}
    )
    assert cfg.v == "fixed_small"
    for bad, match in [("${adm.var_type:maybe}", "true or false"), ("${adm.var_type:true,learned}", "fixed")]:
        with pytest.raises(Exception, match=match):
            _ = OmegaConf.create({"v": bad}).v


def test_openai_flags_map_onto_our_vocabulary_in_compat():
    from adm.compat.diffusion import create_gaussian_diffusion, diffusion_config, legacy_diffusion_config

    flags = {"diffusion_steps": 1000, "noise_schedule": "cosine", "learn_sigma": True, "use_kl": False}
    flags |= {
        "rescale_learned_sigmas": True,
        "predict_xstart": False,
        "image_size": 64,
        "timestep_respacing": "250",
    }
    ours = diffusion_config(flags)
    assert ours == {
        "_target_": "adm.diffusion.GaussianDiffusion.from_schedule",
        "schedule": "cosine",
        "steps": 1000,
        "mean_type": "epsilon",
        "var_type": "learned_range",
        "loss_type": "rescaled_mse",
        "rescale_timesteps": False,
    }
    d = instantiate(ours)
    theirs = create_gaussian_diffusion(
        steps=1000, noise_schedule="cosine", learn_sigma=True, rescale_learned_sigmas=True
    )
    assert (d.model_var_type, d.loss_type) == (theirs.model_var_type, theirs.loss_type)
    assert torch.allclose(d.alphas_cumprod, torch.as_tensor(theirs.alphas_cumprod), rtol=1e-12, atol=0)
    assert diffusion_config({"predict_xstart": True, "use_kl": True})["mean_type"] == "start_x"
    assert diffusion_config({"use_kl": True})["loss_type"] == "rescaled_kl"
    assert diffusion_config({})["var_type"] == "fixed_large" and diffusion_config({})["loss_type"] == "mse"
    # A checkpoint written with the flag-style config reads as our own.
    legacy = {"_target_": "adm.diffusion.create_diffusion", "steps": 1000, "noise_schedule": "linear"}
    legacy |= {"learn_sigma": False, "sigma_small": True, "predict_xstart": True}
    assert legacy_diffusion_config(legacy) | {"_target_": None} == {
        "_target_": None,
        "schedule": "linear",
        "steps": 1000,
        "mean_type": "start_x",
        "var_type": "fixed_small",
        "loss_type": "rescaled_mse",
        "rescale_timesteps": False,
    }
    with pytest.raises(ValueError, match="unknown keys"):
        legacy_diffusion_config({**legacy, "betas": [0.1]})


def test_openai_timestep_respacing_strings_are_read_by_compat_only():
    from adm.compat.diffusion import parse_timestep_respacing

    assert parse_timestep_respacing("ddim25") == Spacing.strided(25)
    assert parse_timestep_respacing("250") == Spacing.sections(250)
    assert (
        parse_timestep_respacing("10,5,3")
        == parse_timestep_respacing([10, 5, 3])
        == Spacing.sections(10, 5, 3)
    )
    assert parse_timestep_respacing("") is None and parse_timestep_respacing(None) is None
    for bad, match in [("ddimx", "ddimN"), ("abc", "bad timestep_respacing"), (2.5, "string like")]:
        with pytest.raises(ValueError, match=match):
            parse_timestep_respacing(bad)
    with pytest.raises(ValueError, match="got the string 'ddim25'"):
        _diffusion().respace("ddim25")


class _Net:
    def __init__(self, image_size=8, in_channels=1, num_classes=3):
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes


def test_classifier_fit_compares_networks_and_noising():
    cosine, linear = _diffusion("cosine"), _diffusion("linear")
    # Respacing, mean and variance types do not change how images are noised.
    check_classifier_fits(
        _Net(),
        _Net(),
        model_process=cosine.respace(25),
        classifier_process=_diffusion("cosine", var_type="fixed_large"),
    )
    check_classifier_fits(_Net(num_classes=None), _Net(), model_process=cosine)  # unconditional model
    with pytest.raises(
        ValueError, match="noising schedule=linear steps=1000, the model uses schedule=cosine"
    ):
        check_classifier_fits(_Net(), _Net(), model_process=cosine, classifier_process=linear)
    with pytest.raises(ValueError, match="steps=500"):
        check_classifier_fits(
            _Net(), _Net(), model_process=cosine, classifier_process=_diffusion("cosine", 500)
        )
    with pytest.raises(ValueError, match="rescale_timesteps"):
        check_classifier_fits(
            _Net(),
            _Net(),
            model_process=cosine,
            classifier_process=_diffusion("cosine", rescale_timesteps=True),
        )
    with pytest.raises(ValueError) as info:
        check_classifier_fits(_Net(), _Net(image_size=16, in_channels=3, num_classes=5))
    message = str(info.value)
    assert "16px images, the model draws 8px" in message and "3 channels, the model draws 1" in message
    assert "5 classes, the model 3" in message and message.count("the classifier does not fit") == 1
