"""OpenAI-compatible factories, default dictionaries, flag strings and checkpoint loading."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from adm.compat.flags import (
    add_dict_to_argparser,
    args_to_dict,
    load_openai_checkpoint,
    parse_flags,
    str2bool,
)
from adm.compat.models import (
    EncoderUNetModel,
    SuperResModel,
    UNetModel,
    classifier_defaults,
    create_classifier,
    create_model,
    model_and_diffusion_defaults,
    sr_create_model,
    sr_model_and_diffusion_defaults,
)
from adm.nn import UNet, shape_map

README_64 = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
    "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
    "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True"
)


def test_parse_readme_flags_with_openai_types(golden_dir):
    released = json.loads((golden_dir / "released_shapes" / "64x64_diffusion.json").read_text())
    parsed = parse_flags(released["readme_flags"])
    assert parsed == parse_flags(README_64)
    assert parsed["class_cond"] is True and parsed["use_fp16"] is True
    assert parsed["attention_resolutions"] == "32,16,8" and parsed["num_channels"] == 192
    assert isinstance(parsed["dropout"], float) and parsed["noise_schedule"] == "cosine"
    # defaults + parsed flags == exactly the kwargs OpenAI's script passed
    full = model_and_diffusion_defaults()
    full.update(parsed)
    assert full == released["factory_kwargs"]

    sample = parse_flags(["--batch_size 4 --num_samples 100", "--timestep_respacing=250 --use_ddim False"])
    assert sample == {"batch_size": 4, "num_samples": 100, "timestep_respacing": "250", "use_ddim": False}
    assert parse_flags("--classifier_scale 1.0 --classifier_depth 4") == {
        "classifier_scale": 1.0,
        "classifier_depth": 4,
    }


def test_flag_errors():
    with pytest.raises(ValueError, match="unknown flag --num_chanels"):
        parse_flags("--num_chanels 192")
    with pytest.raises(ValueError, match="--num_channels: cannot read 'wide' as int"):
        parse_flags("--num_channels wide")
    with pytest.raises(ValueError, match="--class_cond: cannot read 'maybe' as bool"):
        parse_flags("--class_cond maybe")
    with pytest.raises(ValueError, match="has no value"):
        parse_flags("--class_cond --image_size 64")


def test_argparse_helpers_match_openai_behaviour():
    parser = argparse.ArgumentParser()
    add_dict_to_argparser(parser, dict(model_and_diffusion_defaults(), model_path="", extra=None))
    args = parser.parse_args(["--class_cond", "True", "--num_channels", "64", "--learn_sigma", "f"])
    assert args.class_cond is True and args.learn_sigma is False and args.num_channels == 64
    assert args.extra is None and args.use_fp16 is False
    keys = model_and_diffusion_defaults().keys()
    picked = args_to_dict(args, keys)
    assert list(picked) == list(keys) and picked["num_channels"] == 64
    assert str2bool("YES") and not str2bool("0")


def test_default_dictionaries():
    defaults = model_and_diffusion_defaults()
    assert defaults["num_channels"] == 128 and defaults["num_heads"] == 4 and defaults["channel_mult"] == ""
    assert defaults["attention_resolutions"] == "16,8" and defaults["use_scale_shift_norm"] is True
    assert defaults["rescale_learned_sigmas"] is False and defaults["noise_schedule"] == "linear"
    assert (
        classifier_defaults()["classifier_width"] == 128
        and classifier_defaults()["classifier_pool"] == "attention"
    )
    sr = sr_model_and_diffusion_defaults()
    assert sr["large_size"] == 256 and sr["small_size"] == 64
    assert "image_size" not in sr and "channel_mult" not in sr and "use_new_attention_order" not in sr


def test_factories_validate_sizes_and_types():
    with pytest.raises(ValueError, match="no default channel_mult"):
        create_model(image_size=32, num_channels=32, num_res_blocks=1)
    with pytest.raises(ValueError, match="unsupported large_size"):
        sr_create_model(128, 32, 32, 1, True, True, False, "16", 1, -1, -1, True, 0.0, True, False)
    with torch.device("meta"):
        assert isinstance(create_model(64, 32, 1), UNetModel)
        clf = create_classifier(**classifier_defaults())
        assert isinstance(clf, EncoderUNetModel) and clf.num_classes == 1000
        sr = sr_create_model(64, 16, 32, 1, True, False, False, "16", 1, -1, -1, True, 0.0, True, False)
        assert isinstance(sr, SuperResModel) and sr.out_channels == 6
    net = create_model(64, 32, 1, channel_mult="1,2", attention_resolutions="32", class_cond=True)
    out = net(torch.randn(1, 3, 16, 16), timesteps=torch.tensor([1]), y=torch.tensor([3]))  # OpenAI's names
    assert out.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="dims=2"):
        UNetModel(16, 3, 32, 3, 1, [2], dims=3)


def test_fp16_conversion_runs_the_trunk_in_half():
    torch.manual_seed(0)
    net = create_model(64, 32, 1, channel_mult="1,2", attention_resolutions="32", use_fp16=True).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([10])
    with torch.no_grad():
        ref = net(x, t)
        net.convert_to_fp16()
        assert (
            net.dtype == torch.float16 and net.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
        )
        assert net.time_embed[0].weight.dtype == torch.float32 and net.out[2].weight.dtype == torch.float32
        half = net(x, t)
    assert half.dtype == torch.float32
    assert (half - ref).norm() / ref.norm() < 1e-2


def test_load_openai_checkpoint_with_readme_style_flags(golden_dir, rel_error, tmp_path):
    case = golden_dir / "unet_cond_newattn"
    config = json.loads((case / "config.json").read_text())
    tensors = torch.load(case / "tensors.pt", weights_only=True)
    path = tmp_path / "model.pt"
    path.write_bytes((case / "state_dict.pt").read_bytes())
    flags = " ".join(f"--{k} {v}" for k, v in config["factory_kwargs"].items())
    net = load_openai_checkpoint(path, flags)
    assert isinstance(net, UNetModel) and not net.training
    with torch.no_grad():
        out = net(tensors["x"], tensors["timesteps"], tensors["y"])
    assert rel_error(out, tensors["output"]) <= 1e-5

    kwargs = dict(config["factory_kwargs"])
    net2 = load_openai_checkpoint(
        path, "--num_channels 32", **{k: v for k, v in kwargs.items() if k != "num_channels"}
    )
    assert shape_map(net2) == shape_map(net)

    with pytest.raises(ValueError, match="mis-shaped keys") as info:  # wrong flags: clear listing
        load_openai_checkpoint(path, flags, class_cond=False, channel_mult="1,2,2")
    msg = str(info.value)
    assert "missing keys (2):\n    input_blocks.3.0.skip_connection.weight" in msg
    assert "unexpected keys (3):\n    label_emb.weight" in msg
    assert "input_blocks.3.0.in_layers.2.weight: checkpoint [32, 32, 3, 3] vs network [64, 32, 3, 3]" in msg
    assert "mis-shaped keys (81)" in msg and "... and 71 more" in msg


def test_load_openai_checkpoint_infers_kind_and_uses_fitting_preset(golden_dir, tmp_path):
    clf_path = tmp_path / "clf.pt"
    clf_path.write_bytes((golden_dir / "classifier_attnpool" / "state_dict.pt").read_bytes())
    clf = load_openai_checkpoint(
        clf_path, "--classifier_width 32 --classifier_depth 1 --classifier_attention_resolutions 8"
    )
    assert isinstance(clf, EncoderUNetModel)

    from adm.config import build_network

    tiny = build_network("adm_u_tiny")
    path = tmp_path / "tiny.pt"
    torch.save(tiny.state_dict(), path)
    loaded = load_openai_checkpoint(path)  # no flags: the preset whose shapes fit is built
    assert isinstance(loaded, UNet) and loaded.num_classes == 10
    torch.testing.assert_close(loaded.state_dict(), tiny.state_dict())
