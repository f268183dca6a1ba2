"""Classifier-free guidance: the guided combination, the null label, label dropout, and the sample recipe."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from adm.config import build_network
from adm.diffusion import GaussianDiffusion, UniformSampler
from adm.lit.diffusion import DiffusionModule
from adm.recipes.sweep import collect_runs
from adm.sampling import (
    SAMPLERS,
    ClassifierFreeGuidance,
    PerSampleNoise,
    draw_images,
    null_label_of,
)
from adm.sampling.draw import check_labels

NULL = 3  # 3 data classes + the null label


class RecordingNet(nn.Module):
    """A per-sample network whose output depends on x, t and y; records the labels of every call."""

    in_channels, image_size, num_classes = 1, 4, NULL + 1

    def __init__(self, learn_sigma: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(0.5))
        self.learn_sigma = learn_sigma
        self.calls: list[torch.Tensor] = []

    def forward(self, x, t, y=None):
        self.calls.append(y.clone())
        out = self.weight * torch.tanh(x) * (t.float() / 1000).view(-1, 1, 1, 1)
        out = out + 0.1 * y.float().view(-1, 1, 1, 1) - 0.05 * (y == NULL).float().view(-1, 1, 1, 1)
        if self.learn_sigma:
            out = torch.cat([out, torch.sin(x) + y.float().view(-1, 1, 1, 1)], dim=1)
        return out


def process(var_type: str = "fixed_large") -> GaussianDiffusion:
    return GaussianDiffusion.from_schedule(
        "linear", 1000, mean_type="start_x", var_type=var_type, loss_type="mse", rescale_timesteps=False
    )


def test_guided_output_is_one_batched_pass_of_conditional_and_null_inputs():
    net = RecordingNet(learn_sigma=True)
    x, t, y = torch.randn(3, 1, 4, 4), torch.tensor([10, 500, 999]), torch.tensor([0, 2, 1])
    w = 2.5
    guided = ClassifierFreeGuidance(w, NULL).wrap(net)(x, t, y=y)
    # One call of 2B samples: the labels, then the null label for every sample.
    assert len(net.calls) == 1 and net.calls[0].tolist() == [0, 2, 1, NULL, NULL, NULL]
    # The same as two separate passes: eps(y) + w (eps(y) - eps(null)); the variance part is conditional.
    cond, uncond = net(x, t, y=y), net(x, t, y=torch.full_like(y, NULL))
    assert torch.allclose(guided[:, :1], cond[:, :1] + w * (cond[:, :1] - uncond[:, :1]), atol=1e-6)
    assert torch.equal(guided[:, 1:], cond[:, 1:])
    # w = 0 is the conditional model exactly, in one conditional pass.
    net.calls.clear()
    assert torch.equal(ClassifierFreeGuidance(0.0, NULL).wrap(net)(x, t, y=y), cond)
    assert [c.tolist() for c in net.calls] == [[0, 2, 1]]
    # No labels: the unconditional model.
    assert torch.equal(ClassifierFreeGuidance(w, NULL).wrap(net)(x, t), uncond)


def test_bad_labels_scales_and_misuse_are_refused():
    net = RecordingNet()
    x, t = torch.randn(2, 1, 4, 4), torch.tensor([1, 2])
    guidance = ClassifierFreeGuidance(1.0, NULL)
    # Labels are checked once per draw, where they are chosen (not in every sampler step).
    wrapped = guidance.wrap_network(net)
    ddim = functools.partial(SAMPLERS["ddim"], steps=2)
    for bad in ([0, NULL], [-1, 0], [0, NULL + 1]):
        with pytest.raises(ValueError, match="null label"):
            draw_images(wrapped, process(), ddim, [1, 2], labels=bad)
        with pytest.raises(ValueError, match="null label"):
            check_labels(wrapped, torch.tensor(bad))
    assert net.calls == []  # refused before any network call
    check_labels(wrapped, torch.tensor([0, NULL - 1]))
    with pytest.raises(ValueError, match="scale"):
        ClassifierFreeGuidance(-1.0, NULL)
    with pytest.raises(ValueError, match="wraps the model"):
        guidance(x, t, y=torch.tensor([0, 1]))  # handed to a sampler as a gradient
    with pytest.raises(ValueError, match="last class"):
        ClassifierFreeGuidance(1.0, 1).wrap_network(net)
    with pytest.raises(ValueError, match="label_dropout"):
        null_label_of(None)


# Every way of reading a tensor's values on the host (each waits for the device to finish).
HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "any", "all", "cpu", "numpy")


class HostSync(AssertionError):
    pass


@pytest.fixture
def no_host_sync(monkeypatch):
    """Make every host read of a tensor (HOST_READS) raise, and record the ones that were tried."""
    tried: list[str] = []

    def forbid(name):
        def raise_(*args, **kwargs):
            tried.append(name)
            raise HostSync(f"host sync: Tensor.{name}")

        return raise_

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, forbid(name))
    return tried


@pytest.mark.parametrize("scale", [0.0, 2.0])
def test_the_per_step_guided_call_never_syncs_with_the_host(scale, no_host_sync):
    net = RecordingNet(learn_sigma=True)
    guided = ClassifierFreeGuidance(scale, NULL).wrap(net)
    x, t, y = torch.randn(3, 1, 4, 4), torch.tensor([10, 500, 999]), torch.tensor([0, 2, 1])
    for _ in range(3):
        out = guided(x, t, y=y)
        guided(x, t)  # no labels: the null label
    assert out.shape == (3, 2, 4, 4) and no_host_sync == []
    # even labels that the draw would refuse pass through untouched: the per-step path does not look
    guided(x, t, y=torch.tensor([0, NULL, -1]))
    assert no_host_sync == []


def test_a_sampler_loop_with_guidance_does_no_label_sync(monkeypatch):
    """A whole DDIM loop over the guided model: Tensor.any / .item are never called (the sampler's own steps
    included), so the old per-step label check (two .any() calls per step) is gone."""
    calls = {"any": 0, "item": 0}
    for name in calls:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    net = RecordingNet()
    y = torch.tensor([0, 2])
    x_T = PerSampleNoise([1, 2]).initial((1, 4, 4))
    model_fn = ClassifierFreeGuidance(3.0, NULL).wrap(net)
    SAMPLERS["ddim"](model_fn, process(), x_T, model_kwargs={"y": y}, noise=PerSampleNoise([3, 4]), steps=5)
    assert len(net.calls) == 5 and calls == {"any": 0, "item": 0}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_the_wrapped_model(name):
    sampler = SAMPLERS[name]
    d = process()
    y = torch.tensor([0, 2])
    x_T = PerSampleNoise([1, 2]).initial((1, 4, 4))

    def run(model_fn):
        return sampler(model_fn, d, x_T, model_kwargs={"y": y}, noise=PerSampleNoise([3, 4]), steps=4)

    net = RecordingNet()
    plain = run(net)
    assert torch.equal(run(ClassifierFreeGuidance(0.0, NULL).wrap(net)), plain)
    guided = run(ClassifierFreeGuidance(3.0, NULL).wrap(net))
    assert not torch.allclose(guided, plain)
    # draw_images with the wrapped network: per-sample seeds, labels of the data's classes only.
    wrapped = ClassifierFreeGuidance(3.0, NULL).wrap_network(net)
    assert wrapped.num_classes == NULL
    drawn = draw_images(wrapped, d, lambda *a, **k: sampler(*a, **k, steps=4), [7, 8, 9], labels=[0, 1, 2])
    one = draw_images(wrapped, d, lambda *a, **k: sampler(*a, **k, steps=4), [8], labels=[1])
    assert torch.allclose(drawn[1:2], one, atol=1e-6)


def tiny_unet(num_classes: int) -> dict:
    return dict(
        _target_="adm.nn.UNet", image_size=8, in_channels=1, model_channels=32, num_res_blocks=1,
        attention_resolutions=[], channel_mult=[1, 2], learn_sigma=False, num_classes=num_classes,
        dropout=0.0, num_heads=1, num_head_channels=32, num_heads_upsample=-1, use_scale_shift_norm=True,
        resblock_updown=True, use_new_attention_order=True, use_checkpoint=False,
    )  # fmt: skip


def test_label_dropout_trains_the_null_label_and_is_recorded():
    d = process()
    config = {"model": tiny_unet(NULL + 1), "diffusion": {}, "data": {"num_classes": NULL}}

    def module(dropout, net_classes=NULL + 1):
        return DiffusionModule(
            unet=build_network(tiny_unet(net_classes)),
            diffusion=d,
            timestep_sampler=UniformSampler(d),
            optimizer=lambda params: torch.optim.SGD(params, lr=0.0),
            config=config,
            label_dropout=dropout,
        )

    m = module(0.5)
    assert m.adm_config["classifier_free"] == {"label_dropout": 0.5, "null_label": NULL}
    seen = []
    m.unet.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["y"]), with_kwargs=True)
    m.log_by_quartile = lambda *a, **k: None
    torch.manual_seed(0)
    y = torch.randint(0, NULL, (4000,))
    m.training_step((torch.zeros(4000, 1, 8, 8), y), 0)
    dropped = seen[0] == NULL
    assert 0.45 < dropped.float().mean().item() < 0.55  # about label_dropout of the labels
    assert torch.equal(seen[0][~dropped], y[~dropped])  # the others are kept
    assert "classifier_free" not in module(0.0, NULL).adm_config
    with pytest.raises(ValueError, match="num_classes=4"):
        module(0.1, NULL)  # no room for the null label
    with pytest.raises(ValueError, match="label_dropout"):
        module(1.0)


def test_sample_recipe_with_cfg_and_the_sweep_columns(
    tmp_path, monkeypatch, tiny_checkpoint, tiny_ckpts, run_sample
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # trained with label dropout: NULL data classes and the null label (random weights, zero layers drawn too)
    ckpt = tiny_checkpoint(
        overrides=["diffusion=linear_xstart", f"data.num_classes={NULL}", f"model.num_classes={NULL + 1}"],
        classifier_free={"label_dropout": 0.1, "null_label": NULL},
    )
    common = [f"ckpt={ckpt}", "num_samples=6", "batch_size=6", "progress=false", "labels=random"]
    fast = ["sampler=dpmpp_2m", "sampler.steps=3"]
    runs = tmp_path / "sweep"
    guided = run_sample([*common, *fast, "guidance=cfg", "guidance.scale=2"], runs / "0")
    plain = run_sample([*common, *fast, "guidance=cfg", "guidance.scale=0"], runs / "1")
    run_sample([*common, "sampler=ddim", "sampler.steps=3"], runs / "2")  # default guidance, scale 0
    with np.load(guided["samples"]) as a, np.load(plain["samples"]) as b:
        assert a["arr_1"].max() < NULL and np.array_equal(a["arr_1"], b["arr_1"])  # never the null label
        assert not np.array_equal(a["arr_0"], b["arr_0"])
    rows = {r["job"]: r for r in collect_runs(runs)}
    assert (rows["0"]["guidance"], rows["0"]["guidance_scale"], rows["0"]["sampler"]) == (
        "cfg",
        2.0,
        "dpmpp_2m",
    )
    assert (rows["2"]["guidance"], rows["2"]["sampler"]) == ("classifier", "ddim")
    tiny = tiny_ckpts
    # A sweep over guidance=classifier,cfg gives the classifier to both: classifier-free runs ignore it.
    with_classifier = [
        *common,
        *fast,
        "guidance=cfg",
        "guidance.scale=2",
        f"classifier_ckpt={tiny['classifier']}",
    ]
    ignored = run_sample(with_classifier, runs / "3")
    with np.load(guided["samples"]) as a, np.load(ignored["samples"]) as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])
    with pytest.raises(ValueError, match="null label"):
        run_sample([f"ckpt={tiny['model']}", *fast, "guidance=cfg", "guidance.scale=1"], tmp_path / "y")


# --- the comparison's findings ------------------------------------------------------------------------------
def _rows():
    from adm.recipes.compare_samplers import _row

    table = [  # (sampler, steps, guidance, scale, fid, accuracy)
        ("dpmpp_2m_10", 10, "classifier", 2.0, 3.0, 0.90),
        ("dpmpp_2m_15", 15, "classifier", 2.0, 2.05, 0.92),
        ("dpmpp_2m_20", 20, "classifier", 2.0, 1.9, 0.93),
        ("ddpm_250", 250, "classifier", 2.0, 2.0, 0.95),
        ("ddpm_250", 250, "classifier", 4.0, 2.2, 0.99),
        ("ddpm_250", 250, "cfg", 1.0, 1.5, 0.985),
    ]
    return [
        _row((s, g, c), n, {"fid": f, "accuracy": a, "precision": 0.5, "recall": 0.5})
        for s, n, g, c, f, a in table
    ]


def test_comparison_findings():
    from adm.recipes.compare_samplers import fewest_steps, format_table, matched_accuracy

    rows = _rows()
    found = {(f["guidance"], f["scale"]): f for f in fewest_steps(rows, "ddpm_250", "dpmpp")}
    # 2.05 is within 5% of 2.0 (10 steps at 3.0 is not); no solver row at scale 4.
    assert found[("classifier", 2.0)]["steps"] == 15 and found[("classifier", 2.0)]["tried"] == [10, 15, 20]
    assert found[("classifier", 4.0)]["steps"] is None
    (pair,) = matched_accuracy(rows)
    assert (pair["cfg_scale"], pair["classifier_scale"]) == (1.0, 4.0)  # accuracy 0.985 vs 0.99 (not 0.95)
    table = format_table(rows)
    assert table.splitlines()[0].startswith("| sampler | steps | guidance | scale |") and "| 2.050 |" in table


def test_pipeline_infer_with_cfg_and_the_new_samplers():
    from adm.pipeline import ADM

    torch.manual_seed(0)
    unet = build_network(tiny_unet(NULL + 1))
    with torch.no_grad():
        for p in unet.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    adm = ADM(unet, process(), null_label=NULL)
    assert adm.num_classes == NULL
    labels = [0, 1, 2]
    plain = adm.infer(3, labels=labels, sampler="dpmpp_2m", steps=4, seed=1)
    guided = adm.infer(3, labels=labels, sampler="dpmpp_2m", steps=4, seed=1, guidance="cfg", scale=3.0)
    assert not torch.equal(plain["samples"], guided["samples"])
    random = adm.infer(32, sampler="dpmpp_3m", steps=3, seed=0)["labels"]
    assert int(random.max()) < NULL  # random labels never draw the null label
    with pytest.raises(ValueError, match="guidance=cfg guidance.scale=1 needs a model trained with a null"):
        ADM(unet, process()).infer(1, labels=[0], sampler="ddim", steps=2, guidance="cfg", scale=1.0)


def test_training_callbacks_never_ask_for_the_null_label():
    """A classifier-free model's grid / FID samples cycle through the data's classes, not its null label."""
    from types import SimpleNamespace

    from adm.callbacks.sample_grid import sample_conditioning, sampling_network

    unet = SimpleNamespace(num_classes=11, in_channels=1, image_size=8)
    trainer = SimpleNamespace(callbacks=[])
    cfg_module = SimpleNamespace(unet=unet, null_label=10, conditions_on_images=False)
    plain_module = SimpleNamespace(unet=unet, null_label=None, conditions_on_images=False)
    cfg_net, plain_net = sampling_network(trainer, cfg_module), sampling_network(trainer, plain_module)
    assert cfg_net.num_classes == 10 and plain_net.num_classes == 11  # the data's classes
    labels, extra = sample_conditioning(None, cfg_module, cfg_net, 33, seed=0, labels=None, split="val")
    assert extra == {} and labels.tolist() == [i % 10 for i in range(33)]
    labels, _ = sample_conditioning(None, plain_module, plain_net, 33, seed=0, labels=None, split="val")
    assert labels.max().item() == 10
