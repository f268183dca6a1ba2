"""scripts/dev/bench.py runs end to end in its tiny configuration (without a reference checkout)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

DEV = Path(__file__).resolve().parents[1] / "scripts" / "dev"  # the bench and its sibling modules
BENCH = DEV / "bench.py"


@pytest.fixture(scope="module")
def bench():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(DEV))
        yield importlib.import_module("bench")


@pytest.fixture(scope="module")
def workloads(bench):
    return importlib.import_module("bench_workloads")


@pytest.mark.slow  # the whole tiny bench (three works, each in its own process); the allocator test runs one
def test_tiny_bench_prints_one_table_without_the_reference(bench, monkeypatch, capsys):
    monkeypatch.delenv("ADM_OPENAI_REF", raising=False)
    rows = bench.main(["--tiny", "--repeats", "1", "--devices", "cpu"])
    out = capsys.readouterr().out
    assert "OpenAI's code skipped" in out and "load average before" in out
    assert "each work in its own process: forward, train, guided" in out
    assert [(r["work"], r["impl"], r["variant"]) for r in rows] == [
        ("forward", "adm", "fp32"),
        ("train", "adm", "fp32"),
        ("guided", "adm", "fp32"),
    ]
    for r in rows:
        assert r["ms"] > 0 and r["img_s"] > 0 and r["gflop_s"] > 0 and r["sys_ms"] >= 0
        assert r["x_openai"] is None and r["rel_err"] is None
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) and "| forward | cpu | adm | fp32 | 2 |" in table[2]


def test_bench_rejects_a_path_without_guided_diffusion(bench, tmp_path):
    with pytest.raises(SystemExit, match="guided_diffusion"):
        bench.main(["--tiny", "--openai", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown work"):
        bench.main(["--tiny", "--works", "forward,nope"])


def test_training_steps_leave_the_shared_weights_alone(bench, workloads):
    args = bench.parse_args(["--tiny"])
    args.batch = args.train_batch = args.sample_batch = args.steps = 2
    nets = workloads.build_ours(args)
    before = {k: v.clone() for k, v in nets["unet"].state_dict().items()}
    inputs = workloads.make_inputs(args, torch.device("cpu"), 10, 16)
    fns = workloads.ours_fns(nets, args, inputs, None)
    fns["train"]()
    fns["train"]()
    after = nets["unet"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_keep_freed_memory_sets_the_allocator_and_the_work_still_runs(tmp_path):
    rows_out = tmp_path / "rows.json"
    cmd = [sys.executable, str(BENCH), "--tiny", "--repeats", "1", "--devices", "cpu", "--works", "forward"]
    cmd += ["--keep-freed-memory", "--rows-out", str(rows_out)]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "ADM_OPENAI_REF": ""})
    (row,) = json.loads(rows_out.read_text())
    assert row["work"] == "forward" and row["ms"] > 0 and row["sys_ms"] >= 0
