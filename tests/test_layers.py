"""The package's import structure: every module has a place in one order of layers, imports run downward
only (a module imports its own layer or those below it), and no modules import each other in a cycle.

Every ``import`` statement counts, at module level or inside a function: an import moved into a function
still ties the two modules together, it only hides the cycle until run time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import adm

PACKAGE_DIR = Path(adm.__file__).resolve().parent

# Every package and top-level module of adm, bottom layer first. The README's architecture section draws the
# same order. A module that is in no layer fails test_every_module_has_a_layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("adm.errors", "adm.resolvers"),  # exception types; OmegaConf resolvers (no adm imports)
    ("adm.nn",),  # networks
    ("adm.diffusion",),  # the process maths, losses, timestep samplers, OpenAI's diffusion flags
    ("adm.sampling",),  # samplers, guidance kinds, per-sample noise, draw_images
    ("adm.io",),  # files, images, .npz samples, grids, shards, self-describing checkpoints
    ("adm.data",),  # datasets, transforms, datamodules
    ("adm.metrics",),  # features, scores, reference batches, evaluation
    ("adm.lit", "adm.callbacks"),  # Lightning: modules and every callback
    ("adm.conf", "adm.config"),  # the Hydra configs and their composition (presets)
    ("adm.compat",),  # OpenAI's guided_diffusion API and flags
    ("adm.weights", "adm.pipeline"),  # any weights file -> networks; ADM (one door from weights to images)
    ("adm.tracking",),  # W&B
    ("adm.recipes",),  # orchestration: train, sample, upsample, evaluate, demo, sweeps
    ("adm.cli",),  # the console scripts
    ("adm",),  # the package root (exposes ADM lazily)
)


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest prefix that names `module`'s layer, None when it has none."""
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and name.count(".") > depth:
                best, depth = i, name.count(".")
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def adm_modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the package."""
    return {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool, known: Iterable[str]) -> list[str]:
    """The adm modules an import statement loads (``from a.b import c`` is module a.b.c when that exists)."""
    known = set(known)
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "adm"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != "adm":
        return []
    out = []
    for alias in node.names:
        child = f"{source}.{alias.name}"
        out.append(child if child in known else source)
    return out


def import_graph(modules: Mapping[str, Path]) -> dict[str, set[str]]:
    """{module: the adm modules it imports anywhere in its file} (edges to unknown names are dropped)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        targets = {
            target
            for node in ast.walk(tree)
            for target in _imported(node, name, is_package, modules)
            if target in modules and target != name
        }
        graph[name] = targets
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _in(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# ------------------------------------------------------------------ the checks themselves can fail
def test_cycle_finder_finds_cycles_and_passes_chains():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_imports_are_read_from_every_level(tmp_path):
    source = "import torch\nfrom adm.diffusion import gaussian\n\ndef f():\n    from . import losses\n"
    tree = ast.parse(source)
    known = {"adm.diffusion.gaussian", "adm.diffusion.losses", "adm.diffusion.fit"}
    found = {t for node in ast.walk(tree) for t in _imported(node, "adm.diffusion.fit", False, known)}
    assert found == {"adm.diffusion.gaussian", "adm.diffusion.losses"}


# ------------------------------------------------------------------ the package
def test_no_import_cycles_between_modules():
    graph = import_graph(adm_modules())
    assert "adm.diffusion.gaussian" in graph and "adm.metrics.extractor" in graph
    found = cycles(graph)
    assert not found, "modules import each other in a cycle: " + "; ".join(" <-> ".join(c) for c in found)


def test_layer_check_catches_an_upward_import():
    assert layer_of("adm.io.checkpoint") < layer_of("adm.compat.diffusion")
    assert layer_of("adm") > layer_of("adm.cli") and layer_of("adm.nn.unet") == 1
    assert upward({"adm.io.checkpoint": {"adm.compat.diffusion", "adm.nn"}}) == [
        "adm.io.checkpoint (adm.io) imports adm.compat.diffusion (adm.compat)"
    ]


def upward(graph: Mapping[str, set[str]]) -> list[str]:
    """Every import of a module from a higher layer."""
    wrong = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if layer_of(target) > layer_of(module):
                wrong.append(
                    f"{module} ({'/'.join(LAYERS[layer_of(module)])}) imports {target} "
                    f"({'/'.join(LAYERS[layer_of(target)])})"
                )
    return wrong


def test_every_module_has_a_layer():
    missing = sorted(m for m in adm_modules() if layer_of(m) is None)
    assert not missing, f"modules outside every layer (add them to LAYERS in {__file__}): {missing}"


def test_imports_run_downward_only():
    graph = import_graph(adm_modules())
    wrong = upward(graph)
    assert not wrong, "imports that run upward: " + "; ".join(wrong)
