"""One drawing function, one seed rule: ``adm.sampling.draw_images`` and everything that draws through it.

The same (seed, index, label, sampler) must give the same image in ``ADM.infer``, the sample recipe
(``scripts/sample.py``) and the training-time sample grid; sample i must not depend on its batch; labels reach
the network only when it is class-conditional (but always the guidance); upsamplers' callbacks condition on
real images of the datamodule.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from adm import ADM
from adm.callbacks import SampleGrid
from adm.callbacks.fid import FIDCallback
from adm.callbacks.sample_grid import sample_conditioning
from adm.config import build_network, load_preset
from adm.data import downsample_area
from adm.diffusion import GaussianDiffusion, UniformSampler
from adm.io.checkpoint import load_checkpoint
from adm.io.images import from_uint8, to_uint8
from adm.io.npz import BaseSamples
from adm.lit import DiffusionModule
from adm.metrics import DomainClassifier
from adm.recipes.sample import sample as sample_recipe
from adm.recipes.train import train_superres
from adm.recipes.upsample import UpsampleDrawer
from adm.sampling import (
    LabelPlan,
    PerSampleNoise,
    ddim_sample,
    ddpm_sample,
    draw_images,
    sample_seed,
    upsample_seed,
)
from adm.sampling.noise import generator_seed

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")

COSINE = dict(
    _target_="adm.diffusion.GaussianDiffusion.from_schedule", schedule="cosine", steps=1000,
    mean_type="epsilon", var_type="learned_range", loss_type="rescaled_mse", rescale_timesteps=False,
)  # fmt: skip


def linear_process() -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule(
        "linear",
        1000,
        mean_type="epsilon",
        var_type="learned_range",
        loss_type="mse",
        rescale_timesteps=False,
    )


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_ckpts) -> Path:
    """A class-conditional checkpoint of 8x8 grey images, 3 classes, in the training layout (EMA and raw
    weights; random, not zero): it samples in a fraction of a second on one CPU thread."""
    return tiny_ckpts["model"]


class Recorder(nn.Module):
    """A stand-in network (zero noise prediction) that records the keyword arguments it is called with."""

    def __init__(self, num_classes: int | None, image_size: int = 4, channels: int = 1) -> None:
        super().__init__()
        self.in_channels, self.image_size, self.num_classes = channels, image_size, num_classes
        self.scale = nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []

    def forward(self, x, t, **kwargs):
        self.calls.append({k: (v.clone() if v is not None else None) for k, v in kwargs.items()})
        return torch.cat([x * self.scale, torch.zeros_like(x)], dim=1)


class RecordingGuidance:
    enabled = True

    def __init__(self) -> None:
        self.labels: list[torch.Tensor] = []

    def __call__(self, x_t, t_model, y=None, **_):
        self.labels.append(y)
        return torch.zeros_like(x_t)


# --- the drawing function ---------------------------------------------------------------------------------
def test_images_do_not_depend_on_the_batch(tiny_ckpt):
    trained = load_checkpoint(tiny_ckpt)
    sampler = functools.partial(ddpm_sample, steps=3)
    seeds = [sample_seed(4, i) for i in range(5)]
    labels = [0, 1, 2, 1, 0]
    whole = draw_images(trained.unet, trained.diffusion, sampler, seeds, labels=labels)
    assert whole.shape == (5, 1, 8, 8) and whole.dtype == torch.float32
    assert whole.min() >= -1 and whole.max() <= 1
    for batch_size in (1, 2):
        split = draw_images(
            trained.unet, trained.diffusion, sampler, seeds, labels=labels, batch_size=batch_size
        )
        torch.testing.assert_close(split, whole, rtol=0, atol=1e-5)
    part = draw_images(trained.unet, trained.diffusion, sampler, seeds[3:], labels=labels[3:])
    torch.testing.assert_close(part, whole[3:], rtol=0, atol=1e-5)
    # the seed is what makes a sample: another seed, another image; another batch position, the same one
    other = draw_images(trained.unet, trained.diffusion, sampler, [sample_seed(5, 0)], labels=[0])
    assert (other[0] - whole[0]).abs().mean() > 1e-2


def test_draw_is_the_sampler_with_per_sample_noise(tiny_ckpt):
    trained = load_checkpoint(tiny_ckpt)
    seeds = [sample_seed(1, i) for i in range(3)]
    y = torch.tensor([2, 0, 1])
    noise = PerSampleNoise(seeds)
    x_T = noise.initial((1, 8, 8))
    direct = ddim_sample(trained.unet, trained.diffusion, x_T, model_kwargs={"y": y}, noise=noise, steps=3)
    drawn = draw_images(
        trained.unet, trained.diffusion, functools.partial(ddim_sample, steps=3), seeds, labels=y
    )
    assert torch.equal(drawn, direct.clamp(-1, 1))


@pytest.mark.parametrize("num_classes", [None, 5])
def test_labels_reach_the_network_only_when_it_is_class_conditional(num_classes):
    diffusion = linear_process()
    net, guidance = Recorder(num_classes), RecordingGuidance()
    labels = torch.tensor([4, 1, 3])
    low_res = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    draw_images(
        net, diffusion, functools.partial(ddim_sample, steps=2), [7, 8, 9], labels=labels,
        conditioning={"low_res": low_res}, guidance=guidance, batch_size=2,
    )  # fmt: skip
    # two batches (rows 0-1, row 2), two steps each: the conditioning is cut with the seeds
    assert [c["low_res"][:, 0, 0, 0].tolist() for c in net.calls] == [[0, 1], [0, 1], [2], [2]]
    if num_classes is None:
        assert all("y" not in c for c in net.calls)
    else:
        assert [c["y"].tolist() for c in net.calls] == [[4, 1], [4, 1], [3], [3]]
    assert [y.tolist() for y in guidance.labels] == [[4, 1], [4, 1], [3], [3]]


def test_draw_errors():
    diffusion = linear_process()
    sampler = functools.partial(ddim_sample, steps=2)
    with pytest.raises(ValueError, match="class-conditional: give one label per seed"):
        draw_images(Recorder(3), diffusion, sampler, [1, 2])
    with pytest.raises(ValueError, match="labels must be 2 integers"):
        draw_images(Recorder(3), diffusion, sampler, [1, 2], labels=[1, 2, 0])
    with pytest.raises(ValueError, match="labels=..."):
        draw_images(Recorder(3), diffusion, sampler, [1], labels=[1], conditioning={"y": torch.ones(1)})
    with pytest.raises(ValueError, match="one row per seed"):
        draw_images(
            Recorder(None), diffusion, sampler, [1, 2], conditioning={"low_res": torch.ones(3, 1, 2, 2)}
        )
    with pytest.raises(ValueError, match="at least one seed"):
        draw_images(Recorder(None), diffusion, sampler, [])
    for bad in ([0, 3], [-1, 2]):  # labels the 3-class network has no class for: refused before drawing
        net = Recorder(3)
        with pytest.raises(ValueError, match=r"not data classes 0\.\.2"):
            draw_images(net, diffusion, sampler, [1, 2], labels=bad)
        assert net.calls == []


def test_seed_rules():
    assert sample_seed(3, 5) == (3 << 32) + 5
    base = {sample_seed(s, i) for s in range(3) for i in range(50)}
    up = {upsample_seed(s, i) for s in range(3) for i in range(50)}
    assert len(base) == len(up) == 150 and not base & up and all(0 <= u < 2**63 for u in up)
    with pytest.raises(ValueError, match="seed must be"):
        sample_seed(-1, 0)


def test_every_bit_of_a_seed_reaches_the_noise():
    """torch's CPU generator keeps 32 bits of its seed: the run seed (the high half) must still count."""
    first = [PerSampleNoise([sample_seed(s, 3)]).initial((16,)) for s in range(4)]
    assert all(not torch.equal(a, b) for i, a in enumerate(first) for b in first[i + 1 :])
    # seeds below 2**32 are the generator's own seeds (run seed 0 draws as torch.Generator().manual_seed(i))
    expected = torch.randn(16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(PerSampleNoise([sample_seed(0, 5)]).initial((16,))[0], expected)
    states = {generator_seed(sample_seed(s, i)) for s in range(20) for i in range(5000)}
    assert len(states) == 20 * 5000
    with pytest.raises(ValueError, match=r"\[0, 2\*\*64\)"):
        PerSampleNoise([-1])


# --- the same image everywhere ----------------------------------------------------------------------------
def _grid_images(ckpt: Path, tmp_path: Path, seed: int, labels: list[int], sampler) -> np.ndarray:
    trained = load_checkpoint(ckpt)
    module = DiffusionModule(
        unet=trained.unet, diffusion=trained.diffusion, timestep_sampler=UniformSampler(trained.diffusion),
        optimizer=functools.partial(torch.optim.AdamW, lr=0.0),
    )  # fmt: skip
    grid = SampleGrid(
        every_n_steps=0, num_samples=len(labels), seed=seed, labels=labels, sampler=sampler, nrow=None,
        dirpath=str(tmp_path / "grid"), split="val",
    )  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", logger=False, callbacks=[grid], enable_checkpointing=False)
    return to_uint8(grid.sample(trainer, module))


def test_infer_recipe_and_grid_draw_the_same_images(tiny_ckpt, tmp_path, compose):
    seed, labels, n = 11, [2, 0, 1, 1, 2], 5
    model = ADM.from_checkpoint(tiny_ckpt)
    infer = model.infer(n, labels=labels, sampler="ddim", steps=3, seed=seed)

    out = tmp_path / "recipe"
    overrides = [
        f"ckpt={tiny_ckpt}", "sampler=ddim", "sampler.steps=3", "sampler.spacing=even", f"seed={seed}",
        f"num_samples={n}", f"batch_size={n}", f"shard_size={n}", f"labels=[{','.join(map(str, labels))}]",
        "progress=false", "trainer.accelerator=cpu", f"out_dir={out}", f"paths.output_dir={out}",
    ]  # fmt: skip
    result = sample_recipe(compose("sample", overrides))
    with np.load(result["samples"]) as data:
        recipe, recipe_labels = data["arr_0"], data["arr_1"]

    grid = _grid_images(tiny_ckpt, tmp_path, seed, labels, functools.partial(ddim_sample, steps=3, eta=0.0))

    assert infer["samples"].shape == (n, 8, 8, 1)
    np.testing.assert_array_equal(infer["samples"].numpy(), recipe)
    np.testing.assert_array_equal(grid, recipe)
    np.testing.assert_array_equal(recipe_labels, labels)
    assert len({image.tobytes() for image in recipe}) == n  # every sample is its own image


def test_random_labels_follow_the_recipe(tiny_ckpt, tmp_path):
    """labels=None in ADM.infer is scripts/sample.py's labels=random: label i from (seed, i)."""
    model = ADM.from_checkpoint(tiny_ckpt)
    out = model.infer(6, sampler="ddim", steps=2, seed=3)
    expected = LabelPlan("random", 3, seed=3)(range(6))
    np.testing.assert_array_equal(out["labels"].numpy(), expected)
    # one seed per image: the labels (and images) of the samples those seeds belong to
    part = model.infer(2, sampler="ddim", steps=2, seed=[sample_seed(3, 4), sample_seed(3, 5)])
    np.testing.assert_array_equal(part["labels"].numpy(), expected[4:])
    np.testing.assert_array_equal(part["samples"].numpy(), out["samples"][4:].numpy())


def test_infer_upsamples_as_the_upsample_recipe():
    """ADM.infer on an upsampler: noise from upsample_seed(seed, i), as scripts/upsample.py draws it."""
    cfg = {k: v for k, v in load_preset("adm_sr_tiny").items() if k != "diffusion"}
    torch.manual_seed(3)
    sr = build_network({**cfg, "image_size": 16, "in_channels": 1, "num_classes": 3, "low_res_size": 8})
    with torch.no_grad():
        for p in sr.out.parameters():
            p.normal_(0, 0.05)
    diffusion = GaussianDiffusion.from_schedule(**{k: v for k, v in COSINE.items() if k != "_target_"})
    images = torch.randint(
        0, 256, (3, 8, 8, 1), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    labels = np.array([2, 0, 1])
    drawer = UpsampleDrawer(
        unet=sr, diffusion=diffusion, sampler=functools.partial(ddim_sample, steps=3), seed=4, device="cpu",
        base=BaseSamples(images.numpy(), labels), low_res_size=8,
    )  # fmt: skip
    expected, _ = drawer(range(3))
    model = ADM(sr, diffusion)
    out = model.infer(
        3, labels=labels.tolist(), sampler="ddim", steps=3, seed=4, low_res=from_uint8(images.numpy())
    )
    assert out["samples"].shape == (3, 16, 16, 1)
    np.testing.assert_array_equal(out["samples"].numpy(), expected)
    with pytest.raises(ValueError, match="upsampler: give low_res"):
        model.infer(3, labels=1, sampler="ddim", steps=3)
    with pytest.raises(ValueError, match="class-conditional: give the labels"):
        model.infer(3, sampler="ddim", steps=3, low_res=from_uint8(images.numpy()))


# --- ADM.from_checkpoint ----------------------------------------------------------------------------------
def test_from_checkpoint(tiny_ckpt, tmp_path, tiny_checkpoint):
    ema = ADM.from_checkpoint(tiny_ckpt)
    raw = ADM.from_checkpoint(tiny_ckpt, ema=False)
    assert ema.classifier is None and ema.num_classes == 3 and ema.diffusion.num_timesteps == 1000
    assert any(not torch.equal(a, b) for a, b in zip(ema.unet.parameters(), raw.unet.parameters()))

    classifier = tiny_checkpoint("classifier", seed=2)
    guided = ADM.from_checkpoint(tiny_ckpt, classifier_ckpt=classifier)
    plain = guided.infer(2, labels=1, sampler="ddim", steps=3, seed=0)
    pushed = guided.infer(2, labels=1, sampler="ddim", steps=3, seed=0, guidance="classifier", scale=30.0)
    assert torch.equal(plain["samples"], ema.infer(2, labels=1, sampler="ddim", steps=3, seed=0)["samples"])
    assert not torch.equal(plain["samples"], pushed["samples"])

    # OpenAI-style classifier weights: a plain state dict and its preset
    torch.save(guided.classifier.state_dict(), tmp_path / "openai_clf.pt")
    with pytest.raises(ValueError, match="add classifier=<preset>"):
        ADM.from_checkpoint(tiny_ckpt, classifier_ckpt=tmp_path / "openai_clf.pt")
    with pytest.raises(ValueError, match="give the weights"):
        ADM.from_checkpoint(tiny_ckpt, classifier="adm_cls_tiny")
    linear = tiny_checkpoint("classifier", overrides=["diffusion=linear"])
    with pytest.raises(ValueError, match="noising schedule=linear"):
        ADM.from_checkpoint(tiny_ckpt, classifier_ckpt=linear)
    big = tiny_checkpoint("classifier", overrides=["data.image_size=16"])
    with pytest.raises(ValueError, match="takes 16px images"):
        ADM.from_checkpoint(tiny_ckpt, classifier_ckpt=big)
    with pytest.raises(ValueError, match="holds a noisy classifier"):
        ADM.from_checkpoint(classifier)
    with pytest.raises(ValueError, match="not one of our training checkpoints.*load_openai"):
        ADM.from_checkpoint(tmp_path / "openai_clf.pt")


# --- upsamplers in the training callbacks -----------------------------------------------------------------
def test_callbacks_condition_an_upsampler_on_real_images(tmp_path, compose):
    domain = tmp_path / "domain.pt"
    DomainClassifier(in_channels=1, image_size=16, num_classes=10, width=4).save(domain)
    overrides = [
        "model=adm_sr_tiny", "trainer.accelerator=cpu", "data.image_size=16", "model.low_res_size=8",
        "batch_size=8", "trainer.max_steps=1", "callbacks=[default,fid]", "callbacks.ema.rates=[0.9]",
        "callbacks.fid.every_n_steps=0", "callbacks.fid.num_samples=6", "callbacks.fid.batch_size=4",
        "callbacks.fid.num_reference=8", "callbacks.fid.sampler.steps=2",
        "callbacks.fid.feature_extractor.kind=domain",
        f"callbacks.fid.feature_extractor.domain_ckpt={domain}",
        f"paths.output_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    cfg = compose("train_superres", overrides)
    grid_cfg = OmegaConf.load(Path(CONF) / "callbacks" / "sample_grid.yaml").sample_grid
    grid_cfg.update({"every_n_steps": 0, "num_samples": 4, "sampler": {**grid_cfg.sampler, "steps": 2}})
    with open_dict(cfg):
        cfg.callbacks.sample_grid = grid_cfg
    trainer = train_superres(cfg)

    grid = next(cb for cb in trainer.callbacks if isinstance(cb, SampleGrid))
    fid = next(cb for cb in trainer.callbacks if isinstance(cb, FIDCallback))
    assert (tmp_path / "run" / "samples" / "step_0000001.png").is_file()
    assert {"sample/fid", "sample/accuracy"} <= set(fid.last_scores)
    module = trainer.lightning_module
    assert module.conditions_on_images
    x_0 = grid.sample(trainer, module)
    assert x_0.shape == (4, 1, 16, 16)

    # the conditioning is the datamodule's first real images of the split, area-downsampled, with their labels
    images, labels = trainer.datamodule.reference_batch(4, "val")
    y, conditioning = sample_conditioning(trainer, module, module.unet, 4, seed=0, labels=None, split="val")
    assert set(conditioning) == {"low_res"}
    torch.testing.assert_close(conditioning["low_res"], downsample_area(from_uint8(images), 8))
    np.testing.assert_array_equal(y.numpy(), labels)
