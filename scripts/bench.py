"""Speed of adm side by side with OpenAI's guided-diffusion: UNet forward, training step, guided sampling.

    python scripts/bench.py --openai /path/to/guided-diffusion     # CPU (and CUDA when present), one table
    python scripts/bench.py                                        # ours only (no reference checkout given)
    python scripts/bench.py --tiny --repeats 1                     # a seconds-long smoke run
    python scripts/bench.py --openai ../guided-diffusion --keep-freed-memory   # computation only
    python scripts/bench.py --devices cuda --variants fp32,bf16,compile --openai ../guided-diffusion

The networks: an ADM-64-shaped UNet (channel_mult 1,2,3,4, 3 ResBlocks per level, attention at 32/16/8 px
with 64-channel heads in the new order, scale-shift norm, up/down ResBlocks, 1000 classes, learned sigma)
at width ``--width`` (64 by default; 192 is the released model), and a noisy classifier shaped like
ADM's 64 px classifier (4 ResBlocks per level, attention pool, legacy attention order) at the same width.
Both implementations get the same random weights and the same inputs. The work:

- ``forward``: one UNet forward without grad, batch ``--batch`` (default 8);
- ``train``: q_sample, UNet forward, hybrid loss, backward, AdamW step; batch ``--train-batch`` (4);
- ``guided``: classifier-guided DDIM (eta 0, strided respacing) for ``--steps`` steps (10) at scale
  ``--scale`` (4), batch ``--sample-batch`` (4), end to end, the guidance gradient included.

Every work item runs ``--repeats`` times per implementation, the implementations interleaved (their order
alternating) after one warm-up call each; the table shows medians. Each work runs in a fresh process of
this script (``--no-isolate``: all in this one), because what one work leaves in the allocator changes the
next one's speed (glibc raises its mmap threshold after large frees). The training step trains copies of
the networks, so the other works always see the same weights.

``sys ms`` is the kernel CPU time of one call. On CPU it is mostly page faults: glibc serves large blocks
with fresh pages and returns them on free, so code that allocates large temporaries on every call (such as
attention weights of ``L x L``) pays for faulting and zeroing them each time. That cost is real for anyone
running with the default allocator and is part of the ``ms`` column. ``--keep-freed-memory`` turns it off
for both implementations (glibc's mallopt: freed memory is kept for reuse, as a preloaded jemalloc or
tcmalloc would), and the table then compares the computation alone. ``rel err`` compares each output with
OpenAI's fp32 one (forward output; final samples); the training step has dropout and shows none.
``peak MiB`` is the extra memory one call needs: torch.cuda.max_memory_allocated on CUDA, the rise of the
process's peak resident set (VmHWM, reset before each call) on CPU. FLOPs are counted once from the
network with torch.utils.flop_counter (attention on the math path, so it is counted as matrix products;
guidance counts the classifier's forward and backward); MFU divides the achieved rate by ``--peak-tflops``
(known GPUs are filled in; on CPU it is shown only when given). On CUDA the variants are fp32,
bf16 (autocast), and compile (bf16 + torch.compile of every ResBlock and attention block: the repeated
blocks share compiled code, so compilation is much shorter than for the whole network); compilation happens
in the warm-up call and is reported in ``compile s``. OpenAI's code runs in fp32 and, on CUDA, in fp16
(its ``convert_to_fp16``); the ``x OpenAI`` column divides by OpenAI's fp32 time on CPU and by its fp16 time
on CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import resource
except ImportError:  # Windows: the sys column shows nan
    resource = None

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adm.diffusion import GaussianDiffusion  # noqa: E402
from adm.diffusion.losses import training_losses  # noqa: E402
from adm.nn import AttentionBlock, EncoderUNet, ResBlock, UNet  # noqa: E402
from adm.sampling import ClassifierGuidance, PerSampleNoise, ddim_sample  # noqa: E402

WORKS = ("forward", "train", "guided")
# Dense peak TFLOP/s (fp32 without tensor cores / bf16 and fp16 tensor cores) of GPUs we know.
PEAK_TFLOPS = {"H100": (67.0, 989.0), "H200": (67.0, 989.0), "A100": (19.5, 312.0), "L40S": (91.6, 362.0)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--openai",
        default=os.environ.get("ADM_OPENAI_REF"),
        help="a guided-diffusion checkout to compare with (default: $ADM_OPENAI_REF; none: ours only)",
    )
    ap.add_argument("--tiny", action="store_true", help="a tiny 16 px network, batch 2, 2 steps (smoke test)")
    ap.add_argument("--works", default=",".join(WORKS), help=f"comma-separated: {', '.join(WORKS)}")
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


# ------------------------------------------------------------------------------------------ networks


def network_kwargs(args: argparse.Namespace) -> tuple[dict, dict]:
    """Constructor arguments of the UNet and the classifier (ours; pixel attention resolutions)."""
    if args.tiny:
        unet = dict(image_size=16, model_channels=32, num_res_blocks=1, channel_mult=(1, 2), num_classes=10)
        unet.update(attention_resolutions=(8,), num_head_channels=16, use_new_attention_order=True)
        clf = dict(image_size=16, model_channels=32, num_res_blocks=1, channel_mult=(1, 2), out_channels=10)
        clf.update(attention_resolutions=(8,), num_head_channels=16)
    else:
        unet = dict(image_size=64, model_channels=args.width, num_res_blocks=3, channel_mult=(1, 2, 3, 4))
        unet.update(num_classes=1000, attention_resolutions=(32, 16, 8), num_head_channels=64)
        unet.update(use_new_attention_order=True)
        clf = dict(image_size=64, model_channels=args.width, num_res_blocks=4, channel_mult=(1, 2, 3, 4))
        clf.update(out_channels=1000, attention_resolutions=(32, 16, 8), num_head_channels=64)
    unet.update(in_channels=3, learn_sigma=True, dropout=0.1, use_scale_shift_norm=True, resblock_updown=True)
    clf.update(in_channels=3, pool="attention", use_scale_shift_norm=True, resblock_updown=True)
    return unet, clf


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (the zero-initialised output layers would make the work trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.ndim > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in) * (1.0 if p.ndim > 1 else 0.1))


def build_ours(args: argparse.Namespace) -> dict:
    unet_kw, clf_kw = network_kwargs(args)
    unet, clf = UNet(**unet_kw), EncoderUNet(**clf_kw)
    randomise(unet, 0)
    randomise(clf, 1)
    diffusion = GaussianDiffusion.from_schedule(
        schedule="cosine",
        steps=1000,
        mean_type="epsilon",
        var_type="learned_range",
        loss_type="rescaled_mse",
        rescale_timesteps=False,
    )
    return {"unet": unet, "classifier": clf, "diffusion": diffusion}


def build_openai(path: str, args: argparse.Namespace, ours: dict) -> dict:
    """OpenAI's networks and diffusion from a local checkout, with our weights."""
    sys.path.insert(0, str(Path(path).resolve()))
    from guided_diffusion.script_util import create_gaussian_diffusion
    from guided_diffusion.unet import EncoderUNetModel, UNetModel

    unet_kw, clf_kw = network_kwargs(args)

    def rates(kw: dict) -> tuple[int, ...]:  # pixel resolutions -> downsample factors
        return tuple(kw["image_size"] // r for r in kw["attention_resolutions"])

    unet = UNetModel(
        image_size=unet_kw["image_size"],
        in_channels=3,
        model_channels=unet_kw["model_channels"],
        out_channels=6,
        num_res_blocks=unet_kw["num_res_blocks"],
        attention_resolutions=rates(unet_kw),
        dropout=unet_kw["dropout"],
        channel_mult=unet_kw["channel_mult"],
        num_classes=unet_kw["num_classes"],
        num_head_channels=unet_kw["num_head_channels"],
        use_scale_shift_norm=True,
        resblock_updown=True,
        use_new_attention_order=unet_kw["use_new_attention_order"],
    )
    clf = EncoderUNetModel(
        image_size=clf_kw["image_size"],
        in_channels=3,
        model_channels=clf_kw["model_channels"],
        out_channels=clf_kw["out_channels"],
        num_res_blocks=clf_kw["num_res_blocks"],
        attention_resolutions=rates(clf_kw),
        channel_mult=clf_kw["channel_mult"],
        num_head_channels=clf_kw["num_head_channels"],
        use_scale_shift_norm=True,
        resblock_updown=True,
        pool="attention",
    )
    unet.load_state_dict(ours["unet"].state_dict())
    clf.load_state_dict(ours["classifier"].state_dict())
    common = dict(steps=1000, learn_sigma=True, noise_schedule="cosine")
    return {
        "unet": unet,
        "classifier": clf,
        "diffusion": create_gaussian_diffusion(**common),
        "sampling": create_gaussian_diffusion(**common, timestep_respacing=f"ddim{args.steps}"),
    }


def compile_blocks(model: torch.nn.Module) -> None:
    """Regional compilation: every ResBlock and attention block compiled in place (shared code)."""
    for m in model.modules():
        if isinstance(m, ResBlock | AttentionBlock):
            m.compile()


# ------------------------------------------------------------------------------------------ work


def make_inputs(args: argparse.Namespace, device: torch.device, num_classes: int, size: int) -> dict:
    g = torch.Generator().manual_seed(2)
    out = {}
    for work, batch in (("forward", args.batch), ("train", args.train_batch), ("guided", args.sample_batch)):
        out[work] = {
            "x": torch.randn(batch, 3, size, size, generator=g).to(device),
            "t": torch.randint(0, 1000, (batch,), generator=g).to(device),
            "y": torch.randint(0, num_classes, (batch,), generator=g).to(device),
            "eps": torch.randn(batch, 3, size, size, generator=g).to(device),
        }
    return out


def training_optimizer(unet: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer our training recipes build (conf/optimizer/adamw.yaml: fused AdamW) at lr 1e-4."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = OmegaConf.load(Path(__file__).resolve().parents[1] / "adm" / "conf" / "optimizer" / "adamw.yaml")
    return instantiate(conf, lr=1e-4)(unet.parameters())


def ours_fns(nets: dict, args, inputs: dict, amp: torch.dtype | None) -> dict[str, Callable]:
    unet, clf, diffusion = nets["unet"], nets["classifier"], nets["diffusion"]
    device = next(unet.parameters()).device
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else contextlib.nullcontext
    train_unet = copy.deepcopy(unet)  # training steps change weights: the other works keep the shared ones
    opt = training_optimizer(train_unet)
    guidance = ClassifierGuidance(clf, args.scale)
    steps = args.steps

    def forward():
        d = inputs["forward"]
        with torch.no_grad(), autocast():
            return unet.eval()(d["x"], d["t"], d["y"]).float()

    def train():
        d = inputs["train"]
        train_unet.train()
        with autocast():
            x_t = diffusion.q_sample(d["x"], d["t"], d["eps"])
            out = train_unet(x_t, diffusion.model_timesteps(d["t"]), d["y"])
            loss = training_losses(diffusion, out.float(), d["x"], x_t, d["t"], d["eps"])["loss"].mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return None

    def guided():
        d = inputs["guided"]
        unet.eval()
        clf.eval()

        def model_fn(x, t, y):
            with autocast():
                return unet(x, t, y).float()

        def guide(x, t, y=None, **_):
            with autocast():
                return guidance(x, t, y=y)

        guide.enabled = True
        return ddim_sample(
            model_fn,
            diffusion,
            d["x"],
            model_kwargs={"y": d["y"]},
            guidance=guide,
            noise=PerSampleNoise(range(d["x"].shape[0])),
            steps=steps,
            spacing="strided",
        )

    return {"forward": forward, "train": train, "guided": guided}


def openai_fns(nets: dict, args, inputs: dict) -> dict[str, Callable]:
    unet, clf, diffusion, sampling = nets["unet"], nets["classifier"], nets["diffusion"], nets["sampling"]
    train_unet = copy.deepcopy(unet)
    opt = torch.optim.AdamW(train_unet.parameters(), lr=1e-4)

    def forward():
        d = inputs["forward"]
        with torch.no_grad():
            return unet.eval()(d["x"], d["t"], d["y"]).float()

    def train():
        d = inputs["train"]
        train_unet.train()
        losses = diffusion.training_losses(
            train_unet, d["x"], d["t"], model_kwargs={"y": d["y"]}, noise=d["eps"]
        )
        losses["loss"].mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return None

    def cond_fn(x, t, y=None):  # the gradient of log p(y | x_t), as OpenAI's sampling script computes it
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_p = F.log_softmax(clf(x_in, t), dim=-1)
            chosen = log_p.gather(1, y[:, None]).sum()
            return torch.autograd.grad(chosen, x_in)[0] * args.scale

    def guided():
        d = inputs["guided"]
        unet.eval()
        clf.eval()
        return sampling.ddim_sample_loop(
            unet, tuple(d["x"].shape), noise=d["x"], model_kwargs={"y": d["y"]}, cond_fn=cond_fn
        )

    return {"forward": forward, "train": train, "guided": guided}


# ------------------------------------------------------------------------------------------ measuring


def _peak_rss_mib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
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
        base = _rss_mib()
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
        peak = _peak_rss_mib() - base
    return elapsed, peak, sys_time, out


def count_flops(fn: Callable) -> float:
    """FLOPs of one call, attention counted as its matrix products (math path)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return float(counter.get_total_flops())


def work_flops(work: str, ours: dict, inputs: dict, args: argparse.Namespace, device: torch.device) -> float:
    """Model FLOPs of one call of ``work``.

    forward: the UNet's forward; train: its forward and backward (the optimizer and loss are negligible);
    guided: per step one UNet forward, one classifier forward and the backward to the input (about as
    many FLOPs as the forward).
    """
    unet = copy.deepcopy(ours["unet"]).to(device)
    d = inputs[work]
    if work == "forward":
        with torch.no_grad():
            return count_flops(lambda: unet(d["x"], d["t"], d["y"]))
    if work == "train":
        return count_flops(lambda: unet(d["x"], d["t"], d["y"]).square().mean().backward())
    clf = copy.deepcopy(ours["classifier"]).to(device)
    with torch.no_grad():
        per_step = count_flops(lambda: unet(d["x"], d["t"], d["y"])) + 2 * count_flops(
            lambda: clf(d["x"], d["t"])
        )
    return per_step * args.steps


def rel_err(a, b) -> float:
    if a is None or b is None:
        return float("nan")
    a, b = a.float().cpu(), b.float().cpu()
    return ((a - b).norm() / b.norm()).item()


def bench_device(args: argparse.Namespace, device: torch.device, works: list[str]) -> list[dict]:
    torch.manual_seed(0)
    ours = build_ours(args)
    theirs = build_openai(args.openai, args, ours) if args.openai else None
    size = ours["unet"].image_size
    inputs = make_inputs(args, device, ours["unet"].num_classes, size)

    entries: list[tuple[str, str, dict[str, Callable]]] = []  # (impl, variant, fns)
    variants = ["fp32"] if device.type == "cpu" else [v for v in args.variants.split(",") if v]
    for variant in variants:
        nets = {k: copy.deepcopy(v).to(device) if k != "diffusion" else v for k, v in ours.items()}
        if variant == "compile":
            compile_blocks(nets["unet"])
            compile_blocks(nets["classifier"])
        amp = None if variant == "fp32" else torch.bfloat16
        entries.append(("adm", variant, ours_fns(nets, args, inputs, amp)))
    if theirs is not None:
        for variant in ["fp32"] if device.type == "cpu" else ["fp32", "fp16"]:
            nets = {
                k: copy.deepcopy(v).to(device) if k in ("unet", "classifier") else v
                for k, v in theirs.items()
            }
            if variant == "fp16":
                nets["unet"].convert_to_fp16()
                nets["classifier"].convert_to_fp16()
            entries.append(("openai", variant, openai_fns(nets, args, inputs)))

    rows = []
    for work in works:
        warm, outputs = {}, {}
        times: dict[int, list[float]] = {i: [] for i in range(len(entries))}
        peaks: dict[int, list[float]] = {i: [] for i in range(len(entries))}
        kernel: dict[int, list[float]] = {i: [] for i in range(len(entries))}
        for i, (_, _, fns) in enumerate(entries):
            warm[i], _, _, outputs[i] = timed(fns[work], device)
        for r in range(args.repeats):
            order = list(range(len(entries)))
            for i in order if r % 2 == 0 else order[::-1]:
                elapsed, peak, sys_time, _ = timed(entries[i][2][work], device)
                times[i].append(elapsed)
                peaks[i].append(peak)
                kernel[i].append(sys_time)
        flops = work_flops(work, ours, inputs, args, device)  # the same networks whichever code runs them
        ref = next((i for i, e in enumerate(entries) if e[:2] == ("openai", "fp32")), None)
        base_variant = "fp32" if device.type == "cpu" else "fp16"
        base = next((i for i, e in enumerate(entries) if e[:2] == ("openai", base_variant)), None)
        batch = inputs[work]["x"].shape[0]
        for i, (impl, variant, _) in enumerate(entries):
            med = statistics.median(times[i])
            rows.append(
                {
                    "work": work,
                    "device": device.type,
                    "impl": impl,
                    "variant": variant,
                    "batch": batch,
                    "ms": med * 1e3,
                    "img_s": batch / med,
                    "peak_MiB": max(peaks[i]),
                    "sys_ms": statistics.median(kernel[i]) * 1e3,
                    "gflop_s": flops / med / 1e9,
                    "compile_s": max(warm[i] - med, 0.0) if variant == "compile" else None,
                    "rel_err": rel_err(outputs[i], outputs[ref])
                    if ref is not None and work != "train"
                    else None,
                    "x_openai": statistics.median(times[base]) / med if base is not None else None,
                }
            )
    return rows


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


def run_isolated(argv: list[str], work: str) -> list[dict]:
    """One work in a fresh process of this script; its rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv]
        cmd += ["--works", work, "--no-isolate", "--rows-out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stdout.write(proc.stdout)
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"the {work} work failed (exit status {proc.returncode}); its output is above")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.tiny:
        args.batch = args.train_batch = args.sample_batch = args.steps = 2
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    works = [w for w in args.works.split(",") if w]
    unknown = set(works) - set(WORKS)
    if unknown:
        raise SystemExit(f"unknown work {sorted(unknown)}; choose from {WORKS}")
    devices = [torch.device(d) for d in args.devices.split(",") if d]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise SystemExit("--devices includes cuda but CUDA is not available")
    if args.openai and not (Path(args.openai) / "guided_diffusion" / "unet.py").is_file():
        raise SystemExit(f"--openai {args.openai}: no guided_diffusion/unet.py there")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
        + ("" if args.openai else "; OpenAI's code skipped (give --openai PATH to compare)"),
        flush=True,
    )
    with contextlib.suppress(OSError):
        print("load average before:", Path("/proc/loadavg").read_text().strip(), flush=True)
    if args.rows_out:  # an isolated work: its rows go back to the parent process
        rows = [row for device in devices for row in bench_device(args, device, works)]
        Path(args.rows_out).write_text(json.dumps(rows))
        return rows
    rows = []
    if args.isolate and len(works) > 1:
        print(f"each work in its own process: {', '.join(works)}", flush=True)
        for work in works:
            rows += run_isolated(argv, work)
        rows.sort(key=lambda r: [d.type for d in devices].index(r["device"]))  # stable: works stay in order
    else:
        for device in devices:
            rows += bench_device(args, device, works)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    with contextlib.suppress(OSError):
        print("load average after:", Path("/proc/loadavg").read_text().strip(), flush=True)
    print(format_table(rows, args), flush=True)
    return rows


if __name__ == "__main__":
    main()
