"""The diffusion facade against tensors produced by OpenAI's guided-diffusion (golden "diffusion" cases).

Every case is run through ``adm.compat.guided_diffusion`` exactly as the golden README says the reference was
called: the real networks built by the compat factories with the stored weights, ``torch.randn_like`` replaced
by the stored noises (the number of calls is checked), timesteps seen by the UNet and the classifier recorded.
Tolerances (relative L2): float64 schedules 1e-12, single steps 1e-5, loops 1e-4, integers exact.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

import adm.compat.guided_diffusion as gd
from adm.diffusion import GaussianDiffusion, Spacing

SINGLE_TOL = 1e-5
LOOP_TOL = 1e-4
SCHEDULE_TOL = 1e-12

# Keys that are inputs of a call (not compared) and the outputs every group compares.
INPUT_SUFFIXES = ("/t", "/noise", "/x", "/x_t", "/clip_denoised", "/noise_init", "/step_noise")


def _cases(golden_dir: Path, kind: str) -> list[Path]:
    cases = [p.parent for p in sorted(golden_dir.glob("*/config.json"))]
    return [c for c in cases if json.loads((c / "config.json").read_text()).get("kind") == kind]


class Case:
    """One golden diffusion case: tensors, networks, the facade diffusions and a comparison log."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.config = json.loads((folder / "config.json").read_text())
        self.tensors = torch.load(folder / "tensors.pt", weights_only=True)
        self.model = self._network("model_factory", "model_factory_kwargs", "state_dict.pt")
        self.classifier = None
        if (folder / "classifier_state_dict.pt").is_file():
            self.classifier = self._network(
                "classifier_factory", "classifier_kwargs", "classifier_state_dict.pt"
            )
        self.class_cond = getattr(self.model, "num_classes", None) is not None
        self.model_timesteps: list[torch.Tensor] = []
        self.classifier_timesteps: list[torch.Tensor] = []
        self.errors: dict[str, float] = {}

    def _network(self, factory_key: str, kwargs_key: str, weights: str) -> torch.nn.Module:
        factory = getattr(gd, self.config[factory_key])
        net = factory(**self.config[kwargs_key])
        net.load_state_dict(torch.load(self.folder / weights, weights_only=True), strict=True)
        return net.eval()

    def subs(self) -> dict[str, dict]:
        return self.config["sub_diffusions"]

    def diffusion(self, sub: str):
        return gd.create_gaussian_diffusion(**self.subs()[sub]["create_gaussian_diffusion_kwargs"])

    def has(self, key: str) -> bool:
        return key in self.tensors

    # The UNet sees y only if it is class-conditional; the classifier always gets y (classifier_sample.py).
    def model_fn(self, x, t, y=None):
        self.model_timesteps.append(t.clone())
        return self.model(x, t, y=y) if self.class_cond else self.model(x, t)

    def cond_fn(self, x, t, y=None):
        self.classifier_timesteps.append(t.clone())
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = torch.log_softmax(self.classifier(x_in, t), dim=-1)
            selected = log_probs[torch.arange(y.shape[0]), y]
            return torch.autograd.grad(selected.sum(), x_in)[0] * self.config["classifier_scale"]

    def reset(self) -> None:
        self.model_timesteps.clear()
        self.classifier_timesteps.clear()

    def check(self, key: str, value: torch.Tensor, tol: float, rel_error) -> None:
        expected = self.tensors[key]
        assert tuple(value.shape) == tuple(expected.shape), (
            f"{key}: shape {tuple(value.shape)} != {tuple(expected.shape)}"
        )
        if expected.dtype in (torch.int64, torch.int32, torch.bool) or key.endswith("_timesteps"):
            assert torch.equal(value.to(expected.dtype), expected), f"{key}: not exactly equal"
            self.errors[key] = 0.0
            return
        err = rel_error(value, expected)
        self.errors[key] = err
        assert err <= tol, f"{key}: relative error {err:.3e} > {tol:.0e}"

    def check_timesteps(self, prefix: str, rel_error, stacked: bool) -> None:
        for name, seen in (
            ("model_timesteps", self.model_timesteps),
            ("classifier_timesteps", self.classifier_timesteps),
        ):
            key = f"{prefix}/{name}"
            if self.has(key):
                assert seen, f"{key}: the network was never called"
                self.check(key, torch.stack(seen) if stacked else seen[0], 0.0, rel_error)


@contextlib.contextmanager
def replay_randn_like(noises):
    """Make torch.randn_like return ``noises`` in order; check shapes and the number of calls."""
    queue = list(noises)
    calls = [0]
    original = torch.randn_like

    def fake(x, *args, **kwargs):
        assert calls[0] < len(queue), "torch.randn_like called more often than the reference did"
        value = queue[calls[0]]
        assert tuple(value.shape) == tuple(x.shape), f"noise shape {tuple(value.shape)} != {tuple(x.shape)}"
        calls[0] += 1
        return value.clone()

    torch.randn_like = fake
    try:
        yield
    finally:
        torch.randn_like = original
    assert calls[0] == len(queue), f"torch.randn_like called {calls[0]} times, the reference {len(queue)}"


@pytest.fixture(autouse=True)
def threads(request, golden_dir):
    """Single steps run with the CPU thread count the reference data was generated with; loops with one.

    Some single-step keys are ill-conditioned (pred_xstart at the last step of a linear schedule multiplies
    the UNet's float32 rounding by ~150): the reference's reduction order keeps them well inside 1e-5. Loops
    (tolerance 1e-4) use one thread, which is much faster for these tiny networks on a busy machine.
    """
    before = torch.get_num_threads()
    wanted = 1
    if "loop" not in request.node.name:
        configs = [json.loads((c / "config.json").read_text()) for c in _cases(golden_dir, "diffusion")]
        wanted = int(configs[0].get("num_threads", before)) if configs else before
    torch.set_num_threads(wanted)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cases(golden_dir) -> list[Case]:
    found = _cases(golden_dir, "diffusion")
    assert found, f"no golden case of kind 'diffusion' under {golden_dir}"
    return [Case(folder) for folder in found]


def _kwargs(case: Case) -> dict:
    return {"y": case.tensors["y"]}


# ------------------------------------------------------------ schedules
def test_schedules(golden_dir, rel_error):
    folders = _cases(golden_dir, "diffusion_schedules")
    assert folders, "no golden case of kind 'diffusion_schedules'"
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        tensors = torch.load(folder / "tensors.pt", weights_only=True)
        for sub, spec in config["sub_diffusions"].items():
            kwargs = spec["create_gaussian_diffusion_kwargs"]
            diffusion = gd.create_gaussian_diffusion(**kwargs)
            assert torch.equal(torch.tensor(diffusion.timestep_map), tensors[f"{sub}/timestep_map"]), sub
            assert diffusion.num_timesteps == spec["resolved"]["num_timesteps"]
            base = torch.as_tensor(gd.get_named_beta_schedule(kwargs["noise_schedule"], kwargs["steps"]))
            assert rel_error(base, tensors[f"{sub}/base_betas"]) <= SCHEDULE_TOL, sub
            for name in (
                "betas",
                "alphas_cumprod",
                "alphas_cumprod_prev",
                "posterior_variance",
                "posterior_log_variance_clipped",
                "posterior_mean_coef1",
                "posterior_mean_coef2",
            ):
                ours = torch.as_tensor(getattr(diffusion, name))
                assert ours.dtype == torch.float64
                err = rel_error(ours, tensors[f"{sub}/{name}"])
                assert err <= SCHEDULE_TOL, f"{sub}/{name}: {err:.2e}"


def test_own_vocabulary_and_spacing_reproduce_golden_schedules(golden_dir, rel_error):
    """Our API underneath the facade: OpenAI's flags -> our config (conf/diffusion vocabulary) -> the process,
    respaced with a typed Spacing, gives the reference's timesteps and tables."""
    for folder in _cases(golden_dir, "diffusion_schedules"):
        config = json.loads((folder / "config.json").read_text())
        tensors = torch.load(folder / "tensors.pt", weights_only=True)
        for sub, spec in config["sub_diffusions"].items():
            kwargs = spec["create_gaussian_diffusion_kwargs"]
            ours = gd.diffusion_config(
                {("diffusion_steps" if k == "steps" else k): v for k, v in kwargs.items()}
            )
            process = GaussianDiffusion.from_schedule(**{k: v for k, v in ours.items() if k != "_target_"})
            spacing = gd.parse_timestep_respacing(kwargs.get("timestep_respacing"))
            if spacing is not None:
                assert isinstance(spacing, Spacing)
            spaced = process.respace(spacing)
            assert torch.equal(spaced.timestep_map, tensors[f"{sub}/timestep_map"]), sub
            for name in ("model_mean_type", "model_var_type", "loss_type"):
                assert getattr(spaced, name).name == spec["resolved"][name], (sub, name)
            for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped"):
                err = rel_error(getattr(spaced, name), tensors[f"{sub}/{name}"])
                assert err <= SCHEDULE_TOL, f"{sub}/{name}: {err:.2e}"


def test_diffusion_case_schedules(cases, rel_error):
    for case in cases:
        for sub, spec in case.subs().items():
            diffusion = case.diffusion(sub)
            assert diffusion.timestep_map == spec["resolved"]["timestep_map"]
            case.check(f"{sub}/timestep_map", torch.tensor(diffusion.timestep_map), 0, rel_error)
            case.check(f"{sub}/betas", torch.as_tensor(diffusion.betas), SCHEDULE_TOL, rel_error)
            for name in ("model_mean_type", "model_var_type", "loss_type"):
                assert getattr(diffusion, name).name == spec["resolved"][name]


# ------------------------------------------------------------ single calls
def test_q_functions(cases, rel_error):
    for case in cases:
        x0 = case.tensors["x0"]
        for sub in case.subs():
            p = f"{sub}/q"
            if not case.has(f"{p}/t"):
                continue
            d, t = case.diffusion(sub), case.tensors[f"{p}/t"]
            case.check(f"{p}/x_t", d.q_sample(x0, t, noise=case.tensors[f"{p}/noise"]), SINGLE_TOL, rel_error)
            for name, value in zip(("mean", "variance", "log_variance"), d.q_mean_variance(x0, t)):
                case.check(f"{p}/{name}", value.expand_as(x0), SINGLE_TOL, rel_error)
            posterior = d.q_posterior_mean_variance(x_start=x0, x_t=case.tensors[f"{p}/x_t"], t=t)
            names = ("posterior_mean", "posterior_variance", "posterior_log_variance_clipped")
            for name, value in zip(names, posterior):
                case.check(f"{p}/{name}", value.expand_as(x0), SINGLE_TOL, rel_error)


def test_p_mean_variance(cases, rel_error):
    for case in cases:
        for sub in case.subs():
            p = f"{sub}/pmv"
            if not case.has(f"{p}/x"):
                continue
            d, xs, ts = case.diffusion(sub), case.tensors[f"{p}/x"], case.tensors[f"{p}/t"]
            case.reset()
            outs = [
                d.p_mean_variance(
                    case.model_fn, xs[k], ts[k], clip_denoised=bool(case.tensors[f"{p}/clip_denoised"][k]),
                    model_kwargs=_kwargs(case),
                )
                for k in range(xs.shape[0])
            ]  # fmt: skip
            for name in ("mean", "variance", "log_variance", "pred_xstart"):
                case.check(f"{p}/{name}", torch.stack([o[name] for o in outs]), SINGLE_TOL, rel_error)
            case.check_timesteps(p, rel_error, stacked=True)


def test_p_mean_variance_maths_on_stored_outputs(cases, rel_error):
    """The diffusion maths alone, fed the stored raw UNet outputs (no network involved)."""
    for case in cases:
        for sub in case.subs():
            p = f"{sub}/pmv"
            if not case.has(f"{p}/model_output"):
                continue
            core = case.diffusion(sub).core
            outputs, xs, ts = (case.tensors[f"{p}/{name}"] for name in ("model_output", "x", "t"))
            for k in range(xs.shape[0]):
                clip = bool(case.tensors[f"{p}/clip_denoised"][k])
                out = core.p_mean_variance(outputs[k], xs[k], ts[k], clip_denoised=clip)
                for name, ours in (
                    ("mean", "mean"),
                    ("log_variance", "log_variance"),
                    ("pred_xstart", "pred_x0"),
                ):
                    err = rel_error(out[ours], case.tensors[f"{p}/{name}"][k])
                    assert err <= SINGLE_TOL, f"{p}/{name}[{k}] from stored output: {err:.2e}"


def test_p_sample(cases, rel_error):
    for case in cases:
        for sub in case.subs():
            p = f"{sub}/p_sample"
            if not case.has(f"{p}/x"):
                continue
            d = case.diffusion(sub)
            for mode in ("uncond", "cond"):
                if not case.has(f"{p}/{mode}/sample"):
                    continue
                case.reset()
                with replay_randn_like([case.tensors[f"{p}/noise"]]):
                    out = d.p_sample(
                        case.model_fn, case.tensors[f"{p}/x"], case.tensors[f"{p}/t"], clip_denoised=True,
                        cond_fn=case.cond_fn if mode == "cond" else None, model_kwargs=_kwargs(case),
                    )  # fmt: skip
                case.check(f"{p}/{mode}/sample", out["sample"], SINGLE_TOL, rel_error)
                case.check(f"{p}/{mode}/pred_xstart", out["pred_xstart"], SINGLE_TOL, rel_error)
                case.check_timesteps(f"{p}/{mode}", rel_error, stacked=False)


def test_training_losses(cases, rel_error):
    for case in cases:
        for sub in case.subs():
            for group in ("train", "train2", "train3"):
                p = f"{sub}/{group}"
                if not case.has(f"{p}/t"):
                    continue
                seen: list[torch.Tensor] = []

                def recording_model(x, t, _seen=seen, _case=case, **kwargs):
                    _seen.append(_case.model_fn(x, t, **kwargs))
                    return _seen[-1]

                case.reset()
                terms = case.diffusion(sub).training_losses(
                    recording_model, case.tensors["x0"], case.tensors[f"{p}/t"], model_kwargs=_kwargs(case),
                    noise=case.tensors[f"{p}/noise"],
                )  # fmt: skip
                for name in ("loss", "mse", "vb"):
                    assert (name in terms) == case.has(f"{p}/{name}"), (
                        f"{p}: term {name} present or missing wrongly"
                    )
                    if name in terms:
                        case.check(f"{p}/{name}", terms[name], SINGLE_TOL, rel_error)
                case.check(f"{p}/model_output", seen[0], SINGLE_TOL, rel_error)
                case.check_timesteps(p, rel_error, stacked=False)


def test_training_losses_maths_on_stored_outputs(cases, rel_error):
    for case in cases:
        x0 = case.tensors["x0"]
        for sub in case.subs():
            p = f"{sub}/train"
            if not case.has(f"{p}/model_output"):
                continue
            core = case.diffusion(sub).core
            t, eps = case.tensors[f"{p}/t"], case.tensors[f"{p}/noise"]
            terms = core.training_losses(
                case.tensors[f"{p}/model_output"], x0, core.q_sample(x0, t, eps), t, eps
            )
            for name in ("loss", "mse", "vb"):
                if case.has(f"{p}/{name}"):
                    assert rel_error(terms[name], case.tensors[f"{p}/{name}"]) <= SINGLE_TOL, f"{p}/{name}"


def test_vb_terms_bpd(cases, rel_error):
    for case in cases:
        for sub in case.subs():
            p = f"{sub}/vb"
            if not case.has(f"{p}/t"):
                continue
            case.reset()
            x_t, t = case.tensors[f"{p}/x_t"], case.tensors[f"{p}/t"]
            out = case.diffusion(sub)._vb_terms_bpd(
                case.model_fn, case.tensors["x0"], x_t, t, clip_denoised=True, model_kwargs=_kwargs(case)
            )
            case.check(f"{p}/output", out["output"], SINGLE_TOL, rel_error)
            case.check(f"{p}/pred_xstart", out["pred_xstart"], SINGLE_TOL, rel_error)
            case.check_timesteps(p, rel_error, stacked=False)


# ------------------------------------------------------------ loops
LOOPS = ("p_sample_loop", "ddim", "ddim_eta0.5")


def _eta(loop: str) -> float:
    return float(loop.split("_eta")[1]) if "_eta" in loop else 0.0


def _run_loops(case: Case, rel_error) -> int:
    """Run every sampling loop of the case (with and without guidance); returns how many ran."""
    ran = 0
    for sub in case.subs():
        d = case.diffusion(sub)
        for loop in LOOPS:
            p = f"{sub}/{loop}"
            if not case.has(f"{p}/noise_init"):
                continue
            for mode in ("uncond", "cond"):
                if not case.has(f"{p}/{mode}/final"):
                    continue
                case.reset()
                noises = case.tensors.get(f"{p}/step_noise")
                replay = replay_randn_like(list(noises)) if noises is not None else contextlib.nullcontext()
                x_T = case.tensors[f"{p}/noise_init"]
                common = dict(
                    noise=x_T, clip_denoised=True, cond_fn=case.cond_fn if mode == "cond" else None,
                    model_kwargs=_kwargs(case),
                )  # fmt: skip
                with replay:
                    if loop == "p_sample_loop":
                        outs = list(d.p_sample_loop_progressive(case.model_fn, tuple(x_T.shape), **common))
                    else:
                        outs = list(
                            d.ddim_sample_loop_progressive(
                                case.model_fn, tuple(x_T.shape), eta=_eta(loop), **common
                            )
                        )
                case.check(
                    f"{p}/{mode}/samples", torch.stack([o["sample"] for o in outs]), LOOP_TOL, rel_error
                )
                case.check(
                    f"{p}/{mode}/pred_xstart",
                    torch.stack([o["pred_xstart"] for o in outs]),
                    LOOP_TOL,
                    rel_error,
                )
                case.check_timesteps(f"{p}/{mode}", rel_error, stacked=True)
                case.check(f"{p}/{mode}/final", outs[-1]["sample"], LOOP_TOL, rel_error)
                ran += 1
    return ran


def test_sampling_loops(cases, rel_error):
    assert sum(_run_loops(case, rel_error) for case in cases) > 0


def test_calc_bpd_loop(cases, rel_error):
    ran = 0
    for case in cases:
        for sub in case.subs():
            p = f"{sub}/bpd"
            if not case.has(f"{p}/step_noise"):
                continue
            case.reset()
            with replay_randn_like(list(case.tensors[f"{p}/step_noise"])):
                out = case.diffusion(sub).calc_bpd_loop(
                    case.model_fn, case.tensors["x0"], clip_denoised=True, model_kwargs=_kwargs(case)
                )
            for name in ("total_bpd", "prior_bpd", "vb", "xstart_mse", "mse"):
                case.check(f"{p}/{name}", out[name], LOOP_TOL, rel_error)
            case.check_timesteps(p, rel_error, stacked=True)
            ran += 1
    assert ran > 0


def test_every_golden_key_is_understood(cases):
    """Each stored key is an input or an output that a test above compares (no key passes unseen)."""
    outputs = {
        "betas", "timestep_map", "x_t", "mean", "variance", "log_variance", "posterior_mean",
        "posterior_variance", "posterior_log_variance_clipped", "pred_xstart", "model_output",
        "model_timesteps", "classifier_timesteps", "sample", "final", "samples", "loss", "mse", "vb",
        "output", "total_bpd", "prior_bpd", "xstart_mse",
    }  # fmt: skip
    groups = {"q", "pmv", "p_sample", "vb", "bpd", "train", "train2", "train3", *LOOPS}
    for case in cases:
        for key in case.tensors:
            if key in ("x0", "y"):
                continue
            sub, *rest = key.split("/")
            assert sub in case.subs(), f"{key}: unknown sub-diffusion"
            if key.endswith(INPUT_SUFFIXES) or rest[-1] in outputs:
                assert len(rest) == 1 or rest[0] in groups, f"{key}: group {rest[0]!r} is not tested"
                continue
            raise AssertionError(f"{key}: no test compares this key")
