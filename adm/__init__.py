"""adm: Guided Diffusion (ADM) as a PyTorch Lightning + Hydra research codebase.

`adm.ADM` is the inference pipeline (UNet + diffusion + optional noisy classifier); the networks live in
`adm.nn`, the diffusion maths in `adm.diffusion`, the samplers and guidance in `adm.sampling`.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from adm.resolvers import register_resolvers as _register_resolvers

__version__ = "0.1.0"
__all__ = ["ADM", "__version__"]


def _mount_configs() -> None:
    """Make ``adm.conf`` the repository's top-level ``conf/`` when ``adm`` is imported from a checkout.

    A wheel ships ``conf/`` as the package ``adm.conf`` (``package-dir`` in pyproject.toml). A checkout, run
    with ``PYTHONPATH=.`` or installed in editable mode, mounts the ``conf/`` folder beside ``adm/``, so the
    configs of the code being run are the ones composed.
    """
    package = Path(__file__).resolve().parent
    folder = package.parent / "conf"
    if "adm.conf" in sys.modules or (package / "conf").is_dir() or not (folder / "train.yaml").is_file():
        return
    spec = importlib.util.spec_from_file_location(
        "adm.conf", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["adm.conf"] = module
    spec.loader.exec_module(module)


_mount_configs()
_register_resolvers()  # the configs' ${adm.var_type:...}; OmegaConf only, no Hydra / Lightning import


def __getattr__(name: str):
    # Imported lazily so that `import adm` stays light (no Lightning / Hydra import for the networks alone).
    if name == "ADM":
        from adm.pipeline import ADM

        return ADM
    raise AttributeError(f"module 'adm' has no attribute {name!r}")
