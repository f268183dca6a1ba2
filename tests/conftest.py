"""Shared fixtures: the golden data from OpenAI's reference code, the repository root, one CPU thread,
small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _golden_root() -> Path:
    env = os.environ.get("ADM_GOLDEN_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "golden"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Folder of the golden set. Missing data is a failure, never a skip: these tests prove exactness."""
    root = _golden_root()
    if not (root / "README.md").is_file():
        pytest.fail(
            f"golden data not found at {root}; set ADM_GOLDEN_DIR to the folder holding the golden cases "
            "(the one with README.md, unet_cond_newattn/, diffusion_guided/, ...)"
        )
    return root


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b|| in float64 (b is the reference)."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    nb = b.norm().item()
    return (a - b).norm().item() / (nb if nb > 0 else 1.0)


@pytest.fixture(scope="session")
def rel_error():
    return rel_err


@pytest.fixture
def one_thread(monkeypatch):
    """One CPU thread here and in spawned processes (OMP_NUM_THREADS): tiny networks gain nothing from a
    second thread, on a busy machine the threads wait for each other, and 1 and 2 processes then do
    identical arithmetic."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def slurm_task(monkeypatch):
    """``slurm_task(job_id, ntasks=1)``: this process becomes task 0 of a SLURM job on this machine (as
    srun starts it, so Lightning detects SLURM); SLURM and submitit variables from outside are removed."""

    def enter(job_id: str, ntasks: int = 1) -> None:
        for key in [k for k in os.environ if k.startswith(("SLURM_", "SUBMITIT_"))]:
            monkeypatch.delenv(key)
        for key, value in {
            "SLURM_JOB_ID": job_id,
            "SLURM_JOB_NAME": "adm-train",
            "SLURM_NTASKS": str(ntasks),
            "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0",
            "SLURM_NODEID": "0",
            "SLURM_NODELIST": "localhost",
        }.items():
            monkeypatch.setenv(key, value)

    return enter
