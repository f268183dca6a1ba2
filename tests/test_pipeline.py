"""adm.ADM: presets, OpenAI weight loading, and infer() (outputs, seeding, guidance, argument errors)."""

from __future__ import annotations

import pytest
import torch

import adm
from adm.diffusion import LossType, ModelMeanType, ModelVarType
from adm.sampling import PerSampleNoise, ddpm_sample
from adm.sampling.noise import sample_seed

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = adm.ADM.from_preset("adm_u_tiny", classifier="adm_cls_tiny")
    # Fresh ADM networks have zero output layers; perturb every weight so that samples and guidance vary.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_from_preset_builds_networks_and_process(tiny):
    assert tiny.diffusion.num_timesteps == 1000
    assert tiny.diffusion.model_var_type == ModelVarType.LEARNED_RANGE
    assert tiny.diffusion.loss_type == LossType.RESCALED_MSE
    assert tiny.num_classes == 10 and tiny.classifier is not None


def test_demo_preset_predicts_x0_on_the_linear_schedule():
    model = adm.ADM.from_preset("adm_u_mnist")
    assert model.diffusion.model_mean_type == ModelMeanType.START_X
    assert model.diffusion.model_var_type == ModelVarType.FIXED_LARGE
    betas = model.diffusion.betas
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)


def test_from_preset_on_meta_device_has_adm64_size():
    with torch.device("meta"):
        model = adm.ADM.from_preset("adm_u_64")
    assert sum(p.numel() for p in model.unet.parameters()) == pytest.approx(295.9e6, rel=1e-3)
    assert model.diffusion.betas.device.type == "cpu"
    with pytest.raises(ValueError, match="meta device"):
        model.infer(1, steps=2)


def test_load_openai_round_trip_and_errors(tiny, tmp_path):
    torch.save(tiny.unet.state_dict(), tmp_path / "unet.pt")
    torch.save(tiny.classifier.state_dict(), tmp_path / "classifier.pt")
    with torch.device("meta"):
        fresh = adm.ADM.from_preset("adm_u_tiny", classifier="adm_cls_tiny")
    fresh.load_openai(tmp_path / "unet.pt", tmp_path / "classifier.pt")
    for a, b in zip(fresh.state_dict().values(), tiny.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not fit"):
        fresh.load_openai(tmp_path / "classifier.pt")
    with pytest.raises(FileNotFoundError):
        fresh.load_openai(tmp_path / "missing.pt")
    no_classifier = adm.ADM(fresh.unet, fresh.diffusion)
    with pytest.raises(ValueError, match="no classifier"):
        no_classifier.load_openai(tmp_path / "unet.pt", tmp_path / "classifier.pt")


def test_infer_outputs_and_seeding(tiny):
    out = tiny.infer(3, labels=[1, 2, 3], sampler="ddpm", steps=4, seed=7)
    size, channels = tiny.unet.image_size, tiny.unet.in_channels
    assert out["samples"].shape == (3, size, size, channels) and out["samples"].dtype == torch.uint8
    assert torch.equal(out["labels"], torch.tensor([1, 2, 3]))
    # Image i depends on its own seed only.
    single = tiny.infer(1, labels=[2], sampler="ddpm", steps=4, seed=[sample_seed(7, 1)])
    assert torch.equal(single["samples"][0], out["samples"][1])
    # The same as calling the sampler directly with the same per-sample noise.
    noise = PerSampleNoise([sample_seed(7, i) for i in range(3)])
    x_T = noise.initial((channels, size, size))
    y = torch.tensor([1, 2, 3])
    x_0 = ddpm_sample(tiny.unet, tiny.diffusion, x_T, model_kwargs={"y": y}, noise=noise, steps=4)
    assert torch.equal(((x_0 + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1), out["samples"])
    # Random labels come from the seed.
    a, b = (
        tiny.infer(2, sampler="ddim", steps=4, spacing="strided", seed=3),
        tiny.infer(2, sampler="ddim", steps=4, seed=3),
    )
    assert torch.equal(a["labels"], b["labels"]) and int(a["labels"].max()) < 10


def test_infer_guidance(tiny):
    plain = tiny.infer(2, labels=4, sampler="ddim", steps=3, seed=0)
    zero = tiny.infer(2, labels=4, sampler="ddim", steps=3, seed=0, guidance="classifier", scale=0.0)
    guided = tiny.infer(2, labels=4, sampler="ddim", steps=3, seed=0, guidance="classifier", scale=50.0)
    with pytest.warns(DeprecationWarning, match="classifier_scale"):  # the older spelling, same images
        older = tiny.infer(2, labels=4, sampler="ddim", steps=3, seed=0, classifier_scale=50.0)
    assert torch.equal(older["samples"], guided["samples"])
    assert torch.equal(plain["samples"], zero["samples"])
    assert not torch.equal(plain["samples"], guided["samples"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": 10}, r"labels must lie in \[0, 9\]"),
        ({"labels": [1, -1]}, "labels must lie"),
        ({"labels": [1, 2, 3]}, "one int or 2 ints"),
        ({"sampler": "euler"}, "unknown sampler"),
        ({"steps": 600, "spacing": "strided"}, "integer stride"),
        ({"steps": "ddim4"}, "number of steps"),
        ({"steps": 2000}, "cannot keep"),
        ({"guidance": "classifier", "scale": -1.0}, "guidance.scale must be a finite number >= 0"),
        ({"guidance": "classifier", "scale": float("nan")}, "guidance.scale must be a finite number"),
        ({"guidance": "cfg", "scale": 1.0}, "needs a model trained with a null label"),
        ({"guidance": "autoguide"}, "unknown guidance kind"),
        ({"scale": 2.0}, "without a guidance kind"),
        ({"eta": 0.5}, "eta is a DDIM setting"),
        ({"seed": [1, 2, 3]}, "seeds"),
    ],
)
def test_infer_errors(tiny, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny.infer(2, **kwargs)


def test_guidance_without_classifier_is_an_error(tiny):
    with pytest.raises(ValueError, match="needs a noisy classifier"):
        adm.ADM(tiny.unet, tiny.diffusion).infer(1, guidance="classifier", scale=1.0, steps=2)


def test_mismatched_parts_are_errors(tiny):
    from adm.diffusion import GaussianDiffusion

    fixed = GaussianDiffusion.from_schedule(
        "cosine", 1000, mean_type="epsilon", var_type="fixed_large", loss_type="mse", rescale_timesteps=False
    )
    with pytest.raises(ValueError, match="learn_sigma"):
        adm.ADM(tiny.unet, fixed)
