"""``adm.ADM``: a ready-to-sample ADM (UNet + diffusion process + optional noisy classifier).

>>> model = ADM.from_preset("adm_u_64", classifier="adm_cls_64")
>>> model.load_openai("64x64_diffusion.pt", "64x64_classifier.pt")
>>> out = model.to("cuda").infer(16, labels=207, classifier_scale=1.0, sampler="ddpm", steps=250, seed=0)
>>> out["samples"].shape, out["samples"].dtype      # (16, 64, 64, 3), torch.uint8 (NHWC, like OpenAI's .npz)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from adm.diffusion import GaussianDiffusion, create_diffusion
from adm.sampling import SAMPLERS, ClassifierGuidance, PerSampleNoise
from adm.sampling.noise import sample_seed

__all__ = ["ADM"]


def _diffusion_from_conf(name: str, learn_sigma: bool) -> GaussianDiffusion:
    """The process described by ``conf/diffusion/<name>.yaml`` for a network with/without learned sigma."""
    from adm.presets import conf_dir

    path = conf_dir() / "diffusion" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"the preset names diffusion {name!r} but {path} does not exist")
    cfg = OmegaConf.merge({"model": {"learn_sigma": bool(learn_sigma)}}, {"diffusion": OmegaConf.load(path)})
    kwargs: dict[str, Any] = OmegaConf.to_container(cfg.diffusion, resolve=True)  # type: ignore[assignment]
    kwargs.pop("_target_", None)
    return create_diffusion(**kwargs)


class ADM(nn.Module):
    """An ADM diffusion model ready for sampling.

    Args:
        unet: ``adm.nn.UNet`` (``forward(x, t, y=None)``; attributes ``num_classes``, ``learn_sigma``,
            ``image_size``, ``in_channels``).
        diffusion: the process the UNet was trained for (``adm.diffusion.create_diffusion``), full length;
            sampling respaces it (``infer(steps=...)``).
        classifier: optional noisy classifier (``adm.nn.EncoderUNet``) for classifier guidance.
    """

    def __init__(
        self, unet: nn.Module, diffusion: GaussianDiffusion, classifier: nn.Module | None = None
    ) -> None:
        super().__init__()
        if bool(getattr(unet, "learn_sigma", diffusion.learn_sigma)) != diffusion.learn_sigma:
            raise ValueError(
                f"the UNet has learn_sigma={unet.learn_sigma} but the diffusion process "
                f"{'learns' if diffusion.learn_sigma else 'fixes'} the variance; use the same learn_sigma"
            )
        unet_classes = getattr(unet, "num_classes", None)
        classifier_classes = getattr(classifier, "num_classes", None)
        if unet_classes is not None and classifier_classes is not None and unet_classes != classifier_classes:
            raise ValueError(
                f"the UNet knows {unet_classes} classes, the classifier {classifier_classes}; they must agree"
            )
        self.unet = unet
        self.diffusion = diffusion
        self.classifier = classifier

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(cls, model_name: str, classifier: str | None = None) -> ADM:
        """Build the networks of ``conf/model/<model_name>.yaml`` (+ ``conf/classifier/<classifier>.yaml``).

        The diffusion process is the one the preset names (``defaults: - override /diffusion: ...``).
        Weights are freshly initialised: call :meth:`load_openai` next. Works under
        ``with torch.device("meta"):`` (no parameter memory; :meth:`load_openai` then materialises it).
        """
        from adm.presets import build_network, load_preset

        spec = load_preset(model_name)
        if "diffusion" not in spec:
            raise ValueError(
                f"{model_name!r} is not a diffusion model preset (it names no diffusion process)"
            )
        unet = build_network(model_name)
        diffusion = _diffusion_from_conf(spec["diffusion"], bool(spec.get("learn_sigma", unet.learn_sigma)))
        clf = build_network(classifier) if classifier is not None else None
        return cls(unet, diffusion, clf)

    @staticmethod
    def _load_into(module: nn.Module, path: str | os.PathLike, what: str) -> None:
        from adm.io.safe_load import safe_torch_load
        from adm.nn import load_state_dict_checked

        state = safe_torch_load(path)
        if not isinstance(state, dict):
            raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}) for the {what}")
        if any(p.is_meta for p in module.parameters()):
            module.to_empty(device="cpu")  # built under torch.device("meta"): allocate, then load
        load_state_dict_checked(module, state)

    def load_openai(
        self, diffusion_ckpt: str | os.PathLike, classifier_ckpt: str | os.PathLike | None = None
    ) -> ADM:
        """Load OpenAI's released weights (e.g. ``64x64_diffusion.pt``, ``64x64_classifier.pt``) unchanged.

        Files are read with ``weights_only=True``; a checkpoint that does not fit raises one ValueError naming
        missing / unexpected / mis-shaped keys and the presets that fit. Returns ``self``.
        """
        if classifier_ckpt is not None and self.classifier is None:
            raise ValueError(
                "classifier_ckpt given but this ADM has no classifier: use from_preset(..., classifier=...)"
            )
        self._load_into(self.unet, diffusion_ckpt, "UNet")
        if classifier_ckpt is not None:
            self._load_into(self.classifier, classifier_ckpt, "classifier")
        return self

    # ------------------------------------------------------------------ sampling
    @property
    def num_classes(self) -> int | None:
        """Number of labels sampling can ask for (UNet's, else the classifier's); None if unconditional."""
        n = getattr(self.unet, "num_classes", None)
        return n if n is not None else getattr(self.classifier, "num_classes", None)

    def _labels(
        self, batch_size: int, labels: int | Sequence[int] | torch.Tensor | None, seed_gen: torch.Generator
    ) -> torch.Tensor | None:
        n = self.num_classes
        if labels is None:
            return None if n is None else torch.randint(0, n, (batch_size,), generator=seed_gen)
        if n is None:
            raise ValueError("labels given but neither the UNet nor a classifier is class-conditional")
        if isinstance(labels, bool):
            raise ValueError("labels must be an int, a sequence of ints or an int64 tensor")
        labels = torch.full((batch_size,), labels) if isinstance(labels, int) else torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.shape != (batch_size,):
            raise ValueError(
                f"labels must be one int or {batch_size} ints, got {tuple(labels.shape)} {labels.dtype}"
            )
        if int(labels.min()) < 0 or int(labels.max()) >= n:
            raise ValueError(
                f"labels must lie in [0, {n - 1}], got values {labels.min().item()}..{labels.max().item()}"
            )
        return labels.long()

    @torch.no_grad()
    def infer(
        self,
        batch_size: int,
        labels: int | Sequence[int] | torch.Tensor | None = None,
        classifier_scale: float = 0.0,
        sampler: str = "ddpm",
        steps: int | str | None = None,
        eta: float = 0.0,
        seed: int | Sequence[int] = 0,
        show_progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Sample ``batch_size`` images.

        Args:
            batch_size: number of images.
            labels: None (random labels for class-conditional models / guidance, drawn from ``seed``), one int
                for every image, or ``batch_size`` ints in [0, num_classes).
            classifier_scale: classifier-guidance scale s (needs a classifier; 0 = no guidance).
            sampler: "ddpm" (ancestral, learned variance) or "ddim".
            steps: respacing of the 1000 training steps: an int (evenly spaced, e.g. 250), "ddimN" or
                "a,b,c"; None samples all of them.
            eta: DDIM noise (0 = deterministic); only for ``sampler="ddim"``.
            seed: run seed (image i uses ``sample_seed(seed, i)``, as scripts/sample.py does) or one seed per
                image. Image i's noise comes from its own generator, so it does not change with
                ``batch_size`` or device.
            show_progress: show a progress bar.
        Returns:
            {"samples": uint8 (B, H, W, C) images (OpenAI's quantisation ``((x + 1) * 127.5).clamp(0, 255)``
            truncated, as in their .npz files), "labels": int64 (B,) labels used (-1 when unconditional)}.
        """
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {sorted(SAMPLERS)}")
        if classifier_scale < 0:
            raise ValueError(f"classifier_scale must be >= 0, got {classifier_scale}")
        if classifier_scale > 0 and self.classifier is None:
            raise ValueError(
                "classifier guidance needs a classifier: ADM.from_preset(model, classifier=...) + load_openai"
            )
        if eta != 0.0 and sampler != "ddim":
            raise ValueError("eta is a DDIM setting; use sampler='ddim' or leave eta=0")
        diffusion = self.diffusion if steps is None else self.diffusion.respace(steps)
        device = next(self.unet.parameters()).device
        if device.type == "meta":
            raise ValueError("the networks are on the meta device: load weights first (load_openai)")
        seeds = (
            [sample_seed(int(seed), i) for i in range(batch_size)]
            if isinstance(seed, int)
            else [int(s) for s in seed]
        )
        if len(seeds) != batch_size:
            raise ValueError(
                f"got {len(seeds)} seeds for batch_size {batch_size}; give one per image or one int"
            )

        y = self._labels(batch_size, labels, torch.Generator().manual_seed(seeds[0]))
        y_device = None if y is None else y.to(device)
        class_cond = getattr(self.unet, "num_classes", None) is not None

        def model_fn(x_t: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            # y always reaches the classifier; the UNet sees it only if it is class-conditional.
            return self.unet(x_t, t, y=y if class_cond else None)

        noise = PerSampleNoise(seeds)
        image_size, channels = self.unet.image_size, self.unet.in_channels
        x_T = noise.initial((channels, image_size, image_size), device=device)
        guidance = ClassifierGuidance(self.classifier, classifier_scale) if classifier_scale > 0 else None
        options = {"eta": eta} if sampler == "ddim" else {}
        was_training = self.training
        self.eval()
        try:
            x_0 = SAMPLERS[sampler](
                model_fn,
                diffusion,
                x_T,
                model_kwargs={} if y_device is None else {"y": y_device},
                guidance=guidance,
                noise=noise,
                progress=show_progress,
                **options,
            )
        finally:
            self.train(was_training)
        samples = ((x_0 + 1) * 127.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu()
        out_labels = torch.full((batch_size,), -1, dtype=torch.int64) if y is None else y
        return {"samples": samples, "labels": out_labels}
