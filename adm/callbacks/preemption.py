"""SLURM pre-emption: the warning signal only sets a flag; the ranks act on it together between two steps.

SLURM warns a job before its time limit or a pre-emption with a signal (``#SBATCH --signal=SIGUSR1@90`` in
``scripts/slurm/train.sbatch``; SIGUSR2 under the submitit launcher, ``adm.recipes.runs.cluster_plugins``).
Lightning's own SLURM handling writes ``hpc_ckpt_<n>.ckpt`` inside the signal handler, at whatever point the
signal interrupts each rank. Writing a checkpoint is collective: :class:`~adm.callbacks.resume.RandomStreams`
all-gathers every rank's random streams and ``Trainer.save_checkpoint`` ends with a barrier. A rank
interrupted inside the gradient all-reduce, or a rank the signal reaches a step later or not at all, is in
another collective than the others: the save hangs, or is never written.

:class:`PreemptionCheckpoint` takes the requeue signal over. Its handler only records that the signal came
(safe at any point). After every optimizer step (every ``check_every_n_steps``) the ranks combine their
flags in one all-reduce of a single number, so all of them decide at the same step, even when the signal
reached one rank only (:class:`RankVote`). The all-reduce is read at the next check, not at once, so no
rank waits on it: on GPUs reading it at once would hold the host until the step in flight had finished.
A single process decides at once. Then, in ``on_train_batch_end``:

1. every rank takes part in writing ``<default_root_dir>/hpc_ckpt_<n>.ckpt`` (Lightning's name and place,
   which ``ckpt_path=auto`` / ``last`` and a requeued job find, ``adm.recipes.runs.find_checkpoint``), at
   the same point as a step checkpoint of ``ModelCheckpoint``, so resuming from it is bit-exact;
2. rank 0 runs ``scontrol requeue <job id>`` (as Lightning does);
3. every rank leaves ``Trainer.fit`` by raising :class:`Preempted`, a ``SystemExit`` (status 0 once the job
   is requeued, 1 when it is not). Leaving at once keeps the run where the checkpoint is: stopping through
   ``trainer.should_stop`` would end the epoch first, and its epoch-end checkpoint (``last.ckpt``, newer
   than ``hpc_ckpt_<n>.ckpt``) would resume with the rest of that epoch skipped. A submitit job records no
   result either, so its launcher waits for the requeued job.

The callback acts where Lightning would: on SLURM (``SLURMEnvironment`` with ``auto_requeue``), on the
environment's ``requeue_signal``. It installs its handler in ``setup``, before Lightning registers its own,
and Lightning registers none for a signal that already has a handler. After a pre-emption a late copy of the
signal is ignored until the process has exited. A signal that arrives during validation is acted on after the
next training step. Checkpoint callbacks run after the other callbacks at the end of a batch, so the EMA and
everything else of this step are in the file.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.utilities import rank_zero_warn

__all__ = ["Preempted", "PreemptionCheckpoint", "RankVote", "hpc_checkpoint_path", "requeue_slurm_job"]

log = logging.getLogger(__name__)

HPC_NAME = re.compile(r"hpc_ckpt_(\d+)\.ckpt")


class Preempted(SystemExit):
    """Raised on every rank once the pre-emption checkpoint is written: the process leaves ``Trainer.fit``.

    Attributes:
        path: the checkpoint written (``hpc_ckpt_<n>.ckpt``).
        step: its global step.
        requeued: whether ``scontrol requeue`` succeeded (the exit status is 0 then, else 1).
    """

    def __init__(self, path: str, step: int, requeued: bool):
        super().__init__(0 if requeued else 1)
        self.path, self.step, self.requeued = path, step, requeued

    def __str__(self) -> str:
        what = "requeued" if self.requeued else "not requeued"
        return f"pre-empted at step {self.step}: {self.path} written, job {what}"


def hpc_checkpoint_path(folder: str | os.PathLike) -> str:
    """``folder/hpc_ckpt_<n>.ckpt`` with n one above the highest there (1 in an empty or absent folder)."""
    folder = Path(folder)
    numbers = [int(m.group(1)) for p in folder.glob("hpc_ckpt_*.ckpt") if (m := HPC_NAME.fullmatch(p.name))]
    return str(folder / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt")


def requeue_slurm_job() -> bool:
    """``scontrol requeue`` this job (the array task of an array job); True when scontrol succeeded."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        job_id = f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    else:
        job_id = os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9]+(_[0-9]+)?", job_id):
        log.warning("Cannot requeue: no valid SLURM job id in the environment (%r)", job_id)
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], check=False, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("Requeuing SLURM job %s failed: %s", job_id, err)
        return False
    if result.returncode != 0:
        log.warning("Requeuing SLURM job %s failed: scontrol exited with %d", job_id, result.returncode)
        return False
    log.info("Requeued SLURM job %s", job_id)
    return True


class RankVote:
    """Whether a flag was set on any rank, decided alike on every rank without stalling the device.

    One process: :meth:`decide` returns the flag itself. Several: each call starts an all-reduce (MAX) of
    one number holding this rank's flag and returns the result of the previous call's, so a flag set
    before call k is acted on at call k + 1 on every rank. On CUDA the result is copied into pinned host
    memory behind an event; reading it then waits only for a collective that finished a step earlier,
    never for the step in flight. Every rank must call :meth:`decide` at the same points.
    """

    def __init__(self) -> None:
        self._pending: Callable[[], bool] | None = None
        self._host: torch.Tensor | None = None  # pinned; free again once the vote reading it is drained

    @staticmethod
    def _distributed(trainer: pl.Trainer) -> bool:
        dist = torch.distributed
        return trainer.world_size > 1 and dist.is_available() and dist.is_initialized()

    def decide(self, trainer: pl.Trainer, flag: bool) -> bool:
        if not self._distributed(trainer):
            return flag
        if self.drain():
            return True
        self._pending = self._start(trainer.strategy.root_device, flag)
        return False

    def drain(self) -> bool:
        """The result of the vote in flight (waiting for it), False when there is none."""
        pending, self._pending = self._pending, None
        return pending() if pending is not None else False

    def discard(self) -> None:
        """Forget the vote in flight without waiting for it (after an error)."""
        self._pending = None

    def _start(self, device: torch.device, flag: bool) -> Callable[[], bool]:
        value = torch.full((1,), int(flag), dtype=torch.int32, device=device)  # no host-to-device copy
        work = torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX, async_op=True)
        if device.type != "cuda":

            def read() -> bool:
                work.wait()
                return bool(value.item())

            return read
        work.wait()  # the current stream waits for the collective; the host does not
        if self._host is None:
            self._host = torch.empty(1, dtype=torch.int32, pin_memory=True)
        host = self._host
        host.copy_(value, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def read_cuda() -> bool:
            done.synchronize()
            return bool(host.item())

        return read_cuda


def _signal_number(value: int | str | signal.Signals) -> signal.Signals:
    if isinstance(value, str):
        name = value.upper()
        return signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
    return signal.Signals(value)


def _slurm_environment(trainer: pl.Trainer) -> SLURMEnvironment | None:
    """The trainer's cluster environment when it is SLURM's (what Lightning's signal handling reads)."""
    connector = getattr(trainer, "_accelerator_connector", None)
    env = getattr(connector, "cluster_environment", None)
    if env is None:
        env = getattr(trainer.strategy, "cluster_environment", None)
    return env if isinstance(env, SLURMEnvironment) else None


class PreemptionCheckpoint(Checkpoint):
    """On SLURM's warning signal: all ranks write ``hpc_ckpt_<n>.ckpt`` between two steps, requeue, stop.

    See the module docstring. Inactive off SLURM, and on SLURM with ``SLURMEnvironment(auto_requeue=False)``.

    Args:
        requeue_signal: the signal to act on; None (default): the SLURM environment's ``requeue_signal``
            (SIGUSR1, or SIGUSR2 under the submitit launcher). A name ("SIGUSR2", "USR2") or a number. The
            environment's signal is taken over as well, so that Lightning never saves inside its handler.
        check_every_n_steps: combine the ranks' flags every this many optimizer steps (one all-reduce of one
            number each time, read at the next check when there are several ranks).
        requeue: run ``scontrol requeue`` after writing the checkpoint (rank 0).
    """

    def __init__(
        self,
        *,
        requeue_signal: int | str | None = None,
        check_every_n_steps: int = 1,
        requeue: bool = True,
    ):
        if int(check_every_n_steps) < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.requeue_signal = None if requeue_signal is None else _signal_number(requeue_signal)
        self.check_every_n_steps = int(check_every_n_steps)
        self.requeue = bool(requeue)
        self.received: signal.Signals | None = None  # set by the handler: the only thing it does
        self._mode = "idle"  # "armed" during fit, "stopped" after a pre-emption
        self._previous: dict[signal.Signals, Any] = {}
        self._last_step = -1
        self._vote = RankVote()

    # --- the handler: a flag, nothing else --------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._mode == "armed":
            self.received = signal.Signals(signum)
        elif self._mode == "idle":  # installed again after fit (Lightning restores its own snapshot)
            previous = self._previous.get(signal.Signals(signum), signal.SIG_DFL)
            if callable(previous):
                previous(signum, frame)
            elif previous in (signal.SIG_DFL, None):
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
        # "stopped": the checkpoint is written and the process is leaving; a late copy changes nothing

    @property
    def signals(self) -> tuple[signal.Signals, ...]:
        """The signals this callback has taken over (empty while it was never active)."""
        return tuple(self._previous)

    def _install(self, signums: list[signal.Signals]) -> None:
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("PreemptionCheckpoint: not in the main thread; no signal handler installed")
            return
        for signum in signums:
            current = signal.getsignal(signum)
            if current != self._on_signal:
                self._previous[signum] = current
                signal.signal(signum, self._on_signal)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, previous in self._previous.items():
                if signal.getsignal(signum) == self._on_signal and previous is not None:
                    signal.signal(signum, previous)

    # --- hooks ----------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        env = _slurm_environment(trainer)
        if env is None or not env.auto_requeue:
            return
        signums = [_signal_number(env.requeue_signal or signal.SIGUSR1)]
        if self.requeue_signal is not None and self.requeue_signal not in signums:
            signums.insert(0, self.requeue_signal)
        self.received = None
        self._mode = "armed"
        self._install(signums)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step
        if self._mode != "armed":
            return
        taken = [s for s in self._previous if signal.getsignal(s) != self._on_signal]
        if taken:  # something replaced the handler after setup: the in-handler save this callback avoids
            names = ", ".join(s.name for s in taken)
            rank_zero_warn(f"PreemptionCheckpoint: the handler of {names} was replaced; installed again")
            self._install(taken)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._mode != "armed" or step == self._last_step:  # inactive, or inside gradient accumulation
            return
        self._last_step = step
        if step % self.check_every_n_steps or 0 < trainer.max_steps <= step:  # not now / the run is done
            return
        if self._vote.decide(trainer, self.received is not None):
            self._preempt(trainer)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._mode == "armed":
            self._vote.drain()  # every rank started it at the same step; the run is over either way
            self._mode = "idle"
            self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._vote.discard()  # another rank may never complete it
        if isinstance(exception, Preempted):
            self._mode = "stopped"
        elif self._mode == "armed":
            self._mode = "idle"
            self._restore()

    # --- the pre-emption ----------------------------------------------------------------------------------
    def _preempt(self, trainer: pl.Trainer) -> None:
        """Every rank, at the same step: write the checkpoint, requeue (rank 0), leave fit."""
        step = trainer.global_step
        path = trainer.strategy.broadcast(hpc_checkpoint_path(trainer.default_root_dir), src=0)
        here = f"signal {self.received.name} on this rank" if self.received else "signal on another rank"
        log.info("[rank %d] pre-emption (%s) at step %d: writing %s", trainer.global_rank, here, step, path)
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(path)
        requeued = requeue_slurm_job() if self.requeue and trainer.is_global_zero else False
        requeued = bool(trainer.strategy.broadcast(requeued, src=0))
        if trainer.is_global_zero and not requeued:
            log.warning("The job was not requeued: continue the run from %s (ckpt_path=last)", path)
        self._mode = "stopped"
        if self._previous:  # at exit Python would restore the default action (terminate) before the end
            atexit.register(_ignore, tuple(self._previous))
        raise Preempted(path, step, requeued)


def _ignore(signums: tuple[signal.Signals, ...]) -> None:
    for signum in signums:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, signal.SIG_IGN)
