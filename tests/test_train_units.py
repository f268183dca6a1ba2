"""Unit tests of the training pieces: EMA maths, lr schedules, batch split, atomic writes, checkpoint loading,
and the experiment configs (resume: tests/test_resume.py)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from adm.callbacks import EMA, ema_decay
from adm.io.checkpoint import check_plain, load_checkpoint
from adm.io.files import atomic_torch_save
from adm.io.safe_load import safe_torch_load
from adm.lit.common import per_device_batch_size
from adm.lit.optim import WarmupLinearAnneal, warmup_linear_anneal

REPO = Path(__file__).resolve().parents[1]


# --- EMA ----------------------------------------------------------------------------------------------------
class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)


class FakeScaler:
    def __init__(self, scale: float):
        self.scale = scale

    def get_scale(self) -> float:
        return self.scale

    def is_enabled(self) -> bool:
        return True


def _step(ema: EMA, trainer, module, new_weight: torch.Tensor, skipped: bool = False) -> None:
    """One optimizer step as Lightning drives it: hook before the step, weights change, batch end."""
    ema.on_before_optimizer_step(trainer, module, None)
    if skipped:  # the grad scaler found inf/nan: no weight change, scale backed off
        trainer.precision_plugin.scaler.scale /= 2
    else:
        module.lin.weight.data.copy_(new_weight)
    trainer.global_step += 1
    ema.on_train_batch_end(trainer, module, None, None, 0)


def test_ema_several_rates_with_warmup_and_skipped_steps():
    torch.manual_seed(0)
    module = Tiny()
    trainer = SimpleNamespace(global_step=0, precision_plugin=SimpleNamespace(scaler=FakeScaler(2.0**16)))
    ema = EMA(rates=[0.99, 0.2], warmup=True)
    ema.setup(trainer, module, "fit")

    expected = {
        r: module.lin.weight.detach().clone() for r in ema.rates
    }  # averages start at the initial weights
    n = 0
    for step in range(6):
        w = torch.randn(2, 3)
        skipped = step == 2
        _step(ema, trainer, module, w, skipped=skipped)
        if skipped:
            continue
        for r in ema.rates:
            d = min(r, (1 + n) / (10 + n))
            expected[r] = d * expected[r] + (1 - d) * w
        n += 1
    assert ema.num_updates == 5 and ema.skipped_steps == 1
    for r in ema.rates:
        torch.testing.assert_close(ema.averaged_module(r).lin.weight, expected[r], rtol=0, atol=1e-6)
    # the two rates really differ (0.2 caps the warm-up decay from update 2 on)
    assert not torch.allclose(ema.averaged_module(0.99).lin.weight, ema.averaged_module(0.2).lin.weight)


def test_ema_decay_formula_and_errors():
    assert ema_decay(0.9999, 0, warmup=True) == pytest.approx(0.1)
    assert ema_decay(0.9999, 90, warmup=True) == pytest.approx(91 / 100)
    assert ema_decay(0.9999, 10**6, warmup=True) == 0.9999
    assert ema_decay(0.9999, 0, warmup=False) == 0.9999
    for bad in ([], [1.0], [0.9, 0.9], [-0.1]):
        with pytest.raises(ValueError, match="EMA rates"):
            EMA(rates=bad, warmup=True)


def test_ema_checkpoint_round_trip():
    torch.manual_seed(1)
    module = Tiny()
    trainer = SimpleNamespace(global_step=0, precision_plugin=SimpleNamespace(scaler=None))
    ema = EMA(rates=[0.9, 0.7], warmup=False)
    ema.setup(trainer, module, "fit")
    for _ in range(3):
        _step(ema, trainer, module, torch.randn(2, 3))
    ckpt = {"state_dict": module.state_dict()}
    ema.on_save_checkpoint(trainer, module, ckpt)
    ckpt["callback"] = ema.state_dict()
    check_plain(ckpt)  # nothing but plain types and tensors

    fresh_module, fresh = Tiny(), EMA(rates=[0.9, 0.7], warmup=False)
    fresh.setup(trainer, fresh_module, "fit")
    fresh_module.load_state_dict(ckpt["state_dict"])  # what Lightning does before the callbacks
    fresh.load_state_dict(ckpt["callback"])
    fresh.on_load_checkpoint(trainer, fresh_module, ckpt)
    assert torch.equal(fresh_module.lin.weight, module.lin.weight)  # raw weights back in the module
    for r in (0.9, 0.7):
        assert torch.equal(fresh.averaged_module(r).lin.weight, ema.averaged_module(r).lin.weight)
    assert fresh.num_updates == 3
    with pytest.raises(ValueError, match="EMA rates"):
        EMA(rates=[0.5], warmup=False).load_state_dict(ckpt["callback"])


# --- schedules and batch split ------------------------------------------------------------------------------
def test_lr_schedule_closed_forms():
    assert [WarmupLinearAnneal(0, None)(s) for s in (0, 10, 10**6)] == [1.0, 1.0, 1.0]
    assert [WarmupLinearAnneal(4, None)(s) for s in (0, 1, 3, 100)] == [0.25, 0.5, 1.0, 1.0]
    assert [WarmupLinearAnneal(0, 100)(s) for s in (0, 50, 100, 150)] == [1.0, 0.5, 0.0, 0.0]
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=3e-4)
    sched = warmup_linear_anneal(opt, warmup_steps=0, anneal_steps=10)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([3e-4, 2.7e-4, 2.4e-4])  # OpenAI: lr * (1 - step / anneal_steps)
    check_plain(sched.state_dict())
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupLinearAnneal(-1, None)


def test_per_device_batch():
    assert per_device_batch_size(2048, 8, 2, 1) == 128
    assert per_device_batch_size(256, 2, 1, 4) == 32
    with pytest.raises(ValueError, match="multiple of 6"):
        per_device_batch_size(256, 3, 1, 2)


# --- atomic writes ------------------------------------------------------------------------------------------
def test_atomic_write_survives_failure_mid_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.arange(4.0)}, path)
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"w": torch.zeros(4)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(safe_torch_load(path)["w"], torch.arange(4.0))  # the old file, intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


def _write_then_die(path: str) -> None:
    def save(obj, f, *args, **kwargs):
        f.write(b"partial bytes")
        f.flush()
        os._exit(9)  # the process dies on the spot: no exception handler, no cleanup

    torch.save = save
    atomic_torch_save({"w": torch.zeros(3)}, path)


def test_atomic_write_survives_process_kill(tmp_path: Path):
    """A process that dies in the middle of writing leaves the previous file loadable."""
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"w": torch.ones(3)}, path)
    proc = multiprocessing.get_context("fork").Process(target=_write_then_die, args=(str(path),))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 9
    assert torch.equal(safe_torch_load(path)["w"], torch.ones(3))


# --- load_checkpoint errors ---------------------------------------------------------------------------------
class _Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_load_checkpoint_rejects_foreign_corrupt_and_unsafe_files(tmp_path: Path, capsys, tiny_checkpoint):
    foreign = tmp_path / "openai.pt"
    torch.save({"input_blocks.0.0.weight": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="not an adm training checkpoint"):
        load_checkpoint(foreign)

    good = tiny_checkpoint("classifier")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:50])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        load_checkpoint(truncated)

    unsafe = tmp_path / "unsafe.ckpt"
    with open(unsafe, "wb") as f:
        pickle.dump({"adm_config": _Boom()}, f)  # hand-made: a pickle no writer would produce
    with pytest.raises(ValueError):
        load_checkpoint(unsafe)
    assert "must never run" not in capsys.readouterr().out

    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="plain types"):
        check_plain({"cfg": object()})


# --- experiment configs -------------------------------------------------------------------------------------
CONF = REPO / "conf"
SCRIPTS = ("train", "train_classifier", "train_superres")


@pytest.fixture
def compose_train(compose):
    """``compose_train(name, overrides)``: a training script's config with its hydra node (the task name)."""

    def compose_(name: str, overrides: list[str]):
        return compose(name, overrides, output_dir="/tmp/unused", hydra_node=True)

    return compose_


def test_paper_experiments_compose(compose_train):
    cfg = compose_train("train", ["experiment=adm_u_64_imagenet"])
    assert (cfg.batch_size, cfg.optimizer.lr, cfg.model.dropout) == (2048, 3e-4, 0.1)
    assert list(cfg.callbacks.ema.rates) == [0.9999] and cfg.hydra.runtime.choices.diffusion == "cosine"
    assert cfg.model._target_ == "adm.nn.UNet" and cfg.trainer.strategy == "ddp"
    assert (cfg.model.image_size, cfg.model.in_channels, cfg.model.num_classes) == (64, 3, 1000)
    cfg = compose_train("train", ["experiment=adm_u_256_imagenet"])
    assert (cfg.batch_size, cfg.optimizer.lr, cfg.hydra.runtime.choices.diffusion) == (256, 1e-4, "linear")

    cfg = compose_train("train_classifier", ["experiment=classifier_imagenet128"])
    assert (cfg.batch_size, cfg.optimizer.lr, cfg.optimizer.weight_decay) == (256, 3e-4, 0.05)
    assert cfg.trainer.max_steps == cfg.lr_schedule.anneal_steps == 300000
    assert cfg.data.random_crop and cfg.hydra.runtime.choices.diffusion == "linear"
    assert (cfg.classifier.image_size, cfg.classifier.out_channels) == (128, 1000)

    for name in (
        "adm_u_128_imagenet",
        "adm_u_512_imagenet",
        "adm_u_256_uncond_imagenet",
        "adm_u_lsun_bedroom",
    ):
        assert compose_train("train", [f"experiment={name}"]).task_name == name
    for name in ("classifier_imagenet64", "classifier_imagenet256", "classifier_imagenet512"):
        assert compose_train("train_classifier", [f"experiment={name}"]).task_name == name


def _experiments(script: str) -> set[str]:
    return {p.stem for p in (CONF / "experiments" / script / "experiment").glob("*.yaml")}


def test_each_training_script_has_its_own_experiments(compose_train):
    from hydra.errors import MissingConfigException

    assert {"smoke", "demo_diffusion", "adm_u_64_imagenet"} <= _experiments("train")
    assert {"smoke", "demo_classifier", "classifier_imagenet64"} <= _experiments("train_classifier")
    assert {"sr_mnist", "sr_64_256", "sr_128_512"} <= _experiments("train_superres")
    assert not (CONF / "experiment").exists()  # no shared group the scripts could confuse

    diffusion = compose_train("train", ["experiment=smoke"])
    assert diffusion.task_name == "smoke" and "model" in diffusion and "classifier" not in diffusion
    classifier = compose_train("train_classifier", ["experiment=smoke"])
    assert classifier.task_name == "smoke_classifier"
    assert "classifier" in classifier and "model" not in classifier
    assert classifier.hydra.runtime.choices.classifier == "adm_cls_tiny" and classifier.trainer.max_steps == 6
    alias = compose_train("train_classifier", ["experiment=smoke_classifier"])
    assert alias.task_name == "smoke_classifier" and alias.classifier == classifier.classifier
    assert compose_train("train_superres", ["experiment=sr_mnist"]).task_name == "sr_mnist"

    # another script's (or an unknown) name: Hydra's error lists exactly this script's experiments
    for script, name in [("train_classifier", "adm_u_64_imagenet"), ("train", "demo_classifier"),
                         ("train_superres", "smoke"), ("train", "nope")]:  # fmt: skip
        with pytest.raises(MissingConfigException) as info:
            compose_train(script, [f"experiment={name}"])
        listed = set(str(info.value).split("Available options in 'experiment':")[1].split()) & (
            _experiments("train") | _experiments("train_classifier") | _experiments("train_superres")
        )
        assert listed == _experiments(script), (script, listed)


def test_training_configs_take_sizes_and_classes_from_the_data(compose_train):
    for path in [
        *(CONF / "experiments").glob("*/experiment/*.yaml"),
        *(CONF / f"{script}.yaml" for script in SCRIPTS),
    ]:
        text = path.read_text()
        assert "num_classes: 1000" not in text and "image_size: 64" not in text, path
    for path in (CONF / "data").glob("*.yaml"):
        data = path.read_text()
        assert "\nchannels: " in data and "\nnum_classes: " in data and "class_cond" not in data, path
    cfg = compose_train("train", [])
    assert (cfg.model.image_size, cfg.model.in_channels, cfg.model.num_classes) == (28, 1, 10)
    cfg = compose_train("train", ["data.image_size=8", "data.num_classes=null"])
    assert (cfg.model.image_size, cfg.model.num_classes) == (8, None)
    cfg = compose_train("train_superres", ["model=adm_sr_64_256", "data=cifar10"])
    assert (cfg.model.image_size, cfg.model.in_channels, cfg.model.num_classes) == (32, 3, 10)
    cfg = compose_train("train_classifier", ["classifier=adm_cls_64"])  # the preset brings ImageNet-64
    assert (cfg.data.image_size, cfg.classifier.image_size, cfg.classifier.out_channels) == (64, 64, 1000)


def test_data_values_are_checked_against_the_config_and_the_images(tmp_path: Path, compose_train):
    from PIL import Image

    from adm.data import ImageFolderDataModule, MNIST5kDataModule
    from adm.recipes.train import check_data_values

    with pytest.raises(ValueError, match=r"data.num_classes is not set .*data.num_classes=null"):
        check_data_values(
            compose_train("train", ["data=imagefolder", "data.path=x", "data.num_classes=???"]), "model"
        )
    with pytest.raises(ValueError, match="a noisy classifier needs labels"):
        check_data_values(compose_train("train_classifier", ["data.num_classes=null"]), "classifier")
    check_data_values(
        compose_train("train", ["data=imagefolder", "data.path=x", "data.num_classes=3"]), "model"
    )

    common = dict(
        image_size=8, batch_size=2, num_workers=0, val_fraction=0.0, split_seed=0, random_flip=False,
        random_crop=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"num_classes=7 but MNIST-5k holds 10 classes.*data.num_classes=10"):
        MNIST5kDataModule(num_classes=7, channels=1, **common)
    with pytest.raises(ValueError, match=r"channels=3 but MNIST-5k has 1-channel images; set data.channels"):
        MNIST5kDataModule(num_classes=10, channels=3, **common)
    assert MNIST5kDataModule(num_classes=10, channels=1, **common).num_classes == 10
    assert MNIST5kDataModule(num_classes=None, channels=1, **common).num_classes is None

    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (10, 10), (i * 80, 20, 30)).save(tmp_path / cls / f"{i}.png")
    folder = dict(path=str(tmp_path), labels="folder", max_corrupt=0, **common)
    with pytest.raises(ValueError, match=r"holds 2 classes \(cat, dog\); set data.num_classes=2"):
        ImageFolderDataModule(num_classes=1000, channels=3, **folder)
    assert ImageFolderDataModule(num_classes=2, channels=3, **folder).class_names == ["cat", "dog"]
    assert ImageFolderDataModule(num_classes=None, channels=3, **folder).num_classes is None
    with pytest.raises(ValueError, match="contradicts"):
        ImageFolderDataModule(num_classes=2, class_cond=False, **folder)
