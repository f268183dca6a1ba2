"""Network presets (conf/model, conf/classifier): format, explicit values, sizes of the released models."""

from __future__ import annotations

import inspect
import shutil

import pytest
import torch
from omegaconf import OmegaConf

from adm.nn import EncoderUNet, SuperResUNet, UNet, load_state_dict_checked, shape_map
from adm.presets import build_network, conf_dir, fitting_presets, list_presets, load_preset

RELEASED_MODELS = {  # preset: (parameters in millions from the released checkpoints, diffusion schedule)
    "adm_u_64": (295.9, "cosine"),
    "adm_u_128": (421.5, "linear"),
    "adm_u_256": (553.8, "linear"),
    "adm_u_256_uncond": (552.8, "linear"),
    "adm_u_512": (559.0, "linear"),
    "adm_u_lsun_256": (552.8, "linear"),
    "adm_sr_64_256": (311.8, "linear"),
    "adm_sr_128_512": (308.8, "linear"),
}
RELEASED_CLASSIFIERS = {"adm_cls_64": 65.4, "adm_cls_128": 42.6, "adm_cls_256": 54.1, "adm_cls_512": 54.4}
TINY = {"adm_u_tiny": "model", "adm_sr_tiny": "model", "adm_cls_tiny": "classifier"}


def _num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_every_preset_is_listed():
    assert set(list_presets("model")) >= set(RELEASED_MODELS) | {"adm_u_tiny", "adm_sr_tiny"}
    assert set(list_presets("classifier")) >= set(RELEASED_CLASSIFIERS) | {"adm_cls_tiny"}
    with pytest.raises(ValueError, match="unknown preset kind"):
        list_presets("sampler")
    with pytest.raises(ValueError, match="unknown preset 'adm_u_1024'.*adm_u_64"):
        load_preset("adm_u_1024")


@pytest.mark.parametrize("name", sorted(list_presets("model") + list_presets("classifier")))
def test_preset_file_format_and_explicit_values(name):
    kind = "classifier" if name.startswith("adm_cls") else "model"
    path = conf_dir() / kind / f"{name}.yaml"
    lines = path.read_text().splitlines()
    assert lines[0] == "# @package _global_"
    assert lines[1].startswith("# ") and len(lines[1]) > 20  # what it reproduces
    raw = OmegaConf.load(path)
    assert set(raw) == ({"defaults", "model"} if kind == "model" else {"classifier"})
    cfg = load_preset(name)
    if kind == "model":
        assert list(raw.defaults) == [{"override /diffusion": cfg["diffusion"]}]
        assert (conf_dir() / "diffusion" / f"{cfg['diffusion']}.yaml").is_file()
    target = {"adm.nn.UNet": UNet, "adm.nn.SuperResUNet": SuperResUNet, "adm.nn.EncoderUNet": EncoderUNet}
    cls = target[cfg["_target_"]]
    assert cls is (SuperResUNet if "_sr_" in name else EncoderUNet if kind == "classifier" else UNet)
    # every constructor argument is spelled out (no value silently taken from a code default)
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    assert set(cfg) - {"_target_", "diffusion"} == params


@pytest.mark.parametrize("name", sorted(RELEASED_MODELS))
def test_released_model_presets_have_released_sizes(name):
    millions, schedule = RELEASED_MODELS[name]
    with torch.device("meta"):
        net = build_network(name)
    assert round(_num_params(net) / 1e6, 1) == millions
    assert load_preset(name)["diffusion"] == schedule
    assert net.learn_sigma and net.out_channels == 6


@pytest.mark.parametrize("name", sorted(RELEASED_CLASSIFIERS))
def test_released_classifier_presets_have_released_sizes(name):
    with torch.device("meta"):
        net = build_network(name)
    assert round(_num_params(net) / 1e6, 1) == RELEASED_CLASSIFIERS[name]
    assert net.num_classes == 1000 and net.pool == "attention"


def test_released_presets_match_openai_factories_from_readme_flags():
    """Presets equal what OpenAI's factories build from the README flags (DESIGN.md table)."""
    from adm.compat.models import create_classifier, create_model, sr_create_model

    common = dict(
        learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True, use_fp16=True, dropout=0.0
    )
    builds = {
        "adm_u_128": lambda: create_model(
            128, 256, 2, attention_resolutions="32,16,8", class_cond=True, num_heads=4, **common
        ),
        "adm_u_256_uncond": lambda: create_model(
            256, 256, 2, attention_resolutions="32,16,8", num_head_channels=64, **common
        ),
        "adm_u_512": lambda: create_model(
            512, 256, 2, attention_resolutions="32,16,8", class_cond=True, num_head_channels=64, **common
        ),
        "adm_sr_64_256": lambda: sr_create_model(
            256, 64, 192, 2, True, True, False, "32,16,8", 4, -1, -1, True, 0.0, True, True
        ),
        "adm_sr_128_512": lambda: sr_create_model(
            512, 128, 192, 2, True, True, False, "32,16", 4, 64, -1, True, 0.0, True, True
        ),
        "adm_cls_256": lambda: create_classifier(256, True, 128, 2, "32,16,8", True, True, "attention"),
    }
    with torch.device("meta"):
        for name, build in builds.items():
            assert shape_map(build_network(name)) == shape_map(build()), name


def test_tiny_presets_work_at_28px_single_channel():
    for name, kind in TINY.items():
        cfg = load_preset(name)
        with torch.device("meta"):
            assert 1e5 < _num_params(build_network(name)) < 2e6
        cfg.update(image_size=28, in_channels=1)
        net = build_network(cfg).eval()
        x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
        if kind == "classifier":
            assert net(x, t).shape == (2, cfg["out_channels"])
        elif cfg["_target_"].endswith("SuperResUNet"):
            assert net(x, t, low_res=torch.randn(2, 1, 14, 14), y=torch.tensor([1, 2])).shape == (
                2,
                2,
                28,
                28,
            )
        else:
            assert net.learn_sigma and net.num_classes == 10
            assert net(x, t, torch.tensor([1, 2])).shape == (2, 2, 28, 28)


def test_fitting_presets_and_mismatch_error_names_the_fitting_preset():
    tiny = build_network("adm_u_tiny")
    assert fitting_presets(tiny.state_dict()) == ["adm_u_tiny"]
    assert fitting_presets({k: list(v) for k, v in shape_map(tiny).items()}) == ["adm_u_tiny"]
    assert fitting_presets({"foo": (1,)}) == []

    cfg = load_preset("adm_u_tiny")
    cfg.update(num_classes=None, model_channels=64)
    other = build_network(cfg)
    with pytest.raises(ValueError) as info:
        load_state_dict_checked(other, tiny.state_dict())
    msg = str(info.value)
    assert "unexpected keys (1)" in msg and "label_emb.weight" in msg
    assert (
        "mis-shaped keys" in msg and "time_embed.0.weight: checkpoint [128, 32] vs network [256, 64]" in msg
    )
    assert "... and" in msg  # long lists are cut after the first few keys
    assert "presets that fit this checkpoint: adm_u_tiny" in msg

    state = dict(tiny.state_dict())
    state.pop("out.2.bias")
    with pytest.raises(ValueError, match=r"missing keys \(1\):\n    out.2.bias"):
        load_state_dict_checked(build_network("adm_u_tiny"), state)
    loaded = load_state_dict_checked(build_network("adm_u_tiny"), tiny.state_dict())
    torch.testing.assert_close(loaded.out[2].weight, tiny.out[2].weight)


def test_conf_dir_override(tmp_path, monkeypatch):
    (tmp_path / "model").mkdir()
    shutil.copy(conf_dir() / "model" / "adm_u_tiny.yaml", tmp_path / "model" / "my_net.yaml")
    monkeypatch.setenv("ADM_CONF_DIR", str(tmp_path))
    assert list_presets("model") == ["my_net"] and list_presets("classifier") == []
    assert isinstance(build_network("my_net"), UNet)


def test_hydra_instantiates_presets():
    from hydra.utils import instantiate

    for kind, name in (("model", "adm_u_tiny"), ("model", "adm_sr_tiny"), ("classifier", "adm_cls_tiny")):
        cfg = OmegaConf.load(conf_dir() / kind / f"{name}.yaml")
        net = instantiate(cfg[kind])
        assert shape_map(net) == shape_map(build_network(name))
