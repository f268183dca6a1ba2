"""SLURM without a cluster: a 2-node job simulated by two local processes with the environment srun gives
each task, run through the real sbatch template (scripts/slurm/train.sbatch) with stand-ins for `srun`
and `scontrol`; pre-emption, requeue and continuation; sampling under srun; the submitit launcher config."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from adm.recipes.sharded import build_fabric

REPO = Path(__file__).resolve().parents[1]
JOB_ID = "4242"

# srun as SLURM runs it: one task per node, each with its rank in the environment, the second started a
# few seconds after the first (as on a busy cluster). Their pids go to $FAKE_SLURM/pids for the test. A task
# that fails takes the others down (srun --kill-on-bad-exit), rather than leaving them waiting for it.
FAKE_SRUN = """#!/bin/bash
pids=()
for ((rank = 0; rank < SLURM_NTASKS; rank++)); do
  log="$FAKE_SLURM/job${SLURM_RESTART_COUNT}_rank$rank.log"
  SLURM_PROCID=$rank SLURM_LOCALID=0 SLURM_NODEID=$rank "$@" > "$log" 2>&1 &
  pids+=($!)
  echo $! >> "$FAKE_SLURM/pids"
  sleep 3
done
status=0
for pid in "${pids[@]}"; do
  wait -n
  code=$?
  if ((code != 0)); then
    status=$code
    kill -9 "${pids[@]}" 2> /dev/null
  fi
done
exit $status
"""
# scontrol records what it was asked to do (Lightning's auto-requeue calls `scontrol requeue <job id>`).
FAKE_SCONTROL = """#!/bin/bash
echo "$@" >> "$FAKE_SLURM/scontrol"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _job_env(tmp_path: Path, restart: int) -> dict[str, str]:
    """What sbatch gives the batch script of a 2-node job with one task per node."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "WANDB_"))}
    env.update(
        PATH=f"{tmp_path / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        FAKE_SLURM=str(tmp_path / "slurm"),
        ADM_ROOT=str(tmp_path),  # the run directories go under tmp_path/runs
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        SLURM_JOB_ID=JOB_ID,
        SLURM_JOB_NAME="adm-train",
        SLURM_JOB_NUM_NODES="2",
        SLURM_NNODES="2",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="1",
        SLURM_NODELIST="localhost",
        SLURM_JOB_NODELIST="localhost",
        SLURM_RESTART_COUNT=str(restart),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
    )
    return env


def _ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def _kill_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


@pytest.mark.slow
def test_two_node_job_is_preempted_requeued_and_continues(tmp_path: Path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "slurm").mkdir()
    _executable(tmp_path / "bin" / "srun", FAKE_SRUN)
    _executable(tmp_path / "bin" / "scontrol", FAKE_SCONTROL)
    overrides = [
        "experiment=smoke",
        "data.image_size=8",
        "model.channel_mult=[1,2]",
        "batch_size=4",
        "trainer.strategy=ddp",
        "trainer.max_steps=100",
        "callbacks.sample_grid=null",
        "callbacks.model_checkpoint=null",
        # SLURM's warning handled between two steps by all ranks together (adm.callbacks.PreemptionCheckpoint)
        "++callbacks.preemption._target_=adm.callbacks.PreemptionCheckpoint",
    ]
    sbatch = ["bash", str(REPO / "scripts" / "slurm" / "train.sbatch"), *overrides]
    run_dir = tmp_path / "runs" / "smoke" / JOB_ID
    last, hpc = run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt"

    def logs(job: int) -> str:
        return "\n".join(p.read_text() for p in sorted((tmp_path / "slurm").glob(f"job{job}_rank*.log")))

    # Job 1: both tasks train in one run directory. SLURM's warning (SIGUSR1) reaches the ranks at different
    # moments: rank 1 first, rank 0 a second later (by then the ranks have acted on rank 1's flag, so this
    # copy comes late). They write hpc_ckpt_1.ckpt together after one step, rank 0 asks for a requeue, and
    # both leave on their own.
    job = subprocess.Popen(sbatch, cwd=REPO, env=_job_env(tmp_path, 0), stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        deadline = time.time() + 300
        while not last.is_file() and job.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        pids = [int(p) for p in (tmp_path / "slurm" / "pids").read_text().split()]
        assert last.is_file(), logs(0)[-4000:]
        assert len(pids) == 2
        _kill_all(pids[1:], signal.SIGUSR1)
        time.sleep(1.0)
        _kill_all(pids[:1], signal.SIGUSR1)
        job.wait(timeout=240)
    finally:
        _kill_all(pids, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            job.wait(timeout=30)
    log0 = logs(0)
    assert job.returncode == 0, log0[-4000:]
    assert hpc.is_file(), log0[-4000:]
    assert sorted(p.name for p in run_dir.glob("hpc_ckpt_*.ckpt")) == [hpc.name]
    reached = _ckpt_step(hpc)
    assert 0 < reached < 100
    assert torch.load(hpc, weights_only=True)["rng_states"]["torch"].shape[0] == 2  # both ranks' streams
    assert log0.count(f"pre-emption (signal SIGUSR1 on this rank) at step {reached}") >= 1  # rank 1
    assert log0.count(f"at step {reached}: writing {hpc}") == 2  # both ranks, the same step
    assert "Handling auto-requeue signal" not in log0  # Lightning saved nothing inside its handler
    assert (tmp_path / "slurm" / "scontrol").read_text().split() == ["requeue", JOB_ID]
    # the run stopped at the checkpoint: nothing written after it (no epoch-end last.ckpt)
    assert last.stat().st_mtime <= hpc.stat().st_mtime and _ckpt_step(last) <= reached
    # one run directory for both ranks (rank 1 started 3 s after rank 0)
    assert [p.name for p in (tmp_path / "runs" / "smoke").iterdir()] == [JOB_ID]

    # Job 2: the requeued job runs the same script again (same job id, SLURM_RESTART_COUNT=1) and
    # continues from the pre-emption checkpoint, the newest of the run directory, to max_steps.
    env = _job_env(tmp_path, 1)
    job2 = subprocess.run(sbatch, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    logs2 = [(tmp_path / "slurm" / f"job1_rank{r}.log").read_text() for r in (0, 1)]
    assert job2.returncode == 0, logs2[0][-4000:] + logs2[1][-2000:]
    for log in logs2:
        assert f"Starting training from {hpc}" in log
    assert _ckpt_step(last) == 100
    # the requeued job logged only the steps from where it continued
    with open(run_dir / "csv" / "version_1" / "metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert min(steps) >= reached - 1 and max(steps) == 99
    assert [p.name for p in (tmp_path / "runs" / "smoke").iterdir()] == [JOB_ID]
    assert (tmp_path / "slurm" / "scontrol").read_text().split() == ["requeue", JOB_ID]


def test_sampling_under_srun_joins_the_tasks_the_cluster_started(monkeypatch: pytest.MonkeyPatch, slurm_task):
    settings = dict(accelerator="cpu", devices=1, num_nodes=2, strategy="auto", precision="32-true")
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    # started by hand: one spawned process per device
    assert build_fabric(settings)._strategy.launcher.__class__.__name__ == "_MultiProcessingLauncher"
    # under srun: DDP over the tasks SLURM started, nothing spawned
    slurm_task(JOB_ID, ntasks=2)
    fabric = build_fabric(settings)
    assert type(fabric._strategy).__name__ == "DDPStrategy"
    env = fabric._strategy.cluster_environment
    assert type(env).__name__ == "SLURMEnvironment" and env.creates_processes_externally
    assert fabric.world_size == 2


def test_run_directory_of_a_slurm_job_is_its_job_id(monkeypatch: pytest.MonkeyPatch, compose):
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    cfg = compose("train", hydra_node=True)
    assert cfg.hydra.run.dir.endswith("/train/777")
    monkeypatch.delenv("SLURM_JOB_ID")
    cfg = compose("train", hydra_node=True)
    assert not cfg.hydra.run.dir.endswith("/train/777")


def test_submitit_launcher_takes_nodes_and_gpus_from_the_trainer(compose):
    # The `slurm` extra (make install adds it): a missing plugin must fail here, not skip.
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401

    overrides = ["hydra/launcher=slurm", "model=adm_u_64", "trainer.devices=8", "trainer.num_nodes=4"]
    cfg = compose("train", [*overrides, "ckpt_path=auto"], hydra_node=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (4, 8, 8)
    assert launcher.signal_delay_s == 90


def test_submitit_jobs_hand_their_warning_signal_to_lightning(monkeypatch: pytest.MonkeyPatch, slurm_task):
    from adm.recipes.runs import cluster_plugins

    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(key)
    assert cluster_plugins() == []  # off SLURM
    slurm_task(JOB_ID, ntasks=2)
    assert cluster_plugins() == []  # sbatch + srun: Lightning's own SIGUSR1 handling
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    previous = signal.signal(signal.SIGUSR2, lambda *a: None)  # submitit's handler
    try:
        (env,) = cluster_plugins()
        assert env.auto_requeue and env.requeue_signal == signal.SIGUSR2
        assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL  # Lightning installs its own
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_packaging_pins_what_the_code_needs():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = {Requirement(d).name: Requirement(d) for d in meta["project"]["dependencies"]}
    lightning = deps["pytorch-lightning"].specifier
    assert "2.5.9" not in lightning and "2.7.0" not in lightning  # the minor version the code is built on
    assert version("pytorch-lightning") in lightning
    (setuptools,) = [Requirement(r) for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert "76.9" not in setuptools.specifier and "77.0" in setuptools.specifier  # license = "MIT"
    slurm = {Requirement(r).name for r in meta["project"]["optional-dependencies"]["slurm"]}
    assert {"hydra-submitit-launcher", "submitit"} <= slurm
