"""The networks against tensors produced by OpenAI's guided-diffusion (see ../shared/golden/README.md).

Every forward case is rebuilt from its config.json through the drop-in ``adm.compat.guided_diffusion`` (the
factory OpenAI called, same kwargs) and through ``adm.compat.models`` (the resolved constructor call), loaded
with the stored state dict unchanged (strict) and compared with relative error ||a - b|| / ||b|| <= 1e-5.
The same weights also go through our own constructor (pixel attention resolutions).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import adm.compat.guided_diffusion as guided_diffusion
import adm.compat.models as compat
from adm.config import build_network
from adm.nn import EncoderUNet, SuperResUNet, UNet, load_state_dict_checked, shape_map, timestep_embedding

FORWARD_CASES = [
    "unet_cond_legacyattn",
    "unet_cond_newattn",
    "unet_uncond_plain",
    "superres_cond",
    "classifier_attnpool",
]
TOL = 1e-5


def _load_case(golden_dir: Path, case: str) -> tuple[dict, dict, dict]:
    folder = golden_dir / case
    config = json.loads((folder / "config.json").read_text())
    tensors = torch.load(folder / "tensors.pt", weights_only=True)
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    return config, tensors, state


def _from_factory(config: dict) -> torch.nn.Module:
    factory = getattr(guided_diffusion, config["factory"])
    return factory(**config["factory_kwargs"])


def _from_constructor(config: dict) -> torch.nn.Module:
    ctor = config["constructor"]
    kwargs = {k: v for k, v in ctor["kwargs"].items() if k != "args"}
    return getattr(compat, ctor["class"])(**kwargs)


def _native(config: dict) -> torch.nn.Module:
    """Native constructor from the OpenAI call (rates -> pixel resolutions, out_channels -> learn_sigma)."""
    ctor = config["constructor"]
    kw = {k: v for k, v in ctor["kwargs"].items() if k != "args"}
    assert kw.pop("dims", 2) == 2 and kw.pop("conv_resample", True) is True
    kw.pop("use_fp16")
    kw["attention_resolutions"] = [kw["image_size"] // r for r in kw["attention_resolutions"]]
    if ctor["class"] == "EncoderUNetModel":
        kw.pop("num_heads_upsample")
        return EncoderUNet(**kw)
    kw["learn_sigma"] = kw.pop("out_channels") == 2 * kw["in_channels"]
    cls = SuperResUNet if ctor["class"] == "SuperResModel" else UNet
    return cls(**kw)


def _record(model: torch.nn.Module) -> tuple[dict, list]:
    """Hooks that capture the intermediate tensors named by the golden 'debug/*' keys."""
    seen: dict[str, torch.Tensor] = {}

    def out_hook(name):
        return lambda mod, args, out: seen.__setitem__(name, out.detach())

    def in_hook(name):
        return lambda mod, args: seen.__setitem__(name, args[0].detach())

    handles = [
        model.time_embed.register_forward_hook(out_hook("debug/time_embed_out")),
        model.middle_block.register_forward_hook(out_hook("debug/middle_block_out")),
        model.input_blocks[0].register_forward_pre_hook(in_hook("debug/input_concat")),
    ]
    if isinstance(model, EncoderUNet):
        handles.append(model.out.register_forward_pre_hook(in_hook("debug/pool_input")))
    else:
        handles.append(model.input_blocks[1].register_forward_hook(out_hook("debug/input_block_1_out")))
        if model.num_classes is not None:
            handles.append(model.label_emb.register_forward_hook(out_hook("debug/label_emb_out")))
    return seen, handles


def _run(model: torch.nn.Module, tensors: dict, prefix: str, scale: float | None) -> dict[str, torch.Tensor]:
    """Forward (and, for classifiers, the guidance gradient) on the inputs stored under ``prefix``."""

    def get(key: str) -> torch.Tensor | None:
        return tensors.get(prefix + key, tensors.get(key))

    x, t, y = get("x"), get("timesteps"), get("y")
    out: dict[str, torch.Tensor] = {}
    if isinstance(model, EncoderUNet):
        seen, handles = _record(model)
        with torch.no_grad():
            logits = model(x, t)
        for h in handles:
            h.remove()
        out.update(seen)
        out["logits"] = logits
        # cond_fn of OpenAI's classifier_sample.py: scale * d/dx sum_i log_softmax(classifier(x, t))[i, y_i]
        with torch.enable_grad():
            x_in = x.detach().requires_grad_()
            log_probs = torch.log_softmax(model(x_in, t), dim=-1)
            selected = log_probs[torch.arange(len(y)), y]
            out["grad"] = torch.autograd.grad(selected.sum(), x_in)[0] * scale
        out["selected_log_probs"] = selected.detach()
    else:
        kwargs = {}
        if model.num_classes is not None:
            kwargs["y"] = y
        if isinstance(model, SuperResUNet):
            kwargs["low_res"] = get("low_res")
        seen, handles = _record(model)
        with torch.no_grad():
            out["output"] = model(x, t, **kwargs)
        for h in handles:
            h.remove()
        out.update(seen)
        out["debug/t_emb_sin"] = timestep_embedding(t, model.model_channels)
        if not isinstance(model, SuperResUNet):
            out.pop("debug/input_concat")
    return {prefix + k: v for k, v in out.items()}


def _compare(case: str, computed: dict, tensors: dict, rel_error, label: str) -> dict[str, float]:
    errors = {}
    for key, ref in tensors.items():
        if key not in computed:
            continue
        got = computed[key]
        assert got.shape == ref.shape, f"{case}/{key}: shape {tuple(got.shape)} vs golden {tuple(ref.shape)}"
        errors[key] = rel_error(got, ref)
    bad = {k: e for k, e in errors.items() if not e <= TOL}
    assert not bad, f"{case} ({label}): relative errors above {TOL}: {bad}"
    return errors


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_forward_case_through_openai_factory(golden_dir, rel_error, case, record_property):
    config, tensors, state = _load_case(golden_dir, case)
    model = _from_factory(config)
    assert sum(p.numel() for p in model.parameters()) == config["num_params"]
    load_state_dict_checked(model, state)  # strict, no key conversion
    model.eval()
    scale = config.get("classifier_scale")
    computed = _run(model, tensors, "", scale)
    alt_prefixes = sorted(k[: -len("x")] for k in tensors if k.startswith("alt") and k.endswith("/x"))
    for prefix in alt_prefixes:  # second call at another (possibly non-square) resolution, same weights
        computed.update(_run(model, tensors, prefix, scale))
    main_keys = ["logits", "grad"] if "logits" in tensors else ["output"]
    assert all(k in computed for k in main_keys)
    assert all(k in computed for k in tensors if k.startswith("alt") and k.rsplit("/", 1)[1] in main_keys)
    errors = _compare(case, computed, tensors, rel_error, "factory")
    for key in sorted(errors):
        record_property(key, errors[key])
    print(f"\n{case}: " + ", ".join(f"{k} {e:.2e}" for k, e in sorted(errors.items())))


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_forward_case_through_constructor_and_native_api(golden_dir, rel_error, case):
    config, tensors, state = _load_case(golden_dir, case)
    scale = config.get("classifier_scale")
    for label, model in (("constructor", _from_constructor(config)), ("native", _native(config))):
        assert shape_map(model) == shape_map(state), label
        load_state_dict_checked(model, state).eval()
        computed = _run(model, tensors, "", scale)
        _compare(case, computed, tensors, rel_error, label)


@pytest.mark.parametrize("name,preset", [("64x64_diffusion", "adm_u_64"), ("64x64_classifier", "adm_cls_64")])
def test_released_shape_maps_equal_presets(golden_dir, name, preset):
    released = json.loads((golden_dir / "released_shapes" / f"{name}.json").read_text())
    expected = {k: tuple(v) for k, v in released["shapes"].items()}
    with torch.device("meta"):
        ours = shape_map(build_network(preset))
        kwargs = released["factory_kwargs"]
        if released["factory"] == "create_classifier":
            via_factory = shape_map(compat.create_classifier(**kwargs))
        else:
            names = compat.create_model.__code__.co_varnames[: compat.create_model.__code__.co_argcount]
            via_factory = shape_map(compat.create_model(**{k: v for k, v in kwargs.items() if k in names}))
    assert list(ours) == list(expected)  # same names in the same order
    assert ours == expected
    assert via_factory == expected
    assert sum(int(torch.Size(s).numel()) for s in ours.values()) == released["num_params"]
