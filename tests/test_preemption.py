"""SLURM pre-emption (adm.callbacks.preemption): the warning signal sets a flag, the checkpoint is written
after the step it interrupted, the job is requeued once, training stops, and the continuation is bit-exact."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from adm.callbacks import EpochEndResume, LastCheckpoint, Preempted, PreemptionCheckpoint, RandomStreams
from adm.callbacks.preemption import hpc_checkpoint_path
from adm.callbacks.resume import RNG_KEY

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

JOB_ID = "4242"
# 12 training digits, 4 per step: 3 steps per epoch; the runs end in a fresh epoch (as in test_resume: the
# loader's own batch counter of the epoch a run resumed in keeps the resumed count, and a new epoch resets it)
STEPS = 10


@pytest.fixture
def restore_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


@pytest.fixture
def slurm_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, restore_signals, slurm_task) -> Path:
    """One SLURM task (Lightning detects SLURM); `scontrol` records its arguments in the returned file."""
    slurm_task(JOB_ID)
    bin_dir, record = tmp_path / "bin", tmp_path / "scontrol_calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/bash\necho "$@" >> "{record}"\n')
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


@pytest.fixture
def fit(compose, dropout_linear):
    """``fit(run_dir, at_step=None, signum=SIGUSR1, ckpt_path=None, plugins=None) -> (trainer, callback)``: a
    Lightning-only run with the pre-emption callback, whose module sends itself `signum` from inside the
    training step that starts at global step `at_step`."""

    class Signalled(dropout_linear):
        def __init__(self, at_step: int | None, signum: int):
            super().__init__()
            self.at_step, self.signum = at_step, signum

        def training_step(self, batch, batch_idx):
            if self.trainer.global_step == self.at_step:
                os.kill(os.getpid(), self.signum)  # the handler runs here, in the middle of the step
            return super().training_step(batch, batch_idx)

    data = compose(None, ["+data=mnist5k", "data.image_size=8", "data.batch_size=4"]).data

    def run(
        run_dir: Path,
        at_step: int | None = None,
        signum: int = signal.SIGUSR1,
        ckpt_path: str | None = None,
        plugins: list | None = None,
    ) -> tuple[pl.Trainer, PreemptionCheckpoint]:
        pl.seed_everything(0)
        datamodule = instantiate(data, val_fraction=0.9976)  # 12 training digits: 3 batches per epoch
        module = Signalled(at_step, signum)
        preemption = PreemptionCheckpoint()
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=STEPS,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=run_dir,
            plugins=plugins,
            callbacks=[
                RandomStreams(seed=0),
                EpochEndResume(),
                LastCheckpoint(
                    dirpath=run_dir / "checkpoints",
                    save_top_k=0,
                    save_last=True,
                    save_on_train_epoch_end=True,
                ),
                preemption,
            ],
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        return trainer, preemption

    return run


def _batch_counts(ckpt: dict) -> dict[str, int]:
    return ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]


@pytest.mark.parametrize(
    ("launcher", "at_step"),
    [
        ("sbatch", 4),  # SIGUSR1; the checkpoint lands mid-epoch (step 5 of 3 per epoch)
        ("submitit", 5),  # SIGUSR2 (adm.recipes.runs.cluster_plugins); after an epoch's last batch (step 6)
    ],
)
def test_signal_in_a_step_checkpoints_after_it_requeues_and_resumes_bit_exactly(
    tmp_path: Path,
    slurm_job: Path,
    monkeypatch: pytest.MonkeyPatch,
    launcher: str,
    at_step: int,
    fit,
    read_ckpt,
    assert_same,
):
    plugins, signum = None, signal.SIGUSR1
    if launcher == "submitit":
        from adm.recipes.runs import cluster_plugins

        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
        plugins, signum = cluster_plugins(), signal.SIGUSR2
        assert plugins[0].requeue_signal == signal.SIGUSR2

    straight_trainer, preemption = fit(tmp_path / "straight", plugins=plugins)
    assert preemption.signals == (signum,)  # active on SLURM, on the environment's signal
    assert signal.getsignal(signum) is signal.SIG_DFL  # handed back after fit
    straight = read_ckpt(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    assert straight["global_step"] == STEPS and not slurm_job.exists()

    run_dir = tmp_path / "legs"
    with pytest.raises(Preempted) as stopped:
        fit(run_dir, at_step, signum, plugins=plugins)
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    assert stopped.value.code == 0 and stopped.value.requeued and stopped.value.path == str(hpc)
    # written after the interrupted step: its optimizer step is in, and the batch is counted processed
    saved = read_ckpt(hpc)
    assert saved["global_step"] == stopped.value.step == at_step + 1
    counts = _batch_counts(saved)
    assert counts["processed"] == counts["completed"] + 1 == at_step + 1
    assert slurm_job.read_text().splitlines() == [f"requeue {JOB_ID}"]  # once, by rank 0
    # training stopped there: no later checkpoint (no epoch-end last.ckpt newer than the hpc one)
    assert sorted(p.name for p in run_dir.glob("*.ckpt")) == ["hpc_ckpt_1.ckpt"]
    last = run_dir / "checkpoints" / "last.ckpt"
    assert read_ckpt(last)["global_step"] < at_step + 1
    os.kill(os.getpid(), signum)  # a late copy of the warning is ignored while the process leaves

    # the requeued job continues from it to the end: the same as the uninterrupted run, bit for bit
    fit(run_dir, ckpt_path=str(hpc), plugins=plugins)
    resumed = read_ckpt(last)
    assert resumed["global_step"] == STEPS
    for key in ["state_dict", "optimizer_states", "rng_states", "loops"]:
        assert_same(straight[key], resumed[key], key)
    assert slurm_job.read_text().splitlines() == [f"requeue {JOB_ID}"]
    assert straight_trainer.global_step == STEPS


def test_no_requeue_means_exit_status_1(
    tmp_path: Path, slurm_job: Path, monkeypatch: pytest.MonkeyPatch, fit, read_ckpt
):
    monkeypatch.setenv("SLURM_JOB_ID", "not-a-job")
    with pytest.raises(Preempted) as stopped:
        fit(tmp_path, at_step=1)
    assert stopped.value.code == 1 and not stopped.value.requeued
    assert read_ckpt(tmp_path / "hpc_ckpt_1.ckpt")["global_step"] == 2
    assert not slurm_job.exists()
    assert hpc_checkpoint_path(tmp_path) == str(tmp_path / "hpc_ckpt_2.ckpt")  # the next one


def test_inactive_off_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_signals, fit):
    for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
        monkeypatch.delenv(key)
    before = signal.getsignal(signal.SIGUSR1)
    trainer, preemption = fit(tmp_path)
    assert trainer.global_step == STEPS and preemption.signals == ()
    assert signal.getsignal(signal.SIGUSR1) is before
    assert not list(tmp_path.glob("hpc_ckpt_*.ckpt"))


def test_options():
    assert PreemptionCheckpoint(requeue_signal="USR2").requeue_signal == signal.SIGUSR2
    assert PreemptionCheckpoint(requeue_signal=signal.SIGUSR1.value).requeue_signal == signal.SIGUSR1
    with pytest.raises(ValueError, match="check_every_n_steps"):
        PreemptionCheckpoint(check_every_n_steps=0)


def test_random_streams_gather_nothing_inside_a_training_step():
    """A save from a signal handler in the middle of a step must not start a collective."""
    progress = SimpleNamespace(started=3, processed=2)
    trainer = SimpleNamespace(
        world_size=2,
        global_rank=1,
        training=True,
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(total=progress))),
    )
    checkpoint: dict = {}
    with pytest.warns(UserWarning, match="inside a training step"):
        RandomStreams(seed=0).on_save_checkpoint(trainer, None, checkpoint)  # no module: no all_gather
    assert RNG_KEY not in checkpoint

    # between two steps (on_train_batch_end, epoch end, validation): every rank's streams are gathered
    progress.processed = 3
    module = SimpleNamespace(device=torch.device("cpu"), all_gather=lambda t: torch.stack([t, t]))
    RandomStreams(seed=0).on_save_checkpoint(trainer, module, checkpoint)
    assert checkpoint[RNG_KEY]["torch"].shape[0] == 2


def _vote_on_two_ranks(rank: int, port: int, out_dir: str) -> None:
    import json

    import torch.distributed as dist

    from adm.callbacks import RankVote

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    trainer = SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu")))
    vote, decisions = RankVote(), []
    for check in range(6):  # the flag is set on rank 1 only, from check 2 on
        decisions.append(vote.decide(trainer, flag=rank == 1 and check >= 2))
        if decisions[-1]:
            break
    last = vote.decide(trainer, flag=False)  # a new vote, finished by drain() as at the end of a run
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps([decisions, last, vote.drain()]))
    dist.destroy_process_group()


def test_ranks_vote_without_waiting_and_decide_at_the_same_check(tmp_path: Path):
    """Two gloo ranks: a flag on one rank makes both decide at the next check, not before."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_vote_on_two_ranks, args=(port, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for decisions, last, drained in results:
        assert decisions == [False, False, False, True]  # set before check 2, acted on at check 3
        assert last is False and drained is False
