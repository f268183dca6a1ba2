"""Upsample base samples with an ADM upsampler (sharded, resumable .npz), or run base -> upsampler in one go.

    python scripts/upsample.py ckpt=runs/sr_mnist/.../checkpoints/last.ckpt base_samples=base.npz
    python scripts/upsample.py openai_ckpt=64_256_upsampler.pt model=adm_sr_64_256 base_samples=64.npz
    python scripts/upsample.py ckpt=sr.ckpt num_samples=64 'base="ckpt=base.ckpt guidance.scale=0"'

The upsampler loads through the weights door as in scripts/sample.py (our checkpoints describe themselves;
OpenAI's weights take their preset) into an ``adm.ADM`` that draws every image; the run (shards, devices,
merge, grid, scores) is :mod:`adm.recipes.sharded`, as for scripts/sample.py. With ``base=...``
(scripts/sample.py settings) the base samples are drawn first into ``out_dir/base`` with the same seed, count
and devices; upsampling noise of sample i: upsample_seed(seed, i).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from hydra import compose
from hydra.utils import instantiate
from lightning_fabric import Fabric
from omegaconf import DictConfig, OmegaConf
from torch import nn

from adm.io.files import file_sha256
from adm.io.images import from_uint8, to_uint8
from adm.io.npz import BaseSamples
from adm.io.shards import ShardLayout, ShardStore
from adm.nn import SuperResUNet
from adm.pipeline import ADM
from adm.recipes.sample import load_model
from adm.recipes.sample import sample as sample_base
from adm.recipes.sharded import build_fabric, run_rank
from adm.sampling import describe_sampler, upsample_seed
from adm.weights import Weights

log = logging.getLogger("upsample")

# Settings of the base stage that the upsampling stage must share (sample i is the same sample in both).
_SHARED = ("seed", "num_samples", "out_dir", "paths.output_dir")


def load_upsampler(cfg: dict[str, Any]) -> tuple[Weights, int | None]:
    """The upsampler and its process (as scripts/sample.py loads models), and the low-res side it expects.

    The low-res side is the network's ``low_res_size``: our checkpoints record it with the network, OpenAI's
    weights take it from their preset (``model=adm_sr_64_256`` -> 64); None when unknown (not checked).
    """
    if cfg["flags"] is not None:
        raise ValueError(
            "flags=... is not supported for upsamplers; give OpenAI's upsampler weights their preset "
            "instead, e.g. openai_ckpt=64_256_upsampler.pt model=adm_sr_64_256 (or model=adm_sr_128_512)"
        )
    loaded = load_model(cfg)
    if not isinstance(loaded.network, SuperResUNet):
        raise ValueError(
            f"{cfg['ckpt'] or cfg['openai_ckpt']} holds a {type(loaded.network).__name__}, not an upsampler; "
            'sample base models with scripts/sample.py (or pass them as base="ckpt=...")'
        )
    return loaded, loaded.network.low_res_size


def draw_base(cfg: dict[str, Any]) -> Path:
    """Run scripts/sample.py with the `base` settings (one string or a list) into out_dir/base -> its .npz."""
    base = cfg["base"]
    overrides = base.split() if isinstance(base, str) else [str(o) for o in base]
    clash = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in _SHARED]
    if clash:
        raise ValueError(f"base={clash} is set by the upsampling run itself; set it at the top level instead")
    if cfg["num_samples"] is None:
        raise ValueError("base=... draws the base samples: give num_samples=N")
    out = Path(cfg["out_dir"]) / "base"
    trainer = [f"trainer.{k}={v}" for k, v in cfg["trainer"].items()]
    first = [f"batch_size={cfg['batch_size']}", f"progress={cfg['progress']}", *trainer]
    last = [
        f"seed={cfg['seed']}",
        f"num_samples={cfg['num_samples']}",
        f"paths.output_dir={out}",
        f"out_dir={out}",
    ]
    base_cfg = compose(config_name="sample", overrides=[*first, *overrides, *last])
    log.info("base stage: scripts/sample.py %s", " ".join(overrides))
    return Path(sample_base(base_cfg)["samples"])


class BaseDraw(Protocol):
    """What feeds the upsampler: ``base(indices) -> (uint8 (n, h, w, C), labels (n,) | None)``."""

    def __call__(self, indices: range) -> tuple[np.ndarray, np.ndarray | None]: ...


class UpsampleDrawer:
    """Draws upsampled samples by index: base images (a sample file, or any ``base(indices)``) -> upsampler.

    ``draw(indices) -> (uint8 (n, H, W, C), labels)`` like the sample recipe's drawer, so
    :func:`~adm.recipes.sharded.generate_shards` writes its output as sharded ``.npz`` files. The upsampler
    sees each base image as a sample file stores it (uint8 -> [-1, 1]); image i's noise comes from
    ``upsample_seed(seed, i)`` (:func:`adm.pipeline.upsample`, which goes through ``draw_images``).

    Args:
        unet: the upsampler (``SuperResUNet`` / ``SuperResModel``).
        diffusion: its (un-respaced) process. sampler: the upsampling sampler, options bound.
        base: :class:`~adm.io.npz.BaseSamples` (e.g. ``BaseSamples.load(path)``) or another
            ``base(indices)``.
        seed: the run's seed. device: where to sample.
        low_res_size: the low-res side the upsampler was trained for (checked against the base images), or
            None.
        autocast: context manager factory wrapped around the upsampler's batches, or None.
    """

    def __init__(
        self,
        *,
        unet: nn.Module,
        diffusion: Any,
        sampler: Callable[..., torch.Tensor],
        base: BaseDraw,
        seed: int,
        device: torch.device | str,
        low_res_size: int | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        self.model = ADM(unet.eval(), diffusion)
        self.unet, self.diffusion, self.sampler, self.base = self.model.unet, diffusion, sampler, base
        self.seed, self.device, self.autocast = int(seed), torch.device(device), autocast
        self.low_res_size = None if low_res_size is None else int(low_res_size)

    @property
    def labels(self) -> Callable[[range], np.ndarray | None] | None:
        """The labels of samples by index (those of the base stage)."""
        return getattr(self.base, "labels", None)

    @property
    def record(self) -> dict[str, Any]:
        """What the images are drawn with, as metrics.json records it (upsampling is never guided)."""
        return {"guidance": None, "guidance_scale": 0.0, **describe_sampler(self.sampler)}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of the upsampled images."""
        return (self.unet.image_size, self.unet.image_size, self.unet.in_channels)

    def __call__(self, indices: range) -> tuple[np.ndarray, np.ndarray | None]:
        """Upsampled images uint8 (n, H, W, C) and labels (n,) | None of samples `indices`."""
        base_images, labels = self.base(indices)
        h, w = base_images.shape[1:3]
        if self.low_res_size is not None and (h, w) != (self.low_res_size, self.low_res_size):
            raise ValueError(
                f"the base images are {h}x{w} but this upsampler was trained on {self.low_res_size} px "
                "inputs; give base samples of that size"
            )
        if self.unet.num_classes is not None and labels is None:
            raise ValueError(
                "the upsampler is class-conditional but the base samples have no labels (arr_1); sample the "
                "base model with labels, or use an unconditional upsampler"
            )
        y = None if labels is None else torch.as_tensor(labels, dtype=torch.int64, device=self.device)
        x_0 = self.model.draw(
            [upsample_seed(self.seed, i) for i in indices],
            sampler=self.sampler,
            labels=y if self.unet.num_classes is not None else None,
            conditioning={"low_res": from_uint8(base_images).to(self.device)},
            device=self.device,
            autocast=self.autocast,
        )
        return to_uint8(x_0), labels


def build_run(fabric: Fabric, cfg: dict[str, Any]) -> tuple[ShardStore, UpsampleDrawer]:
    """Load the upsampler and the base images on this process, and describe the run's files."""
    loaded, low_res_size = load_upsampler(cfg)
    base = BaseSamples.load(cfg["base_samples"])
    num_samples = len(base) if cfg["num_samples"] is None else int(cfg["num_samples"])
    if num_samples > len(base):
        raise ValueError(
            f"num_samples={num_samples} but {cfg['base_samples']} holds {len(base)} base samples"
        )
    drawer = UpsampleDrawer(
        unet=loaded.network.to(fabric.device),
        diffusion=loaded.diffusion,
        sampler=instantiate(cfg["sampler"]),
        base=base,
        seed=cfg["seed"],
        device=fabric.device,
        low_res_size=low_res_size,
        autocast=fabric.autocast,
    )
    fingerprint = {
        "upsampler": loaded.fingerprint,
        "base": {"sha256": file_sha256(cfg["base_samples"]), "image_shape": list(base.image_shape)},
        "sampler": {k: v for k, v in cfg["sampler"].items() if k != "_partial_"},
        "seed": cfg["seed"],
        "shard_size": cfg["shard_size"],
        "precision": str(cfg["trainer"]["precision"]),
    }
    info = {
        "upsampler": loaded.info,
        "base_samples": str(Path(cfg["base_samples"]).resolve()),
        "low_res_size": low_res_size,
        "batch_size": cfg["batch_size"],
        "world_size": fabric.world_size,
        "device": str(fabric.device),
        "drawn_with": drawer.record,
    }
    store = ShardStore(
        cfg["out_dir"],
        fingerprint=fingerprint,
        layout=ShardLayout(num_samples, cfg["shard_size"]),
        image_shape=drawer.image_shape,
        with_labels=base.label_array is not None,
        info=info,
    )
    return store, drawer


def upsample(cfg: DictConfig) -> dict[str, Any]:
    """Resolve the config, draw the base samples if asked, upsample them; returns rank 0's summary."""
    plain = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    if (plain["base_samples"] is None) == (plain["base"] is None):
        raise ValueError(
            "give exactly one of base_samples=FILE.npz (arr_0 uint8 NHWC images, arr_1 labels) or "
            'base="ckpt=... guidance.scale=..." (scripts/sample.py settings that draw them first)'
        )
    for key in ("ckpt", "openai_ckpt", "base_samples"):
        if plain[key] is not None and not Path(plain[key]).is_file():
            raise FileNotFoundError(f"{key}={plain[key]}: no such file")
    if plain["base"] is not None:
        plain["base_samples"] = str(draw_base(plain))
    fabric = build_fabric(plain["trainer"])
    log.info(
        "upsampling %s into %s (%d device(s))", plain["base_samples"], plain["out_dir"], fabric.world_size
    )
    result = fabric.launch(run_rank, plain, build_run)
    if result is not None:  # rank 0
        result["base_samples"] = plain["base_samples"]
    return result
