"""Run directories: resume by directory, one saved config per run, checks before a run starts, SLURM.

A training run lives in one directory (``paths.output_dir``): Hydra's ``.hydra/{config,overrides}.yaml``,
the recipe's ``resolved_config.yaml``, ``checkpoints/last.ckpt`` and, after a SLURM pre-emption,
``hpc_ckpt_<n>.ckpt``.

    python scripts/train.py resume=DIR          # the overrides of DIR/.hydra/overrides.yaml, ckpt_path=last
    python scripts/train.py ... ckpt_path=auto  # resume when the run dir holds a checkpoint, else start

A run's saved config is never replaced by a different one: composing another config into an existing run
directory stops with a :class:`UsageError` before anything is written.
"""

from __future__ import annotations

import copy
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from adm.errors import MissingPathError, UsageError

__all__ = [
    "RunDirGuard",
    "UsageError",
    "check_checkpoint_matches",
    "check_saved_config",
    "cluster_plugins",
    "expand_resume",
    "find_checkpoint",
    "preflight",
]

RESUME_KEY = "resume"
# What a continued run may change: how it starts, how long it goes, how often it saves and logs; not what
# it trains (network, process, data, optimizer, batch, seed ...).
CONTINUATION_KEYS = re.compile(
    r"ckpt_path|trainer\.max_(steps|epochs|time)|trainer\.log_every_n_steps|callbacks\.\w+\.every_n_\w+"
)
# Values a run may leave to its data (``auto``: read from the image folder by adm.recipes.train). Hydra's
# saved config holds ``auto`` or a number for them; the two are compared as numbers in resolved_config.yaml.
READ_FROM_DATA = ("data.num_classes", "data.channels")


def continuing(ckpt_path: Any) -> bool:
    """Whether this launch continues a run: a checkpoint is asked for, or SLURM requeued the job."""
    return ckpt_path not in (None, "") or int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


# --- resume by run directory -----------------------------------------------------------------------------
def _override_key(override: str) -> str:
    """``+a.b=1`` / ``~a.b`` / ``a.b=1`` -> ``a.b``."""
    return override.split("=", 1)[0].lstrip("+~")


# Keys the config layout moved (old dotted key -> new one). A run directory saved before a move holds the
# old key in its saved config and overrides; both are read with the key at its new place.
MOVED_KEYS = {"label_dropout": "module.label_dropout"}
# Classes that moved to another module: a config saved before names them by their old path.
MOVED_TARGETS = {
    "adm.lit.RandomStreams": "adm.callbacks.RandomStreams",
    "adm.lit.EpochEndResume": "adm.callbacks.EpochEndResume",
    "adm.lit.PreemptionCheckpoint": "adm.callbacks.PreemptionCheckpoint",
    "adm.io.checkpoint.LastCheckpoint": "adm.callbacks.LastCheckpoint",
}


def _moved_key(key: str) -> str:
    """A dotted key of an older layout -> its key now (:data:`MOVED_KEYS`); other keys as they are."""
    for old, new in MOVED_KEYS.items():
        if key == old or key.startswith(f"{old}."):
            return new + key[len(old) :]
    return key


def _moved_override(override: str) -> str:
    """A saved override with its key as it is now: ``label_dropout=0.1`` -> ``module.label_dropout=0.1``."""
    key = _override_key(override)
    sign = override[: len(override) - len(override.lstrip("+~"))]
    return sign + _moved_key(key) + override[len(sign) + len(key) :]


def _current_layout(plain: dict[str, Any]) -> dict[str, Any]:
    """A plain config with the values of moved keys (:data:`MOVED_KEYS`) at their new places."""
    out = copy.deepcopy(plain)
    for old, new in MOVED_KEYS.items():
        *path, leaf = old.split(".")
        node: Any = out
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node.pop(leaf)
        *path, leaf = new.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node.setdefault(leaf, value)
    return _current_targets(out)


def _current_targets(node: Any) -> Any:
    """`node` with every ``_target_`` of a moved class (:data:`MOVED_TARGETS`) named by its path now."""
    if isinstance(node, dict):
        return {
            k: MOVED_TARGETS.get(v, v) if k == "_target_" and isinstance(v, str) else _current_targets(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_current_targets(v) for v in node]
    return node


def expand_resume(args: list[str]) -> list[str]:
    """``resume=DIR [more]`` -> DIR's saved overrides + ``hydra.run.dir=DIR ckpt_path=last`` + ``more``.

    Other arguments pass through and replace a saved override of the same key (a change to what is
    trained is then refused by :class:`RunDirGuard`).
    """
    given = [a for a in args if a.startswith(f"{RESUME_KEY}=")]
    if not given:
        return list(args)
    if len(given) > 1:
        raise UsageError(f"{RESUME_KEY}= is given {len(given)} times: give one run directory")
    run_dir = Path(given[0].split("=", 1)[1]).expanduser()
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise UsageError(
            f"{RESUME_KEY}={run_dir}: no {saved} (not a run directory of a finished or started run); give "
            "the directory that holds .hydra/ and checkpoints/"
        )
    if any(a == "-m" or a == "--multirun" for a in args):
        raise UsageError(f"{RESUME_KEY}= resumes one run: drop -m / --multirun")
    extra = [a for a in args if not a.startswith(f"{RESUME_KEY}=")]
    given_keys = {_override_key(a) for a in extra} | {"ckpt_path", "hydra.run.dir"}
    saved_overrides = [_moved_override(str(o)) for o in OmegaConf.load(saved)]
    keep = [o for o in saved_overrides if _override_key(o) not in given_keys]
    has_ckpt = any(_override_key(a) == "ckpt_path" for a in extra)
    return [*keep, f"hydra.run.dir={run_dir}", *([] if has_ckpt else ["ckpt_path=last"]), *extra]


def _task_part(cfg: Any) -> dict[str, Any]:
    """The config without the ``hydra`` node, unresolved, as plain containers, in the current layout (a
    config saved before a key moved has it at its new place: :data:`MOVED_KEYS`)."""
    plain = OmegaConf.to_container(cfg, resolve=False) if OmegaConf.is_config(cfg) else dict(cfg)
    return _current_layout({k: v for k, v in plain.items() if k != "hydra"})


def _differences(
    old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs between two nested dicts.

    Keys the old config does not have are not differences: they are settings a newer version of the code
    added (a new option, a new callback), and a run saved before them continues with their defaults.
    """
    out: list[tuple[str, Any, Any]] = []
    for key in sorted(old, key=str):
        name = f"{prefix}{key}"
        a, b = old[key], new.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(_differences(a, b, f"{name}."))
        elif a != b:
            out.append((name, a, b))
    return out


def _shown(diffs: list[tuple[str, Any, Any]]) -> str:
    text = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs[:6])
    return text + (f"; ... ({len(diffs)} in all)" if len(diffs) > 6 else "")


def _not_allowed(diffs: list[tuple[str, Any, Any]], resumed: bool) -> list[tuple[str, Any, Any]]:
    """The differences a launch into an existing run directory may not have."""
    return [
        d
        for d in diffs
        if d[0] != "ckpt_path"
        and not (resumed and CONTINUATION_KEYS.fullmatch(d[0]))
        and not (d[0] in READ_FROM_DATA and "auto" in (d[1], d[2]))
    ]


def _refuse(run_dir: Path, diffs: list[tuple[str, Any, Any]], what: str) -> UsageError:
    shown = _shown(diffs)
    return UsageError(
        f"{run_dir} already holds a run with another config ({what} differs: {shown}). Resume it as it "
        f"was with `{RESUME_KEY}={run_dir}`, or start a new run in another directory (drop hydra.run.dir, "
        f"or give a new one; ckpt_path={run_dir}/checkpoints/last.ckpt starts from its weights)"
    )


class RunDirGuard(Callback):
    """Hydra callback: a run directory keeps the config it was started with.

    Before Hydra writes ``.hydra/``: a config that trains something else is refused (exit status 2, the
    directory untouched); a continuation that differs only in how it starts, how long it runs or how often
    it saves (:data:`CONTINUATION_KEYS`) has its files written to ``.hydra/resumed_<n>/`` instead.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.hydra.output_subdir:
            return
        run_dir = Path(str(config.hydra.run.dir))
        saved_dir = run_dir / str(config.hydra.output_subdir)
        if not (saved_dir / "config.yaml").is_file():
            return
        new = _task_part(config)
        old = _task_part(OmegaConf.load(saved_dir / "config.yaml"))
        diffs = _differences(old, new)
        wrong = _not_allowed(diffs, continuing(new.get("ckpt_path")))
        if wrong:
            raise SystemExit(_exit_with(_refuse(run_dir, wrong, ".hydra/config.yaml")))
        if diffs:
            n = 1 + sum(1 for _ in saved_dir.glob("resumed_*"))
            config.hydra.output_subdir = f"{config.hydra.output_subdir}/resumed_{n}"


def _exit_with(err: UsageError) -> int:
    """Print a usage error as one line (no traceback) and return the exit status for it."""
    print(f"error: {err}", file=sys.stderr)
    return 2


def check_saved_config(text: str, output_dir: Path) -> bool:
    """Whether ``output_dir/resolved_config.yaml`` is to be written (not there yet).

    An existing one is never rewritten; a UsageError when this launch trains something else than it says
    (a continuation may change :data:`CONTINUATION_KEYS`).
    """
    path = output_dir / "resolved_config.yaml"
    if not path.is_file():
        return True
    old = _task_part(OmegaConf.create(path.read_text()))
    new = _task_part(OmegaConf.create(text))
    wrong = _not_allowed(_differences(old, new), continuing(new.get("ckpt_path")))
    if wrong:
        raise _refuse(output_dir, wrong, "resolved_config.yaml")
    return False


# --- checkpoints ------------------------------------------------------------------------------------------
def find_checkpoint(output_dir: Path) -> Path | None:
    """The newest of ``output_dir/hpc_ckpt_<n>.ckpt`` (SLURM pre-emption) and ``checkpoints/last.ckpt``."""
    found = [p for p in output_dir.glob("hpc_ckpt_*.ckpt") if re.fullmatch(r"hpc_ckpt_\d+\.ckpt", p.name)]
    last = output_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        found.append(last)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def check_checkpoint_matches(ckpt_path: str, plain: Mapping[str, Any], network_key: str) -> None:
    """The checkpoint's network and process configs must be the composed ones (else a clear UsageError)."""
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip file (mmap needs one): read it whole
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    saved = ckpt.get("adm_config") if isinstance(ckpt, dict) else None
    if not saved:
        return
    diffs: list[tuple[str, Any, Any]] = []
    for key in (network_key, "diffusion"):
        if key in saved:
            diffs += _differences(saved[key], plain.get(key) or {}, f"{key}.")
    if diffs:
        shown = _shown(diffs)
        raise UsageError(
            f"ckpt_path={ckpt_path} was trained with another {network_key}/diffusion config "
            f"(checkpoint -> composed: {shown}). Give the overrides of its run (`{RESUME_KEY}=RUN_DIR` "
            "re-reads them) or a checkpoint of this config"
        )


# --- checks before a run starts ---------------------------------------------------------------------------
def _device_count(devices: Any) -> int | None:
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        return int(devices)
    if isinstance(devices, list | tuple) or OmegaConf.is_list(devices):
        return len(devices)
    return None  # "auto"


def _cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _choice(group: str) -> str | None:
    """The option Hydra chose for a config group (``data`` -> ``imagenet64``), when Hydra composed the run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def preflight(cfg: DictConfig) -> None:
    """Stop before anything is built when the run cannot start; settle ``trainer.precision: auto``.

    - a GPU accelerator with no GPU visible, several CPU processes per machine than it has cores (unless
      ``trainer.allow_cpu_oversubscribe=true``), a data folder that does not exist: one UsageError naming
      each problem and the override that fixes it;
    - ``precision: auto``: bf16-mixed when several GPUs (devices or nodes) train, else 32-true.
    """
    trainer = cfg.trainer
    accelerator = str(trainer.get("accelerator", "auto"))
    devices = _device_count(trainer.get("devices", 1))
    nodes = int(trainer.get("num_nodes", 1) or 1)
    gpus = torch.cuda.is_available()
    problems: list[str] = []
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not gpus)
    if accelerator in ("gpu", "cuda") and not gpus:
        problems.append(
            f"trainer.accelerator={accelerator} but no GPU is visible (torch.cuda.is_available() is False): "
            "run on a GPU machine, or on CPU give trainer=cpu (one process) or "
            "trainer.accelerator=cpu trainer.precision=32-true trainer.devices=N"
        )
    cores = _cpu_cores()
    if on_cpu and devices is not None and devices > cores and not trainer.get("allow_cpu_oversubscribe"):
        why = "trainer.accelerator=cpu" if gpus else "no GPU is visible (torch.cuda.is_available() is False)"
        problems.append(
            f"trainer.devices={devices} but {why}: that is {devices} CPU processes on {cores} core(s); "
            f"run on a machine with GPUs, or give trainer.devices={cores} or fewer "
            "(trainer.allow_cpu_oversubscribe=true runs them anyway)"
        )
    path = cfg.data.get("path") if "data" in cfg and not OmegaConf.is_missing(cfg.data, "path") else None
    if path is not None and not Path(str(path)).expanduser().exists():
        choice = f" (data={_choice('data')})" if _choice("data") else ""
        problems.append(
            f"no images at data.path={path}{choice}: give data.path=/path/to/the/image/folder, or set "
            "ADM_DATA_DIR to the folder that holds it"
        )
    error = MissingPathError if any(p.startswith("no images") for p in problems) else UsageError
    if len(problems) == 1:
        raise error(problems[0])
    if problems:
        raise error("cannot start: " + " ".join(f"({i}) {p};" for i, p in enumerate(problems, 1))[:-1])
    if str(trainer.get("precision")) == "auto":
        many = (devices or 1) > 1 or nodes > 1
        with open_dict(cfg):
            cfg.trainer.precision = "bf16-mixed" if (many and not on_cpu) else "32-true"


def trainer_kwargs(trainer: DictConfig) -> DictConfig:
    """The trainer config without this project's own keys (what ``pytorch_lightning.Trainer`` accepts)."""
    plain = OmegaConf.to_container(trainer, resolve=True)
    plain.pop("allow_cpu_oversubscribe", None)
    return OmegaConf.create(plain)


# --- SLURM ------------------------------------------------------------------------------------------------
def cluster_plugins() -> list[Any]:
    """Lightning plugins for the cluster this process runs on (none off SLURM).

    Under ``sbatch`` + ``srun`` Lightning detects SLURM on its own, with SIGUSR1 as the requeue signal. Jobs
    of the submitit launcher (``hydra/launcher=slurm``) are warned with SIGUSR2 instead, which submitit
    handles by requeueing without a checkpoint; the environment returned here names SIGUSR2, so the
    pre-emption callback (:class:`adm.callbacks.PreemptionCheckpoint`) takes that signal over and has all
    ranks save ``hpc_ckpt_<n>.ckpt`` at the next step before the job is requeued.
    """
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return []
    from lightning_fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect():
        return []
    signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    return [SLURMEnvironment(auto_requeue=True, requeue_signal=signal.SIGUSR2)]
