"""Resume: the train loader's own position, per-rank random streams, and bit-exact continuation of real runs
from every kind of checkpoint (mid-epoch, after an epoch's last batch, at an epoch's end, after kill -9)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DistributedSampler, TensorDataset

from adm.callbacks.resume import between_epochs, capture_rng_state, restore_rng_state
from adm.data import ShardSampler, resumable_loader
from adm.io.checkpoint import check_plain
from adm.recipes.train import train, train_classifier

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


# --- the loader ---------------------------------------------------------------------------------------------
def _loader(data, rank: int = 0, world_size: int = 1, num_workers: int = 0, batch_size: int = 4):
    return resumable_loader(
        data,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        seed=3,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        pin_memory=False,
    )


def _batches(loader_or_iter) -> list[list[int]]:
    return [b[0].tolist() for b in loader_or_iter]


def test_shard_sampler_shards_and_orders_by_seed_and_epoch():
    data = TensorDataset(torch.arange(23))
    kwargs = dict(num_replicas=2, shuffle=True, seed=3, batch_size=4, drop_last_batch=False)
    shards = [ShardSampler(data, rank=r, **kwargs) for r in (0, 1)]
    epoch0 = [list(s) for s in shards]
    assert set(epoch0[0] + epoch0[1]) == set(range(23))  # the shares cover the data (one index padded)
    assert len(epoch0[0]) == len(epoch0[1]) == 12
    # the same order as torch's DistributedSampler: (seed + epoch)-seeded permutation
    reference = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=3)
    assert epoch0[1] == list(reference)
    shards[0].set_epoch(1)
    assert list(shards[0]) != epoch0[0]  # a new order every epoch ...
    shards[0].set_epoch(0)
    assert list(shards[0]) == epoch0[0]  # ... that depends only on (seed, epoch)
    whole = ShardSampler(
        data, num_replicas=2, rank=0, shuffle=True, seed=3, batch_size=5, drop_last_batch=True
    )
    assert len(whole) == 10 and list(whole) == epoch0[0][:10]  # drop_last: whole batches only

    with pytest.raises(ValueError, match="keys 'epoch' and 'position'"):
        whole.load_state_dict({"consumed": 2})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_state_round_trip_mid_epoch(num_workers: int):
    data = TensorDataset(torch.arange(23))
    loader = _loader(data, num_workers=num_workers)
    epoch0 = _batches(loader)
    assert len(epoch0) == len(loader) == 5 and sorted(sum(epoch0, [])) != list(range(20))  # shuffled

    loader.sampler.set_epoch(1)  # what Lightning does before each epoch
    it = iter(loader)
    first = [next(it)[0].tolist() for _ in range(2)]
    state = loader.state_dict()
    check_plain(state)  # goes into a weights_only checkpoint
    rest = _batches(it)
    assert first + rest != epoch0

    resumed = _loader(data, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert _batches(resumed) == rest  # continues with the very next batch
    resumed.sampler.set_epoch(2)
    fresh = _loader(data)
    fresh.sampler.set_epoch(2)
    assert _batches(resumed) == _batches(fresh)  # and later epochs are untouched

    # saved after the last batch of an epoch: the next epoch, from its start
    it = iter(loader)
    assert len(_batches(it)) == 5
    at_end = loader.state_dict()
    after = _loader(data, num_workers=num_workers)
    after.load_state_dict(at_end)
    loader.sampler.set_epoch(2)
    assert _batches(after) == _batches(loader)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_reads_positions_of_earlier_checkpoints(num_workers: int):
    data = TensorDataset(torch.arange(20))
    straight = _loader(data, rank=1, world_size=2, batch_size=2)
    straight.sampler.set_epoch(1)
    expected = _batches(straight)[3:]
    old = _loader(data, rank=1, world_size=2, batch_size=2, num_workers=num_workers)
    old.load_state_dict({"epoch": 1, "consumed": 3})  # the format of the loader this one replaced
    assert _batches(old) == expected


def test_loader_leaves_the_global_streams_alone():
    loader = _loader(TensorDataset(torch.arange(40)), num_workers=0)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    _batches(loader)
    assert torch.equal(torch.get_rng_state(), before)


def test_rng_state_round_trip():
    state = capture_rng_state()
    check_plain(state)
    a = (torch.rand(3), np.random.rand(2).tolist(), random.random())
    restore_rng_state(state)
    b = (torch.rand(3), np.random.rand(2).tolist(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_between_epochs_leaves_other_states_alone():
    mid_epoch = {
        "epoch_progress": {"total": dict(ready=2, started=2, processed=1, completed=1), "current": {}},
        "epoch_loop.batch_progress": {
            "total": dict(ready=5, started=5, processed=5, completed=4),
            "current": dict(ready=2, started=2, processed=2, completed=1),
            "is_last_batch": False,
        },
    }
    assert between_epochs(mid_epoch) is None
    assert mid_epoch["epoch_loop.batch_progress"]["current"]["ready"] == 2
    assert between_epochs({"something": "else"}) is None


# --- real runs ----------------------------------------------------------------------------------------------
# 12 training digits and 4 per step: 3 batches per epoch, so 10 steps cross three epoch ends.
RESUME = [
    "experiment=smoke",
    "data.val_fraction=0.9976",
    "diffusion.steps=4",  # the loss-aware sampler warms up within the run
    "timestep_sampler._target_=adm.diffusion.LossSecondMomentSampler",
    "+timestep_sampler.history_per_term=2",
    "model.dropout=0.1",  # dropout draws from the random streams too
    "callbacks.sample_grid=null",
    "callbacks.last_checkpoint.every_n_train_steps=1000",
    "callbacks.model_checkpoint.every_n_train_steps=1",  # step_XXXXXXX.ckpt, written in on_train_batch_end
]
STEPS = 10
COMPARED = [
    "state_dict",  # EMA weights (first rate)
    "current_model_state",  # raw weights
    "optimizer_states",
    "lr_schedulers",
    "adm_ema",  # the other EMA rates
    "averaging_state",
    "timestep_sampler",
    "rng_states",
    "adm_config",
    "global_step",
]


@pytest.fixture
def resume_cfg(compose, fast_overrides):
    """``resume_cfg(run_dir, *overrides)``: the train config of the runs below (RESUME, shrunk)."""

    def cfg(run_dir: Path, *overrides: str):
        return compose("train", [*RESUME, *fast_overrides["train"], *overrides], output_dir=run_dir)

    return cfg


@pytest.fixture
def assert_same_run(assert_same):
    def check(a: dict, b: dict) -> None:
        assert a["global_step"] == b["global_step"] == STEPS
        for key in COMPARED:
            assert_same(a[key], b[key], key)
        assert_same(a["callbacks"]["EMA"], b["callbacks"]["EMA"], "EMA state")
        assert_same(a["loops"], b["loops"], "loops")  # counters and the loader's position

    return check


def _epoch_counts(ckpt: dict) -> dict[str, int]:
    return ckpt["loops"]["fit_loop"]["epoch_progress"]["total"]


def test_resume_is_bit_exact_from_batch_and_epoch_end_checkpoints(
    tmp_path: Path, resume_cfg, read_ckpt, assert_same_run
):
    """10 steps straight == the same run stopped and resumed at each kind of checkpoint."""
    straight = tmp_path / "straight"
    train(resume_cfg(straight, f"trainer.max_steps={STEPS}"))
    a = read_ckpt(straight / "checkpoints" / "last.ckpt")
    assert a["timestep_sampler"]["loss_counts"].min() == 2  # the importance sampler was active
    key = "unet.out.2.weight"
    assert not torch.equal(a["state_dict"][key], a["current_model_state"][key])  # EMA != raw weights

    # written in on_train_batch_end: mid-epoch (step 4) and after the last batch of an epoch (step 6)
    for step in (4, 6):
        legs = tmp_path / f"batch_end_{step}"
        (legs / "checkpoints").mkdir(parents=True)
        saved = legs / "checkpoints" / "last.ckpt"
        shutil.copy(straight / "checkpoints" / f"step_{step:07d}.ckpt", saved)
        assert read_ckpt(saved)["global_step"] == step
        train(resume_cfg(legs, f"trainer.max_steps={STEPS}", "ckpt_path=last"))
        assert_same_run(a, read_ckpt(saved))

    # written in on_train_epoch_end by LastCheckpoint: the run stops at the end of its second epoch
    legs = tmp_path / "epoch_end"
    train(resume_cfg(legs, f"trainer.max_steps={STEPS}", "+trainer.max_epochs=2"))
    saved = read_ckpt(legs / "checkpoints" / "last.ckpt")
    counts = _epoch_counts(saved)
    assert saved["global_step"] == 6 and counts["processed"] == counts["completed"] + 1 == 2  # an epoch end
    train(resume_cfg(legs, f"trainer.max_steps={STEPS}", "ckpt_path=last"))
    assert_same_run(a, read_ckpt(legs / "checkpoints" / "last.ckpt"))


def test_resume_is_bit_exact_from_lightning_epoch_checkpoints(
    tmp_path: Path, resume_cfg, read_ckpt, assert_same_run
):
    """Lightning's own ModelCheckpoint, writing at every epoch end (save_on_train_epoch_end)."""
    per_epoch = [
        "callbacks.model_checkpoint.every_n_train_steps=null",
        "+callbacks.model_checkpoint.every_n_epochs=1",
        "callbacks.model_checkpoint.save_on_train_epoch_end=true",
        "callbacks.model_checkpoint.filename=epoch_\\{epoch\\}",
    ]
    straight = tmp_path / "straight"
    train(resume_cfg(straight, *per_epoch, f"trainer.max_steps={STEPS}"))
    a = read_ckpt(straight / "checkpoints" / "last.ckpt")
    saved = straight / "checkpoints" / "epoch_0.ckpt"
    assert read_ckpt(saved)["global_step"] == 3
    legs = tmp_path / "legs"
    train(resume_cfg(legs, *per_epoch, f"trainer.max_steps={STEPS}", f"ckpt_path={saved}"))
    assert_same_run(a, read_ckpt(legs / "checkpoints" / "last.ckpt"))


def test_classifier_resume_with_validation_is_bit_exact(
    tmp_path: Path, compose, fast_overrides, read_ckpt, assert_same
):
    """3 steps straight == 2 steps, validation, resume to 3: validation must not move the training streams."""
    common = [
        "experiment=smoke_classifier",
        *fast_overrides["train_classifier"],
        "lr_schedule=constant",
        "data.val_fraction=0.05",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=1",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        "callbacks.model_checkpoint=null",
    ]
    straight, legs = tmp_path / "straight", tmp_path / "legs"
    train_classifier(compose("train_classifier", [*common, "trainer.max_steps=3"], output_dir=straight))
    train_classifier(compose("train_classifier", [*common, "trainer.max_steps=2"], output_dir=legs))
    train_classifier(
        compose("train_classifier", [*common, "trainer.max_steps=3", "ckpt_path=last"], output_dir=legs)
    )
    a, b = read_ckpt(straight / "checkpoints" / "last.ckpt"), read_ckpt(legs / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 3
    for key in ["state_dict", "optimizer_states", "lr_schedulers", "rng_states"]:
        assert_same(a[key], b[key], key)


@pytest.fixture
def fit_by_epochs(compose, dropout_linear, read_ckpt):
    """``fit_by_epochs(run_dir, max_epochs, ckpt_path=None) -> dict``: a Lightning-only run (no adm module)
    with the resume callbacks; returns its last checkpoint."""
    from hydra.utils import instantiate

    from adm.callbacks import EpochEndResume, LastCheckpoint, RandomStreams

    data = compose(None, ["+data=mnist5k", "data.image_size=8", "data.batch_size=4"]).data

    def fit(run_dir: Path, max_epochs: int, ckpt_path: str | None = None) -> dict:
        pl.seed_everything(0)
        datamodule = instantiate(data, val_fraction=0.9976)  # 12 training digits: 3 batches per epoch
        module = dropout_linear()
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=max_epochs,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=run_dir,
            callbacks=[
                RandomStreams(seed=0),
                EpochEndResume(),
                LastCheckpoint(dirpath=run_dir, save_top_k=0, save_last=True, save_on_train_epoch_end=True),
            ],
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        return read_ckpt(run_dir / "last.ckpt")

    return fit


def test_resume_is_bit_exact_when_training_by_epochs(tmp_path: Path, fit_by_epochs, assert_same):
    """max_epochs, no max_steps: Lightning restores no loader position; the loader starts the right epoch."""
    a = fit_by_epochs(tmp_path / "straight", max_epochs=4)
    fit_by_epochs(tmp_path / "legs", max_epochs=2)
    b = fit_by_epochs(tmp_path / "legs", max_epochs=4, ckpt_path=str(tmp_path / "legs" / "last.ckpt"))
    assert a["global_step"] == b["global_step"] == 12
    for key in ["state_dict", "optimizer_states", "rng_states"]:
        assert_same(a[key], b[key], key)


# --- kill -9 ------------------------------------------------------------------------------------------------
def _script(run_dir: Path, fast: list[str], *overrides: str) -> list[str]:
    return [
        sys.executable,
        "scripts/train.py",
        *RESUME,
        *fast,
        "callbacks.model_checkpoint=null",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]


@pytest.mark.slow
def test_resume_after_kill_9_is_bit_exact(tmp_path: Path, fast_overrides, read_ckpt, assert_same):
    """A run killed (SIGKILL) mid-way and resumed with ckpt_path=last == an uninterrupted run."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    steps = 60
    fast = fast_overrides["train"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(
        _script(straight, fast, f"trainer.max_steps={steps}"),
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    proc = subprocess.Popen(
        _script(killed, fast, f"trainer.max_steps={steps}"),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if last.is_file() and read_ckpt(last)["global_step"] >= 11:  # past three epoch ends
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    stopped_at = read_ckpt(last)["global_step"]
    assert 11 <= stopped_at < steps

    resumed = subprocess.run(
        _script(killed, fast, f"trainer.max_steps={steps}", "ckpt_path=last"),
        cwd=REPO,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    a, b = read_ckpt(straight / "checkpoints" / "last.ckpt"), read_ckpt(last)
    assert a["global_step"] == b["global_step"] == steps
    for key in COMPARED:
        if key != "global_step":
            assert_same(a[key], b[key], key)
    assert_same(a["loops"], b["loops"], "loops")


def test_each_rank_restores_its_own_random_streams():
    """A 2-process checkpoint: rank 1 must get rank 1's saved streams (its row is a view at an offset)."""
    from types import SimpleNamespace

    from adm.callbacks.resume import RNG_KEY, RandomStreams, capture_rng_state

    torch.manual_seed(10)
    rank0 = capture_rng_state(cuda=False)
    torch.manual_seed(11)
    rank1 = capture_rng_state(cuda=False)
    saved = {k: torch.stack([rank0[k], rank1[k]]) for k in rank0}
    expected = torch.randn(4)  # what rank 1's stream draws next

    torch.manual_seed(99)
    callback = RandomStreams(seed=0)
    trainer = SimpleNamespace(world_size=2, global_rank=1)
    callback.on_load_checkpoint(trainer, None, {RNG_KEY: saved})
    callback.on_train_start(trainer, None)
    assert torch.equal(torch.randn(4), expected)
