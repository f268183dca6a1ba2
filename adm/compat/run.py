"""Run an unmodified script written for OpenAI's ``guided_diffusion`` against adm.

    python -m adm.compat.run their_script.py --model_path 256x256_diffusion.pt ...
    python -m adm.compat.run -m their_package.sample --args ...

For this process only, ``import guided_diffusion`` (and ``guided_diffusion.script_util``, ``.unet``, ...)
resolves to :mod:`adm.compat.guided_diffusion`; the script sees its own path as ``sys.argv[0]`` and its
folder first on ``sys.path``, as with ``python their_script.py``. A project that ships its own
``guided_diffusion`` (often a modified copy) is not shadowed: the runner stops and says where that copy is,
unless ``--force`` asks for adm's package anyway.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import sys
from collections.abc import Sequence

__all__ = ["ALIAS", "TARGET", "install", "main", "vendored_copy"]

ALIAS = "guided_diffusion"
TARGET = "adm.compat.guided_diffusion"

USAGE = (
    "usage: python -m adm.compat.run [--force] SCRIPT.py [ARGS ...]\n"
    "       python -m adm.compat.run [--force] -m MODULE [ARGS ...]\n"
    "Runs SCRIPT with `import guided_diffusion` resolved to adm.compat.guided_diffusion.\n"
    "--force: use adm's package even where the project provides its own guided_diffusion."
)


class _AliasLoader(importlib.abc.Loader):
    """Hands out the already imported adm module under the ``guided_diffusion`` name."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # Imported (and executed) under its own name already; keep its own spec, not the alias's.
        module.__spec__ = self._own_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Maps ``guided_diffusion[.x]`` onto ``adm.compat.guided_diffusion[.x]``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real = TARGET + fullname[len(ALIAS) :]
        if importlib.util.find_spec(real) is None:
            return None  # a module OpenAI's package has and adm does not: the usual ModuleNotFoundError
        is_package = fullname == ALIAS
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real), is_package=is_package)


def install() -> None:
    """Make ``import guided_diffusion`` resolve to adm's package in this process (idempotent)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())


def vendored_copy(search_path: Sequence[str]) -> str | None:
    """Where a ``guided_diffusion`` importable from ``search_path`` lives (None: there is none)."""
    spec = importlib.machinery.PathFinder.find_spec(ALIAS, list(search_path))
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return str(list(spec.submodule_search_locations)[0])
    return spec.origin


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    force = False
    while args and args[0] in ("--force", "-h", "--help"):
        if args[0] != "--force":
            print(USAGE)
            return 0
        force = True
        args.pop(0)
    if not args or (args[0] == "-m" and len(args) < 2):
        print(USAGE, file=sys.stderr)
        return 2
    if args[0] == "-m":
        module, script_args = args[1], args[2:]
        search = [os.getcwd(), *sys.path[1:]]
    else:
        script, script_args = args[0], args[1:]
        if not os.path.isfile(script):
            print(f"adm.compat.run: no such script: {script}\n{USAGE}", file=sys.stderr)
            return 2
        search = [os.path.dirname(os.path.abspath(script)), *sys.path[1:]]
    copy = vendored_copy(search)
    if copy is not None and not force:
        print(
            f"adm.compat.run: this project provides its own guided_diffusion ({copy}); it is left in charge. "
            "Run the script directly to use that copy, or add --force to use adm.compat.guided_diffusion "
            "instead (projects often ship a modified copy, which adm does not replace).",
            file=sys.stderr,
        )
        return 3
    install()
    sys.path[0] = search[0]
    if args[0] == "-m":
        sys.argv = [module, *script_args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [script, *script_args]
        runpy.run_path(script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
