"""Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN manifolds, as in ADM's evaluator.

Each set's manifold is the union of balls around its points, of radius the distance to the point's k-th
nearest neighbour within the same set. Precision = share of generated points inside the real manifold;
recall = share of real points inside the generated manifold. Distances are computed block by block, so no
more than `block_size` x `block_size` of them exist at once (50k x 50k never materialises).
"""

from __future__ import annotations

import numpy as np
import torch

NEAREST_K = 3


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dtype != torch.float64:
        x = x.float()
    return x.to(device) if device is not None else x


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, D), (m, D) -> (n, m) squared Euclidean distances (clamped at 0 against rounding)."""
    d = a.pow(2).sum(1, keepdim=True) - 2.0 * (a @ b.T) + b.pow(2).sum(1).unsqueeze(0)
    return d.clamp_min_(0.0)


def knn_radii(features: torch.Tensor, k: int, block_size: int) -> torch.Tensor:
    """(N, D) -> (N,) squared distance from each point to its k-th nearest neighbour (not itself)."""
    n = len(features)
    if n <= k:
        raise ValueError(f"precision / recall with k={k} need more than {k} points per set, got {n}")
    radii = []
    for rows in features.split(block_size):
        best = None  # (b, k + 1): the k + 1 smallest distances seen so far (the point itself is one of them)
        for cols in features.split(block_size):
            d = _squared_distances(rows, cols)
            cand = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False).values
            best = cand if best is None else torch.cat([best, cand], 1)
            best = best.topk(min(k + 1, best.shape[1]), dim=1, largest=False).values
        radii.append(best[:, k])
    return torch.cat(radii)


def precision_recall(
    real_features: np.ndarray | torch.Tensor,
    fake_features: np.ndarray | torch.Tensor,
    *,
    k: int = NEAREST_K,
    block_size: int = 4096,
    device: torch.device | str | None = None,
) -> tuple[float, float]:
    """(N_real, D), (N_fake, D) features -> (precision, recall), both in [0, 1].

    A point is inside a manifold when its distance to some point of the other set is <= that point's radius.
    Distances are computed in float32 (float64 when the features are float64) on `device` (default: where the
    features are).
    """
    real = _as_tensor(real_features, device)
    fake = _as_tensor(fake_features, device).to(real.device, real.dtype)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"need (N, D) features of equal D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    real_radii = knn_radii(real, k, block_size)
    fake_radii = knn_radii(fake, k, block_size)
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool, device=real.device)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool, device=real.device)
    for i, rows in enumerate(real.split(block_size)):
        r_slice = slice(i * block_size, i * block_size + len(rows))
        for j, cols in enumerate(fake.split(block_size)):
            f_slice = slice(j * block_size, j * block_size + len(cols))
            d = _squared_distances(rows, cols)  # (real block, fake block)
            fake_in_real[f_slice] |= (d <= real_radii[r_slice, None]).any(0)
            real_in_fake[r_slice] |= (d <= fake_radii[None, f_slice]).any(1)
    return fake_in_real.double().mean().item(), real_in_fake.double().mean().item()
