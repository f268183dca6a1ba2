"""Grid captions (class names drawn under the images) and what the training-time sampling callbacks show and
tell: a progress bar while they draw, and one log line naming where their output went."""

from __future__ import annotations

import functools
import io
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from torchvision.utils import make_grid

from adm.callbacks import EMA, SampleGrid
from adm.callbacks.fid import FIDCallback, scores_line
from adm.callbacks.sample_grid import class_names, rows_caption, sampler_steps
from adm.data import MNIST5kDataModule
from adm.diffusion import GaussianDiffusion, UniformSampler
from adm.io.grid import caption_strips, grid_image, label_captions, save_grid
from adm.lit import DiffusionModule
from adm.metrics import DomainClassifier, DomainFeatureExtractor
from adm.nn import UNet
from adm.sampling import ddim_sample

PAD = 2


def images(n: int, size: tuple[int, int], channels: int, seed: int = 0) -> np.ndarray:
    """Mid-grey-and-brighter random images (no pixel darker than 128: dark pixels can only be text)."""
    rng = np.random.default_rng(seed)
    return rng.integers(128, 256, size=(n, *size, channels), dtype=np.uint8)


def old_grid(batch: np.ndarray, nrow: int | None = None, padding: int = PAD) -> np.ndarray:
    """The grid without captions as it always was: torchvision's make_grid layout, white padding."""
    n, channels = len(batch), batch.shape[-1]
    nrow = max(1, min(nrow or math.ceil(math.sqrt(n)), n))
    grid = make_grid(torch.from_numpy(batch).permute(0, 3, 1, 2), nrow=nrow, padding=padding, pad_value=255)
    return grid[:channels].permute(1, 2, 0).numpy()


def png_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("channels", [1, 3])
def test_no_captions_is_the_grid_of_before_byte_for_byte(tmp_path, channels):
    batch = images(7, (10, 12), channels)
    expected = old_grid(batch, nrow=3)
    np.testing.assert_array_equal(grid_image(batch, nrow=3), expected)
    np.testing.assert_array_equal(grid_image(batch, nrow=3, captions=None), expected)
    plain = save_grid(batch, tmp_path / "plain.png", nrow=3).read_bytes()
    none = save_grid(batch, tmp_path / "none.png", nrow=3, captions=None).read_bytes()
    assert plain == none == png_bytes(expected)


@pytest.mark.parametrize("channels", [1, 3])
def test_captions_are_drawn_in_a_strip_under_each_image(tmp_path, channels):
    h, w, nrow = 16, 40, 3
    batch = images(5, (h, w), channels)
    names = ["zero", "one", "a name far too long to fit", "", "four"]
    path = save_grid(batch, tmp_path / "grid.png", nrow=nrow, captions=names)
    with Image.open(path) as im:
        grid = np.asarray(im).reshape(im.height, im.width, channels)
    strip = caption_strips(["x"], w, channels).shape[1]
    assert 8 <= strip <= 20  # fits the default font
    rows = 2
    assert grid.shape == (rows * (h + strip + PAD) + PAD, nrow * (w + PAD) + PAD, channels)
    for i, name in enumerate(names):
        y, x = PAD + (i // nrow) * (h + strip + PAD), PAD + (i % nrow) * (w + PAD)
        np.testing.assert_array_equal(grid[y : y + h, x : x + w], batch[i])  # the image itself is untouched
        cell = grid[y + h : y + h + strip, x : x + w]
        dark = (cell < 100).any(axis=-1)
        if name:
            assert dark.any(), f"no text under image {i}"
            assert not dark[:, -1].any()  # cut short, not over the edge
        else:
            assert (cell == 255).all()
        assert (grid[y + h : y + h + strip, x + w : x + w + PAD] == 255).all()  # padding stays white
    assert (grid[..., :] >= 0).all() and grid.dtype == np.uint8


def test_long_captions_are_cut_and_bad_captions_refused():
    long = caption_strips(["W" * 50], 20, 3)[0]
    wide = caption_strips(["W" * 50], 400, 3)[0]
    assert (long < 100).any() and (wide < 100).sum() > (long < 100).sum()
    batch = images(3, (8, 8), 1)
    with pytest.raises(ValueError, match="one string per image"):
        grid_image(batch, captions=["a", "b"])
    with pytest.raises(ValueError, match="one string per image"):
        grid_image(batch, captions="abc")
    one = grid_image(batch[:1], captions=["7"])  # a lone image is padded like any grid, strip included
    assert one.shape == (8 + caption_strips(["7"], 8, 1).shape[1] + 2 * PAD, 8 + 2 * PAD, 1)


def test_caption_helpers():
    assert label_captions(torch.tensor([2, 0, 5]), ["a", "b", "c"]) == ["c", "a", "5"]
    assert label_captions([1, 3], None) == ["1", "3"]
    assert rows_caption(["a", "b", "c", "d", "e"], 2) == "row 1: a, b\nrow 2: c, d\nrow 3: e"
    assert sampler_steps(functools.partial(ddim_sample, steps=7), 1000) == 7
    assert sampler_steps(functools.partial(ddim_sample), 1000) == 1000
    assert sampler_steps(functools.partial(ddim_sample, steps=[2, 3]), 1000) == 5
    assert sampler_steps(lambda *a, **k: None, 1000) is None


# --- the training callbacks ---------------------------------------------------------------------------------
SIZE = 16


def module(num_classes: int | None = 10, names: list[str] | None = None) -> DiffusionModule:
    torch.manual_seed(0)
    unet = UNet(
        image_size=SIZE, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=[],
        channel_mult=[1, 2], learn_sigma=False, num_classes=num_classes, num_head_channels=32,
    )  # fmt: skip
    diffusion = GaussianDiffusion.from_schedule(
        "linear", 1000, mean_type="epsilon", var_type="fixed_small", loss_type="mse", rescale_timesteps=False
    )
    config = {"model": {}, "diffusion": {}, "data": {} if names is None else {"class_names": names}}
    return DiffusionModule(
        unet=unet, diffusion=diffusion, timestep_sampler=UniformSampler(diffusion),
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3), config=config,
    )  # fmt: skip


def data(class_cond: bool = True) -> MNIST5kDataModule:
    return MNIST5kDataModule(
        image_size=SIZE, class_cond=class_cond, batch_size=4, num_workers=0, val_fraction=0.1, split_seed=0,
        random_flip=False, random_crop=False,
    )  # fmt: skip


def sample_grid(tmp_path: Path, **kwargs) -> SampleGrid:
    options = dict(
        every_n_steps=2, num_samples=6, seed=0, labels=None, nrow=3, dirpath=str(tmp_path / "samples"),
        split="val", sampler=functools.partial(ddim_sample, steps=3, eta=0.0),
    )  # fmt: skip
    return SampleGrid(**{**options, **kwargs})


def grid_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Sample grid (step")]


def strips_dark(path: Path, h: int, rows: int, nrow: int) -> list[bool]:
    """For every cell of a captioned grid of (h x h) images: whether its caption strip holds dark pixels."""
    with Image.open(path) as im:
        grid = np.asarray(im)
    strip = (grid.shape[0] - PAD) // rows - h - PAD
    found = []
    for r in range(rows):
        for c in range(nrow):
            y, x = PAD + r * (h + strip + PAD), PAD + c * (h + PAD)
            found.append(bool((grid[y + h : y + h + strip, x : x + h] < 100).any()))
    return found


def test_training_grid_has_class_name_captions_a_bar_and_a_log_line(tmp_path, one_thread, caplog, capsys):
    grid = sample_grid(tmp_path)
    ema = EMA(rates=[0.9], warmup=True)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_steps=2, callbacks=[ema, grid],
        logger=False, enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="adm.callbacks.sample_grid"):
        trainer.fit(module(), datamodule=data())
    lines = grid_lines(caplog)
    assert len(lines) == 1, lines  # step 2; the end of training (also step 2) draws no second grid
    written = Path(re.fullmatch(r"Sample grid \(step 2\): (\S+)", lines[0]).group(1))
    assert written.is_file() and written == tmp_path / "samples" / "step_0000002.png" == grid.last_path
    # 6 images, 3 a row: 2 rows of 16-px images, each with a caption strip holding the class name 0..5
    assert strips_dark(written, SIZE, rows=2, nrow=3) == [True] * 6
    with Image.open(written) as im:
        assert im.height > 2 * (SIZE + PAD) + PAD
    assert "Sample grid" in capsys.readouterr().out  # the bar over the sampler's steps


def test_grid_captions_switch_and_unconditional_models(tmp_path, one_thread, caplog):
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    plain = sample_grid(tmp_path / "off", captions=False)
    with caplog.at_level(logging.INFO, logger="adm.callbacks.sample_grid"):
        plain.log_grid(trainer, module())
        with Image.open(plain.last_path) as im:  # no strips: the grid of before
            assert im.size == (3 * (SIZE + PAD) + PAD, 2 * (SIZE + PAD) + PAD)
        uncond = sample_grid(tmp_path / "uncond")
        uncond.log_grid(trainer, module(num_classes=None))
        with Image.open(uncond.last_path) as im:
            assert im.size == (3 * (SIZE + PAD) + PAD, 2 * (SIZE + PAD) + PAD)
        nowhere = sample_grid(tmp_path, dirpath=None, num_samples=2)
        nowhere.log_grid(trainer, module())
    assert grid_lines(caplog)[-1] == (
        "Sample grid (step 0): not written (dirpath is null and no logger takes images)"
    )


class RecordingWandb(WandbLogger):
    """A WandbLogger that records log_image calls instead of talking to W&B."""

    def __init__(self) -> None:  # no W&B run
        self.calls: list[dict] = []

    def log_image(self, key, images, step=None, **kwargs):
        self.calls.append({"key": key, "images": images, "step": step, **kwargs})


def test_wandb_gets_the_captioned_grid_and_the_names_row_by_row(tmp_path, one_thread, caplog):
    names = [f"class{k}" for k in range(10)]
    wandb = RecordingWandb()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.loggers = [wandb]
    grid = sample_grid(tmp_path, labels=[4, 1, 7])
    with caplog.at_level(logging.INFO, logger="adm.callbacks.sample_grid"):
        grid.log_grid(trainer, module(names=names))  # names from the checkpoint config (no datamodule)
    (call,) = wandb.calls
    assert call["key"] == "samples" and call["step"] == 0
    assert call["caption"] == ["row 1: class4, class1, class7\nrow 2: class4, class1, class7"]
    (logged,) = call["images"]
    with Image.open(grid.last_path) as im:
        np.testing.assert_array_equal(logged, np.asarray(im).reshape(logged.shape))  # the PNG's image
    assert strips_dark(grid.last_path, SIZE, rows=2, nrow=3) == [True] * 6
    assert grid_lines(caplog)[-1] == f"Sample grid (step 0): {grid.last_path}, W&B (samples)"
    assert class_names(trainer, module(names=names)) == names


def test_fid_callback_shows_progress_and_says_where_it_logged(tmp_path, one_thread, caplog, capsys):
    torch.manual_seed(1)
    classifier = DomainClassifier(in_channels=1, image_size=SIZE, num_classes=10, width=4)
    extractor = DomainFeatureExtractor(classifier)
    fid = FIDCallback(
        every_n_steps=0, num_samples=6, batch_size=3, seed=0, sampler=functools.partial(ddim_sample, steps=2),
        feature_extractor=extractor, reference=None, num_reference=8, reference_split="val", metrics=None,
    )  # fmt: skip
    csv = CSVLogger(tmp_path, name="csv")
    trainer = pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_steps=1, callbacks=[fid], logger=csv,
        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="adm.callbacks.fid"):
        trainer.fit(module(), datamodule=data())
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("FID at step")]
    fid_value = fid.last_scores["sample/fid"]
    metrics = Path(csv.log_dir) / "metrics.csv"
    assert line.startswith(f"FID at step 1: {fid_value:.4g} (sample/fid); ")
    assert f"logged to {metrics} (" in line and metrics.is_file()
    assert "sample/fid" in metrics.read_text().splitlines()[0]
    assert "FID samples" in capsys.readouterr().out
    assert scores_line(3, {"sample/is": 2.0}, [], 0.5) == (
        "Sample metrics at step 3: sample/is 2; logged to no logger (trainer.callback_metrics only) (0.5 s)"
    )
