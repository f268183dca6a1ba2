"""``adm.compat.guided_diffusion`` as a package with OpenAI's module layout, and its helper modules."""

from __future__ import annotations

import argparse
import csv
import importlib

import numpy as np
import pytest
import torch
from PIL import Image

import adm.compat.guided_diffusion as gd_pkg
from adm.compat.guided_diffusion import dist_util, logger, resample
from adm.compat.guided_diffusion.image_datasets import load_data
from adm.compat.guided_diffusion.script_util import (
    create_classifier_and_diffusion,
    create_model_and_diffusion,
    model_and_diffusion_defaults,
)
from adm.compat.guided_diffusion.train_util import TrainLoop, parse_resume_step_from_filename

# OpenAI's public names per module (commit 22e0df8) that adm offers; see the README for those it does not.
OPENAI_NAMES = {
    "script_util": [
        "NUM_CLASSES", "diffusion_defaults", "classifier_defaults", "model_and_diffusion_defaults",
        "classifier_and_diffusion_defaults", "create_model_and_diffusion", "create_model",
        "create_classifier_and_diffusion", "create_classifier", "sr_model_and_diffusion_defaults",
        "sr_create_model_and_diffusion", "sr_create_model", "create_gaussian_diffusion",
        "add_dict_to_argparser", "args_to_dict", "str2bool",
    ],
    "unet": [
        "UNetModel", "SuperResModel", "EncoderUNetModel", "TimestepBlock", "TimestepEmbedSequential",
        "convert_module_to_f16", "convert_module_to_f32",
    ],
    "gaussian_diffusion": [
        "get_named_beta_schedule", "betas_for_alpha_bar", "ModelMeanType", "ModelVarType", "LossType",
        "GaussianDiffusion", "mean_flat", "normal_kl", "discretized_gaussian_log_likelihood",
        "_extract_into_tensor",
    ],
    "respace": ["space_timesteps", "SpacedDiffusion"],
    "nn": [
        "SiLU", "GroupNorm32", "conv_nd", "linear", "avg_pool_nd", "update_ema", "zero_module",
        "scale_module", "mean_flat", "normalization", "timestep_embedding", "checkpoint",
    ],
    "losses": ["normal_kl", "approx_standard_normal_cdf", "discretized_gaussian_log_likelihood"],
    "resample": [
        "create_named_schedule_sampler", "ScheduleSampler", "UniformSampler", "LossAwareSampler",
        "LossSecondMomentResampler",
    ],
    "fp16_util": ["INITIAL_LOG_LOSS_SCALE", "convert_module_to_f16", "convert_module_to_f32", "zero_grad"],
    "dist_util": [
        "GPUS_PER_NODE", "SETUP_RETRY_COUNT", "setup_dist", "dev", "load_state_dict", "sync_params",
    ],
    "logger": [
        "DEBUG", "INFO", "WARN", "ERROR", "DISABLED", "KVWriter", "SeqWriter", "HumanOutputFormat",
        "JSONOutputFormat", "CSVOutputFormat", "make_output_format", "logkv", "logkv_mean", "logkvs",
        "dumpkvs", "getkvs", "log", "debug", "info", "warn", "error", "set_level", "set_comm", "get_dir",
        "profile_kv", "profile", "get_current", "Logger", "configure", "reset", "scoped_configure",
        "record_tabular", "dump_tabular",
    ],
    "image_datasets": ["load_data", "ImageDataset", "center_crop_arr", "random_crop_arr"],
    "train_util": [
        "INITIAL_LOG_LOSS_SCALE", "TrainLoop", "parse_resume_step_from_filename", "get_blob_logdir",
        "find_resume_checkpoint", "find_ema_checkpoint", "log_loss_dict",
    ],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(OPENAI_NAMES))
def test_module_layout_and_names(module):
    mod = importlib.import_module(f"adm.compat.guided_diffusion.{module}")
    missing = [n for n in OPENAI_NAMES[module] if not hasattr(mod, n)]
    assert not missing, f"guided_diffusion.{module} lacks {missing}"


def test_package_keeps_its_flat_names():
    for name in ("create_model_and_diffusion", "UNetModel", "SpacedDiffusion", "load_openai_checkpoint"):
        assert hasattr(gd_pkg, name)
    su = importlib.import_module("adm.compat.guided_diffusion.script_util")
    assert su.create_model_and_diffusion is gd_pkg.create_model_and_diffusion  # one home per name


def _tiny_flags(**extra):
    flags = model_and_diffusion_defaults()
    flags.update(
        image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,1", attention_resolutions="8"
    )
    flags.update(extra)
    return flags


def test_factories_on_the_meta_device():
    from adm.compat.guided_diffusion import script_util as su

    with torch.device("meta"):
        model, diffusion = su.create_model_and_diffusion(**model_and_diffusion_defaults())
        classifier, cdiff = create_classifier_and_diffusion(**su.classifier_and_diffusion_defaults())
        sr, sdiff = su.sr_create_model_and_diffusion(**su.sr_model_and_diffusion_defaults())
        plain = su.create_gaussian_diffusion(steps=100, timestep_respacing="ddim10")
    assert next(model.parameters()).is_meta and next(classifier.parameters()).is_meta
    assert next(sr.parameters()).is_meta
    for d in (diffusion, cdiff, sdiff, plain):
        assert isinstance(d.betas, np.ndarray) and np.isfinite(d.alphas_cumprod).all()
    ref = su.create_gaussian_diffusion(steps=100, timestep_respacing="ddim10")
    np.testing.assert_array_equal(plain.betas, ref.betas)
    # Meta shapes match a real build (what tools that size released checkpoints rely on).
    real, _ = create_model_and_diffusion(**_tiny_flags())
    with torch.device("meta"):
        meta, _ = create_model_and_diffusion(**_tiny_flags())
    assert {k: v.shape for k, v in meta.state_dict().items()} == {
        k: v.shape for k, v in real.state_dict().items()
    }


def test_gaussian_diffusion_helpers_closed_forms():
    from adm.compat.guided_diffusion import gaussian_diffusion as gdm
    from adm.compat.guided_diffusion import nn as gnn

    cos = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    np.testing.assert_allclose(
        gdm.betas_for_alpha_bar(50, cos), gdm.get_named_beta_schedule("cosine", 50), rtol=0, atol=1e-15
    )
    arr = np.arange(10, dtype=np.float64) * 0.5
    out = gdm._extract_into_tensor(arr, torch.tensor([1, 3]), (2, 3, 4, 4))
    assert out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    assert out[0].unique().item() == 0.5 and out[1].unique().item() == 1.5
    target = [torch.zeros(3)]
    gnn.update_ema(target, [torch.ones(3)], rate=0.9)
    torch.testing.assert_close(target[0], torch.full((3,), 0.1))
    assert isinstance(gnn.conv_nd(2, 3, 4, 3), torch.nn.Conv2d) and isinstance(
        gnn.avg_pool_nd(1, 2), torch.nn.AvgPool1d
    )
    norm = gnn.normalization(64)
    assert (norm.num_groups, norm.num_channels, norm.eps) == (32, 64, 1e-5)
    with pytest.raises(ValueError, match="dimensions"):
        gnn.conv_nd(4, 1, 1, 1)


def test_dist_util_single_process(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    dist_util.setup_dist()  # no process group needed for one process
    assert dist_util.dev() == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    state = {"w": torch.arange(4.0)}
    torch.save(state, tmp_path / "m.pt")
    loaded = dist_util.load_state_dict(str(tmp_path / "m.pt"), map_location="cpu")
    torch.testing.assert_close(loaded["w"], state["w"])
    with pytest.raises(ValueError, match="weights_only"):
        dist_util.load_state_dict(str(tmp_path / "m.pt"), weights_only=False)
    torch.save({"obj": argparse.Namespace(a=1)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="Nothing was executed"):
        dist_util.load_state_dict(str(tmp_path / "evil.pt"))
    dist_util.sync_params([torch.zeros(2)])  # no-op without a group
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(RuntimeError, match="torchrun"):
        dist_util.setup_dist()


def test_logger_calls_and_csv(tmp_path):
    previous = logger.Logger.CURRENT
    try:
        logger.configure(dir=str(tmp_path), format_strs=["log", "csv", "json"])
        assert logger.get_dir() == str(tmp_path)
        logger.log("hello", 1)
        logger.logkv("step", 0)
        logger.logkv_mean("loss", 1.0)
        logger.logkv_mean("loss", 2.0)
        assert logger.getkvs()["loss"] == pytest.approx(1.5)
        assert logger.dumpkvs() == {"step": 0, "loss": pytest.approx(1.5)}
        logger.logkvs({"step": 1, "mse": 0.25})
        logger.dumpkvs()
        logger.set_level(logger.WARN)
        logger.info("hidden")
        logger.warn("shown")
        with logger.profile_kv("io"):
            pass
        assert "wait_io" in logger.getkvs()
    finally:
        logger.Logger.CURRENT.close()
        logger.Logger.CURRENT = previous
    rows = list(csv.DictReader((tmp_path / "progress.csv").read_text().splitlines()))
    assert [r["step"] for r in rows] == ["0", "1"] and rows[0]["loss"] == "1.5" and rows[0]["mse"] == ""
    text = (tmp_path / "log.txt").read_text()
    assert "hello 1" in text and "shown" in text and "hidden" not in text and "| loss" in text
    assert (tmp_path / "progress.json").read_text().count("\n") == 2


def _image_folder(root, n_per_class=3, size=(20, 24)):
    rng = np.random.default_rng(0)
    root.mkdir()
    for cls in ("cat", "dog"):
        for i in range(n_per_class):
            arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"{cls}_{i}.png")
    return root


def test_load_data_openai_semantics(tmp_path):
    root = _image_folder(tmp_path / "imgs")
    data = load_data(data_dir=str(root), batch_size=2, image_size=8, class_cond=True, deterministic=True,
                     random_flip=False)  # fmt: skip
    batches = [next(data) for _ in range(7)]  # endless: more batches than one pass holds (3 per pass)
    x, cond = batches[0]
    assert x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 and set(cond) == {"y"}
    assert x.min() >= -1 and x.max() <= 1
    assert torch.cat([b[1]["y"] for b in batches[:3]]).tolist() == [0, 0, 0, 1, 1, 1]
    # Pixels: ADM's resize + centre crop of the file, scaled to [-1, 1].
    from adm.compat.guided_diffusion.image_datasets import center_crop_arr

    first = center_crop_arr(Image.open(root / "cat_0.png").convert("RGB"), 8)
    torch.testing.assert_close(x[0], torch.from_numpy(first.astype(np.float32) / 127.5 - 1).permute(2, 0, 1))
    uncond = next(load_data(data_dir=str(root), batch_size=3, image_size=8))
    assert uncond[1] == {}
    with pytest.raises(ValueError, match="data directory"):
        next(load_data(data_dir="", batch_size=1, image_size=8))


def test_named_schedule_samplers():
    _, diffusion = create_model_and_diffusion(**_tiny_flags(diffusion_steps=20))
    uniform = resample.create_named_schedule_sampler("uniform", diffusion)
    np.testing.assert_array_equal(uniform.weights(), np.ones(20))
    lsm = resample.create_named_schedule_sampler("loss-second-moment", diffusion)
    assert isinstance(lsm, resample.LossAwareSampler) and not lsm._warmed_up()
    for _ in range(lsm.history_per_term):
        lsm.update_with_local_losses(torch.arange(20), torch.arange(1.0, 21.0))
    assert lsm._warmed_up()
    w = lsm.weights() / lsm.weights().sum()
    expected = np.arange(1.0, 21.0) / np.arange(1.0, 21.0).sum() * (1 - 0.001) + 0.001 / 20
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    t, weights = lsm.sample(8, "cpu")
    assert t.shape == (8,) and t.dtype == torch.int64
    np.testing.assert_allclose(weights.numpy(), 1 / (20 * expected[t.numpy()]), rtol=1e-6)
    with pytest.raises(NotImplementedError, match="unknown schedule sampler"):
        resample.create_named_schedule_sampler("importance", diffusion)


def test_parse_resume_step():
    assert parse_resume_step_from_filename("/runs/x/model012345.pt") == 12345
    assert parse_resume_step_from_filename("/runs/x/ema_0.9999_000010.pt") == 0


def test_train_loop_files_ema_and_resume(tmp_path):
    """OpenAI's loop contract: files every save_interval, EMA = closed form of the raw weights, resume."""
    root = _image_folder(tmp_path / "imgs", n_per_class=4)
    log_dir = tmp_path / "log"
    previous = logger.Logger.CURRENT
    try:
        logger.configure(dir=str(log_dir), format_strs=["csv"])
        torch.manual_seed(0)
        model, diffusion = create_model_and_diffusion(
            **_tiny_flags(class_cond=True, learn_sigma=True, diffusion_steps=50)
        )
        initial = {k: v.clone() for k, v in model.state_dict().items()}

        def loop(**kw):
            data = load_data(data_dir=str(root), batch_size=4, image_size=16, class_cond=True)
            return TrainLoop(
                model=model, diffusion=diffusion, data=data,
                batch_size=4, microbatch=2, lr=1e-3, ema_rate="0.5,0.9", log_interval=1, save_interval=2,
                schedule_sampler=resample.create_named_schedule_sampler("uniform", diffusion), **kw,
            )  # fmt: skip

        loop(resume_checkpoint="", lr_anneal_steps=1).run_loop()
        # One step: ema_r = r * initial + (1 - r) * trained (OpenAI's update_ema, no warm-up).
        trained = torch.load(log_dir / "model000000.pt", weights_only=True)
        for rate in (0.5, 0.9):
            ema = torch.load(log_dir / f"ema_{rate}_000000.pt", weights_only=True)
            for k, v in ema.items():
                if v.is_floating_point():
                    torch.testing.assert_close(
                        v, rate * initial[k] + (1 - rate) * trained[k], rtol=1e-5, atol=1e-6
                    )
        changed = any(not torch.equal(initial[k], trained[k]) for k in trained)
        assert changed
        for k, v in model.state_dict().items():  # the raw (not the averaged) weights stay in the model
            torch.testing.assert_close(v, trained[k])
        opt = torch.load(log_dir / "opt000000.pt", weights_only=True)
        assert opt["param_groups"][0]["lr"] == pytest.approx(1e-3)

        # Resume from step 0's files and train to 3 steps in all: files at 0 (again) and 2, lr annealed.
        resumed = loop(resume_checkpoint=str(log_dir / "model000000.pt"), lr_anneal_steps=3)
        assert resumed.resume_step == 0
        resumed.run_loop()
        assert (log_dir / "model000002.pt").is_file() and (log_dir / "ema_0.9_000002.pt").is_file()
        assert resumed.opt.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - 2 / 3))
    finally:
        logger.Logger.CURRENT.close()
        logger.Logger.CURRENT = previous
    rows = list(csv.DictReader((log_dir / "progress.csv").read_text().splitlines()))
    assert {"loss", "mse", "vb", "step", "samples"} <= set(rows[-1])
    assert rows[-1]["step"] == "2" and rows[-1]["samples"] == "12"
    assert all(np.isfinite(float(r["loss"])) for r in rows)


def test_train_loop_bad_microbatch():
    model, diffusion = create_model_and_diffusion(**_tiny_flags())
    with pytest.raises(ValueError, match="microbatch"):
        TrainLoop(model=model, diffusion=diffusion, data=iter([]), batch_size=4, microbatch=3, lr=1e-4,
                  ema_rate="0.9999", log_interval=1, save_interval=1, resume_checkpoint="")  # fmt: skip
