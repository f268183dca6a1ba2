"""The upsampling stack: training on area-downsampled pairs, upsampling base samples, base -> upsampler runs,
OpenAI-shaped upsampler weights through the loading path, and whether outputs follow their own low_res."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from adm.config import build_network, load_preset
from adm.data import MNIST5kDataModule, downsample_area
from adm.diffusion import GaussianDiffusion, UniformSampler
from adm.io.checkpoint import load_checkpoint
from adm.io.images import from_uint8
from adm.io.npz import BaseSamples
from adm.lit.diffusion import DiffusionModule
from adm.lit.superres import SuperResModule
from adm.nn import SuperResUNet
from adm.pipeline import sample_two_stage, upsample
from adm.recipes.train import train_superres as train
from adm.recipes.upsample import UpsampleDrawer, load_upsampler
from adm.recipes.upsample import upsample as upsample_script
from adm.sampling import (
    ClassifierGuidance,
    LabelPlan,
    ddim_sample,
    ddpm_sample,
    sample_seed,
    upsample_seed,
)

# 16 px digits from 8 px inputs, 8 images per step: seconds on a CPU.
TINY = [
    "experiment=sr_mnist",
    "model=adm_sr_tiny",
    "data.image_size=16",
    "model.low_res_size=8",
    "batch_size=8",
]


def correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, N) Pearson correlations between the rows of a (N, ...) and b (N, ...)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a / a.norm(dim=1, keepdim=True)) @ (b / b.norm(dim=1, keepdim=True)).T


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray | None) -> Path:
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    np.savez(path, **arrays)
    return path


def ckpt_path(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


# --- training -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_sr(tmp_path_factory: pytest.TempPathFactory, compose) -> Path:
    """Two optimizer steps of the tiny upsampler with the real train_superres config; its run folder."""
    out = tmp_path_factory.mktemp("sr_run")
    cfg = compose(
        "train_superres",
        [
            *TINY,
            "trainer.max_steps=2",
            "trainer.log_every_n_steps=1",
            "callbacks.ema.rates=[0.9]",
            "callbacks.sample_grid.num_samples=4",
            "callbacks.sample_grid.sampler.steps=2",
            f"paths.output_dir={out}",
        ],
    )
    trainer = train(cfg)
    assert trainer.global_step == 2
    return out


def test_training_step_tiny_config(trained_sr: Path):
    ckpt = torch.load(trained_sr / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    config = ckpt["adm_config"]
    assert "low_res_size" not in config and config["model"]["low_res_size"] == 8
    assert config["model"]["_target_"] == "adm.nn.SuperResUNet"
    assert (
        config["model"]["image_size"],
        config["model"]["in_channels"],
        config["model"]["num_classes"],
    ) == (
        16,
        1,
        10,
    )
    assert ckpt["adm_ema"]["rates"] == [0.9]
    assert [p.name for p in (trained_sr / "samples").glob("*.png")] == ["step_0000002.png"]  # upsampled grid
    header = next(trained_sr.glob("csv/version_*/metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/loss_mse", "train/loss_vb"} <= set(header)

    loaded = load_checkpoint(trained_sr / "checkpoints" / "last.ckpt")  # EMA weights, rebuilt from the file
    assert isinstance(loaded.unet, SuperResUNet) and loaded.weights == "ema_0.9"
    assert loaded.unet.low_res_size == 8
    raw = load_checkpoint(ckpt_path(trained_sr), ema=False).unet.state_dict()
    assert any(not torch.equal(v, raw[k]) for k, v in loaded.unet.state_dict().items())


def tiny_upsampler(**kwargs) -> SuperResUNet:
    """adm_sr_tiny at 16 px for 1-channel images (its preset low_res_size: 8)."""
    cfg = {k: v for k, v in load_preset("adm_sr_tiny").items() if k != "diffusion"}
    return build_network({**cfg, "image_size": 16, "in_channels": 1, **kwargs})


def module_for(unet: nn.Module, cls: type = SuperResModule, **kwargs) -> DiffusionModule:
    diffusion = GaussianDiffusion.from_schedule(
        "cosine",
        1000,
        mean_type="epsilon",
        var_type="learned_range",
        loss_type="rescaled_mse",
        rescale_timesteps=False,
    )
    return cls(
        unet=unet,
        diffusion=diffusion,
        timestep_sampler=UniformSampler(diffusion),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4),
        **kwargs,
    )


def test_training_pairs_are_area_means():
    """The network is trained on low_res = mean of each 2x2 block of x_0 (OpenAI's area resize)."""
    unet = tiny_upsampler()
    module = module_for(unet, config={"model": {}, "diffusion": {}, "data": {}})
    assert module.low_res_size == 8 and module.adm_config["model"]["low_res_size"] == 8
    seen = {}
    unet.register_forward_pre_hook(lambda m, args, kwargs: seen.update(kwargs), with_kwargs=True)
    x_0 = torch.rand(4, 1, 16, 16) * 2 - 1
    y = torch.tensor([0, 3, 5, 9])
    state_before = dict(vars(module))
    loss = module.training_step((x_0, y), 0)
    assert torch.isfinite(loss)
    block_means = x_0.reshape(4, 1, 8, 2, 8, 2).mean(dim=(3, 5))
    torch.testing.assert_close(seen["low_res"], block_means, rtol=0, atol=1e-6)
    assert torch.equal(seen["y"], y)
    # The conditioning reaches the network as arguments: the step leaves nothing behind on the module.
    assert vars(module).keys() == state_before.keys()
    assert all(vars(module)[k] is v for k, v in state_before.items())


def test_model_kwargs_give_the_network_its_conditioning():
    x_0, y = torch.rand(4, 1, 16, 16) * 2 - 1, torch.tensor([0, 3, 5, 9])
    sr = module_for(tiny_upsampler())
    kwargs = sr.model_kwargs((x_0, y))
    assert kwargs.keys() == {"y", "low_res"} and sr.conditions_on_images
    assert torch.equal(kwargs["y"], y) and kwargs["low_res"].shape == (4, 1, 8, 8)
    torch.testing.assert_close(kwargs["low_res"], downsample_area(x_0, 8), rtol=0, atol=0)
    # The module's forward takes the same conditioning and gives the network's output.
    t = torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        direct = sr.unet(torch.zeros_like(x_0), sr.diffusion.model_timesteps(t), **kwargs)
        torch.testing.assert_close(sr(torch.zeros_like(x_0), t, **kwargs), direct, rtol=0, atol=0)

    uncond_sr = module_for(tiny_upsampler(num_classes=None, low_res_size=4))
    kwargs = uncond_sr.model_kwargs((x_0, y))
    assert kwargs.keys() == {"low_res"} and kwargs["low_res"].shape == (4, 1, 4, 4)

    base_cfg = {k: v for k, v in load_preset("adm_u_tiny").items() if k != "diffusion"}
    base = module_for(build_network({**base_cfg, "image_size": 16, "in_channels": 1}), DiffusionModule)
    kwargs = base.model_kwargs((x_0, y))
    assert kwargs.keys() == {"y"} and torch.equal(kwargs["y"], y) and not base.conditions_on_images
    uncond = build_network({**base_cfg, "image_size": 16, "in_channels": 1, "num_classes": None})
    assert module_for(uncond, DiffusionModule).model_kwargs((x_0, y)) == {}


def test_upsampler_module_refuses_what_it_cannot_train():
    with pytest.raises(ValueError, match="upsampler"):
        module_for(build_network("adm_u_tiny"))
    with pytest.raises(ValueError, match="model.low_res_size"):
        module_for(tiny_upsampler(low_res_size=None))
    with pytest.raises(ValueError, match="built with low_res_size=8"):
        module_for(tiny_upsampler(), config={"model": {"low_res_size": 4}, "diffusion": {}, "data": {}})
    for bad in (16, 0, 8.5, "8", True):
        with pytest.raises(ValueError, match=r"low_res_size=.* must be an int between 1 and .* 16"):
            tiny_upsampler(low_res_size=bad)


def test_low_res_size_is_no_weight():
    """The low-res side is an attribute: the state dict (OpenAI's keys) is the same with or without it."""
    with_size, without = tiny_upsampler(), tiny_upsampler(low_res_size=None)
    assert with_size.state_dict().keys() == without.state_dict().keys()
    assert with_size.low_res_size == 8 and without.low_res_size is None
    without.load_state_dict(with_size.state_dict(), strict=True)


# --- conditioning -------------------------------------------------------------------------------------------
class OracleUpsampler(nn.Module):
    """The exact noise predictor when x_0 = bilinear(low_res): eps = (x_t - sqrt(ab_t) x_0) / sqrt(1 - ab_t).

    A sampler driven by it returns bilinear(low_res) of whatever low_res reaches it, so the output follows the
    conditioning exactly as far as the pipeline hands each sample its own low_res (and label).
    """

    def __init__(
        self, alphas_cumprod: torch.Tensor, channels: int, image_size: int, num_classes: int
    ) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.register_buffer("alpha_bar", alphas_cumprod.double())
        self.labels: list[torch.Tensor] = []

    def forward(self, x, t, low_res=None, y=None):
        x_0 = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
        ab = self.alpha_bar[t.long()].float().view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * x_0) / (1 - ab).sqrt()
        self.labels.append(y)
        return torch.cat([eps, torch.zeros_like(eps)], dim=1)  # variance: middle of the learned range


def test_output_follows_its_own_low_res(tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    low = F.avg_pool2d(torch.rand(6, 1, 16, 16, generator=g), 2) * 2 - 1  # smooth random 8x8 images
    images = ((low + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    labels = np.array([3, 1, 4, 1, 5, 9])
    base = BaseSamples.load(write_npz(tmp_path / "base.npz", images, labels))
    diffusion = GaussianDiffusion.from_schedule(
        "linear",
        1000,
        mean_type="epsilon",
        var_type="learned_range",
        loss_type="rescaled_mse",
        rescale_timesteps=False,
    )
    oracle = OracleUpsampler(diffusion.alphas_cumprod, channels=1, image_size=16, num_classes=10)
    drawer = UpsampleDrawer(
        unet=oracle,
        diffusion=diffusion,
        sampler=functools.partial(ddpm_sample, steps=8),
        base=base,
        seed=0,
        device="cpu",
        low_res_size=8,
    )
    out, out_labels = drawer(range(6))
    assert out.shape == (6, 16, 16, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out_labels, labels)
    assert all(torch.equal(y, torch.as_tensor(labels)) for y in oracle.labels)

    target = F.interpolate(from_uint8(images), size=(16, 16), mode="bilinear", align_corners=False)
    c = correlations(from_uint8(out), target)
    own, other = c.diagonal(), c[~torch.eye(6, dtype=torch.bool)]
    assert own.min() > 0.99 and other.abs().max() < 0.5, c

    with pytest.raises(ValueError, match="trained on 4 px"):
        UpsampleDrawer(
            unet=oracle,
            diffusion=diffusion,
            sampler=ddpm_sample,
            base=base,
            seed=0,
            device="cpu",
            low_res_size=4,
        )(range(2))
    unlabelled = BaseSamples(images, None)
    with pytest.raises(ValueError, match="no labels"):
        UpsampleDrawer(
            unet=oracle, diffusion=diffusion, sampler=ddpm_sample, base=unlabelled, seed=0, device="cpu"
        )(range(2))


def test_upsample_noise_is_per_sample():
    """Sample i's upsampling depends only on (seed, i): not on its batch; unlike the base noise."""
    cfg = {k: v for k, v in load_preset("adm_sr_tiny").items() if k != "diffusion"}
    torch.manual_seed(0)
    unet = build_network({**cfg, "image_size": 16, "in_channels": 1})
    for p in unet.out.parameters():  # the zero-initialised head would make every output identical
        nn.init.normal_(p, std=0.05)
    diffusion = GaussianDiffusion.from_schedule(
        "cosine",
        1000,
        mean_type="epsilon",
        var_type="learned_range",
        loss_type="rescaled_mse",
        rescale_timesteps=False,
    )
    sampler = functools.partial(ddpm_sample, steps=3)
    low_res = torch.rand(4, 1, 8, 8) * 2 - 1
    y = torch.tensor([1, 2, 3, 4])
    seeds = [upsample_seed(7, i) for i in range(4)]
    full = upsample(unet, diffusion, sampler, low_res, seeds=seeds, y=y)
    part = upsample(unet, diffusion, sampler, low_res[2:], seeds=seeds[2:], y=y[2:])
    torch.testing.assert_close(part, full[2:], rtol=0, atol=1e-5)
    other = upsample(unet, diffusion, sampler, low_res, seeds=[upsample_seed(8, i) for i in range(4)], y=y)
    assert (other - full).abs().mean() > 1e-3
    assert len({*seeds, *(sample_seed(7, i) for i in range(4))}) == 8  # base and upsampling noise differ
    with pytest.raises(ValueError, match="class-conditional"):
        upsample(unet, diffusion, sampler, low_res, seeds=seeds)


@pytest.mark.slow
def test_trained_upsampler_follows_its_own_low_res(tmp_path: Path, compose):
    """Briefly trained: each output matches its own low_res far better than other digits of its class."""
    cfg = compose(
        "train_superres", [*TINY, "batch_size=16", "trainer.max_steps=200", f"paths.output_dir={tmp_path}"]
    )
    train(cfg)
    trained = load_checkpoint(ckpt_path(tmp_path))
    dm = MNIST5kDataModule(
        image_size=16,
        class_cond=True,
        batch_size=8,
        num_workers=0,
        val_fraction=0.1,
        split_seed=0,
        random_flip=False,
        random_crop=False,
    )
    images, labels = dm.reference_batch(500, "val")
    pick = np.flatnonzero(labels == 3)[:8]  # one class: only the low-res image tells the samples apart
    low = from_uint8(images[pick])
    low = ((downsample_area(low, 8) + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    drawer = UpsampleDrawer(
        unet=trained.unet,
        diffusion=trained.diffusion,
        sampler=functools.partial(ddim_sample, steps=20),
        base=BaseSamples(low, labels[pick]),
        seed=0,
        device="cpu",
        low_res_size=8,
    )
    out, _ = drawer(range(len(pick)))
    # What sets each digit apart from the others of its class: deviations from the set's mean image.
    target = F.interpolate(from_uint8(low), size=(16, 16), mode="bilinear", align_corners=False)
    out = from_uint8(out)
    c = correlations(out - out.mean(0), target - target.mean(0))
    own, other = c.diagonal(), c[~torch.eye(len(pick), dtype=torch.bool)].view(len(pick), -1)
    assert own.mean() > other.mean() + 0.5 and (own > other.max(dim=1).values + 0.15).all(), c


# --- base -> upsampler on CPU -------------------------------------------------------------------------------
def tiny(name: str, **kwargs) -> nn.Module:
    """A tiny preset network resized for 1-channel images, with a random (not zero) output layer."""
    cfg = {k: v for k, v in load_preset(name).items() if k != "diffusion"}
    net = build_network({**cfg, "in_channels": 1, **kwargs})
    if hasattr(net, "out"):
        for p in net.out.parameters():
            nn.init.normal_(p, std=0.05)
    return net.eval()


def test_two_stage_in_one_call():
    """Guided base (8 px) -> upsampler (16 px) in memory; the same images as upsampling its output again."""
    torch.manual_seed(0)
    base_unet, sr = tiny("adm_u_tiny", image_size=8), tiny("adm_sr_tiny", image_size=16)
    classifier = tiny("adm_cls_tiny", image_size=8)
    diffusion = GaussianDiffusion.from_schedule(
        "cosine",
        1000,
        mean_type="epsilon",
        var_type="learned_range",
        loss_type="rescaled_mse",
        rescale_timesteps=False,
    )
    sampler = functools.partial(ddpm_sample, steps=3)
    run = functools.partial(
        sample_two_stage,
        base_unet,
        diffusion,
        sr,
        diffusion,
        labels=[1, 2, 3],
        seed=5,
        base_sampler=sampler,
        upsampler_sampler=sampler,
    )
    base, up, labels = run(guidance=ClassifierGuidance(classifier, 5.0))
    assert base.shape == (3, 8, 8, 1) and up.shape == (3, 16, 16, 1) and up.dtype == np.uint8
    np.testing.assert_array_equal(labels, [1, 2, 3])
    unguided, _, _ = run(guidance=None)
    assert not np.array_equal(base, unguided)  # the guidance reached the base stage

    again = UpsampleDrawer(
        unet=sr, diffusion=diffusion, sampler=sampler, base=BaseSamples(base, labels), seed=5, device="cpu"
    )
    np.testing.assert_array_equal(again(range(3))[0], up)
    np.testing.assert_array_equal(again(range(1, 3))[0], up[1:])


def test_base_then_upsample_on_cpu(trained_sr: Path, tmp_path: Path, compose, hydra_app, tiny_checkpoint):
    base_ckpt = tiny_checkpoint(overrides=["data.num_classes=10"], seed=1)  # 8 px digits of 10 classes
    common = [
        f"ckpt={ckpt_path(trained_sr)}",
        "sampler=ddpm",
        "sampler.steps=3",
        "seed=3",
        "shard_size=3",
        "progress=false",
        "trainer.accelerator=cpu",
    ]
    two_stage = tmp_path / "two_stage"
    cfg = compose(
        "upsample",
        overrides=[
            *common,
            "num_samples=5",
            "batch_size=2",
            f"out_dir={two_stage}",
            f"paths.output_dir={two_stage}",
            f'base="ckpt={base_ckpt} sampler=ddpm sampler.steps=3 labels=random"',
        ],
    )
    result = upsample_script(cfg)

    with np.load(result["samples"]) as up, np.load(result["base_samples"]) as base:
        assert up["arr_0"].shape == (5, 16, 16, 1) and up["arr_0"].dtype == np.uint8
        assert base["arr_0"].shape == (5, 8, 8, 1)
        expected = LabelPlan("random", 10, seed=3)(range(5))
        np.testing.assert_array_equal(base["arr_1"], expected)
        np.testing.assert_array_equal(up["arr_1"], expected)
        up_images = up["arr_0"]
    assert Path(result["grid"]).is_file()

    # Upsampling the saved base file again, in other batches: the same images (per-sample seeds).
    again = tmp_path / "again"
    cfg = compose(
        "upsample",
        overrides=[
            *common,
            "batch_size=3",
            f"base_samples={result['base_samples']}",
            f"out_dir={again}",
            f"paths.output_dir={again}",
        ],
    )
    result2 = upsample_script(cfg)
    with np.load(result2["samples"]) as up2:
        np.testing.assert_array_equal(up2["arr_0"], up_images)
    with pytest.raises(ValueError, match="trained on 8 px"):  # 16 px "base" images for an 8 -> 16 model
        upsample_script(
            compose(
                "upsample",
                overrides=[
                    *common,
                    f"base_samples={result2['samples']}",
                    f"out_dir={tmp_path / 'bad'}",
                    f"paths.output_dir={tmp_path / 'bad'}",
                ],
            )
        )


# --- OpenAI-shaped weights ----------------------------------------------------------------------------------
# adm_sr_tiny with the golden network's settings: 16 -> 32 px RGB, attention at 32/2 and 32/4 px, 1000
# classes, 4 heads.
GOLDEN_SR = [
    "model=adm_sr_tiny",
    "diffusion=linear",
    "model.image_size=32",
    "model.in_channels=3",
    "model.attention_resolutions=[16,8]",
    "model.num_classes=1000",
    "model.num_heads=4",
    "model.num_head_channels=-1",
    "model.use_new_attention_order=false",
    "model.low_res_size=16",
]


def test_openai_upsampler_weights_reproduce_golden(golden_dir: Path, rel_error, compose):
    """OpenAI's SuperResModel state dict (golden superres_cond), loaded as openai_ckpt=... model=<preset>."""
    case = golden_dir / "superres_cond"
    tensors = torch.load(case / "tensors.pt", weights_only=True)
    overrides = [f"openai_ckpt={case / 'state_dict.pt'}", *GOLDEN_SR, "paths.output_dir=unused"]
    cfg = compose("upsample", overrides)
    loaded, low_res_size = load_upsampler(cfg)
    assert isinstance(loaded.network, SuperResUNet) and low_res_size == loaded.network.low_res_size == 16
    assert loaded.fingerprint["weights"] == "openai" and loaded.diffusion.num_timesteps == 1000
    with torch.no_grad():
        out = loaded.network(tensors["x"], tensors["timesteps"], low_res=tensors["low_res"], y=tensors["y"])
    assert rel_error(out, tensors["output"]) <= 1e-5

    bad = compose("upsample", [*overrides[:1], "model=adm_sr_tiny", "paths.output_dir=unused"])
    with pytest.raises(ValueError, match="does not fit"):
        load_upsampler(bad)


def test_paper_presets_compose(compose):
    for name, large, diffusion in [("adm_sr_64_256", 256, "linear"), ("adm_sr_128_512", 512, "linear")]:
        cfg = compose("upsample", ["openai_ckpt=x.pt", f"model={name}", "paths.output_dir=unused"])
        assert cfg.model._target_ == "adm.nn.SuperResUNet" and cfg.model.image_size == large
        assert cfg.diffusion.schedule == diffusion
    for exp, small, large in [("sr_64_256", 64, 256), ("sr_128_512", 128, 512), ("sr_mnist", 14, 28)]:
        cfg = compose("train_superres", [f"experiment={exp}", "paths.output_dir=unused"])
        assert (cfg.model.low_res_size, cfg.model.image_size, cfg.data.image_size) == (small, large, large)
        assert "low_res_size" not in cfg
        assert cfg.callbacks.sample_grid is not None  # the grid upsamples held-out real images


def test_openai_presets_know_their_low_res_size(compose):
    """OpenAI's upsamplers, as presets and as OpenAI's factory builds them from the README flags."""
    from adm.compat.models import sr_create_model

    readme = {
        "adm_sr_64_256": (256, 64, "32,16,8", 4, -1),
        "adm_sr_128_512": (512, 128, "32,16", 4, 64),
    }
    for name, (large, small, attention, heads, head_channels) in readme.items():
        cfg = compose("upsample", ["openai_ckpt=x.pt", f"model={name}", "paths.output_dir=unused"])
        with torch.device("meta"):
            preset = build_network(OmegaConf.to_container(cfg.model, resolve=True))
            factory = sr_create_model(
                large,
                small,
                192,
                2,
                True,
                True,
                False,
                attention,
                heads,
                head_channels,
                -1,
                True,
                0.0,
                True,
                True,
            )
        assert preset.low_res_size == factory.low_res_size == small, name
        assert preset.state_dict().keys() == factory.state_dict().keys()
    with pytest.raises(ValueError, match="low_res_size=64 must be an int between 1 and .* 64"):
        sr_create_model(64, 64, 32, 1, True, False, False, "16", 1, -1, -1, True, 0.0, True, False)


def test_old_checkpoints_with_a_top_level_low_res_size_load(trained_sr: Path, tmp_path: Path, compose):
    """Upsampler checkpoints that kept low_res_size next to the model section (not in it) still load."""
    ckpt = torch.load(ckpt_path(trained_sr), map_location="cpu", weights_only=True)
    # the old layout, made by hand from a new checkpoint: no writer produces it any more
    ckpt["adm_config"]["low_res_size"] = ckpt["adm_config"]["model"].pop("low_res_size")
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    assert load_checkpoint(old).unet.low_res_size == 8
    cfg = compose("upsample", [f"ckpt={old}", "paths.output_dir=unused"])
    loaded, low_res_size = load_upsampler(cfg)
    assert low_res_size == loaded.network.low_res_size == 8
    torch.testing.assert_close(
        loaded.network.state_dict(), load_checkpoint(ckpt_path(trained_sr)).unet.state_dict()
    )


def test_upsampling_refuses_base_images_of_the_wrong_size(golden_dir: Path, tmp_path: Path, compose):
    """OpenAI weights with their preset: base images must have the preset's low_res_size."""
    overrides = [
        f"openai_ckpt={golden_dir / 'superres_cond' / 'state_dict.pt'}",
        *GOLDEN_SR,
        "sampler.steps=2",
        "progress=false",
        "trainer.accelerator=cpu",
    ]
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)  # 8 px base images for a 16 -> 32 upsampler
    base = write_npz(tmp_path / "base.npz", images, np.array([1, 2]))
    out = tmp_path / "out"
    cfg = compose(
        "upsample", [*overrides, f"base_samples={base}", f"out_dir={out}", f"paths.output_dir={out}"]
    )
    with pytest.raises(ValueError, match="8x8 but this upsampler was trained on 16 px"):
        upsample_script(cfg)
