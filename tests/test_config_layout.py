"""Run directories saved before a config key moved (adm.recipes.runs.MOVED_KEYS) still resume: their saved
config and overrides are read with each key at its new place, and a real change is still refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from adm.config import compose_config
from adm.errors import UsageError
from adm.recipes.runs import MOVED_KEYS, MOVED_TARGETS, RunDirGuard, check_saved_config, expand_resume

RUN = ["experiment=demo_cfg"]  # a run that sets a moved key (module.label_dropout: 0.1)


def _old_layout(cfg: dict) -> dict:
    """A config as a version before the moves saved it: every moved value back at its old key."""
    old = OmegaConf.create(cfg)
    for before, now in MOVED_KEYS.items():
        value = OmegaConf.select(old, now)
        *parent, leaf = now.split(".")
        node = OmegaConf.select(old, ".".join(parent)) if parent else old
        del node[leaf]
        if parent and not node:
            del old[".".join(parent)]  # the group that holds it now did not exist
        OmegaConf.update(old, before, value, force_add=True)
    return _old_targets(OmegaConf.to_container(old))


def _old_targets(node):
    """`node` with every moved class named by its old path (the reverse of MOVED_TARGETS)."""
    before = {now: old for old, now in MOVED_TARGETS.items()}
    if isinstance(node, dict):
        return {k: before.get(v, v) if k == "_target_" else _old_targets(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_old_targets(v) for v in node]
    return node


def _composed(run_dir: Path, *overrides: str):
    """The train config as Hydra composes it for a launch into run_dir (with the hydra node)."""
    return compose_config("train", [*overrides, f"hydra.run.dir={run_dir}"], hydra_node=True)


def _save_old_run(run_dir: Path, overrides: list[str], old_overrides: list[str]) -> dict:
    """A run directory as an older version left it: .hydra/{config,overrides}.yaml (its command line:
    `old_overrides`, the same settings as `overrides` in the old layout), resolved_config.yaml."""
    cfg = _composed(run_dir, *overrides)
    task = {k: cfg[k] for k in cfg if k != "hydra"}
    unresolved = _old_layout(OmegaConf.to_container(OmegaConf.create(task)))
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(unresolved), run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(old_overrides), run_dir / ".hydra" / "overrides.yaml")
    (run_dir / "resolved_config.yaml").write_text(_resolved_text(unresolved, run_dir))
    return unresolved


def _resolved_text(task: dict, run_dir: Path) -> str:
    """resolved_config.yaml's text for a task config (paths.output_dir: the run dir Hydra would give it)."""
    with_dir = OmegaConf.merge(task, {"paths": {"output_dir": str(run_dir)}})
    return OmegaConf.to_yaml(OmegaConf.to_container(with_dir, resolve=True))


def test_the_moved_keys_are_where_the_table_says():
    cfg = compose_config("train", RUN)
    for before, now in MOVED_KEYS.items():
        assert OmegaConf.select(cfg, now) is not None, now
        assert OmegaConf.select(cfg, before) is None, before
    assert cfg.module.label_dropout == 0.1


def test_an_old_run_directory_resumes_and_a_real_change_is_refused(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    old = _save_old_run(run_dir, [*RUN, "module.label_dropout=0.2"], [*RUN, "label_dropout=0.2"])
    assert old["label_dropout"] == 0.2 and "module" not in old  # the old layout indeed
    assert old["callbacks"]["random_streams"]["_target_"] == "adm.lit.RandomStreams"  # a class that moved

    # resume=DIR: the saved overrides are given with the keys of today
    args = expand_resume([f"resume={run_dir}", "trainer.log_every_n_steps=5"])
    assert "module.label_dropout=0.2" in args and "label_dropout=0.2" not in args
    resumed = _composed(run_dir, *[a for a in args if not a.startswith("hydra.run.dir=")])
    assert resumed.module.label_dropout == 0.2

    # the run directory accepts the continuation: its own files stay, this launch's go to resumed_1/
    RunDirGuard().on_run_start(resumed)
    assert resumed.hydra.output_subdir == ".hydra/resumed_1"
    text = _resolved_text({k: resumed[k] for k in resumed if k != "hydra"}, run_dir)
    assert check_saved_config(text, run_dir) is False  # kept as it is, not refused

    # a real change of the moved setting is still refused, under its new name
    changed = _composed(run_dir, *RUN, "module.label_dropout=0.3", "ckpt_path=last")
    with pytest.raises(SystemExit) as stop:
        RunDirGuard().on_run_start(changed)
    assert stop.value.code == 2
    assert "module.label_dropout: 0.2 -> 0.3" in capsys.readouterr().err
    text = _resolved_text({k: changed[k] for k in changed if k != "hydra"}, run_dir)
    with pytest.raises(UsageError, match=r"module\.label_dropout: 0\.2 -> 0\.3"):
        check_saved_config(text, run_dir)


def test_saved_overrides_keep_their_sign_when_the_key_moved(tmp_path: Path):
    (tmp_path / ".hydra").mkdir()
    saved = ["+label_dropout=0.1", "~label_dropout", "seed=3"]
    OmegaConf.save(OmegaConf.create(saved), tmp_path / ".hydra" / "overrides.yaml")
    assert expand_resume([f"resume={tmp_path}"])[:3] == [
        "+module.label_dropout=0.1",
        "~module.label_dropout",
        "seed=3",
    ]
