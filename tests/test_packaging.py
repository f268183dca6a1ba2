"""The package installs as a plain wheel and runs without the source tree: its configs (conf, with the
per-script experiment roots) ship inside it and resolve from any working directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_installs_and_composes_its_configs_outside_the_source_tree(tmp_path: Path):
    # Build from a copy of the sources, so the checkout gets no build/ or egg-info folders.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "adm", src / "adm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
    for path in (
        "conf/train.yaml",
        "conf/presets.yaml",
        "conf/model/adm_u_64.yaml",
        "conf/data/imagenet64.yaml",
        "conf/experiments/train/experiment/smoke.yaml",
        "conf/experiments/train_classifier/experiment/smoke.yaml",
        "conf/experiments/train_superres/experiment/sr_mnist.yaml",
    ):
        assert path in names, f"{path} is not in {wheel.name}"

    site = tmp_path / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"  # no configs, no sources here
    elsewhere.mkdir()

    # a console script: Hydra composes sample.yaml from the installed package
    out = _run([str(site / "bin" / "adm-sample"), "--help"], elsewhere, site)
    assert out.returncode == 0, out.stderr
    assert "sampler: ddim, ddpm" in out.stdout and "task_name: sample" in out.stdout

    # the installed copy is the one imported; presets compose and build from it
    code = """
import adm, torch
from adm.config import build_network, compose_config, fitting_presets, list_presets
print(adm.__file__)
with torch.device("meta"):
    unet = build_network("adm_u_64")
print(round(sum(p.numel() for p in unet.parameters()) / 1e6, 1), unet.image_size, unet.num_classes)
print(fitting_presets(unet.state_dict()), len(list_presets("classifier")))
print(compose_config("train_classifier", ["experiment=smoke", "paths.output_dir=x"]).task_name)
"""
    out = _run([sys.executable, "-c", code], elsewhere, site)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert Path(lines[0]).resolve().is_relative_to(site.resolve()), lines[0]
    assert lines[1] == "295.9 64 1000"  # OpenAI's 64x64_diffusion.pt: 295.9M parameters
    assert lines[2].startswith("['adm_u_64'] ") and int(lines[2].split()[-1]) >= 4
    assert lines[3] == "smoke_classifier"

    # each training script finds its own experiments, and lists them when a name is not one of them
    out = _run([str(site / "bin" / "adm-train-classifier"), "experiment=adm_u_64_imagenet"], elsewhere, site)
    assert out.returncode != 0
    assert "Could not find 'experiment/adm_u_64_imagenet'" in out.stderr, out.stderr
    assert "classifier_imagenet64" in out.stderr and "demo_diffusion" not in out.stderr
