"""Resume by run directory: `resume=DIR` re-reads the run's overrides; a run directory keeps its config;
`ckpt_path=last|auto`; a checkpoint that does not fit the composed config; W&B continues the same run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adm.errors import UsageError
from adm.recipes.runs import expand_resume
from adm.recipes.train import train

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

QUIET = ["callbacks.sample_grid=null", "callbacks.model_checkpoint=null"]


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _saved(run_dir: Path) -> dict[str, bytes]:
    return {
        name: (run_dir / name).read_bytes()
        for name in (".hydra/config.yaml", ".hydra/overrides.yaml", "resolved_config.yaml")
    }


def test_resume_by_run_directory_rereads_the_overrides_and_keeps_the_saved_config(
    tmp_path: Path, fast_overrides, read_ckpt
):
    run = tmp_path / "run"
    # non-default sizes: resuming without them would build another network
    first = _cli(
        "experiment=smoke", *fast_overrides["train"], *QUIET, "trainer.max_steps=3", f"hydra.run.dir={run}"
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert read_ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 3
    saved = _saved(run)

    # only the run directory (and a longer run) is typed: the overrides come from DIR/.hydra
    again = _cli(f"resume={run}", "trainer.max_steps=5")
    assert again.returncode == 0, again.stderr[-3000:]
    ckpt = read_ckpt(run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 5
    assert ckpt["adm_config"]["model"]["channel_mult"] == [1, 2]
    assert f"Starting training from {run / 'checkpoints' / 'last.ckpt'}" in again.stderr + again.stdout
    # the run's own config is untouched; this launch's files are beside it
    assert _saved(run) == saved
    resumed = OmegaConf.load(run / ".hydra" / "resumed_1" / "overrides.yaml")
    assert "trainer.max_steps=5" in resumed and "ckpt_path=last" in resumed

    # composing another config into the run directory: one line, exit status 2, nothing rewritten
    other = _cli("experiment=smoke", f"hydra.run.dir={run}", "ckpt_path=last")
    assert other.returncode == 2, other.stderr[-3000:]
    assert "Traceback" not in other.stderr
    (line,) = [x for x in other.stderr.splitlines() if x.startswith("error:")]
    assert "another config" in line and "data.image_size" in line and f"resume={run}" in line
    assert _saved(run) == saved
    assert read_ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 5

    # a run saved by an older version lacks settings added since (an optimizer option, a callback): it
    # continues with their defaults instead of being refused as "another config"
    for name in (".hydra/config.yaml", "resolved_config.yaml"):
        conf = OmegaConf.load(run / name)
        del conf.optimizer["fused"]
        del conf.callbacks["preemption"]
        OmegaConf.save(conf, run / name)
    older = _cli(f"resume={run}", "trainer.max_steps=6")
    assert older.returncode == 0, older.stderr[-3000:]
    assert read_ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 6


def test_resume_of_a_directory_that_is_no_run_is_one_clear_error(tmp_path: Path):
    proc = _cli(f"resume={tmp_path / 'nothing'}")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "not a run directory" in proc.stderr and ".hydra/overrides.yaml" in proc.stderr


def test_expand_resume(tmp_path: Path):
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(
        OmegaConf.create(["model=adm_u_64", "ckpt_path=null", "batch_size=8"]),
        tmp_path / ".hydra" / "overrides.yaml",
    )
    assert expand_resume(["a=1"]) == ["a=1"]
    assert expand_resume([f"resume={tmp_path}", "trainer.max_steps=9"]) == [
        "model=adm_u_64",
        "batch_size=8",
        f"hydra.run.dir={tmp_path}",
        "ckpt_path=last",
        "trainer.max_steps=9",
    ]
    assert expand_resume([f"resume={tmp_path}", "ckpt_path=auto"])[-1] == "ckpt_path=auto"
    # a key given again replaces the saved one (Hydra refuses two values for one config group)
    assert expand_resume([f"resume={tmp_path}", "model=adm_u_128", "ckpt_path=auto"]) == [
        "batch_size=8",
        f"hydra.run.dir={tmp_path}",
        "model=adm_u_128",
        "ckpt_path=auto",
    ]
    with pytest.raises(UsageError, match="one run directory"):
        expand_resume([f"resume={tmp_path}", f"resume={tmp_path}"])
    with pytest.raises(UsageError, match="multirun"):
        expand_resume(["-m", f"resume={tmp_path}"])


@pytest.fixture
def train_smoke(compose, fast_overrides):
    """``train_smoke(run_dir, *overrides) -> Trainer``: the smoke experiment, shrunk, trained in run_dir."""

    def run(run_dir: Path, *more: str):
        overrides = ["experiment=smoke", *fast_overrides["train"], *QUIET, *more]
        return train(compose("train", overrides, output_dir=run_dir))

    return run


def test_ckpt_path_last_auto_and_none(tmp_path: Path, train_smoke, read_ckpt):
    with pytest.raises(UsageError, match="ckpt_path=last: no checkpoint"):
        train_smoke(tmp_path / "a", "ckpt_path=last")
    assert train_smoke(tmp_path / "a", "ckpt_path=auto", "trainer.max_steps=3").global_step == 3  # starts
    trainer = train_smoke(tmp_path / "a", "ckpt_path=auto", "trainer.max_steps=4")  # continues
    assert trainer.global_step == 4
    assert read_ckpt(tmp_path / "a" / "checkpoints" / "last.ckpt")["global_step"] == 4
    # starting over in a directory that holds a checkpoint of the run is refused
    with pytest.raises(UsageError, match="already holds last.ckpt"):
        train_smoke(tmp_path / "a", "trainer.max_steps=4")
    # a continuation may not change what is trained
    with pytest.raises(UsageError, match="optimizer.lr"):
        train_smoke(tmp_path / "a", "ckpt_path=last", "trainer.max_steps=6", "optimizer.lr=0.5")
    assert read_ckpt(tmp_path / "a" / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_a_checkpoint_of_another_network_is_one_clear_error(tmp_path: Path, train_smoke):
    train_smoke(tmp_path / "a", "trainer.max_steps=1")
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(UsageError, match=r"another model/diffusion config .*model\.num_res_blocks"):
        train_smoke(tmp_path / "b", f"ckpt_path={ckpt}", "model.num_res_blocks=2", "trainer.max_steps=2")
    with pytest.raises(FileNotFoundError, match="ckpt_path=.*does not exist"):
        train_smoke(tmp_path / "c", f"ckpt_path={tmp_path / 'none.ckpt'}")


def test_wandb_continues_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, train_smoke):
    wandb_lib = pytest.importorskip("wandb")
    wandb_lib.finish()  # a run another test left active would be taken over by Lightning's WandbLogger
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = ["logger=wandb", "logger.wandb.offline=true", "tags=[adm,smoke]"]
    trainer = train_smoke(tmp_path, *wandb, "trainer.max_steps=2")
    assert list(trainer.logger.experiment.tags) == ["adm", "smoke"]
    wandb_lib.finish()  # the process ends here on a cluster; a new one resumes
    run_id = (tmp_path / "wandb_id").read_text().strip()
    train_smoke(tmp_path, *wandb, "trainer.max_steps=3", "ckpt_path=last")
    wandb_lib.finish()
    assert (tmp_path / "wandb_id").read_text().strip() == run_id
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
    assert OmegaConf.load(tmp_path / "resolved_config.yaml").logger.wandb.id == run_id
