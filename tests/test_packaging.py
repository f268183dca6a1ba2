"""The package runs from each way it is installed, outside the source tree: a wheel, an editable install and
a plain checkout on PYTHONPATH. The top-level ``conf/`` is the package ``adm.conf`` in all three
(``package-dir`` in pyproject.toml; ``adm._mount_configs`` for a checkout), and every root config and preset
composes from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the scripts compose: every root config but presets.yaml, which adm.config composes presets through.
ROOTS = sorted(p.stem for p in (REPO / "conf").glob("*.yaml") if p.stem != "presets")

# Run by the installed package: where adm and adm.conf come from, and every root config and preset composed.
PROBE = """
import json, sys
import adm
from adm.config import compose_config, compose_preset, list_presets

composed = {name: compose_config(name, hydra_node=True).hydra.job.config_name for name in sys.argv[1:]}
presets = [compose_preset(name).name for name in list_presets("model") + list_presets("classifier")]
print(json.dumps({"adm": adm.__file__, "conf": sys.modules["adm.conf"].__file__, "composed": composed,
                  "presets": presets}))
"""


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0", **env}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _copy_sources(dest: Path) -> Path:
    """What an sdist / checkout holds of the package: pyproject.toml, README.md, adm/ and conf/."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    for name in ("adm", "conf"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def _probe(python: str | Path, tmp_path: Path, **env: str) -> dict:
    """PROBE run by `python` in an empty folder (no configs, no sources)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    out = _run([str(python), "-c", PROBE, *ROOTS], elsewhere, **env)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.splitlines()[-1])
    assert found["composed"] == {name: name for name in ROOTS}
    assert len(found["presets"]) == len(list((REPO / "conf" / "model").glob("*.yaml"))) + len(
        list((REPO / "conf" / "classifier").glob("*.yaml"))
    )
    return found


def _inside(path: str, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


def test_roots_are_the_scripts_configs():
    assert {"train", "train_classifier", "train_superres", "sample", "upsample", "evaluate"} <= set(ROOTS)


def test_wheel_installs_and_composes_its_configs_outside_the_source_tree(tmp_path: Path):
    # Build from a copy of the sources, so the checkout gets no build/ or egg-info folders.
    src = _copy_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("adm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ROOTS:
        assert f"adm/conf/{name}.yaml" in names, f"conf/{name}.yaml is not in {wheel.name}"
    for path in (
        "adm/conf/presets.yaml",
        "adm/conf/model/adm_u_64.yaml",
        "adm/conf/data/imagenet64.yaml",
        "adm/conf/experiments/train/experiment/smoke.yaml",
        "adm/conf/experiments/train_classifier/experiment/smoke.yaml",
        "adm/conf/experiments/train_superres/experiment/sr_mnist.yaml",
    ):
        assert path in names, f"{path} is not in {wheel.name}"

    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    found = _probe(sys.executable, tmp_path, PYTHONPATH=str(site))
    assert _inside(found["adm"], site) and _inside(found["conf"], site / "adm" / "conf"), found

    elsewhere = tmp_path / "elsewhere"
    # a console script: Hydra composes sample.yaml from the installed package
    out = _run([str(site / "bin" / "adm-sample"), "--help"], elsewhere, PYTHONPATH=str(site))
    assert out.returncode == 0, out.stderr
    assert "sampler: ddim, ddpm" in out.stdout and "task_name: sample" in out.stdout

    # presets build from the installed copy, weights find their preset, experiments compose
    code = """
import torch
from adm.config import build_network, compose_config, fitting_presets
with torch.device("meta"):
    unet = build_network("adm_u_64")
print(round(sum(p.numel() for p in unet.parameters()) / 1e6, 1), unet.image_size, unet.num_classes)
print(fitting_presets(unet.state_dict()))
print(compose_config("train_classifier", ["experiment=smoke", "paths.output_dir=x"]).task_name)
"""
    out = _run([sys.executable, "-c", code], elsewhere, PYTHONPATH=str(site))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "295.9 64 1000"  # OpenAI's 64x64_diffusion.pt: 295.9M parameters
    assert lines[1:] == ["['adm_u_64']", "smoke_classifier"]

    # each training script finds its own experiments, and lists them when a name is not one of them
    args = [str(site / "bin" / "adm-train-classifier"), "experiment=adm_u_64_imagenet"]
    out = _run(args, elsewhere, PYTHONPATH=str(site))
    assert out.returncode != 0
    assert "Could not find 'experiment/adm_u_64_imagenet'" in out.stderr, out.stderr
    assert "classifier_imagenet64" in out.stderr and "demo_diffusion" not in out.stderr


def test_editable_install_composes_the_configs_of_its_tree(tmp_path: Path):
    """``pip install -e`` into a fresh environment: adm and adm.conf are the tree's adm/ and conf/."""
    tree = _copy_sources(tmp_path / "tree")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # The new environment sees this one's packages (torch, hydra, pip, setuptools), not its adm install:
    # a .pth line adds the folder to sys.path without running the .pth files in it (the editable finder).
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    venv_site = Path(_run([str(python), "-c", purelib], tmp_path).stdout.strip())
    (venv_site / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    install = [*pip, "install", "--no-deps", "--no-build-isolation", "--ignore-installed", "-e", str(tree)]
    out = _run(install, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (REPO / "build").exists()

    found = _probe(python, tmp_path)
    assert _inside(found["adm"], tree / "adm") and _inside(found["conf"], tree / "conf"), found


def test_checkout_on_pythonpath_composes_its_own_configs(tmp_path: Path):
    """A checkout run with PYTHONPATH=<checkout> (no install): its conf/, not the one of the installed adm."""
    checkout = _copy_sources(tmp_path / "checkout")
    found = _probe(sys.executable, tmp_path, PYTHONPATH=str(checkout))
    assert _inside(found["adm"], checkout / "adm") and _inside(found["conf"], checkout / "conf"), found
