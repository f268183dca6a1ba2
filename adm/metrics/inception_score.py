"""Inception Score from class logits."""

from __future__ import annotations

import numpy as np
import torch

# The evaluator scores consecutive chunks of 5000 samples and averages them (10 chunks for 50k samples).
SPLIT_SIZE = 5000


def inception_score(logits: np.ndarray | torch.Tensor, *, split_size: int = SPLIT_SIZE) -> float:
    """IS = mean over consecutive chunks of `split_size` samples of exp(E_x KL(p(y|x) || p(y))).

    logits: (N, K) (Inception: pool_3 @ W_softmax, K = 1008); p(y|x) = softmax(logits), p(y) = the mean of
    p(y|x) over the chunk.
    Computed in float64. The last chunk may be shorter, as in the evaluator.
    """
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be (N, K) with N >= 1, got shape {logits.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be >= 1, got {split_size}")
    log_p = logits - logits.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))  # log softmax, (N, K)
    scores = []
    for start in range(0, len(log_p), split_size):
        chunk = log_p[start : start + split_size]
        p = np.exp(chunk)
        log_marginal = np.log(p.mean(axis=0, keepdims=True))  # log p(y), (1, K)
        kl = (p * (chunk - log_marginal)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))
