"""Starting a new run from existing weights (``init_ckpt``), and the checks that keep resuming honest."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adm.config import build_network
from adm.io.init_weights import check_resume, load_init_weights, read_init_state
from adm.recipes.train import train, train_classifier

TINY = ["model=adm_u_tiny", "model.channel_mult=[1,2]", "trainer=cpu", "batch_size=4"]
TINY_CLS = ["classifier=adm_cls_tiny", "classifier.channel_mult=[1,2]", "trainer=cpu", "batch_size=4"]
QUIET_CLS = ["logger=csv", "callbacks.progress_bar.refresh_rate=0", "trainer.enable_model_summary=false"]
QUIET = [*QUIET_CLS, "callbacks.sample_grid=null"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def make_folder(root: Path, classes: int, per_class: int = 4, size: int = 8) -> Path:
    """Class folders of small RGB PNGs, each class its own colour."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 40, (size, size, 3)) + 60 * c
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"class_{c}" / f"{i}.png")
    return root


def folder_data(path: Path, classes: int) -> list[str]:
    return [
        "data=imagefolder",
        f"data.path={path}",
        f"data.num_classes={classes}",
        "data.image_size=8",
        "data.num_workers=0",
        "data.val_fraction=0.2",
    ]


def tiny_unet(num_classes: int | None, channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(num_classes or 0)
    cfg = dict(build_cfg("model", "adm_u_tiny"), num_classes=num_classes, in_channels=channels, image_size=8)
    cfg["channel_mult"] = [1, 2]
    return build_network(cfg)


def build_cfg(kind: str, name: str) -> dict:
    from adm.config import load_preset

    return {k: v for k, v in load_preset(name).items() if k != "diffusion"}


def ckpt_state(path: Path, prefix: str, key: str = "state_dict") -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return {k[len(prefix) :]: v for k, v in ckpt[key].items() if k.startswith(prefix)}


def test_openai_state_dict_onto_three_classes(tmp_path: Path, caplog, compose):
    """An OpenAI-format state dict (plain {key: tensor}) of a 10-class net fine-tunes onto 3 class folders:
    the label embedding is fresh, every other tensor is the file's; EMA starts from them; step 0."""
    released = tiny_unet(10)
    torch.save(released.state_dict(), tmp_path / "released.pt")
    data = make_folder(tmp_path / "images", 3)
    overrides = [*TINY, *QUIET, *folder_data(data, 3), f"init_ckpt={tmp_path / 'released.pt'}"]
    # lr 0: the weights the run starts from are exactly the weights it ends with
    cfg = compose("train", [*overrides, "optimizer.lr=0", "trainer.max_steps=2"], output_dir=tmp_path / "run")
    with caplog.at_level(logging.INFO):
        trainer = train(cfg)
    assert trainer.global_step == 2  # a new run: counted from 0
    assert sum("label embedding is re-initialised" in r.getMessage() for r in caplog.records) == 1
    assert any("wrote last.ckpt" in r.getMessage() for r in caplog.records)
    summary = "Data: 12 images (10 train, 2 held out), 3 classes (class_0, class_1, class_2), 8x8 px"
    assert any(r.getMessage().startswith(summary) for r in caplog.records)
    config = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["adm_config"]
    assert config["data"]["class_names"] == ["class_0", "class_1", "class_2"]  # sampling takes labels by name
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    expected = released.state_dict()
    for weights in ("state_dict", "current_model_state"):  # EMA, raw
        state = ckpt_state(last, "unet.", weights)
        assert state["label_emb.weight"].shape == (3, expected["label_emb.weight"].shape[1])
        others = [k for k in expected if k != "label_emb.weight"]
        assert set(state) == set(expected)
        for k in others:
            torch.testing.assert_close(state[k], expected[k], rtol=0, atol=0, msg=k)
    # the fresh embedding is not a slice of the released one
    assert not torch.equal(state["label_emb.weight"], expected["label_emb.weight"][:3])


def test_our_checkpoint_with_another_class_count(tmp_path: Path, compose):
    """A 3-class run of ours starts a 2-class run: EMA weights by default, raw ones with init_ema=false."""
    first = [*TINY, *QUIET, *folder_data(make_folder(tmp_path / "three", 3), 3)]
    train(compose("train", [*first, "trainer.max_steps=3"], output_dir=tmp_path / "a"))
    source = tmp_path / "a" / "checkpoints" / "last.ckpt"
    ema, raw = ckpt_state(source, "unet."), ckpt_state(source, "unet.", "current_model_state")
    assert not torch.equal(ema["out.2.weight"], raw["out.2.weight"])

    second = [*TINY, *QUIET, *folder_data(make_folder(tmp_path / "two", 2), 2), f"init_ckpt={source}"]
    for flag, expected in (("init_ema=true", ema), ("init_ema=false", raw)):
        run = tmp_path / flag.replace("=", "_")
        train(compose("train", [*second, flag, "optimizer.lr=0", "trainer.max_steps=1"], output_dir=run))
        state = ckpt_state(run / "checkpoints" / "last.ckpt", "unet.", "current_model_state")
        assert state["label_emb.weight"].shape[0] == 2
        for k in expected:
            if k != "label_emb.weight":
                torch.testing.assert_close(state[k], expected[k], rtol=0, atol=0, msg=k)

    # a diffusion checkpoint is no classifier
    with pytest.raises(ValueError, match="holds a diffusion model"):
        read_init_state(source, "classifier")


def test_classifier_head_reinitialised(tmp_path: Path, caplog):
    cfg = {
        **build_cfg("classifier", "adm_cls_tiny"),
        "channel_mult": [1, 2],
        "image_size": 8,
        "in_channels": 3,
    }
    torch.manual_seed(0)
    released = build_network({**cfg, "out_channels": 10})
    torch.save(released.state_dict(), tmp_path / "cls.pt")
    torch.manual_seed(1)
    mine = build_network({**cfg, "out_channels": 3})
    with caplog.at_level(logging.INFO):
        report = load_init_weights(mine, tmp_path / "cls.pt", section="classifier")
    assert report.reinitialised == ("out.2.c_proj.weight", "out.2.c_proj.bias")
    assert report.classes == (10, 3) and report.source == "openai"
    for k, v in mine.state_dict().items():
        if k not in report.reinitialised:
            assert torch.equal(v, released.state_dict()[k]), k
    assert mine.state_dict()["out.2.c_proj.weight"].shape[0] == 3
    assert any("head is re-initialised" in r.getMessage() for r in caplog.records)


def test_classifier_recipe_takes_init_ckpt(tmp_path: Path, compose):
    cfg = {
        **build_cfg("classifier", "adm_cls_tiny"),
        "channel_mult": [1, 2],
        "image_size": 8,
        "in_channels": 3,
    }
    released = build_network({**cfg, "out_channels": 10})
    torch.save(released.state_dict(), tmp_path / "cls.pt")
    data = folder_data(make_folder(tmp_path / "images", 3), 3)
    run = [
        *TINY_CLS,
        *QUIET_CLS,
        *data,
        f"init_ckpt={tmp_path / 'cls.pt'}",
        "optimizer.lr=0",
        "trainer.max_steps=1",
    ]
    train_classifier(
        compose("train_classifier", [*run, "trainer.limit_val_batches=0"], output_dir=tmp_path / "r")
    )
    state = ckpt_state(tmp_path / "r" / "checkpoints" / "last.ckpt", "classifier.")
    torch.testing.assert_close(
        state["input_blocks.0.0.weight"], released.state_dict()["input_blocks.0.0.weight"]
    )


def test_architecture_that_does_not_fit_names_the_preset(tmp_path: Path):
    """Weights of another architecture: one error naming the preset that fits; the network is untouched."""
    other = build_network("adm_u_mnist")  # 1 channel, widths 32-32-64, attention at 7 px
    torch.save(other.state_dict(), tmp_path / "other.pt")
    from adm.config import preset_hint

    mine = tiny_unet(3, channels=1)
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    with pytest.raises(ValueError, match="adm_u_mnist") as err:
        load_init_weights(mine, tmp_path / "other.pt", hint=preset_hint)
    assert "does not fit" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in mine.state_dict().items())


def test_not_a_checkpoint(tmp_path: Path):
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="neither a plain state dict"):
        read_init_state(tmp_path / "odd.pt", "model")


def test_resume_traps(tmp_path: Path, compose):
    """ckpt_path with OpenAI weights points to init_ckpt; a checkpoint past max_steps stops before fitting."""
    torch.save(tiny_unet(10).state_dict(), tmp_path / "released.pt")
    with pytest.raises(ValueError, match="init_ckpt="):
        check_resume(tmp_path / "released.pt", 100)

    base = [*TINY, *QUIET, *folder_data(make_folder(tmp_path / "images", 3), 3)]
    train(compose("train", [*base, "trainer.max_steps=3"], output_dir=tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert check_resume(last, 5) == 3
    written = last.read_bytes()
    cfg = compose("train", [*base, "trainer.max_steps=2", f"ckpt_path={last}"], output_dir=tmp_path / "run")
    with pytest.raises(ValueError, match="step 3, and trainer.max_steps=2"):
        train(cfg)
    assert last.read_bytes() == written  # nothing already written is lost


def test_done_says_when_nothing_was_written(tmp_path: Path, caplog, compose):
    base = [*TINY, *QUIET, *folder_data(make_folder(tmp_path / "images", 3), 3)]
    train(compose("train", [*base, "trainer.max_steps=2"], output_dir=tmp_path / "run"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO):
        train(compose("train", [*base, "trainer.max_steps=2", "ckpt_path=last"], output_dir=tmp_path / "run"))
    messages = [r.getMessage() for r in caplog.records]
    assert any("already at trainer.max_steps=2" in m for m in messages)
    assert any("no checkpoint was written" in m for m in messages)
    assert last.is_file()


def test_finetune_experiments_compose(tmp_path: Path, compose):
    for script, name, key in (
        ("train", "finetune_adm_u_64", "model"),
        ("train", "finetune_adm_u_256", "model"),
        ("train_classifier", "finetune_classifier_128", "classifier"),
        ("train_superres", "finetune_sr_64_256", "model"),
    ):
        cfg = compose(
            script, [f"experiment={name}", "data.path=x", "data.num_classes=3"], output_dir=tmp_path
        )
        assert cfg.data.image_size == cfg[key].image_size
        assert cfg[key].num_classes == 3 if key == "model" else cfg[key].out_channels == 3
        assert cfg.init_ckpt is None and cfg.init_required
    folder = make_folder(tmp_path / "images", 3)
    small = [
        *TINY,
        *QUIET,
        *folder_data(folder, 3),
        "experiment=finetune_adm_u_64",
        "lr_schedule.warmup_steps=1",
    ]
    with pytest.raises(ValueError, match="init_ckpt is not set"):
        train(compose("train", small, output_dir=tmp_path / "run"))
    assert not (tmp_path / "run" / "resolved_config.yaml").exists()  # a refused run records nothing


def test_upsampler_from_openai_state_dict_and_unconditional_checkpoints(tmp_path: Path, caplog):
    """The upsampler loads the same way; an unconditional checkpoint gives a conditional net a fresh label
    embedding, a conditional one an unconditional net everything but its label embedding."""
    cfg = {**build_cfg("model", "adm_sr_tiny"), "image_size": 16, "in_channels": 3, "channel_mult": [1, 2]}
    torch.manual_seed(0)
    released = build_network({**cfg, "num_classes": 1000})
    torch.save(released.state_dict(), tmp_path / "sr.pt")
    mine = build_network({**cfg, "num_classes": 4})
    report = load_init_weights(mine, tmp_path / "sr.pt")
    assert report.reinitialised == ("label_emb.weight",) and report.classes == (1000, 4)
    assert torch.equal(
        mine.state_dict()["input_blocks.0.0.weight"], released.state_dict()["input_blocks.0.0.weight"]
    )

    uncond = build_network({**cfg, "num_classes": None})
    with caplog.at_level(logging.INFO):
        report = load_init_weights(uncond, tmp_path / "sr.pt")
    assert report.classes == (1000, None) and report.loaded == len(uncond.state_dict())
    assert any("label embedding is dropped" in r.getMessage() for r in caplog.records)
    torch.save(uncond.state_dict(), tmp_path / "uncond.pt")
    cond = build_network({**cfg, "num_classes": 4})
    report = load_init_weights(cond, tmp_path / "uncond.pt")
    assert report.reinitialised == ("label_emb.weight",) and report.classes == (None, 4)


def test_datamodule_says_when_it_resizes(tmp_path: Path):
    from adm.data import ImageFolderDataModule

    folder = make_folder(tmp_path / "images", 2, size=12)
    args = dict(labels="folder", batch_size=2, num_workers=0, val_fraction=0.25, split_seed=0)
    args.update(random_flip=False, random_crop=False, max_corrupt=0, num_classes=2)
    same = ImageFolderDataModule(path=str(folder), image_size=12, **args)
    same.setup("fit")
    assert same.summary().endswith("12x12 px, 3 channel(s)")
    resized = ImageFolderDataModule(path=str(folder), image_size=8, **args)
    resized.setup("fit")
    assert "files are 12x12 px (first file) and are resized + centre-cropped to 8 px" in resized.summary()
