"""Speed of adm side by side with OpenAI's guided-diffusion: UNet forward, training step, guided sampling.

scripts/dev/ holds developer tools, not user commands: this bench (the command, here), its harness
(bench_harness.py: processes, timing, memory, FLOPs, the table) and its workloads (bench_workloads.py: the
networks, inputs and works, for ours and OpenAI's code).

    python scripts/dev/bench.py --openai /path/to/guided-diffusion   # CPU (and CUDA when present), one table
    python scripts/dev/bench.py                                      # ours only (no reference checkout given)
    python scripts/dev/bench.py --tiny --repeats 1                   # a seconds-long smoke run
    python scripts/dev/bench.py --openai ../guided-diffusion --keep-freed-memory   # computation only
    python scripts/dev/bench.py --devices cuda --variants fp32,bf16,compile --openai ../guided-diffusion
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # adm from this checkout, installed or not

import bench_harness as harness  # noqa: E402
import bench_workloads as workloads  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="\n".join([__doc__, workloads.__doc__, harness.__doc__]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--openai",
        default=os.environ.get("ADM_OPENAI_REF"),
        help="a guided-diffusion checkout to compare with (default: $ADM_OPENAI_REF; none: ours only)",
    )
    ap.add_argument("--tiny", action="store_true", help="a tiny 16 px network, batch 2, 2 steps (smoke test)")
    ap.add_argument(
        "--works", default=",".join(workloads.WORKS), help=f"comma-separated: {', '.join(workloads.WORKS)}"
    )
    default_devices = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    ap.add_argument("--devices", default=default_devices, help="comma-separated: cpu, cuda")
    ap.add_argument(
        "--variants", default="fp32,bf16,compile", help="CUDA variants of ours: fp32, bf16, compile"
    )
    ap.add_argument("--width", type=int, default=64, help="model_channels of both networks")
    ap.add_argument("--batch", type=int, default=8, help="forward batch")
    ap.add_argument("--train-batch", type=int, default=4, help="training-step batch")
    ap.add_argument("--sample-batch", type=int, default=4, help="guided-sampling batch")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps of guided sampling")
    ap.add_argument("--scale", type=float, default=4.0, help="guidance scale")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per implementation and work")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)"
    )
    ap.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run each work in a fresh process, so that no work inherits another's allocator state",
    )
    ap.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc: freed memory stays in the process (no mmap, no trimming), so no call pays page faults",
    )
    ap.add_argument("--rows-out", help=argparse.SUPPRESS)  # an isolated work's rows, as JSON
    return ap.parse_args(argv)


def bench_device(args: argparse.Namespace, device: torch.device, works: list[str]) -> list[dict]:
    """The table's rows of `works` on `device`: ours (and OpenAI's) on the same weights and inputs."""
    entries, inputs, ours = workloads.implementations(args, device)
    return harness.measure(
        entries,
        works,
        device,
        args.repeats,
        flops=lambda work: workloads.work_flops(work, ours, inputs, args, device),
        batch=lambda work: inputs[work]["x"].shape[0],
    )


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.tiny:
        args.batch = args.train_batch = args.sample_batch = args.steps = 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        harness.keep_freed_memory()
    works = [w for w in args.works.split(",") if w]
    unknown = set(works) - set(workloads.WORKS)
    if unknown:
        raise SystemExit(f"unknown work {sorted(unknown)}; choose from {workloads.WORKS}")
    devices = [torch.device(d) for d in args.devices.split(",") if d]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise SystemExit("--devices includes cuda but CUDA is not available")
    if args.openai:
        harness.check_openai_checkout(args.openai)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
        + ("" if args.openai else "; OpenAI's code skipped (give --openai PATH to compare)"),
        flush=True,
    )
    harness.load_average("before")
    if args.rows_out:  # an isolated work: its rows go back to the parent process
        rows = [row for device in devices for row in bench_device(args, device, works)]
        Path(args.rows_out).write_text(json.dumps(rows))
        return rows
    rows = []
    if args.isolate and len(works) > 1:
        print(f"each work in its own process: {', '.join(works)}", flush=True)
        for work in works:
            rows += harness.run_isolated(Path(__file__), argv, work)
        rows.sort(key=lambda r: [d.type for d in devices].index(r["device"]))  # stable: works stay in order
    else:
        for device in devices:
            rows += bench_device(args, device, works)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    harness.load_average("after")
    print(harness.format_table(rows, args), flush=True)
    return rows


if __name__ == "__main__":
    main()
