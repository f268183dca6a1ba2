"""OpenAI's ``guided_diffusion.train_util``: ``TrainLoop(...).run_loop()`` on adm's Lightning training.

The loop keeps OpenAI's arguments and files, so a training script written for OpenAI's package (and the
sampling scripts that read its checkpoints) run unchanged; underneath it is adm's
:class:`~adm.lit.diffusion.DiffusionModule` with the :class:`~adm.callbacks.ema.EMA` callback in a
``pytorch_lightning.Trainer``:

- one step = one optimizer step over ``batch_size`` images (AdamW, ``lr``, ``weight_decay``); with
  ``microbatch`` < ``batch_size`` the gradients of the micro-batches are summed (Lightning's gradient
  accumulation, with OpenAI's sum rather than mean);
- ``ema_rate`` ("0.9999" or "0.9999,0.999"): EMA after every optimizer step, no warm-up;
- ``schedule_sampler``: a sampler of :mod:`.resample` (uniform by default);
- ``lr_anneal_steps``: train that many steps in all with the learning rate annealed linearly to 0
  (0: run until stopped, as OpenAI's);
- ``use_fp16``: ``precision="16-mixed"`` on GPUs (autocast + dynamic loss scaling; ``fp16_scale_growth`` is
  Lightning's scaler's business), ``"bf16-mixed"`` on CPUs;
- every ``log_interval`` steps the loss terms (``loss``, ``mse``, ``vb`` and their ``_q0``..``_q3``
  quartiles), ``step`` and ``samples`` go to :mod:`.logger`; every ``save_interval`` steps and at the end
  ``modelNNNNNN.pt``, ``ema_RATE_NNNNNN.pt`` and ``optNNNNNN.pt`` are written to ``logger.get_dir()``;
- ``resume_checkpoint=".../modelNNNNNN.pt"`` resumes from those files (weights, EMA, optimizer, step).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist

from adm.callbacks.ema import EMA
from adm.compat.guided_diffusion import dist_util, logger
from adm.compat.guided_diffusion.resample import ScheduleSampler, UniformSampler
from adm.lit.diffusion import DiffusionModule

__all__ = [
    "INITIAL_LOG_LOSS_SCALE",
    "TrainLoop",
    "find_ema_checkpoint",
    "find_resume_checkpoint",
    "get_blob_logdir",
    "log_loss_dict",
    "parse_resume_step_from_filename",
]

INITIAL_LOG_LOSS_SCALE = 20.0

# Names of adm's training logs -> OpenAI's loss keys.
_LOSS_KEYS = {"loss": "loss", "loss_mse": "mse", "loss_vb": "vb"}


class _LoopModule(DiffusionModule):
    """adm's diffusion training step fed with OpenAI-style batches ``(images, cond dict)``."""

    def __init__(self, *, accumulate: int, terms: set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.accumulate = accumulate
        self.terms = terms

    def model_kwargs(self, batch) -> dict[str, torch.Tensor]:
        return dict(batch[1])

    def log_by_quartile(self, prefix, values, t, prog_bar=(), **kwargs) -> None:
        super().log_by_quartile(prefix, values, t, prog_bar=prog_bar, **kwargs)
        # The same per-example terms to OpenAI's logger under OpenAI's names.
        log_loss_dict(
            self.diffusion, t, {_LOSS_KEYS[k]: v for k, v in values.items() if _LOSS_KEYS[k] in self.terms}
        )

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # Lightning averages accumulated micro-batches; OpenAI's loop sums their gradients.
        return super().training_step(batch, batch_idx) * self.accumulate


def _lr_factor(k: int, resume_step: int, anneal_steps: int) -> float:
    """OpenAI anneals after each step: step 0 runs at lr, step k at lr * (1 - (k - 1 + resume) / N)."""
    if k == 0:
        return 1.0
    return 1.0 - (k - 1 + resume_step) / anneal_steps


class _KeepRawWeightsEMA(EMA):
    """EMA that leaves the trained (not the averaged) weights in the model after training, as OpenAI's."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass


def _micro_batches(data, microbatch: int):
    for batch, cond in data:
        for i in range(0, batch.shape[0], microbatch):
            yield batch[i : i + microbatch], {k: v[i : i + microbatch] for k, v in cond.items()}


class _OpenAIFiles(pl.Callback):
    """Logs and checkpoint files of OpenAI's loop, and its resume."""

    def __init__(self, loop: TrainLoop, ema: EMA) -> None:
        self.loop = loop
        self.ema = ema

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = self.loop
        if not loop.resume_step:
            return
        for rate, average in self.ema._averages():
            path = find_ema_checkpoint(loop.resume_checkpoint, loop.resume_step, rate)
            if path is not None:
                logger.log(f"loading EMA from checkpoint: {path}...")
                average.module.unet.load_state_dict(dist_util.load_state_dict(path, map_location="cpu"))
        opt_path = os.path.join(os.path.dirname(loop.resume_checkpoint), f"opt{loop.resume_step:06d}.pt")
        if os.path.exists(opt_path):
            logger.log(f"loading optimizer state from checkpoint: {opt_path}")
            trainer.optimizers[0].load_state_dict(dist_util.load_state_dict(opt_path, map_location="cpu"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loop = self.loop
        if (batch_idx + 1) % loop.accumulate:
            return  # inside an accumulation window: no optimizer step yet
        loop.step = trainer.global_step - 1  # the step just taken (0-based, as OpenAI's loop counts)
        logger.logkv("step", loop.step + loop.resume_step)
        logger.logkv("samples", (loop.step + loop.resume_step + 1) * loop.global_batch)
        if loop.step % loop.log_interval == 0:
            logger.dumpkvs()
        if loop.step % loop.save_interval == 0:
            loop.save()
            if os.environ.get("DIFFUSION_TRAINING_TEST", "") and loop.step > 0:
                trainer.should_stop = True
        loop.step += 1


class TrainLoop:
    """OpenAI's training loop (same keyword arguments); ``run_loop()`` trains with Lightning.

    Args:
        model: the network (``UNetModel`` / ``SuperResModel`` or any ``model(x, t, **cond)``).
        diffusion: the diffusion object from ``create_model_and_diffusion`` / ``create_gaussian_diffusion``.
        data: an endless iterator of ``(images (B, C, H, W), cond dict)`` such as ``load_data(...)``.
        batch_size, microbatch (-1 or 0: no split), lr, ema_rate, log_interval, save_interval,
        resume_checkpoint, use_fp16, fp16_scale_growth, schedule_sampler, weight_decay, lr_anneal_steps: as
        in OpenAI's loop (see the module doc).
    """

    def __init__(
        self,
        *,
        model,
        diffusion,
        data,
        batch_size,
        microbatch,
        lr,
        ema_rate,
        log_interval,
        save_interval,
        resume_checkpoint,
        use_fp16=False,
        fp16_scale_growth=1e-3,
        schedule_sampler=None,
        weight_decay=0.0,
        lr_anneal_steps=0,
    ) -> None:
        self.model = model
        self.diffusion = diffusion
        self.data = data
        self.batch_size = int(batch_size)
        self.microbatch = int(microbatch) if microbatch and microbatch > 0 else self.batch_size
        if self.batch_size % self.microbatch:
            raise ValueError(
                f"batch_size={batch_size} is not a multiple of microbatch={microbatch}; pick a "
                "microbatch that divides the batch size (or -1 for none)"
            )
        self.accumulate = self.batch_size // self.microbatch
        self.lr = float(lr)
        if isinstance(ema_rate, float | int):
            self.ema_rate = [float(ema_rate)]
        else:
            self.ema_rate = [float(x) for x in str(ema_rate).split(",") if x.strip()]
        self.log_interval = int(log_interval)
        self.save_interval = int(save_interval)
        self.resume_checkpoint = resume_checkpoint
        self.use_fp16 = bool(use_fp16)
        self.fp16_scale_growth = fp16_scale_growth
        self.schedule_sampler: ScheduleSampler = schedule_sampler or UniformSampler(diffusion)
        self.weight_decay = float(weight_decay)
        self.lr_anneal_steps = int(lr_anneal_steps)
        self.step = 0
        self.resume_step = 0
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.global_batch = self.batch_size * world
        core = getattr(diffusion, "core", diffusion)
        self._loss_terms = (
            {"loss"}
            if core.loss_type.is_vb
            else {"loss", "mse", "vb"}
            if core.learn_sigma
            else {"loss", "mse"}
        )
        self._load_and_sync_parameters()
        self.trainer: pl.Trainer | None = None

    def _load_and_sync_parameters(self) -> None:
        resume_checkpoint = find_resume_checkpoint() or self.resume_checkpoint
        if resume_checkpoint:
            self.resume_checkpoint = resume_checkpoint
            self.resume_step = parse_resume_step_from_filename(resume_checkpoint)
            logger.log(f"loading model from checkpoint: {resume_checkpoint}...")
            self.model.load_state_dict(dist_util.load_state_dict(resume_checkpoint, map_location="cpu"))
        dist_util.sync_params(self.model.parameters())

    def _precision(self) -> str:
        if not self.use_fp16:
            return "32-true"
        return "16-mixed" if torch.cuda.is_available() else "bf16-mixed"

    def run_loop(self) -> None:
        """Train until ``lr_anneal_steps`` steps in all (forever when 0), then save the last files."""
        if logger.get_dir() is None:
            logger.configure()
        core = getattr(self.diffusion, "core", self.diffusion)
        sampler = self.schedule_sampler.core if isinstance(self.schedule_sampler, ScheduleSampler) else None
        if sampler is None:
            raise TypeError(
                "schedule_sampler must come from guided_diffusion.resample (e.g. "
                "create_named_schedule_sampler('uniform', diffusion))"
            )
        schedule = None
        if self.lr_anneal_steps:
            schedule = functools.partial(
                torch.optim.lr_scheduler.LambdaLR,
                lr_lambda=functools.partial(
                    _lr_factor, resume_step=self.resume_step, anneal_steps=self.lr_anneal_steps
                ),
            )
        module = _LoopModule(
            accumulate=self.accumulate,
            terms=self._loss_terms,
            unet=self.model,
            diffusion=core,
            timestep_sampler=sampler,
            optimizer=functools.partial(torch.optim.AdamW, lr=self.lr, weight_decay=self.weight_decay),
            lr_schedule=schedule,
        )
        ema = _KeepRawWeightsEMA(rates=self.ema_rate, warmup=False)
        steps = self.lr_anneal_steps - self.resume_step if self.lr_anneal_steps else -1
        if steps == 0:
            logger.log(f"nothing to do: resumed at step {self.resume_step} = lr_anneal_steps")
            return
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        device = dist_util.dev()
        self.trainer = pl.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=local if world > 1 else 1,
            num_nodes=max(1, world // local),
            precision=self._precision(),
            max_steps=steps,
            max_epochs=-1,
            accumulate_grad_batches=self.accumulate,
            callbacks=[ema, _OpenAIFiles(self, ema)],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=1,
        )
        self._ema = ema
        self._module = module
        self.trainer.fit(module, train_dataloaders=_micro_batches(self.data, self.microbatch))
        self.opt = self.trainer.optimizers[0]
        if (self.step - 1) % self.save_interval != 0:
            self.step -= 1
            self.save()
            self.step += 1

    def save(self) -> None:
        """Write ``modelNNNNNN.pt``, ``ema_RATE_NNNNNN.pt``, ``optNNNNNN.pt`` (rank 0) to the log folder."""
        step = self.step + self.resume_step
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if rank == 0:
            folder = get_blob_logdir()
            logger.log("saving model 0...")
            torch.save(self.model.state_dict(), os.path.join(folder, f"model{step:06d}.pt"))
            for rate, average in self._ema._averages():
                logger.log(f"saving model {rate}...")
                torch.save(
                    average.module.unet.state_dict(), os.path.join(folder, f"ema_{rate}_{step:06d}.pt")
                )
            torch.save(self.trainer.optimizers[0].state_dict(), os.path.join(folder, f"opt{step:06d}.pt"))
        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def parse_resume_step_from_filename(filename: str) -> int:
    """The step of ``path/to/modelNNNNNN.pt`` (0 when the name has no such number)."""
    tail = str(filename).split("model")[-1].split(".")[0] if "model" in str(filename) else ""
    return int(tail) if tail.isdigit() else 0


def get_blob_logdir() -> str:
    """Where checkpoints go: the logger's folder."""
    return logger.get_dir()


def find_resume_checkpoint() -> str | None:
    """Hook for finding the latest checkpoint automatically; none by default."""
    return None


def find_ema_checkpoint(main_checkpoint: str | None, step: int, rate: float) -> str | None:
    """``ema_RATE_NNNNNN.pt`` next to ``main_checkpoint``, if it exists."""
    if main_checkpoint is None:
        return None
    path = os.path.join(os.path.dirname(main_checkpoint), f"ema_{rate}_{step:06d}.pt")
    return path if os.path.exists(path) else None


def log_loss_dict(diffusion, ts: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
    """``logkv_mean`` of each loss term and of its value in each quarter of the process (``_q0``..``_q3``)."""
    for key, values in losses.items():
        logger.logkv_mean(key, values.mean().item())
        for sub_t, sub_loss in zip(ts.cpu().tolist(), values.detach().cpu().tolist()):
            quartile = int(4 * sub_t / diffusion.num_timesteps)
            logger.logkv_mean(f"{key}_q{quartile}", sub_loss)
