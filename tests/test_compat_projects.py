# ruff: noqa: E501  (the scripts below keep the projects' own long call lines)
"""Call patterns of public projects built on OpenAI's ``guided_diffusion``, run against adm.

Each script below mimics what one project's top-level code imports from ``guided_diffusion`` and how it calls
it (argument names, model / diffusion construction, checkpoint loading). Every script is run twice: with
its imports renamed to ``adm.compat.guided_diffusion`` (the one-line switch) and unmodified through the
zero-edit runner ``adm.compat.run``. Results are compared with tensors produced by OpenAI's own code (the
golden "diffusion_guided" case: same weights, same inputs, same noises) or with closed forms.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap

import pytest
import torch

from adm.compat import run as compat_run

SINGLE_TOL = 1e-5
LOOP_TOL = 1e-4

# The golden case's network, as OpenAI README-style flags (cosine schedule; respacing added per script).
MODEL_FLAGS = (
    "--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,1 --learn_sigma True "
    "--class_cond True --attention_resolutions 16,8 --num_heads 4 --num_head_channels 32 "
    "--use_scale_shift_norm True --resblock_updown True --use_new_attention_order True --dropout 0.0"
)

# Shared by the scripts: read golden inputs, patch torch.randn_like with recorded noises (OpenAI's code drew
# them there), build the golden classifier as scripts/classifier_sample.py's cond_fn uses it.
PRELUDE = """
import json, sys
import torch
GOLDEN, OUT = sys.argv[1], sys.argv[2]
TENSORS = torch.load(GOLDEN + "/tensors.pt", weights_only=True)
CONFIG = json.load(open(GOLDEN + "/config.json"))
FLAGS = CONFIG["model_factory_kwargs"]

def replay_noise(noises):
    queue = list(noises)
    torch.randn_like = lambda x, **kw: queue.pop(0).clone()
"""

SCRIPTS: dict[str, str] = {}

# guided-diffusion / P2-weighting / ILVR `scripts/image_sample.py`: argparse from the defaults dicts,
# create_model_and_diffusion(**args_to_dict(...)), dist_util.load_state_dict, ddim_sample_loop.
SCRIPTS["p2_image_sample"] = """
import argparse
from guided_diffusion import dist_util, logger
from guided_diffusion.script_util import (
    NUM_CLASSES, add_dict_to_argparser, args_to_dict, create_model_and_diffusion, model_and_diffusion_defaults,
)
defaults = dict(clip_denoised=True, num_samples=3, batch_size=3, use_ddim=False, model_path="")
defaults.update(model_and_diffusion_defaults())
parser = argparse.ArgumentParser()
add_dict_to_argparser(parser, defaults)
args = parser.parse_args(sys.argv[3:])
dist_util.setup_dist()
logger.configure(dir=OUT + ".log", format_strs=["log", "csv"])
model, diffusion = create_model_and_diffusion(**args_to_dict(args, model_and_diffusion_defaults().keys()))
model.load_state_dict(dist_util.load_state_dict(args.model_path, map_location="cpu"))
model.to(dist_util.dev())
model.eval()
sample_fn = diffusion.p_sample_loop if not args.use_ddim else diffusion.ddim_sample_loop
p = "cosine_ddim10/ddim/"
sample = sample_fn(model, (args.batch_size, 3, args.image_size, args.image_size), noise=TENSORS[p + "noise_init"],
                   clip_denoised=args.clip_denoised, model_kwargs={"y": TENSORS["y"]})
logger.log("sampling complete")
torch.save({p + "uncond/final": sample}, OUT)
"""

# guided-diffusion `scripts/classifier_sample.py` (and the many guided forks): classifier cond_fn + DDIM.
SCRIPTS["classifier_sample"] = """
import torch.nn.functional as F
from guided_diffusion import dist_util
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.unet import EncoderUNetModel
cfg = model_and_diffusion_defaults()
cfg.update(FLAGS)
cfg.update(noise_schedule="cosine", timestep_respacing="ddim10")
model, diffusion = create_model_and_diffusion(**cfg)
model.load_state_dict(dist_util.load_state_dict(GOLDEN + "/state_dict.pt", map_location="cpu"))
model.eval()
classifier = EncoderUNetModel(**CONFIG["classifier_kwargs"])
classifier.load_state_dict(dist_util.load_state_dict(GOLDEN + "/classifier_state_dict.pt", map_location="cpu"))
classifier.eval()

def cond_fn(x, t, y=None):
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
        selected = log_probs[range(len(log_probs)), y.view(-1)]
        return torch.autograd.grad(selected.sum(), x_in)[0] * CONFIG["classifier_scale"]

def model_fn(x, t, y=None):
    return model(x, t, y)

p = "cosine_ddim10/ddim/"
sample = diffusion.ddim_sample_loop(model_fn, (3, 3, 16, 16), noise=TENSORS[p + "noise_init"], clip_denoised=True,
                                    model_kwargs={"y": TENSORS["y"]}, cond_fn=cond_fn, device=dist_util.dev())
torch.save({p + "cond/final": sample}, OUT)
"""

# DDRM / DDNM `runners/diffusion.py`: create_model(**config) + plain torch.load of the weights, the network
# called directly as model(x, t, y) (their own schedule and update rule around it).
SCRIPTS["ddrm_runner"] = """
from guided_diffusion.script_util import args_to_dict, classifier_defaults, create_classifier, create_model
model = create_model(**FLAGS)
model.load_state_dict(torch.load(GOLDEN + "/state_dict.pt", map_location="cpu", weights_only=True))
model.eval()
p = "cosine_full/pmv/"
with torch.no_grad():
    out = model(TENSORS[p + "x"][0], TENSORS[p + "model_timesteps"][0], TENSORS["y"])
torch.save({p + "model_output@0": out, "classifier_defaults_keys": torch.tensor(len(classifier_defaults()))}, OUT)
"""

# DiffPure `runners/diffpure_guided.py`: defaults dict updated from the config, diffuse with q_sample, then
# reverse with p_sample.
SCRIPTS["diffpure_guided"] = """
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
model_config = model_and_diffusion_defaults()
model_config.update(FLAGS)
model_config.update(noise_schedule="linear", timestep_respacing="25")
model, diffusion = create_model_and_diffusion(**model_config)
model.load_state_dict(torch.load(GOLDEN + "/state_dict.pt", map_location="cpu", weights_only=True))
model.requires_grad_(False).eval()
p = "linear_25/p_sample/"
replay_noise([TENSORS[p + "noise"]])
out = diffusion.p_sample(model, TENSORS[p + "x"], TENSORS[p + "t"], clip_denoised=True, model_kwargs={"y": TENSORS["y"]})
torch.save({p + "uncond/sample": out["sample"], p + "uncond/pred_xstart": out["pred_xstart"]}, OUT)
"""

# DiffPure (score SDE side) / SDEdit-style forward diffusion: q_sample and the posterior.
SCRIPTS["diffpure_forward"] = """
from guided_diffusion.script_util import create_gaussian_diffusion
diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="cosine", timestep_respacing="")
p = "cosine_full/q/"
x_t = diffusion.q_sample(TENSORS["x0"], TENSORS[p + "t"], noise=TENSORS[p + "noise"])
mean, var, log_var = diffusion.q_posterior_mean_variance(TENSORS["x0"], x_t, TENSORS[p + "t"])
torch.save({p + "x_t": x_t, p + "posterior_mean": mean, p + "posterior_log_variance_clipped": log_var}, OUT)
"""

# DiffPIR `utils/utils_model.py` + `main_ddpir_sisr.py`: NUM_CLASSES, defaults, the betas by name, the
# network's eps half of a learned-sigma output.
SCRIPTS["diffpir"] = """
import numpy as np
from guided_diffusion.gaussian_diffusion import get_named_beta_schedule
from guided_diffusion.script_util import (
    NUM_CLASSES, args_to_dict, create_model_and_diffusion, model_and_diffusion_defaults,
)
assert NUM_CLASSES == 1000
model_config = dict(model_and_diffusion_defaults(), **FLAGS)
model, diffusion = create_model_and_diffusion(**args_to_dict(type("A", (), model_config)(), model_config.keys()))
model.load_state_dict(torch.load(GOLDEN + "/state_dict.pt", map_location="cpu", weights_only=True))
model.eval()
betas = get_named_beta_schedule("cosine", 1000)
p = "cosine_full/pmv/"
with torch.no_grad():
    out = model(TENSORS[p + "x"][1], TENSORS[p + "model_timesteps"][1], y=TENSORS["y"])
torch.save({"cosine_full/betas": torch.from_numpy(np.asarray(betas)), p + "model_output@1:eps": out[:, :3]}, OUT)
"""

# ddpm-segmentation `src/feature_extractors.py`: forward hooks on the decoder blocks, q_sample then the
# network on the noisy image at diffusion._scale_timesteps(t).
SCRIPTS["ddpm_segmentation"] = """
from guided_diffusion.dist_util import dev, load_state_dict
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
args = dict(model_and_diffusion_defaults(), **FLAGS, noise_schedule="cosine")
model, diffusion = create_model_and_diffusion(**args)
model.load_state_dict(load_state_dict(GOLDEN + "/state_dict.pt", map_location="cpu"))
model.to(dev()).eval()
features = []
for block in model.output_blocks:
    block.register_forward_hook(lambda module, inp, out: features.append(out.detach()))
p = "cosine_full/train/"
t = TENSORS[p + "t"]
noisy_x = diffusion.q_sample(TENSORS["x0"], t, noise=TENSORS[p + "noise"])
with torch.no_grad():
    out = model(noisy_x, diffusion._scale_timesteps(t), y=TENSORS["y"])
assert len(features) == len(model.output_blocks)
torch.save({p + "model_output": out}, OUT)
"""

# blended-diffusion `optimization/image_editor.py` (and clip-guided scripts): model_config dict updated,
# p_mean_variance for the predicted clean image at each step.
SCRIPTS["blended_diffusion"] = """
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
model_config = model_and_diffusion_defaults()
model_config.update(FLAGS)
model_config.update({"timestep_respacing": "ddim10", "noise_schedule": "cosine", "use_fp16": False})
model, diffusion = create_model_and_diffusion(**model_config)
model.load_state_dict(torch.load(GOLDEN + "/state_dict.pt", map_location="cpu", weights_only=True))
model.requires_grad_(False).eval()
p = "cosine_ddim10/pmv/"
out = {}
for k in range(TENSORS[p + "x"].shape[0]):
    res = diffusion.p_mean_variance(model, TENSORS[p + "x"][k], TENSORS[p + "t"][k],
                                    clip_denoised=bool(TENSORS[p + "clip_denoised"][k]), model_kwargs={"y": TENSORS["y"]})
    for name in ("mean", "variance", "log_variance", "pred_xstart"):
        out.setdefault(p + name, []).append(res[name])
torch.save({k: torch.stack(v) for k, v in out.items()}, OUT)
"""

# clip-guided-diffusion: p_sample_loop_progressive with a cond_fn and progress, keep the last sample.
SCRIPTS["clip_guided"] = """
import torch.nn.functional as F
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.unet import EncoderUNetModel
model_config = model_and_diffusion_defaults()
model_config.update(FLAGS)
model_config.update({"timestep_respacing": "25"})
model, diffusion = create_model_and_diffusion(**model_config)
model.load_state_dict(torch.load(GOLDEN + "/state_dict.pt", map_location="cpu", weights_only=True))
model.requires_grad_(False).eval()
guide = EncoderUNetModel(**CONFIG["classifier_kwargs"])
guide.load_state_dict(torch.load(GOLDEN + "/classifier_state_dict.pt", map_location="cpu", weights_only=True))
guide.eval()

def cond_fn(x, t, y=None):
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        logp = F.log_softmax(guide(x, t), dim=-1)[range(x.shape[0]), y]
        return torch.autograd.grad(logp.sum(), x)[0] * CONFIG["classifier_scale"]

p = "linear_25/p_sample_loop/"
replay_noise(list(TENSORS[p + "step_noise"]))
last = None
for sample in diffusion.p_sample_loop_progressive(model, (3, 3, 16, 16), noise=TENSORS[p + "noise_init"],
        clip_denoised=True, model_kwargs={"y": TENSORS["y"]}, cond_fn=cond_fn, progress=False):
    last = sample
torch.save({p + "cond/final": last["sample"]}, OUT)
"""

# Universal-Guided-Diffusion `Guided/helpers.py`: one guided p_sample step with a classifier-style cond_fn.
SCRIPTS["universal_guided"] = """
import torch.nn.functional as F
from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.script_util import create_model, model_and_diffusion_defaults
from guided_diffusion.unet import EncoderUNetModel
model = create_model(**FLAGS)
model.load_state_dict(torch.load(GOLDEN + "/state_dict.pt", map_location="cpu", weights_only=True))
model.eval()
diffusion = SpacedDiffusion(use_timesteps=space_timesteps(1000, "25"), betas=gd.get_named_beta_schedule("linear", 1000),
                            model_mean_type=gd.ModelMeanType.EPSILON, model_var_type=gd.ModelVarType.LEARNED_RANGE,
                            loss_type=gd.LossType.MSE, rescale_timesteps=False)
clf = EncoderUNetModel(**CONFIG["classifier_kwargs"])
clf.load_state_dict(torch.load(GOLDEN + "/classifier_state_dict.pt", map_location="cpu", weights_only=True))
clf.eval()

def cond_fn(x, t, y=None):
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        logp = F.log_softmax(clf(x, t), dim=-1)[range(x.shape[0]), y]
        return torch.autograd.grad(logp.sum(), x)[0] * CONFIG["classifier_scale"]

p = "linear_25/p_sample/"
replay_noise([TENSORS[p + "noise"]])
out = diffusion.p_sample(model, TENSORS[p + "x"], TENSORS[p + "t"], clip_denoised=True, cond_fn=cond_fn,
                         model_kwargs={"y": TENSORS["y"]})
torch.save({p + "cond/sample": out["sample"]}, OUT)
"""

# DPM-Solver `example_v1/runners/diffusion.py`: create_model from a config namespace, the process's betas
# and alphas_cumprod handed to the solver, the network wrapped as a noise predictor.
SCRIPTS["dpm_solver"] = """
import numpy as np
from guided_diffusion.script_util import create_gaussian_diffusion, create_model
model = create_model(**FLAGS)
model.load_state_dict(torch.load(GOLDEN + "/state_dict.pt", map_location="cpu", weights_only=True))
model.eval()
diffusion = create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear", timestep_respacing="")
alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - diffusion.betas))
assert torch.allclose(alphas_cumprod, torch.from_numpy(diffusion.alphas_cumprod))
p = "linear_25/pmv/"
with torch.no_grad():
    eps = model(TENSORS[p + "x"][0], TENSORS[p + "model_timesteps"][0], TENSORS["y"])[:, :3]
torch.save({p + "model_output@0:eps": eps}, OUT)
"""

# P2-weighting / improved-diffusion `image_train.py` loss: training_losses with a named schedule sampler.
SCRIPTS["p2_training_losses"] = """
from guided_diffusion.resample import UniformSampler, create_named_schedule_sampler
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
args = dict(model_and_diffusion_defaults(), **FLAGS, noise_schedule="cosine", rescale_learned_sigmas=True)
model, diffusion = create_model_and_diffusion(**args)
model.load_state_dict(torch.load(GOLDEN + "/state_dict.pt", map_location="cpu", weights_only=True))
model.eval()
sampler = create_named_schedule_sampler("uniform", diffusion)
assert isinstance(sampler, UniformSampler)
t, weights = sampler.sample(3, "cpu")
assert torch.equal(weights, torch.ones(3))
p = "cosine_full_rescaled_mse/train/"
with torch.no_grad():
    losses = diffusion.training_losses(model, TENSORS["x0"], TENSORS[p + "t"], model_kwargs={"y": TENSORS["y"]},
                                       noise=TENSORS[p + "noise"])
torch.save({p + k: v for k, v in losses.items()}, OUT)
"""

# improved-diffusion / P2 `image_nll.py`: calc_bpd_loop over a respaced process.
SCRIPTS["image_nll"] = """
from guided_diffusion import dist_util
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
args = dict(model_and_diffusion_defaults(), **FLAGS, timestep_respacing="10,5,3")
model, diffusion = create_model_and_diffusion(**args)
model.load_state_dict(dist_util.load_state_dict(GOLDEN + "/state_dict.pt", map_location="cpu"))
model.eval()
p = "linear_10,5,3/bpd/"
replay_noise(list(TENSORS[p + "step_noise"]))
with torch.no_grad():
    metrics = diffusion.calc_bpd_loop(model, TENSORS["x0"], clip_denoised=True, model_kwargs={"y": TENSORS["y"]})
torch.save({p + "total_bpd": metrics["total_bpd"], p + "vb": metrics["vb"], p + "prior_bpd": metrics["prior_bpd"]}, OUT)
"""

LOOPS = {"p2_image_sample", "classifier_sample", "clip_guided", "image_nll"}
# Projects each script stands for (>= 10 distinct ones).
PROJECTS = {
    "p2_image_sample": "P2-weighting / ILVR scripts/image_sample.py",
    "classifier_sample": "guided-diffusion scripts/classifier_sample.py",
    "ddrm_runner": "DDRM / DDNM runners/diffusion.py",
    "diffpure_guided": "DiffPure runners/diffpure_guided.py",
    "diffpure_forward": "DiffPure / SDEdit forward diffusion",
    "diffpir": "DiffPIR utils/utils_model.py",
    "ddpm_segmentation": "ddpm-segmentation src/feature_extractors.py",
    "blended_diffusion": "blended-diffusion optimization/image_editor.py",
    "clip_guided": "clip-guided-diffusion",
    "universal_guided": "Universal-Guided-Diffusion Guided/helpers.py",
    "dpm_solver": "DPM-Solver example_v1/runners/diffusion.py",
    "p2_training_losses": "P2-weighting image_train.py (losses)",
    "image_nll": "improved-diffusion / P2 image_nll.py",
}

_ALIAS = re.compile(r"\bguided_diffusion\b")


def _extra_args(name: str) -> list[str]:
    if name != "p2_image_sample":
        return []
    flags = MODEL_FLAGS + " --noise_schedule cosine --timestep_respacing ddim10 --use_ddim True"
    return [*flags.split(), "--model_path", "GOLDEN/state_dict.pt", "--batch_size", "3"]


def _write(tmp_path, name: str, package_path: bool):
    text = PRELUDE + textwrap.dedent(SCRIPTS[name])
    if package_path:
        text = _ALIAS.sub("adm.compat.guided_diffusion", text)
    script = tmp_path / f"{name}.py"
    script.write_text(text)
    return script


@pytest.fixture
def isolated_process(monkeypatch):
    """Undo what a script run in this process changes: argv, sys.path, the alias finder, torch.randn_like."""
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setattr(torch, "randn_like", torch.randn_like)
    yield
    for name in [m for m in sys.modules if m == "guided_diffusion" or m.startswith("guided_diffusion.")]:
        del sys.modules[name]


def _check(out_path, golden, name):
    from conftest import rel_err

    result = torch.load(out_path, weights_only=True)
    tol = LOOP_TOL if name in LOOPS else SINGLE_TOL
    compared = 0
    for key, value in result.items():
        # "KEY@k" is call k of a golden batch of calls; ":eps" keeps the noise half of a learned-sigma output.
        base, _, index = key.partition("@")
        if base not in golden:
            continue
        expected = golden[base]
        if index:
            k, _, part = index.partition(":")
            expected = expected[int(k)][:, :3] if part == "eps" else expected[int(k)]
        assert rel_err(value, expected) <= (1e-12 if key.endswith("betas") else tol), key
        compared += 1
    assert compared, f"{name} produced nothing to compare: {sorted(result)}"


@pytest.fixture(scope="module")
def golden(golden_dir):
    return torch.load(golden_dir / "diffusion_guided" / "tensors.pt", weights_only=True)


@pytest.mark.parametrize("how", ["package", "runner"])
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_project_call_pattern(name, how, tmp_path, golden_dir, golden, isolated_process):
    case = golden_dir / "diffusion_guided"
    script = _write(tmp_path, name, package_path=how == "package")
    out = tmp_path / "out.pt"
    args = [str(case), str(out), *(a.replace("GOLDEN", str(case)) for a in _extra_args(name))]
    if how == "package":
        sys.argv = [str(script), *args]
        code = compile(script.read_text(), str(script), "exec")
        exec(code, {"__name__": "__main__", "__file__": str(script)})
        assert "guided_diffusion" not in sys.modules
    else:
        assert compat_run.main([str(script), *args]) == 0
        assert sys.modules["guided_diffusion"].__name__ == "adm.compat.guided_diffusion"
    _check(out, golden, name)


def test_at_least_ten_projects():
    assert len(set(PROJECTS.values())) >= 10 and set(PROJECTS) == set(SCRIPTS)


def test_runner_in_a_fresh_process(tmp_path, golden_dir, golden):
    """The documented command line, unmodified script, separate interpreter."""
    import subprocess

    case = golden_dir / "diffusion_guided"
    script = _write(tmp_path, "ddrm_runner", package_path=False)
    out = tmp_path / "out.pt"
    cmd = [sys.executable, "-m", "adm.compat.run", str(script), str(case), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**__import__("os").environ})
    assert proc.returncode == 0, proc.stderr
    _check(out, golden, "ddrm_runner")
    # Without the runner the same script cannot import guided_diffusion at all.
    plain = subprocess.run([sys.executable, str(script), str(case), str(out)], capture_output=True, text=True)
    assert plain.returncode != 0 and "No module named 'guided_diffusion'" in plain.stderr


def test_runner_leaves_a_vendored_copy_alone(tmp_path, isolated_process, capsys):
    (tmp_path / "guided_diffusion").mkdir()
    (tmp_path / "guided_diffusion" / "__init__.py").write_text("WHO = 'vendored'\n")
    script = tmp_path / "main.py"
    script.write_text(
        "import json, sys\nimport guided_diffusion\n"
        "json.dump(getattr(guided_diffusion, 'WHO', guided_diffusion.__name__), open(sys.argv[1], 'w'))\n"
    )
    out = tmp_path / "who.json"
    assert compat_run.main([str(script), str(out)]) == 3
    err = capsys.readouterr().err
    assert str(tmp_path / "guided_diffusion") in err and "--force" in err
    assert not out.exists()
    assert compat_run.main(["--force", str(script), str(out)]) == 0
    assert json.loads(out.read_text()) == "adm.compat.guided_diffusion"


def test_runner_usage_errors(capsys, tmp_path):
    assert compat_run.main([]) == 2
    assert compat_run.main([str(tmp_path / "missing.py")]) == 2
    assert "no such script" in capsys.readouterr().err
