"""Sampler throughput and peak memory: network presets x devices x (eager | torch.compile).

    python scripts/bench.py                                  # tiny + ADM-64 on CPU (and CUDA if present)
    python scripts/bench.py --presets adm_u_tiny --modes eager,compile --threads 1   # torch.compile on CPU
    python scripts/bench.py --presets adm_u_64 --devices cuda --modes eager,compile --batch 32 --steps 20
    python scripts/bench.py --classifier adm_cls_64 --scale 1.0  # with classifier guidance

Weights are random (speed does not depend on them). One "step" is one reverse-diffusion step of the chosen
sampler (one UNet forward, plus a classifier forward+backward with guidance). Warm-up steps (which include
torch.compile's compilation) are timed separately and not counted in steps/s. Peak memory is
torch.cuda.max_memory_allocated on CUDA and the process's peak resident set size (VmHWM, reset before each
run where the kernel allows) on CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adm.pipeline import ADM  # noqa: E402
from adm.sampling import SAMPLERS, ClassifierGuidance, PerSampleNoise  # noqa: E402

# (preset, device type) -> (batch, timed steps) when not given on the command line; sized so that the
# default CPU run stays within a few minutes on a laptop.
DEFAULTS = {
    ("adm_u_tiny", "cpu"): (4, 20),
    ("adm_u_64", "cpu"): (1, 3),
    ("adm_u_tiny", "cuda"): (64, 50),
    ("adm_u_64", "cuda"): (16, 20),
}
FALLBACK = {"cpu": (1, 3), "cuda": (16, 20)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="adm_u_tiny,adm_u_64", help="comma-separated conf/model presets")
    default_devices = "cpu,cuda" if torch.cuda.is_available() else "cpu"
    ap.add_argument("--devices", default=default_devices, help="comma-separated: cpu, cuda")
    ap.add_argument(
        "--modes",
        default=None,
        help="comma-separated: eager, compile (default: eager on CPU, where inductor compiles for minutes; "
        "eager,compile on CUDA)",
    )
    ap.add_argument("--sampler", default="ddpm", choices=sorted(SAMPLERS))
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: per preset and device)")
    ap.add_argument(
        "--steps", type=int, default=None, help="timed sampler steps (default: per preset and device)"
    )
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps (compilation happens here)")
    ap.add_argument(
        "--classifier", default=None, help="classifier preset for guided sampling, e.g. adm_cls_64"
    )
    ap.add_argument("--scale", type=float, default=1.0, help="guidance scale when --classifier is given")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune")
    return ap.parse_args(argv)


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(args, preset: str, device: torch.device, mode: str) -> dict:
    batch, steps = DEFAULTS.get((preset, device.type), FALLBACK[device.type])
    batch = args.batch or batch
    steps = args.steps or steps
    model = ADM.from_preset(preset, classifier=args.classifier).to(device).eval()
    unet = model.unet
    if mode == "compile":
        unet = torch.compile(unet, mode=None if args.compile_mode == "default" else args.compile_mode)
    class_cond = model.unet.num_classes is not None
    n_classes = model.num_classes
    y = None if n_classes is None else (torch.arange(batch, device=device) % n_classes)

    def model_fn(x, t, y=None):
        return unet(x, t, y=y if class_cond else None)

    guidance = ClassifierGuidance(model.classifier, args.scale) if args.classifier else None
    sampler = SAMPLERS[args.sampler]
    shape = (model.unet.in_channels, model.unet.image_size, model.unet.image_size)

    def run(n_steps: int) -> float:
        noise = PerSampleNoise(range(batch))
        x_T = noise.initial(shape, device=device)
        _sync(device)
        start = time.perf_counter()
        sampler(
            model_fn,
            model.diffusion,
            x_T,
            model_kwargs={} if y is None else {"y": y},
            guidance=guidance,
            noise=noise,
            steps=n_steps,
        )
        _sync(device)
        return time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _reset_peak_rss()
    warm = run(args.warmup) if args.warmup > 0 else 0.0
    elapsed = run(steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _peak_rss_mib()
    params = sum(p.numel() for p in model.unet.parameters())
    return {
        "preset": preset,
        "params_M": params / 1e6,
        "device": str(device),
        "mode": mode,
        "batch": batch,
        "steps": steps,
        "warmup_s": warm,
        "steps_per_s": steps / elapsed,
        "images_steps_per_s": batch * steps / elapsed,
        "peak_MiB": peak,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = [p for p in args.presets.split(",") if p]
    devices = [torch.device(d) for d in args.devices.split(",") if d]
    modes = None if args.modes is None else [m for m in args.modes.split(",") if m]
    if any(d.type == "cuda" for d in devices) and not torch.cuda.is_available():
        raise SystemExit("--devices includes cuda but CUDA is not available")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, sampler {args.sampler}"
        + (f", guidance {args.classifier} x {args.scale}" if args.classifier else "")
        + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        flush=True,
    )
    header = f"{'preset':<12} {'params':>8} {'device':<7} {'mode':<8} {'batch':>5} {'steps':>5} "
    header += f"{'warmup s':>9} {'steps/s':>9} {'img*steps/s':>12} {'peak MiB':>9}"
    print(header)
    print("-" * len(header), flush=True)
    for device in devices:
        for preset in presets:
            for mode in modes or (["eager"] if device.type == "cpu" else ["eager", "compile"]):
                try:
                    r = bench_one(args, preset, device, mode)
                except Exception as err:  # report and go on with the other configurations
                    reason = f"{type(err).__name__}: {err}".splitlines()[0]
                    print(f"{preset:<12} {'':>8} {device.type:<7} {mode:<8} failed: {reason}", flush=True)
                    continue
                print(
                    f"{r['preset']:<12} {r['params_M']:>7.1f}M {device.type:<7} {r['mode']:<8} "
                    f"{r['batch']:>5} {r['steps']:>5} {r['warmup_s']:>9.2f} {r['steps_per_s']:>9.3f} "
                    f"{r['images_steps_per_s']:>12.2f} {r['peak_MiB']:>9.0f}",
                    flush=True,
                )
                if device.type == "cuda":
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
