"""Class accuracy of samples under a domain classifier (does guidance produce the class asked for?)."""

from __future__ import annotations

import numpy as np
import torch


def class_accuracy(logits: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Share of samples whose argmax class equals their label. logits (N, K), labels (N,) int."""
    logits = torch.as_tensor(logits)
    labels = torch.as_tensor(labels).to(logits.device)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(
            f"need logits (N, K) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if len(labels) == 0:
        raise ValueError("class accuracy of an empty set is undefined")
    if int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]:
        raise ValueError(
            f"labels span {int(labels.min())}..{int(labels.max())} "
            f"but the classifier has {logits.shape[1]} classes"
        )
    return (logits.argmax(dim=1) == labels.long()).double().mean().item()
