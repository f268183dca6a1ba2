"""Network presets (conf/model, conf/classifier) composed by Hydra through adm.config: format, values from the
data they select, sizes of the released models, the presets that fit a checkpoint."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

import adm
from adm.config import (
    build_diffusion,
    build_network,
    compose_config,
    compose_preset,
    fitting_presets,
    list_presets,
    load_preset,
    preset_hint,
)
from adm.nn import EncoderUNet, SuperResUNet, UNet, load_state_dict_checked, shape_map

CONF = Path(importlib.import_module("adm.conf").__file__).resolve().parent  # the top-level conf/
RELEASED_MODELS = {  # preset: (parameters in millions from the released checkpoints, diffusion, data)
    "adm_u_64": (295.9, "cosine", "imagenet64"),
    "adm_u_128": (421.5, "linear", "imagenet128"),
    "adm_u_256": (553.8, "linear", "imagenet256"),
    "adm_u_256_uncond": (552.8, "linear", "imagenet256"),
    "adm_u_512": (559.0, "linear", "imagenet512"),
    "adm_u_lsun_256": (552.8, "linear", "lsun_bedroom256"),
    "adm_sr_64_256": (311.8, "linear", "imagenet256"),
    "adm_sr_128_512": (308.8, "linear", "imagenet512"),
}
RELEASED_CLASSIFIERS = {"adm_cls_64": 65.4, "adm_cls_128": 42.6, "adm_cls_256": 54.1, "adm_cls_512": 54.4}
TINY = {"adm_u_tiny": "model", "adm_sr_tiny": "model", "adm_cls_tiny": "classifier"}
FROM_DATA = {"image_size": "${data.image_size}", "in_channels": "${data.channels}"}


def _num_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _constructor_args(cls: type) -> set[str]:
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    if cls is SuperResUNet:  # its own low_res_size, then the UNet's arguments
        params = (params - {"unet_kwargs"}) | _constructor_args(UNet)
    return params


def test_every_preset_is_listed_and_unknown_names_fail():
    assert set(list_presets("model")) >= set(RELEASED_MODELS) | {"adm_u_tiny", "adm_sr_tiny"}
    assert set(list_presets("classifier")) >= set(RELEASED_CLASSIFIERS) | {"adm_cls_tiny"}
    with pytest.raises(ValueError, match="unknown preset kind"):
        list_presets("sampler")
    with pytest.raises(ValueError, match="unknown preset 'adm_u_1024'.*adm_u_64"):
        load_preset("adm_u_1024")
    with pytest.raises(ValueError, match="not a diffusion model preset"):
        build_diffusion("adm_cls_64")


@pytest.mark.parametrize("name", sorted(list_presets("model") + list_presets("classifier")))
def test_preset_file_format_and_values_from_the_data(name):
    kind = "classifier" if name.startswith("adm_cls") else "model"
    path = CONF / kind / f"{name}.yaml"
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines[0]) > 20  # what it reproduces
    raw = OmegaConf.load(path)
    assert "defaults" not in raw and raw._target_  # a plain network description (package: model / classifier)
    # what it was made for is its overlay: the data and, for diffusion models, the process
    overlay_path = CONF / "preset" / f"{name}.yaml"
    assert overlay_path.read_text().startswith("# @package _global_\n# ")
    overlay = OmegaConf.load(overlay_path)
    preset = compose_preset(name)
    expected = [{"/data": preset.data_name}]
    if kind == "model":
        expected.append({"/diffusion": preset.diffusion_name})
        assert preset.diffusion._target_  # resolved: reads the network's learn_sigma
    assert set(overlay) == {"defaults"} and OmegaConf.to_container(overlay.defaults) == expected
    # image size, channels and classes are the data's, by interpolation, never written twice
    net = OmegaConf.to_container(raw)
    assert {k: net[k] for k in FROM_DATA} == FROM_DATA
    classes = "out_channels" if kind == "classifier" else "num_classes"
    assert net[classes] == "${data.num_classes}" or (name == "adm_u_256_uncond" and net[classes] is None)
    resolved = load_preset(name)
    data = OmegaConf.load(CONF / "data" / f"{preset.data_name}.yaml")
    assert (resolved["image_size"], resolved["in_channels"]) == (data.image_size, data.channels)
    # every constructor argument is spelled out (no value silently taken from a code default)
    target = {"adm.nn.UNet": UNet, "adm.nn.SuperResUNet": SuperResUNet, "adm.nn.EncoderUNet": EncoderUNet}
    cls = target[resolved["_target_"]]
    assert cls is (SuperResUNet if "_sr_" in name else EncoderUNet if kind == "classifier" else UNet)
    assert set(resolved) - {"_target_", "diffusion"} == _constructor_args(cls)


def test_every_preset_has_one_overlay_and_no_overlay_is_left_over():
    overlays = {p.stem for p in (CONF / "preset").glob("*.yaml")}
    assert overlays == set(list_presets("model") + list_presets("classifier")) | {"none"}
    none = OmegaConf.load(CONF / "preset" / "none.yaml")  # for weights that describe themselves
    assert OmegaConf.to_container(none.defaults) == [{"/data": None}, {"/diffusion": None}]


@pytest.mark.parametrize("name", sorted(RELEASED_MODELS))
def test_released_model_presets_have_released_sizes(name):
    millions, schedule, data = RELEASED_MODELS[name]
    with torch.device("meta"):
        net = build_network(name)
    assert round(_num_params(net) / 1e6, 1) == millions
    preset = compose_preset(name)
    assert load_preset(name)["diffusion"] == preset.diffusion_name == schedule
    assert preset.data_name == data
    assert net.learn_sigma and net.out_channels == 6
    assert net.num_classes == (None if "uncond" in name or "lsun" in name else 1000)
    diffusion = build_diffusion(name)
    assert diffusion.num_timesteps == 1000 and diffusion.learn_sigma


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


def test_tiny_presets_take_mnist5k_and_other_sizes():
    for name, kind in TINY.items():
        cfg = load_preset(name)
        assert compose_preset(name).data_name == "mnist5k"
        assert (cfg["image_size"], cfg["in_channels"]) == (28, 1)
        with torch.device("meta"):
            assert 1e5 < _num_params(build_network(name)) < 2e6
        net = build_network(cfg).eval()  # load_preset's dict builds as is (its "diffusion" name is skipped)
        x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 500])
        if kind == "classifier":
            assert net(x, t).shape == (2, cfg["out_channels"]) == (2, 10)
        elif cfg["_target_"].endswith("SuperResUNet"):
            out = net(x, t, low_res=torch.randn(2, 1, 14, 14), y=torch.tensor([1, 2]))
            assert out.shape == (2, 2, 28, 28)
        else:
            assert net.learn_sigma and net.num_classes == 10
            assert net(x, t, torch.tensor([1, 2])).shape == (2, 2, 28, 28)
        cfg.update(image_size=16, in_channels=3)
        assert build_network(cfg).image_size == 16


def test_bad_network_configs_fail_clearly():
    with pytest.raises(ValueError, match="needs a '_target_'"):
        build_network({"image_size": 8})
    cfg = load_preset("adm_u_tiny")
    cfg["num_res_blocks"] = "many"
    with pytest.raises(ValueError, match="cannot build the network"):
        build_network(cfg)


def test_fitting_presets_and_the_hint_of_a_load_error():
    tiny = build_network("adm_u_tiny")
    assert fitting_presets(tiny.state_dict()) == ["adm_u_tiny"]
    assert fitting_presets({k: list(v) for k, v in shape_map(tiny).items()}) == ["adm_u_tiny"]
    assert fitting_presets({"foo": (1,)}) == []
    with torch.device("meta"):
        assert fitting_presets(build_network("adm_cls_64").state_dict()) == ["adm_cls_64"]

    cfg = load_preset("adm_u_tiny")
    cfg.update(num_classes=None, model_channels=64)
    other = build_network(cfg)
    with pytest.raises(ValueError) as info:
        load_state_dict_checked(other, tiny.state_dict(), hint=preset_hint)
    msg = str(info.value)
    assert "unexpected keys (1)" in msg and "label_emb.weight" in msg
    assert (
        "mis-shaped keys" in msg and "time_embed.0.weight: checkpoint [128, 32] vs network [256, 64]" in msg
    )
    assert "... and" in msg  # long lists are cut after the first few keys
    assert msg.endswith("presets that fit this checkpoint: adm_u_tiny (adm.config.build_network)")
    with pytest.raises(ValueError, match="no preset in conf/model or conf/classifier fits"):
        load_state_dict_checked(tiny, other.state_dict(), hint=preset_hint)
    with pytest.raises(ValueError) as info:  # the network layer itself knows no presets
        load_state_dict_checked(other, tiny.state_dict())
    assert "preset" not in str(info.value)

    state = dict(tiny.state_dict())
    state.pop("out.2.bias")
    with pytest.raises(ValueError, match=r"missing keys \(1\):\n    out.2.bias"):
        load_state_dict_checked(build_network("adm_u_tiny"), state)
    loaded = load_state_dict_checked(build_network("adm_u_tiny"), tiny.state_dict())
    torch.testing.assert_close(loaded.out[2].weight, tiny.out[2].weight)


def test_networks_do_not_depend_on_the_config_layer():
    imports = re.compile(r"^\s*(from|import)\s+(adm\.config|adm\.conf|hydra|omegaconf)\b", re.M)
    files = list((Path(adm.__file__).resolve().parent / "nn").glob("*.py"))
    assert len(files) > 3
    for path in files:
        assert not imports.search(path.read_text()), f"{path.name} imports the config layer"


def test_training_configs_build_the_preset_networks():
    """A script's composition gives the network adm.config builds, and a data=... override resizes it."""
    from hydra.utils import instantiate

    for script, key, name in (
        ("train", "model", "adm_u_tiny"),
        ("train_superres", "model", "adm_sr_tiny"),
        ("train_classifier", "classifier", "adm_cls_tiny"),
    ):
        cfg = compose_config(script, [f"{key}={name}", "paths.output_dir=unused"])
        assert shape_map(instantiate(cfg[key])) == shape_map(build_network(name))
    cfg = compose_config("train", ["model=adm_u_64", "paths.output_dir=unused"])
    assert (cfg.data.image_size, cfg.model.image_size, cfg.model.num_classes) == (64, 64, 1000)
    cfg = compose_config("train", ["model=adm_u_64", "data=mnist5k", "paths.output_dir=unused"])
    assert (cfg.model.image_size, cfg.model.in_channels, cfg.model.num_classes) == (28, 1, 10)
    assert OmegaConf.to_container(cfg.diffusion, resolve=True) == compose_preset("adm_u_64").diffusion


def test_presets_compose_inside_a_running_hydra_app(hydra_app):
    """adm.config works while another Hydra config is initialised (a running script) and leaves it as is."""
    before = hydra.compose("sample", overrides=["model=adm_u_64"])
    assert compose_config("presets", ["classifier=adm_cls_128"]).classifier.image_size == 128
    after = hydra.compose("sample", overrides=["model=adm_u_64"])
    assert before == after and after.model.image_size == 64 and after.data.image_size == 64
