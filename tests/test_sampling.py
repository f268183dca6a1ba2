"""Samplers, guidance and per-sample noise, checked against closed forms and each other."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adm.compat.diffusion import create_gaussian_diffusion
from adm.diffusion import GaussianDiffusion, Spacing
from adm.sampling import SAMPLERS, ClassifierGuidance, PerSampleNoise, ddim_sample, ddpm_sample

MU, STD = 0.3, 0.5  # the data distribution of the oracle test: N(MU, STD^2) in every dimension


def process(schedule: str, var_type: str = "learned_range") -> GaussianDiffusion:
    """A 1000-step eps-predicting process of ``schedule`` (as conf/diffusion/<schedule>.yaml builds it)."""
    return GaussianDiffusion.from_schedule(
        schedule,
        1000,
        mean_type="epsilon",
        var_type=var_type,
        loss_type="rescaled_mse",
        rescale_timesteps=False,
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def gaussian_oracle(diffusion: GaussianDiffusion):
    """The optimal eps predictor for data x_0 ~ N(MU, STD^2): E[eps | x_t] in closed form.

    x_t = sqrt(a) x_0 + sqrt(1 - a) eps is Gaussian with mean sqrt(a) MU and variance a STD^2 + 1 - a, so
    E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) MU) / (a STD^2 + 1 - a), a = alpha_bar at the ORIGINAL step.
    """
    alpha_bar = diffusion.base_alphas_cumprod

    def model_fn(x_t, t_model):
        a = alpha_bar[t_model].view(-1, *([1] * (x_t.ndim - 1)))
        eps = (1 - a).sqrt() * (x_t.double() - a.sqrt() * MU) / (a * STD**2 + 1 - a)
        return eps.float()

    return model_fn


@pytest.mark.parametrize(
    ("sampler", "var_type", "options"),
    [
        (ddpm_sample, "fixed_large", {}),
        (ddpm_sample, "fixed_small", {}),
        (ddim_sample, "fixed_large", {"eta": 0.0}),
        (ddim_sample, "fixed_large", {"eta": 1.0}),
    ],
)
def test_oracle_recovers_gaussian_data(sampler, var_type, options):
    d = process("cosine", var_type)
    x_T = PerSampleNoise(range(4000)).initial((1, 2, 2))
    x_0 = sampler(gaussian_oracle(d), d, x_T, clip_denoised=False, steps=250, **options)
    assert abs(x_0.mean().item() - MU) < 0.015
    assert abs(x_0.std().item() / STD - 1) < 0.03


class PointwiseNet(nn.Module):
    """A deterministic per-element 'network' (batch-size independent to the last bit), learned sigma."""

    def forward(self, x, t, y=None):
        scale = (t.float() / 1000).view(-1, 1, 1, 1)
        shift = 0 if y is None else 0.01 * y.float().view(-1, 1, 1, 1)
        return torch.cat([0.7 * torch.tanh(x) * scale + shift, torch.tanh(x) * 0.5], dim=1)


class TinyClassifier(nn.Module):
    """Linear classifier on (x, t) with a smooth nonlinearity, for finite-difference checks."""

    def __init__(self, numel: int, classes: int = 5) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(classes, numel, generator=generator) * 0.3)
        self.time = nn.Parameter(torch.randn(classes, generator=generator))
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        features = torch.tanh(x.flatten(1))
        return features @ self.weight.to(x.dtype).T + (t.to(x.dtype) / 1000)[:, None] * self.time.to(x.dtype)


def test_guidance_gradient_matches_finite_differences():
    torch.manual_seed(0)
    classifier = TinyClassifier(3 * 4 * 4).double()
    guidance = ClassifierGuidance(classifier, scale=2.5)
    x, t, y = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.tensor([10, 700]), torch.tensor([1, 4])
    grad = guidance(x, t, y=y)

    def objective(z):
        log_probs = torch.log_softmax(classifier(z, t), dim=-1)
        return 2.5 * log_probs[torch.arange(2), y].sum()

    h = 1e-6
    for _ in range(3):
        direction = torch.randn_like(x)
        numeric = (objective(x + h * direction) - objective(x - h * direction)) / (2 * h)
        assert (grad * direction).sum().item() == pytest.approx(numeric.item(), rel=1e-6)
    # Sample 0's gradient does not depend on sample 1 (each label guides its own image).
    other = x.clone()
    other[1] += 1.0
    assert torch.allclose(guidance(other, t, y=y)[0], grad[0])
    with pytest.raises(ValueError, match="labels"):
        guidance(x, t)
    with pytest.raises(ValueError, match="scale"):
        ClassifierGuidance(classifier, -1.0)


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample])
def test_scale_zero_is_unguided_bit_for_bit(sampler):
    d = process("linear")
    classifier = TinyClassifier(3 * 4 * 4)
    y = torch.tensor([0, 3])
    x_T = PerSampleNoise([1, 2]).initial((3, 4, 4))

    def run(guidance):
        return sampler(
            PointwiseNet(),
            d,
            x_T,
            model_kwargs={"y": y},
            guidance=guidance,
            noise=PerSampleNoise([5, 6]),
            steps=8,
        )

    unguided = run(None)
    assert torch.equal(run(ClassifierGuidance(classifier, 0.0)), unguided)
    assert classifier.calls == 0  # scale 0 skips the classifier entirely
    guided = run(ClassifierGuidance(classifier, 5.0))
    assert classifier.calls == 8 and not torch.allclose(guided, unguided)


@pytest.mark.parametrize(("sampler", "options"), [(ddpm_sample, {}), (ddim_sample, {"eta": 0.7})])
def test_per_sample_seeds_are_batch_and_split_independent(sampler, options):
    d = process("cosine")
    seeds = [11, 12, 13, 14]
    y = torch.tensor([1, 2, 3, 4])

    def run(indices):
        x_T = PerSampleNoise([seeds[i] for i in indices]).initial((3, 4, 4))
        noise = PerSampleNoise([seeds[i] + 1000 for i in indices])
        return sampler(
            PointwiseNet(), d, x_T, model_kwargs={"y": y[indices]}, noise=noise, steps=6, **options
        )

    batch = run([0, 1, 2, 3])
    for i in range(4):
        assert torch.equal(run([i])[0], batch[i])
    assert torch.equal(torch.cat([run([0, 1]), run([2, 3])]), batch)  # two "devices"
    assert not torch.equal(batch[0], batch[1])
    with pytest.raises(ValueError, match="seeds"):
        PerSampleNoise([1, 2])(torch.zeros(3, 1))
    with pytest.raises(ValueError, match="at least one seed"):
        PerSampleNoise([])


def test_ddim_eta_one_is_ancestral_sampling_with_posterior_variance():
    """DDIM with eta = 1 (sigma_t^2 = beta_tilde_t, the posterior mean) is DDPM with fixed small variance."""
    d = process("linear", "fixed_small")
    x_T = PerSampleNoise([3, 4]).initial((1, 2, 2))

    def model(x, t):
        return 0.5 * torch.sin(x) + t.float().view(-1, 1, 1, 1) / 2000

    a = ddim_sample(model, d, x_T, noise=PerSampleNoise([7, 8]), eta=1.0, clip_denoised=False, steps=20)
    b = ddpm_sample(model, d, x_T, noise=PerSampleNoise([7, 8]), clip_denoised=False, steps=20)
    assert torch.allclose(a, b, atol=1e-4)


def test_ddim_eta_zero_is_deterministic():
    d = process("linear")
    x_T = PerSampleNoise([1]).initial((3, 4, 4))
    a = ddim_sample(PointwiseNet(), d, x_T, noise=PerSampleNoise([1]), steps=5)
    b = ddim_sample(PointwiseNet(), d, x_T, noise=PerSampleNoise([2]), steps=5)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(PointwiseNet(), d, x_T, eta=-1.0)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_callback_progress_and_steps_option(name, capsys):
    sampler = SAMPLERS[name]
    d = process("cosine")
    x_T = PerSampleNoise([0, 1]).initial((3, 4, 4))
    seen = []
    out = sampler(
        PointwiseNet(),
        d,
        x_T,
        noise=PerSampleNoise([2, 3]),
        steps=10,
        spacing="strided",
        callback=seen.append,
        progress=True,
    )
    assert [s["step"] for s in seen] == list(range(10))
    assert [s["t"] for s in seen] == list(range(9, -1, -1))
    assert torch.equal(seen[0]["x_t"], x_T) and torch.equal(seen[-1]["x_prev"], out)
    assert all(s["pred_x0"].shape == x_T.shape for s in seen)
    assert "10/10" in capsys.readouterr().err  # the progress bar
    # steps= is the same as sampling the respaced process.
    same = sampler(PointwiseNet(), d.respace(Spacing.strided(10)), x_T, noise=PerSampleNoise([2, 3]))
    assert torch.equal(same, out)
    assert seen[0]["t"] == 9 and d.respace(Spacing.strided(10)).timestep_map[-1] == 900  # 0, 100, ..., 900
    with pytest.raises(ValueError, match="integer stride"):
        sampler(PointwiseNet(), d, x_T, steps=700, spacing="strided")
    with pytest.raises(ValueError, match="steps=N spacing='strided'"):
        sampler(PointwiseNet(), d, x_T, steps="ddim10")
    with pytest.raises(ValueError, match="choose one of: even, strided, sections"):
        sampler(PointwiseNet(), d, x_T, steps=10, spacing="ddim")
    # Per-section counts and a ready Spacing are the same option.
    sections = sampler(PointwiseNet(), d, x_T, noise=PerSampleNoise([2, 3]), steps=[3, 2], spacing="sections")
    ready = sampler(PointwiseNet(), d, x_T, noise=PerSampleNoise([2, 3]), steps=Spacing.sections(3, 2))
    assert torch.equal(sections, ready)


def test_facade_loops_return_the_last_progressive_sample():
    d = create_gaussian_diffusion(
        steps=1000, noise_schedule="linear", learn_sigma=True, timestep_respacing="6"
    )
    model = PointwiseNet()
    x_T = torch.randn(2, 3, 4, 4)
    for loop, progressive in (
        (d.p_sample_loop, d.p_sample_loop_progressive),
        (d.ddim_sample_loop, d.ddim_sample_loop_progressive),
    ):
        torch.manual_seed(0)
        steps = list(progressive(model, (2, 3, 4, 4), noise=x_T))
        torch.manual_seed(0)
        final = loop(model, (2, 3, 4, 4), noise=x_T)
        assert len(steps) == 6 and torch.equal(final, steps[-1]["sample"])
