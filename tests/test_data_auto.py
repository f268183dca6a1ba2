"""``data=imagefolder`` reads its class count, class names and channels from the folder (``auto``), once,
before anything is built: the networks, the saved config, the checkpoint and a resumed run see integers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageFile

from adm.config import build_network, compose_config, load_preset
from adm.data import ImageFolderDataModule, folder_values
from adm.data.examples import write_digit_folders
from adm.errors import UsageError
from adm.io.checkpoint import load_checkpoint
from adm.recipes.runs import RunDirGuard, check_saved_config
from adm.recipes.train import resolve_auto_data, train

REPO = Path(__file__).resolve().parents[1]
NAMES = ["one", "seven", "zero"]  # digits 0, 1, 7 as write_digit_folders names them, sorted
# A tiny network on 8-px images, two steps, nothing but the checkpoints written.
FAST = [
    "experiment=smoke",
    "data=imagefolder",
    "data.image_size=8",
    "data.num_workers=0",
    "data.val_fraction=0.2",
    "batch_size=4",
    "model.channel_mult=[1,2]",
    "callbacks.sample_grid=null",
    "trainer.max_steps=2",
]

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def digits(root: Path, colour: bool = True, per_class: int = 5) -> Path:
    """Class folders zero/ one/ seven/ of 8-px digits (RGB, or grey PNGs: PIL mode L)."""
    write_digit_folders(root, (0, 1, 7), size=8, per_class=per_class, colour=colour)
    return root


def save(path: Path, mode: str, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


def folder_args(path: Path, **kwargs) -> dict:
    common = dict(image_size=8, labels="folder", batch_size=2, num_workers=0, val_fraction=0.0, split_seed=0)
    return dict(path=str(path), random_flip=False, random_crop=False, max_corrupt=0, **common, **kwargs)


def test_auto_gives_the_folders_class_count_and_names(tmp_path: Path):
    folder = digits(tmp_path / "digits")
    for script, net, key in (
        ("train", "model", "num_classes"),
        ("train_classifier", "classifier", "out_channels"),
        ("train_superres", "model", "num_classes"),
    ):
        cfg = compose_config(script, ["data=imagefolder", f"data.path={folder}"])
        assert (cfg.data.num_classes, cfg.data.channels) == ("auto", "auto")  # the defaults: nothing typed
        resolve_auto_data(cfg)
        assert (cfg.data.num_classes, cfg.data.channels, cfg[net][key]) == (3, 3, 3), script
    # the fine-tuning recipes of the README, without data.num_classes
    cfg = compose_config("train", ["experiment=finetune_adm_u_64", f"data.path={folder}"])
    resolve_auto_data(cfg)
    assert (cfg.model.num_classes, cfg.model.in_channels) == (3, 3)

    found = folder_values(folder, labels="folder", num_classes="auto", channels="auto")
    assert (found.class_names, len(found.files), found.channels) == (NAMES, 15, 3)
    assert found.labels == [0] * 5 + [1] * 5 + [2] * 5  # one/, seven/, zero/ in sorted order
    dm = ImageFolderDataModule(**folder_args(folder, num_classes="auto", channels="auto"))
    assert (dm.num_classes, dm.class_names, dm.channels) == (3, NAMES, 3)
    # OpenAI's layout: the class is the file name before the first "_"
    for name in ("cat_1.png", "cat_2.png", "dog_1.png"):
        save(tmp_path / "named" / name, "RGB")
    found = folder_values(tmp_path / "named", labels="filename", num_classes="auto", channels="auto")
    assert found.class_names == ["cat", "dog"]


def test_a_given_count_is_checked_against_the_folder(tmp_path: Path):
    folder = digits(tmp_path / "digits", per_class=2)
    message = (
        f"data.num_classes=5 but the folder {folder} holds 3 classes (one, seven, zero); set "
        "data.num_classes=3, or auto to read it from the folder (data=imagefolder's default), or null for "
        "unconditional training"
    )
    run = tmp_path / "run"
    cfg = compose_config(
        "train", [*FAST, f"data.path={folder}", "data.num_classes=5", f"paths.output_dir={run}"]
    )
    with pytest.raises(UsageError) as error:
        train(cfg)
    assert str(error.value) == message
    assert not run.exists()  # before anything is built or written
    # given channels as well (nothing auto): the datamodule checks it, with the same words
    with pytest.raises(UsageError) as error:
        ImageFolderDataModule(**folder_args(folder, num_classes=5, channels=3))
    assert str(error.value) == message
    # a given count that fits is kept
    cfg = compose_config("train", ["data=imagefolder", f"data.path={folder}", "data.num_classes=3"])
    resolve_auto_data(cfg)
    assert (cfg.data.num_classes, cfg.model.num_classes) == (3, 3)


def test_auto_settings_that_cannot_be_read_are_clear_errors(tmp_path: Path):
    flat = tmp_path / "flat"
    for i in range(3):
        save(flat / f"{i}.png", "RGB")
    cfg = compose_config("train", ["data=imagefolder", f"data.path={flat}"])
    with pytest.raises(UsageError, match=r"num_classes=auto counts the class sub-folders .* 0\.png lies"):
        resolve_auto_data(cfg)
    # unconditional on request, as before; its channels are still read
    cfg = compose_config("train", ["data=imagefolder", f"data.path={flat}", "data.num_classes=null"])
    resolve_auto_data(cfg)
    assert (cfg.data.num_classes, cfg.model.num_classes, cfg.data.channels) == (None, None, 3)

    with pytest.raises(UsageError, match=r"data.path is not set: give data.path="):
        resolve_auto_data(compose_config("train", ["data=imagefolder"]))
    with pytest.raises(UsageError, match=r"data.num_classes=auto is read from an image folder .*MNIST5k"):
        resolve_auto_data(compose_config("train", ["data.num_classes=auto"]))
    with pytest.raises(UsageError, match=r"data.channels must be 1 \(grey\), 3 \(RGB\) or auto"):
        folder_values(flat, labels="folder", num_classes=None, channels=4)


def test_auto_channels_grey_and_rgb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def channels(folder: Path) -> int:
        return folder_values(folder, labels="folder", num_classes="auto", channels="auto").channels

    grey = digits(tmp_path / "grey", colour=False)
    assert channels(grey) == 1
    dm = ImageFolderDataModule(**folder_args(grey, num_classes="auto", channels="auto"))
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert dm.channels == 1 and x.shape == (2, 1, 8, 8)  # a grey folder trains one channel
    assert channels(digits(tmp_path / "rgb")) == 3
    save(grey / "zero" / "9999.png", "RGB")  # one colour file among grey ones, the last one
    assert channels(grey) == 3
    save(tmp_path / "p" / "a" / "0.gif", "P")  # a palette may hold colours
    assert channels(tmp_path / "p") == 3
    save(tmp_path / "i16" / "a" / "0.png", "I;16")
    assert channels(tmp_path / "i16") == 1

    # ImageNet-size folders: the headers of at most 32 files are read, nothing is decoded
    big = tmp_path / "big"
    for i in range(100):
        save(big / f"c{i % 4}" / f"{i}.png", "L", size=4)
    opened = []
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(fp)
        return real_open(fp, *args, **kwargs)

    def no_decoding(self):
        raise AssertionError("an image was decoded")

    with monkeypatch.context() as patch:
        patch.setattr(Image, "open", counting_open)
        patch.setattr(ImageFile.ImageFile, "load", no_decoding)
        assert channels(big) == 1
    assert len(opened) == 32 and len({Path(f).parent.name for f in opened}) == 4  # spread over every class


def test_a_short_run_records_the_folders_values_and_resumes(tmp_path: Path):
    folder = digits(tmp_path / "digits", colour=False)
    run = tmp_path / "run"
    args = [*FAST, f"data.path={folder}", f"paths.output_dir={run}"]
    assert train(compose_config("train", args)).global_step == 2

    config = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["adm_config"]
    assert (config["data"]["num_classes"], config["data"]["channels"], config["data"]["class_names"]) == (
        3,
        1,
        NAMES,
    )
    assert (config["model"]["num_classes"], config["model"]["in_channels"]) == (3, 1)
    resolved = OmegaConf.load(run / "resolved_config.yaml")
    assert (resolved.data.num_classes, resolved.data.channels, resolved.model.num_classes) == (3, 1, 3)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt").unet.num_classes == 3

    # continued in its directory: the folder gives the same integers, so the config is the same
    assert train(compose_config("train", [*args, "ckpt_path=last", "trainer.max_steps=3"])).global_step == 3

    # label dropout (classifier-free guidance) compares the network with the real class count
    dropout = "module.label_dropout" if "module" in compose_config("train") else "label_dropout"
    args = [*FAST, f"data.path={folder}", f"paths.output_dir={tmp_path / 'cfg'}", f"{dropout}=0.1"]
    with pytest.raises(
        ValueError, match=r"set model.num_classes=4 \(the data has 3 classes\), got num_classes=3"
    ):
        train(compose_config("train", args))


def test_fine_tuning_reads_the_class_count(tmp_path: Path):
    """README: ``experiment=finetune_adm_u_64 init_ckpt=... data.path=...``, no data.num_classes."""
    folder = digits(tmp_path / "digits", per_class=2)
    preset = {k: v for k, v in load_preset("adm_u_tiny").items() if k != "diffusion"}
    torch.manual_seed(0)
    released = build_network(
        {**preset, "num_classes": 10, "in_channels": 3, "image_size": 8, "channel_mult": [1, 2]}
    )
    torch.save(released.state_dict(), tmp_path / "released.pt")
    tiny = [
        "model=adm_u_tiny",
        "model.channel_mult=[1,2]",
        "trainer=cpu",
        "batch_size=4",
        "trainer.max_steps=1",
    ]
    args = [
        "experiment=finetune_adm_u_64",
        *tiny,
        f"init_ckpt={tmp_path / 'released.pt'}",
        f"data.path={folder}",
        "data.image_size=8",
        "data.num_workers=0",
        "data.val_fraction=0.0",
        "callbacks.sample_grid=null",
        "callbacks.progress_bar.refresh_rate=0",
        f"paths.output_dir={tmp_path / 'run'}",
    ]
    assert train(compose_config("train", args)).global_step == 1
    config = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["adm_config"]
    assert (config["model"]["num_classes"], config["data"]["class_names"]) == (3, NAMES)


def test_run_dir_guard_takes_auto_for_the_number_it_stands_for(tmp_path: Path):
    """A run saved with numbers (before ``auto``, or typed) continues with ``auto``, and the other way round;
    the resolved configs are compared as numbers."""
    folder = digits(tmp_path / "digits", per_class=2)
    run = tmp_path / "run"
    numbers = ["data.num_classes=3", "data.channels=3"]

    def guard(saved: list[str], given: list[str]) -> DictConfig:
        (run / ".hydra").mkdir(parents=True, exist_ok=True)
        base = ["data=imagefolder", f"data.path={folder}"]
        OmegaConf.save(compose_config("train", [*base, *saved]), run / ".hydra" / "config.yaml")
        config = compose_config(
            "train", [*base, *given, f"hydra.run.dir={run}", "ckpt_path=last"], hydra_node=True
        )
        RunDirGuard().on_run_start(config)
        return config

    assert guard(numbers, []).hydra.output_subdir == ".hydra/resumed_1"  # accepted, files beside the run's
    assert guard([], numbers).hydra.output_subdir.startswith(".hydra/resumed_")
    with pytest.raises(SystemExit):  # a real change is still refused
        guard([], ["data.image_size=16"])

    # resolved_config.yaml holds the integers: the folder's count now is compared with the run's
    cfg = compose_config("train", ["data=imagefolder", f"data.path={folder}", "ckpt_path=last"])
    resolve_auto_data(cfg)
    text = OmegaConf.to_yaml(cfg)
    (run / "resolved_config.yaml").write_text(text)
    assert check_saved_config(text, run) is False
    with pytest.raises(UsageError, match=r"data.num_classes: 3 -> 4"):
        check_saved_config(text.replace("num_classes: 3", "num_classes: 4"), run)


@pytest.mark.slow
def test_resume_dir_of_an_auto_run(tmp_path: Path):
    """The user's commands: ``scripts/train.py data=imagefolder data.path=...``, then ``resume=DIR``."""
    folder = digits(tmp_path / "digits", per_class=4)
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")

    def cli(*args: str) -> subprocess.CompletedProcess:
        script = str(REPO / "scripts" / "train.py")
        return subprocess.run(
            [sys.executable, script, *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )

    first = cli(*FAST, f"data.path={folder}", f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Read from the folder" in first.stderr + first.stdout
    assert OmegaConf.load(run / ".hydra" / "config.yaml").data.num_classes == "auto"
    again = cli(f"resume={run}", "trainer.max_steps=3")
    assert again.returncode == 0, again.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["adm_config"]["data"]["class_names"] == NAMES
