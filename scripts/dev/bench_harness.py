"""How the bench measures: each work in a fresh process, interleaved repeats, medians, one table.

Every work item runs ``--repeats`` times per implementation, the implementations interleaved (their order
alternating) after one warm-up call each; the table shows medians. Each work runs in a fresh process of
the bench (``--no-isolate``: all in one), because what one work leaves in the allocator changes the next
one's speed (glibc raises its mmap threshold after large frees).

``sys ms`` is the kernel CPU time of one call. On CPU it is mostly page faults: glibc serves large blocks
with fresh pages and returns them on free, so code that allocates large temporaries on every call (such as
attention weights of ``L x L``) pays for faulting and zeroing them each time. That cost is real for anyone
running with the default allocator and is part of the ``ms`` column. ``--keep-freed-memory`` turns it off
for both implementations (glibc's mallopt: freed memory is kept for reuse, as a preloaded jemalloc or
tcmalloc would), and the table then compares the computation alone. ``rel err`` compares each output with
OpenAI's fp32 one (forward output; final samples); the training step has dropout and shows none.
``peak MiB`` is the extra memory one call needs: torch.cuda.max_memory_allocated on CUDA, the rise of the
process's peak resident set (VmHWM, reset before each call) on CPU. FLOPs are counted once from the
network with torch.utils.flop_counter (attention on the math path, so it is counted as matrix products);
MFU divides the achieved rate by ``--peak-tflops`` (known GPUs are filled in; on CPU it is shown only when
given). The ``x OpenAI`` column divides by OpenAI's fp32 time on CPU and by its fp16 time on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

try:
    import resource
except ImportError:  # Windows: the sys column shows nan
    resource = None

# Dense peak TFLOP/s (fp32 without tensor cores / bf16 and fp16 tensor cores) of GPUs we know.
PEAK_TFLOPS = {"H100": (67.0, 989.0), "H200": (67.0, 989.0), "A100": (19.5, 312.0), "L40S": (91.6, 362.0)}

# One implementation of the works: (impl "adm" / "openai", variant "fp32" / "bf16" / ..., {work: call}).
Entry = tuple[str, str, dict[str, Callable[[], torch.Tensor | None]]]


# ------------------------------------------------------------------------------------------ OpenAI's code


def check_openai_checkout(path: str) -> None:
    """Fail early, before any work, when `path` is no checkout of OpenAI's guided-diffusion."""
    if not (Path(path) / "guided_diffusion" / "unet.py").is_file():
        raise SystemExit(f"--openai {path}: no guided_diffusion/unet.py there")


def openai_checkout(path: str) -> dict[str, ModuleType]:
    """The ``guided_diffusion`` modules of a local checkout of OpenAI's code: ``unet``, ``script_util``."""
    sys.path.insert(0, str(Path(path).resolve()))
    from guided_diffusion import script_util, unet

    return {"unet": unet, "script_util": script_util}


# ------------------------------------------------------------------------------------------ one call


def _proc_status_mib(field: str) -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _sys_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime if resource else float("nan")


def timed(fn: Callable, device: torch.device) -> tuple[float, float, float, object]:
    """(seconds, peak extra MiB, seconds of kernel CPU time, result) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = _proc_status_mib("VmRSS")
    sys_start = _sys_seconds()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    sys_time = _sys_seconds() - sys_start
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak = _proc_status_mib("VmHWM") - base
    return elapsed, peak, sys_time, out


def count_flops(fn: Callable) -> float:
    """FLOPs of one call, attention counted as its matrix products (math path)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return float(counter.get_total_flops())


def rel_err(a, b) -> float:
    if a is None or b is None:
        return float("nan")
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).norm() / b.norm()).item()


# ------------------------------------------------------------------------------------------ many calls


def measure(
    entries: list[Entry],
    works: list[str],
    device: torch.device,
    repeats: int,
    flops: Callable[[str], float],
    batch: Callable[[str], int],
) -> list[dict]:
    """One row per work and entry: medians of `repeats` interleaved calls after one warm-up call each.

    flops(work): model FLOPs of one call (the same whichever code runs it); batch(work): its batch size.
    """
    rows = []
    for work in works:
        warm, outputs = {}, {}
        times: dict[int, list[float]] = {i: [] for i in range(len(entries))}
        peaks: dict[int, list[float]] = {i: [] for i in range(len(entries))}
        kernel: dict[int, list[float]] = {i: [] for i in range(len(entries))}
        for i, (_, _, fns) in enumerate(entries):
            warm[i], _, _, outputs[i] = timed(fns[work], device)
        for r in range(repeats):
            order = list(range(len(entries)))
            for i in order if r % 2 == 0 else order[::-1]:
                elapsed, peak, sys_time, _ = timed(entries[i][2][work], device)
                times[i].append(elapsed)
                peaks[i].append(peak)
                kernel[i].append(sys_time)
        work_flops = flops(work)
        ref = next((i for i, e in enumerate(entries) if e[:2] == ("openai", "fp32")), None)
        base_variant = "fp32" if device.type == "cpu" else "fp16"
        base = next((i for i, e in enumerate(entries) if e[:2] == ("openai", base_variant)), None)
        n = batch(work)
        for i, (impl, variant, _) in enumerate(entries):
            med = statistics.median(times[i])
            rows.append(
                {
                    "work": work,
                    "device": device.type,
                    "impl": impl,
                    "variant": variant,
                    "batch": n,
                    "ms": med * 1e3,
                    "img_s": n / med,
                    "peak_MiB": max(peaks[i]),
                    "sys_ms": statistics.median(kernel[i]) * 1e3,
                    "gflop_s": work_flops / med / 1e9,
                    "compile_s": max(warm[i] - med, 0.0) if variant == "compile" else None,
                    "rel_err": rel_err(outputs[i], outputs[ref])
                    if ref is not None and work != "train"
                    else None,
                    "x_openai": statistics.median(times[base]) / med if base is not None else None,
                }
            )
    return rows


def run_isolated(script: Path, argv: list[str], work: str) -> list[dict]:
    """One work in a fresh process of `script` (the bench command, given `argv`); its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(script).resolve()), *argv]
        cmd += ["--works", work, "--no-isolate", "--rows-out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"the {work} work failed (exit status {proc.returncode}); its output is above")
        return json.loads(out.read_text())


def keep_freed_memory() -> None:
    """Make glibc keep freed memory for reuse: no mmap for large blocks, no trimming of the heap.

    By default glibc serves large allocations with fresh mmap'd pages (above a threshold that adapts up to
    32 MiB) and hands them back on free, so code that allocates large temporaries on every call pays for
    page faults and zeroing, seen as kernel time (the ``sys ms`` column). With this, every call reuses
    memory, which is what jemalloc or tcmalloc preloaded do, and the table compares computation only.
    """
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1
    except (OSError, AttributeError):
        ok = False
    if not ok:
        raise SystemExit("--keep-freed-memory needs glibc's mallopt (Linux); run without it")


def load_average(when: str) -> None:
    with contextlib.suppress(OSError):
        print(f"load average {when}:", Path("/proc/loadavg").read_text().strip(), flush=True)


# ------------------------------------------------------------------------------------------ the table


def peak_tflops(args: argparse.Namespace, device: torch.device, variant: str) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (fp32, half) in PEAK_TFLOPS.items():
        if key in name:
            return fp32 if variant == "fp32" else half
    return None


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    head = "| work | device | impl | variant | batch | ms | sys ms | images/s | x OpenAI | peak MiB | "
    head += "GFLOP/s | MFU | compile s | rel err |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        peak = peak_tflops(args, torch.device(r["device"]), r["variant"])
        mfu = f"{100 * r['gflop_s'] / 1e3 / peak:.1f}%" if peak else "-"
        x = f"{r['x_openai']:.2f}x" if r["x_openai"] else "-"
        comp = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        err = f"{r['rel_err']:.1e}" if r["rel_err"] is not None and r["impl"] != "openai" else "-"
        lines.append(
            f"| {r['work']} | {r['device']} | {r['impl']} | {r['variant']} | {r['batch']} | {r['ms']:.0f} | "
            f"{r['sys_ms']:.0f} | {r['img_s']:.2f} | {x} | {r['peak_MiB']:.0f} | {r['gflop_s']:.1f} | "
            f"{mfu} | {comp} | {err} |"
        )
    return "\n".join(lines)
