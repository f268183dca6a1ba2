"""The one door from weights to images: ``adm.weights.load_weights`` reads a weights file once, guidance kinds
and samplers are looked up in registries, and the sample recipe draws through ``adm.ADM``."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import adm.io.files
import adm.sampling
from adm.config import build_network
from adm.pipeline import ADM
from adm.sampling import (
    GUIDANCE_KINDS,
    SAMPLERS,
    ClassifierGuidance,
    GuidanceKind,
    build_sampler,
    ddim_sample,
    describe_sampler,
    plan_guidance,
    sampler_name,
)
from adm.weights import load_weights


@pytest.fixture
def torch_loads(monkeypatch):
    """Counts the weights files read (every read goes through torch.load); hashing a file separately fails."""
    calls: list[str] = []
    real = torch.load

    def counting(source, *args, **kwargs):
        calls.append(type(source).__name__)
        return real(source, *args, **kwargs)

    def no_second_read(*args, **kwargs):
        raise AssertionError("a weights file was read again to hash it")

    monkeypatch.setattr(torch, "load", counting)
    monkeypatch.setattr(adm.io.files, "file_sha256", no_second_read)
    return calls


def test_each_weights_file_is_read_once(tiny_checkpoint, torch_loads):
    model = tiny_checkpoint("diffusion", seed=1)
    classifier = tiny_checkpoint("classifier", seed=2)
    torch_loads.clear()
    pipe = ADM.from_checkpoint(model, classifier_ckpt=classifier)
    assert len(torch_loads) == 2  # one read per file: no sniffing read before the real one
    assert pipe.classifier is not None and pipe.classifier_process is not None


def test_our_checkpoints_describe_themselves(tiny_checkpoint):
    path = tiny_checkpoint("diffusion", seed=1, class_names=[str(i) for i in range(10)])
    weights = load_weights(path, kind="diffusion")
    assert weights.fingerprint["weights"] == "raw" and len(weights.fingerprint["sha256"]) == 64
    assert weights.fingerprint["sha256"] == adm.io.files.file_sha256(path)
    assert weights.class_names == [str(i) for i in range(10)] and weights.diffusion is not None
    with pytest.raises(ValueError, match="holds a diffusion model, not a noisy classifier"):
        load_weights(path, kind="classifier")
    with pytest.raises(ValueError, match="describes itself: drop model='adm_u_tiny'"):
        load_weights(path, kind="diffusion", preset="adm_u_tiny")
    with pytest.raises(ValueError, match="pass it as ckpt=.* without a preset or flags"):
        load_weights(path, kind="diffusion", source="openai")


def test_openai_weights_by_preset_name_config_or_into_a_network(tmp_path):
    torch.manual_seed(0)
    reference = build_network("adm_cls_tiny")
    path = tmp_path / "openai_classifier.pt"
    torch.save(reference.state_dict(), path)
    by_name = load_weights(path, kind="classifier", preset="adm_cls_tiny")
    from adm.config import compose_preset

    preset = compose_preset("adm_cls_tiny")
    by_config = load_weights(path, kind="classifier", preset=preset.classifier)
    with torch.device("meta"):
        empty = build_network("adm_cls_tiny")
    into = load_weights(path, kind="classifier", network=empty)
    for weights in (by_name, by_config, into):
        assert weights.fingerprint["weights"] == "openai" and weights.diffusion is None
        for key, value in reference.state_dict().items():
            assert torch.equal(weights.network.state_dict()[key], value), key
    with pytest.raises(
        ValueError, match=r"add classifier=<preset>.*presets that fit these weights: adm_cls_tiny"
    ):
        load_weights(path, kind="classifier")
    with pytest.raises(ValueError, match="is not one of our training checkpoints.*openai_ckpt=PATH"):
        load_weights(path, kind="diffusion", source="adm")
    with pytest.raises(ValueError, match="mis-shaped"):
        load_weights(path, kind="classifier", preset="adm_cls_mnist")


# ------------------------------------------------------------------------------------ guidance registry
class _Net(torch.nn.Module):
    def __init__(self, num_classes=3, image_size=8, in_channels=1):
        super().__init__()
        self.num_classes, self.image_size, self.in_channels = num_classes, image_size, in_channels

    def forward(self, x, t, y=None):
        return x


def test_plan_guidance_checks_its_inputs():
    net, clf = _Net(), _Net()
    with pytest.raises(ValueError, match="unknown guidance kind 'auto'"):
        plan_guidance("auto", 1.0, network=net)
    for bad in (float("nan"), float("inf"), -1.0, "2"):
        with pytest.raises(ValueError, match="guidance.scale must be"):
            plan_guidance("classifier", bad, network=net, classifier=clf)
    with pytest.raises(ValueError, match="without a guidance kind"):
        plan_guidance(None, 1.0, network=net)
    with pytest.raises(ValueError, match="needs a noisy classifier"):
        plan_guidance("classifier", 1.0, network=net)
    with pytest.raises(ValueError, match="needs a model trained with a null label"):
        plan_guidance("cfg", 1.0, network=net)
    with pytest.raises(ValueError, match="it has 5 classes, the model 3"):
        plan_guidance("classifier", 1.0, network=net, classifier=_Net(num_classes=5))


def test_plan_guidance_builds_each_kind():
    net, clf = _Net(num_classes=4), _Net()
    plan = plan_guidance("classifier", 2.0, network=_Net(), classifier=clf)
    assert isinstance(plan.guidance, ClassifierGuidance) and plan.guidance.scale == 2.0
    assert plan.record == {"guidance": "classifier", "guidance_scale": 2.0}
    unguided = plan_guidance("classifier", 0.0, network=_Net())  # scale 0 needs nothing
    assert unguided.guidance is None and unguided.record == {"guidance": "classifier", "guidance_scale": 0.0}
    cfg = plan_guidance("cfg", 1.5, network=net, null_label=3, classifier=clf)  # the classifier is not used
    assert cfg.guidance is None and cfg.network.num_classes == 3 and cfg.network.guidance.scale == 1.5
    plain = plan_guidance(None, 0.0, network=net, null_label=3)  # the data's classes, conditional
    assert plain.network.num_classes == 3 and plain.network.guidance.scale == 0.0


def test_a_registered_guidance_kind_is_found_by_name(monkeypatch):
    seen = []

    def build(inputs):
        seen.append(inputs.scale)
        return inputs.data_network, None

    monkeypatch.setitem(GUIDANCE_KINDS, "custom", GuidanceKind("custom", False, build, "nothing"))
    plan = plan_guidance("custom", 3.0, network=_Net())
    assert seen == [3.0] and plan.record == {"guidance": "custom", "guidance_scale": 3.0}


def test_samplers_are_found_by_name(monkeypatch):
    assert sampler_name(functools.partial(ddim_sample, steps=3)) == "ddim"
    assert sampler_name(build_sampler("dpmpp_2m", steps=4)) == "dpmpp_2m"
    with pytest.raises(ValueError, match="not a registered sampler"):
        sampler_name(functools.partial(np.mean))
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        build_sampler("euler")

    def euler(*args, **kwargs):
        raise NotImplementedError

    monkeypatch.setitem(SAMPLERS, "euler", euler)
    assert sampler_name(build_sampler("euler", steps=2)) == "euler"
    assert describe_sampler(build_sampler("euler", steps=2)) == {"sampler": "euler", "steps": 2, "eta": None}


def test_the_sample_recipe_reads_each_file_once_and_draws_as_infer(
    tiny_checkpoint, run_sample, tmp_path, torch_loads
):
    """The recipe's images are ADM.infer's for the same seed, labels, sampler and guidance; every weights file
    is read once."""
    model = tiny_checkpoint("diffusion", seed=1)
    classifier = tiny_checkpoint("classifier", seed=2)
    torch_loads.clear()
    out = run_sample(
        [
            f"ckpt={model}",
            f"classifier_ckpt={classifier}",
            "guidance=classifier",
            "guidance.scale=3",
            "sampler=ddim",
            "sampler.steps=3",
            "num_samples=4",
            "batch_size=4",
            "labels=[1,2]",
            "seed=5",
        ],
        tmp_path / "run",
    )
    assert len(torch_loads) == 2
    with np.load(out["samples"]) as f:
        images, labels = f["arr_0"], f["arr_1"]
    pipe = ADM.from_checkpoint(model, classifier_ckpt=classifier)
    direct = pipe.infer(
        4,
        labels=[1, 2, 1, 2],
        guidance="classifier",
        scale=3.0,
        sampler="ddim",
        steps=3,
        seed=5,
        spacing="strided",
    )
    assert labels.tolist() == [1, 2, 1, 2]
    assert np.array_equal(images, direct["samples"].numpy())


def test_infer_takes_class_names_as_the_command_line_does(tiny_checkpoint):
    path = tiny_checkpoint("diffusion", seed=1, class_names=["zero", "one", "seven"])
    pipe = ADM.from_checkpoint(path)
    assert pipe.class_names == ["zero", "one", "seven"]
    by_name = pipe.infer(2, labels=["seven", "one"], sampler="ddim", steps=2, seed=3)
    by_index = pipe.infer(2, labels=[2, 1], sampler="ddim", steps=2, seed=3)
    assert by_name["labels"].tolist() == [2, 1]
    assert torch.equal(by_name["samples"], by_index["samples"])
    assert pipe.infer(2, labels="one", sampler="ddim", steps=2, seed=3)["labels"].tolist() == [1, 1]
    with pytest.raises(ValueError, match=r"labels=eight: no class of that name; the classes are"):
        pipe.infer(1, labels=["eight"], sampler="ddim", steps=2)
    unnamed = ADM.from_checkpoint(tiny_checkpoint("diffusion", seed=1))
    with pytest.raises(ValueError, match="records no class names"):
        unnamed.infer(1, labels="one", sampler="ddim", steps=2)
