"""adm: Guided Diffusion (ADM) as a PyTorch Lightning + Hydra research codebase.

`adm.ADM` is the inference pipeline (UNet + diffusion + optional noisy classifier); the networks live in
`adm.nn`, the diffusion maths in `adm.diffusion`, the samplers and guidance in `adm.sampling`.
"""

from __future__ import annotations

from adm.conf.resolvers import register_resolvers as _register_resolvers

__version__ = "0.1.0"
__all__ = ["ADM", "__version__"]

_register_resolvers()  # the configs' ${adm.var_type:...}; OmegaConf only, no Hydra / Lightning import


def __getattr__(name: str):
    # Imported lazily so that `import adm` stays light (no Lightning / Hydra import for the networks alone).
    if name == "ADM":
        from adm.pipeline import ADM

        return ADM
    raise AttributeError(f"module 'adm' has no attribute {name!r}")
