"""Shared fixtures: the golden data from OpenAI's reference code, the repository root, one CPU thread, the
package's configs composed as the scripts compose them, tiny checkpoints written by the library's own writer,
and the small helpers several test files use. Test files import nothing from each other: what two of them
share lives here."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[1]


def _golden_root() -> Path:
    env = os.environ.get("ADM_GOLDEN_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Folder of the golden set. Missing data is a failure, never a skip: these tests prove exactness."""
    root = _golden_root()
    if not (root / "README.md").is_file():
        pytest.fail(
            f"golden data not found at {root}; set ADM_GOLDEN_DIR to the folder holding the golden cases "
            "(the one with README.md, unet_cond_newattn/, diffusion_guided/, ...)"
        )
    return root


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b|| in float64 (b is the reference)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    nb = b.norm().item()
    return (a - b).norm().item() / (nb if nb > 0 else 1.0)


@pytest.fixture(scope="session")
def rel_error():
    return rel_err


@pytest.fixture
def one_thread(monkeypatch):
    """One CPU thread here and in spawned processes (OMP_NUM_THREADS): tiny networks gain nothing from a
    second thread, on a busy machine the threads wait for each other, and 1 and 2 processes then do
    identical arithmetic."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def slurm_task(monkeypatch):
    """``slurm_task(job_id, ntasks=1)``: this process becomes task 0 of a SLURM job on this machine (as
    srun starts it, so Lightning detects SLURM); SLURM and submitit variables from outside are removed."""

    def enter(job_id: str, ntasks: int = 1) -> None:
        for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
            monkeypatch.delenv(key)
        for key, value in {
            "SLURM_JOB_ID": job_id,
            "SLURM_JOB_NAME": "adm-train",
            "SLURM_NTASKS": str(ntasks),
            "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0",
            "SLURM_NODEID": "0",
            "SLURM_NODELIST": "localhost",
        }.items():
            monkeypatch.setenv(key, value)

    return enter


# --- configs ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def compose():
    """``compose(config_name, overrides=(), *, output_dir=None, hydra_node=False) -> DictConfig``: a root
    config of the package (``adm.conf``) composed as its script composes it (``adm.config.compose_config``).

    ``output_dir`` sets ``paths.output_dir``; ``hydra_node`` keeps the ``hydra`` node (run dir, launcher,
    ``runtime.choices``). ``compose(None, ["+data=mnist5k"])`` composes only the groups the overrides add.
    """
    from adm.config import compose_config

    def compose_(
        config_name: str | None,
        overrides: Sequence[str] = (),
        *,
        output_dir: str | os.PathLike | None = None,
        hydra_node: bool = False,
    ) -> DictConfig:
        extra = [] if output_dir is None else [f"paths.output_dir={output_dir}"]
        return compose_config(config_name, [*overrides, *extra], hydra_node=hydra_node)

    return compose_


@pytest.fixture
def hydra_app():
    """Hydra initialised on the package's configs for the test, as a script's ``@hydra.main`` leaves it: for
    recipes that compose configs themselves (the demo's and the comparison's sample runs, upsampling's base
    stage)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from adm.config import CONFIG_MODULE

    GlobalHydra.instance().clear()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def fast_overrides() -> dict[str, list[str]]:
    """Overrides that shrink a root config's run to seconds on one CPU thread (the CPU is shared): 8 px
    digits, 4 images per step, two resolutions in the networks; sampling: 2 DDIM steps, no progress bar."""
    return {
        "train": ["data.image_size=8", "batch_size=4", "model.channel_mult=[1,2]"],
        "train_classifier": ["data.image_size=8", "batch_size=4", "classifier.channel_mult=[1,2]"],
        "sample": ["sampler=ddim", "sampler.steps=2", "progress=false"],
    }


# --- checkpoints --------------------------------------------------------------------------------------------
# The tiny networks of the checkpoint fixtures: the tests' presets (adm_u_tiny, adm_cls_tiny) for 8x8 grey
# images of 3 classes with two resolutions: they sample in well under a second on one CPU thread.
_TINY = {
    "diffusion": ("train", "model", ["data.image_size=8", "data.num_classes=3", "model.channel_mult=[1,2]"]),
    "classifier": (
        "train_classifier",
        "classifier",
        ["data.image_size=8", "data.num_classes=3", "classifier.channel_mult=[1,2]"],
    ),
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, compose):
    """``tiny_checkpoint(kind="diffusion", *, overrides=(), seed=0, ema=False, class_names=None,
    classifier_free=None, path=None) -> Path``: a training checkpoint of a tiny network (random weights),
    written by the library's writer (``adm.io.checkpoint.checkpoint_payload``) from the real training config.

    Args:
        kind: "diffusion" (``train.yaml``, adm_u_tiny) or "classifier" (``train_classifier.yaml``,
            adm_cls_tiny).
        overrides: Hydra overrides of that config, after the tiny ones (``diffusion=linear``,
            ``data.num_classes=5``, ``model.learn_sigma=false`` ...).
        seed: seeds the weights; the layers a network initialises to zero (its output, the ends of the
            residual branches) are drawn too, so that images and gradients depend on the input and labels.
        ema: the training layout with an EMA callback (rate 0.999): ``state_dict`` holds the EMA weights,
            ``current_model_state`` other (raw) weights.
        class_names: recorded as the data's ``class_names``, as training records its datamodule's.
        classifier_free: the ``classifier_free`` section a run with label dropout records.
        path: where to write; default: a new file in a session folder.
    """
    from adm.config import build_network
    from adm.io.checkpoint import checkpoint_payload
    from adm.io.files import atomic_torch_save

    folder = tmp_path_factory.mktemp("tiny_ckpts")
    numbers = itertools.count()

    def write(
        kind: str = "diffusion",
        *,
        overrides: Sequence[str] = (),
        seed: int = 0,
        ema: bool = False,
        class_names: Sequence[str] | None = None,
        classifier_free: dict[str, Any] | None = None,
        path: str | os.PathLike | None = None,
    ) -> Path:
        config_name, key, tiny = _TINY[kind]
        cfg = compose(config_name, [*tiny, "data.batch_size=4", *overrides], output_dir=folder)
        config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in (key, "diffusion", "data")}
        if class_names is not None:
            config["data"]["class_names"] = [str(n) for n in class_names]
        if classifier_free is not None:
            config["classifier_free"] = dict(classifier_free)
        torch.manual_seed(seed)
        network = build_network(config[key])
        with torch.no_grad():
            for p in network.parameters():
                if not p.any():
                    p.normal_(0, 0.05)
        weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
        raw = {k: v + 0.05 * torch.randn_like(v) for k, v in weights.items()} if ema else None
        payload = checkpoint_payload(
            config, weights, raw_weights=raw, ema_rate=0.999 if ema else None, global_step=1
        )
        path = Path(path) if path is not None else folder / f"{kind}_{next(numbers)}.ckpt"
        atomic_torch_save(payload, path)
        return path

    return write


@pytest.fixture(scope="session")
def tiny_ckpts(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The sampling tests' files (8x8 grey, 3 classes, cosine process): "model" (EMA and raw weights),
    "classifier" and "openai": the model's EMA weights as a plain state dict, as OpenAI released theirs.
    Shared by the session: copy a file before changing it."""
    from adm.io.checkpoint import load_checkpoint

    folder = tmp_path_factory.mktemp("tiny_set")
    files = {
        "model": tiny_checkpoint("diffusion", ema=True, path=folder / "model.ckpt"),
        "classifier": tiny_checkpoint("classifier", seed=1, path=folder / "classifier.ckpt"),
        "openai": folder / "openai_model.pt",
    }
    torch.save(load_checkpoint(files["model"]).unet.state_dict(), files["openai"])
    return files


@pytest.fixture(scope="session")
def read_ckpt():
    """``read_ckpt(path) -> dict``: a checkpoint's contents, read as plain types and tensors only."""

    def read(path: str | os.PathLike) -> dict:
        return torch.load(path, map_location="cpu", weights_only=True)

    return read


# --- runs ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def run_sample(compose):
    """``run_sample(overrides, out_dir) -> dict``: ``scripts/sample.py`` in-process (the sample recipe on the
    composed ``sample.yaml``), writing to `out_dir`."""

    def run(overrides: Sequence[str], out_dir: str | os.PathLike) -> dict:
        from adm.recipes.sample import sample

        return sample(compose("sample", overrides, output_dir=out_dir))

    return run


@pytest.fixture(scope="session")
def load_npz():
    """``load_npz(path) -> (images, labels)``: a sample file in OpenAI's format (arr_0 and arr_1 only)."""

    def load(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
        with np.load(path, allow_pickle=False) as data:
            assert set(data.files) == {"arr_0", "arr_1"}
            return data["arr_0"], data["arr_1"]

    return load


def _assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: {set(a) ^ set(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.fixture(scope="session")
def assert_same():
    """``assert_same(a, b, where="")``: bit-exact equality of nested checkpoint contents (dtypes included)."""
    return _assert_same


@pytest.fixture(scope="session")
def dropout_linear() -> type:
    """The class of a tiny LightningModule for Lightning-only runs of the resume and pre-emption machinery:
    a linear classifier of 8x8 digits with dropout (it draws from the random streams)."""
    import pytorch_lightning as pl

    class DropoutLinear(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(64, 10)
            self.drop = torch.nn.Dropout(0.5)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.lin(self.drop(x.flatten(1))), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return DropoutLinear
