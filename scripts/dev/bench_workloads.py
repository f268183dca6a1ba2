"""What the bench times: the networks, their inputs and the three works, for ours and OpenAI's code.

The networks: an ADM-64-shaped UNet (channel_mult 1,2,3,4, 3 ResBlocks per level, attention at 32/16/8 px
with 64-channel heads in the new order, scale-shift norm, up/down ResBlocks, 1000 classes, learned sigma)
at width ``--width`` (64 by default; 192 is the released model), and a noisy classifier shaped like
ADM's 64 px classifier (4 ResBlocks per level, attention pool, legacy attention order) at the same width.
Both implementations get the same random weights and the same inputs. The work:

- ``forward``: one UNet forward without grad, batch ``--batch`` (default 8);
- ``train``: q_sample, UNet forward, hybrid loss, backward, AdamW step; batch ``--train-batch`` (4);
- ``guided``: classifier-guided DDIM (eta 0, strided respacing) for ``--steps`` steps (10) at scale
  ``--scale`` (4), batch ``--sample-batch`` (4), end to end, the guidance gradient included.

The training step trains copies of the networks, so the other works always see the same weights. Guided
sampling's FLOPs count the classifier's forward and backward. On CUDA the variants of ours are fp32, bf16
(autocast), and compile (bf16 + torch.compile of every ResBlock and attention block: the repeated blocks
share compiled code, so compilation is much shorter than for the whole network); compilation happens in
the warm-up call and is reported in ``compile s``. OpenAI's code runs in fp32 and, on CUDA, in fp16 (its
``convert_to_fp16``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
from collections.abc import Callable
from importlib.resources import files

import torch
import torch.nn.functional as F
from bench_harness import Entry, count_flops, openai_checkout

from adm.diffusion import GaussianDiffusion
from adm.diffusion.losses import training_losses
from adm.nn import AttentionBlock, EncoderUNet, ResBlock, UNet
from adm.sampling import ClassifierGuidance, PerSampleNoise, ddim_sample

WORKS = ("forward", "train", "guided")


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
    gd = openai_checkout(path)
    unet_kw, clf_kw = network_kwargs(args)

    def rates(kw: dict) -> tuple[int, ...]:  # pixel resolutions -> downsample factors
        return tuple(kw["image_size"] // r for r in kw["attention_resolutions"])

    unet = gd["unet"].UNetModel(
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
    clf = gd["unet"].EncoderUNetModel(
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
    create_gaussian_diffusion = gd["script_util"].create_gaussian_diffusion
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

    conf = OmegaConf.create((files("adm.conf") / "optimizer" / "adamw.yaml").read_text())
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


# ------------------------------------------------------------------------------------------ on one device


def implementations(args: argparse.Namespace, device: torch.device) -> tuple[list[Entry], dict, dict]:
    """(the implementations to time on `device`, their shared inputs, our networks) with fresh weights."""
    torch.manual_seed(0)
    ours = build_ours(args)
    theirs = build_openai(args.openai, args, ours) if args.openai else None
    inputs = make_inputs(args, device, ours["unet"].num_classes, ours["unet"].image_size)

    entries: list[Entry] = []
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
    return entries, inputs, ours
