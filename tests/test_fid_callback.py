"""FID during training: the callback samples with the EMA weights from per-sample seeds (``sample_seed``, as
scripts/sample.py does) and scores the samples against the datamodule's real images; its numbers equal a
direct computation and do not depend on how many processes share the work."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.loggers import CSVLogger

from adm.callbacks.ema import EMA
from adm.callbacks.fid import FIDCallback
from adm.data import MNIST5kDataModule
from adm.diffusion import GaussianDiffusion, UniformSampler
from adm.lit import DiffusionModule
from adm.metrics import DomainClassifier, DomainFeatureExtractor, fid_from_features, precision_recall
from adm.nn import UNet
from adm.sampling import PerSampleNoise, ddim_sample, sample_seed


def _module(lr: float) -> DiffusionModule:
    torch.manual_seed(0)
    unet = UNet(
        image_size=8, in_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=[],
        channel_mult=[1, 2], learn_sigma=True, num_classes=10, num_head_channels=32,
    )  # fmt: skip
    diffusion = GaussianDiffusion.from_schedule(
        "cosine", 1000, mean_type="epsilon", var_type="learned_range", loss_type="rescaled_mse",
        rescale_timesteps=False,
    )  # fmt: skip
    optimizer = functools.partial(torch.optim.AdamW, lr=lr)
    return DiffusionModule(unet=unet, diffusion=diffusion, timestep_sampler=UniformSampler(diffusion),
                           optimizer=optimizer)  # fmt: skip


def _callback(every_n_steps: int, num_samples: int) -> FIDCallback:
    torch.manual_seed(1)
    extractor = DomainFeatureExtractor(DomainClassifier(in_channels=1, image_size=8, num_classes=10, width=4))
    return FIDCallback(
        every_n_steps=every_n_steps, num_samples=num_samples, batch_size=5, seed=0,
        sampler=functools.partial(ddim_sample, steps=2), feature_extractor=extractor, reference=None,
        num_reference=24, reference_split="val", metrics=None,
    )  # fmt: skip


def _data() -> MNIST5kDataModule:
    return MNIST5kDataModule(image_size=8, class_cond=True, batch_size=4, num_workers=0, val_fraction=0.1,
                             split_seed=0, random_flip=False, random_crop=False)  # fmt: skip


def _trainer(tmp_path: Path, callbacks: list, max_steps: int, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path, accelerator="cpu", max_steps=max_steps, callbacks=callbacks,
        logger=CSVLogger(tmp_path, name="csv"), enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1, **kwargs,
    )  # fmt: skip


def test_fid_of_ema_samples_matches_direct_computation(tmp_path, one_thread):
    module, fid, data = _module(lr=1e-3), _callback(every_n_steps=2, num_samples=10), _data()
    trainer = _trainer(tmp_path, [EMA(rates=[0.9], warmup=True), fid], max_steps=3)
    trainer.fit(module, datamodule=data)
    # logged at step 2 (in the loop) and at the end (step 3)
    (csv,) = tmp_path.glob("csv/version_*/metrics.csv")
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    for key in ("sample/fid", "sample/precision", "sample/recall", "sample/accuracy"):
        assert key in header
    column = header.index("sample/fid")
    assert sum(1 for line in lines[1:] if line.split(",")[column]) == 2
    assert set(trainer.callback_metrics) >= {"sample/fid", "sample/accuracy"}

    # independently: after fit the module holds the EMA weights the last evaluation sampled with
    unet = module.unet.eval()
    noise = PerSampleNoise([sample_seed(0, i) for i in range(10)])  # the seed rule of scripts/sample.py
    y = torch.arange(10) % 10
    with torch.no_grad():
        x_T = noise.initial((1, 8, 8))
        x_0 = ddim_sample(unet, module.diffusion, x_T, model_kwargs={"y": y}, noise=noise, steps=2)
    sample_feats = fid.extractor.features(x_0.clamp(-1, 1))
    real_feats = fid.extractor.features(data.reference_images(24, "val"))
    expected_fid = fid_from_features(sample_feats["pool"].numpy(), real_feats["pool"].numpy())
    precision, recall = precision_recall(real_feats["pool"], sample_feats["pool"])
    accuracy = (sample_feats["logits"].argmax(1) == y).double().mean().item()
    scores = fid.last_scores
    assert scores["sample/fid"] == pytest.approx(expected_fid, rel=1e-5)
    assert (scores["sample/precision"], scores["sample/recall"]) == pytest.approx((precision, recall))
    assert scores["sample/accuracy"] == pytest.approx(accuracy)


def test_two_processes_give_the_same_scores(tmp_path, one_thread):
    # lr = 0: the weights (and their EMA) stay the initial ones whatever data each rank sees
    scores = []
    for devices in (1, 2):
        strategy = "ddp_fork" if devices > 1 else "auto"
        callbacks = [EMA(rates=[0.9], warmup=True), _callback(1, 9)]
        trainer = _trainer(
            tmp_path / str(devices), callbacks, max_steps=1, devices=devices, strategy=strategy
        )
        trainer.fit(_module(lr=0.0), datamodule=_data())
        scores.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("sample/")})
    assert scores[0].keys() == scores[1].keys() and "sample/fid" in scores[0]
    for key, value in scores[0].items():
        assert scores[1][key] == pytest.approx(value, rel=1e-6), key


def test_callback_config_builds(tmp_path, compose):
    DomainClassifier(in_channels=1, image_size=28, num_classes=10, width=4).save(tmp_path / "domain.pt")
    overrides = ["callbacks=[default,fid]", "callbacks.fid.feature_extractor.kind=domain",
                 f"callbacks.fid.feature_extractor.domain_ckpt={tmp_path / 'domain.pt'}"]  # fmt: skip
    cfg = compose("train", overrides)
    names = list(cfg.callbacks)
    assert names.index("ema") < names.index("fid")  # the EMA is updated before the callback samples from it
    fid = instantiate(cfg.callbacks.fid)
    assert isinstance(fid, FIDCallback) and isinstance(fid.extractor, DomainFeatureExtractor)
    assert fid.metrics == ["fid", "is", "precision", "recall", "accuracy"] or "fid" in fid.metrics
