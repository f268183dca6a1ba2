"""scripts/sample.py and its shards: in OpenAI's format, per-sample seeds across processes,
resuming, and the errors a user meets (wrong / corrupt checkpoints, classifiers that do not fit)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from adm.config import build_network
from adm.io.files import atomic_torch_save
from adm.io.grid import grid_image
from adm.io.shards import ShardLayout, ShardStore, merge_shards
from adm.recipes.sample import sample
from adm.sampling import LabelPlan, sample_seed

REPO = Path(__file__).resolve().parents[1]

# A network small enough to sample in well under a second on one CPU thread: 8x8 grey images, 3 classes.
TINY_UNET = dict(
    _target_="adm.nn.UNet", image_size=8, in_channels=1, model_channels=32, num_res_blocks=1,
    attention_resolutions=[], channel_mult=[1, 2], learn_sigma=True, num_classes=3, dropout=0.0, num_heads=1,
    num_head_channels=32, num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
    use_new_attention_order=True, use_checkpoint=False,
)  # fmt: skip
TINY_CLASSIFIER = dict(
    _target_="adm.nn.EncoderUNet", image_size=8, in_channels=1, model_channels=32, out_channels=3,
    num_res_blocks=1, attention_resolutions=[], channel_mult=[1, 2], pool="attention", dropout=0.0,
    num_heads=1, num_head_channels=32, use_scale_shift_norm=True, resblock_updown=True,
    use_new_attention_order=False, use_checkpoint=False,
)  # fmt: skip
COSINE = dict(
    _target_="adm.diffusion.create_diffusion", steps=1000, noise_schedule="cosine", learn_sigma=True,
    sigma_small=False, predict_xstart=False, use_kl=False, rescale_learned_sigmas=True,
    rescale_timesteps=False,
)  # fmt: skip
FAST = ["sampler=ddim", "sampler.steps=2", "progress=false"]


def _classifier_ckpt(path: Path, diffusion: dict, **changes) -> Path:
    cfg = {**TINY_CLASSIFIER, **changes}
    torch.manual_seed(1)
    state = {f"classifier.{k}": v for k, v in build_network(cfg).state_dict().items()}
    config = {"classifier": cfg, "diffusion": diffusion, "data": {}}
    atomic_torch_save({"adm_config": config, "state_dict": state, "global_step": 3}, path)
    return path


def write_tiny_checkpoints(folder: Path) -> dict[str, Path]:
    """Checkpoints in the training layout (adm.io.checkpoint): EMA weights in "state_dict", raw ones in
    "current_model_state", the resolved config in "adm_config"; plus OpenAI-style plain state dicts."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    unet = build_network(TINY_UNET)
    with torch.no_grad():  # the output layer starts at zero; give the model something to say
        for p in unet.out.parameters():
            p.normal_(0, 0.05)
    ema = {f"unet.{k}": v.clone() for k, v in unet.state_dict().items()}
    raw = {k: v + 0.05 * torch.randn_like(v) for k, v in ema.items()}
    ckpt = {
        "adm_config": {"model": TINY_UNET, "diffusion": COSINE, "data": {}},
        "state_dict": ema,
        "current_model_state": raw,
        "adm_ema": {"rates": [0.999], "warmup": True, "state_dicts": {}},
        "global_step": 7,
    }
    paths = {"model": folder / "model.ckpt", "openai": folder / "openai_model.pt"}
    atomic_torch_save(ckpt, paths["model"])
    torch.save(unet.state_dict(), paths["openai"])
    paths["classifier"] = _classifier_ckpt(folder / "classifier.ckpt", COSINE)
    return paths


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_checkpoints(tmp_path_factory.mktemp("tiny_ckpts"))


def compose_sample(overrides: list[str], out_dir: Path) -> DictConfig:
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("sample", overrides=[*overrides, f"paths.output_dir={out_dir}"])


def run(overrides: list[str], out_dir: Path) -> dict:
    return sample(compose_sample(overrides, out_dir))


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"arr_0", "arr_1"}
        return data["arr_0"], data["arr_1"]


# --- seeds, labels, shards ---------------------------------------------------------------------------------
def test_labels_depend_only_on_seed_and_index():
    plan = LabelPlan("random", num_classes=10, seed=3)
    whole = plan(range(0, 40))
    assert whole.dtype == np.int64 and whole.min() >= 0 and whole.max() < 10 and len(set(whole)) > 3
    np.testing.assert_array_equal(plan(range(25, 31)), whole[25:31])
    assert not np.array_equal(LabelPlan("random", 10, seed=4)(range(40)), whole)
    np.testing.assert_array_equal(LabelPlan(7, 10, 0)(range(3)), [7, 7, 7])
    np.testing.assert_array_equal(LabelPlan([1, 2], 10, 0)(range(1, 6)), [2, 1, 2, 1, 2])
    np.testing.assert_array_equal(LabelPlan("4", 10, 0)(range(2)), [4, 4])
    with pytest.raises(ValueError, match="outside"):
        LabelPlan([3, 12], 10, 0)
    with pytest.raises(ValueError, match="random"):
        LabelPlan("some", 10, 0)
    # seeds of different runs never collide
    assert sample_seed(0, 1) != sample_seed(1, 0) and sample_seed(0, 5) == 5


def test_merge_streams_shards_into_openai_npz(tmp_path):
    layout = ShardLayout(num_samples=7, shard_size=3)
    store = ShardStore(tmp_path, fingerprint={"x": 1}, layout=layout, image_shape=(4, 5, 3), with_labels=True)
    store.prepare()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 4, 5, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7)
    for k in range(layout.num_shards):
        idx = layout.indices(k)
        store.write_shard(k, images[idx.start : idx.stop], labels[idx.start : idx.stop])
    path = merge_shards(store, delete_shards=True, chunk_images=2)
    assert path.name == "samples_7x4x5x3.npz" and not store.shard_dir.exists()
    merged, merged_labels = load_npz(path)
    np.testing.assert_array_equal(merged, images)
    np.testing.assert_array_equal(merged_labels, labels)
    assert merged_labels.dtype == np.int64


# --- processes ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "strategy",
    [
        "ddp_fork",  # the same launcher as the default, without re-importing everything in the children
        pytest.param("auto", marks=pytest.mark.slow),  # the default: ddp_spawn (what GPUs use)
    ],
)
def test_two_processes_draw_what_one_draws(tiny, tmp_path, one_thread, strategy):
    common = [f"ckpt={tiny['model']}", f"classifier_ckpt={tiny['classifier']}", "guidance.scale=2", *FAST,
              "num_samples=6", "batch_size=2", "shard_size=2", "trainer.accelerator=cpu"]  # fmt: skip
    one = run(common, tmp_path / "one")
    two = run([*common, "trainer.devices=2", f"trainer.strategy={strategy}"], tmp_path / "two")
    assert (one["generated_shards"], two["generated_shards"]) == (3, 2)  # rank 0 of 2 wrote shards 0 and 2
    images_1, labels_1 = load_npz(one["samples"])
    images_2, labels_2 = load_npz(two["samples"])
    assert images_1.shape == (6, 8, 8, 1) and images_1.dtype == np.uint8
    assert labels_1.dtype == np.int64 and labels_1.max() < 3
    np.testing.assert_array_equal(labels_2, labels_1)
    np.testing.assert_array_equal(images_2, images_1)
    assert images_1.std() > 0 and not np.array_equal(images_1[0], images_1[1])
    assert (tmp_path / "one" / "grid.png").is_file() and not (tmp_path / "one" / "shards").exists()
    with Image.open(tmp_path / "one" / "grid.png") as grid:  # no class names recorded: indices under images
        plain = grid_image(images_1)
        assert grid.size[0] == plain.shape[1] and grid.size[1] > plain.shape[0]


def test_rerun_skips_finished_shards(tiny, tmp_path, one_thread):
    args = [f"ckpt={tiny['model']}", *FAST, "num_samples=6", "batch_size=2", "shard_size=2",
            "keep_shards=true", "labels=[2,0]", "save_png=true"]  # fmt: skip
    first = run(args, tmp_path)
    images, labels = load_npz(first["samples"])
    np.testing.assert_array_equal(labels, [2, 0, 2, 0, 2, 0])
    assert len(list((tmp_path / "png").glob("*_y2.png"))) == 3
    shards = sorted((tmp_path / "shards").glob("shard_*.npz"))
    assert len(shards) == 3
    kept = shards[0].stat().st_mtime_ns

    # an interrupted run: merged file gone, shard 1 never written, shard 2 cut short
    Path(first["samples"]).unlink()
    shards[1].unlink()
    shards[2].write_bytes(shards[2].read_bytes()[:200])
    again = run(args, tmp_path)
    assert (again["generated_shards"], again["skipped_shards"]) == (2, 1)
    assert shards[0].stat().st_mtime_ns == kept  # not redrawn
    np.testing.assert_array_equal(load_npz(again["samples"])[0], images)

    # complete: nothing to do; other settings in the same folder: refused, naming the difference
    assert run(args, tmp_path)["generated_shards"] == 0
    with pytest.raises(ValueError, match=r"other settings.*seed: 0 -> 1"):
        run([*args, "seed=1"], tmp_path)


def test_ema_by_default_raw_on_request(tiny, tmp_path, one_thread):
    args = [f"ckpt={tiny['model']}", *FAST, "num_samples=2", "batch_size=2"]
    ema = load_npz(run(args, tmp_path / "ema")["samples"])[0]
    raw = load_npz(run([*args, "use_ema=false"], tmp_path / "raw")["samples"])[0]
    assert not np.array_equal(ema, raw)


def test_openai_weights_with_a_preset(tiny, tmp_path, one_thread):
    shape = ["model.image_size=8", "model.in_channels=1", "model.channel_mult=[1,2]", "model.num_classes=3"]
    result = run([f"openai_ckpt={tiny['openai']}", "model=adm_u_tiny", *shape, *FAST, "num_samples=2",
                  "batch_size=2"], tmp_path / "openai")  # fmt: skip
    ours = run([f"ckpt={tiny['model']}", *FAST, "num_samples=2", "batch_size=2"], tmp_path / "ours")
    # the same weights (the EMA ones) and process: the same images
    np.testing.assert_array_equal(load_npz(result["samples"])[0], load_npz(ours["samples"])[0])
    # no preset and no flags: say which presets fit (none does for these tiny weights)
    with pytest.raises(ValueError, match="model=<preset>"):
        run([f"openai_ckpt={tiny['openai']}", *FAST], tmp_path / "x")
    with pytest.raises(ValueError, match="mis-shaped"):
        run([f"openai_ckpt={tiny['openai']}", "model=adm_u_tiny", *FAST], tmp_path / "y")


def test_openai_weights_with_pasted_flags(tmp_path, one_thread):
    from adm.compat.guided_diffusion import create_classifier, create_model

    model_flags = ("--image_size 64 --num_channels 32 --num_res_blocks 1 --attention_resolutions 32 "
                   "--channel_mult 1,2 --class_cond True --learn_sigma True --num_head_channels 32 "
                   "--resblock_updown True --noise_schedule cosine --diffusion_steps 1000")  # fmt: skip
    classifier_flags = (
        "--image_size 64 --classifier_width 32 --classifier_depth 1 --classifier_attention_resolutions 32"
    )
    torch.manual_seed(0)
    unet = create_model(64, 32, 1, channel_mult="1,2", learn_sigma=True, class_cond=True,
                        attention_resolutions="32", num_head_channels=32, resblock_updown=True,
                        use_scale_shift_norm=True)  # fmt: skip
    classifier = create_classifier(64, False, 32, 1, "32", True, True, "attention")
    torch.save(unet.state_dict(), tmp_path / "model.pt")
    torch.save(classifier.state_dict(), tmp_path / "classifier.pt")
    args = [f"openai_ckpt={tmp_path / 'model.pt'}", f'flags="{model_flags}"',
            f"classifier_ckpt={tmp_path / 'classifier.pt'}", f'classifier_flags="{classifier_flags}"',
            "guidance.scale=1", *FAST, "num_samples=2", "batch_size=2"]  # fmt: skip
    images, labels = load_npz(run(args, tmp_path / "out")["samples"])
    assert images.shape == (2, 64, 64, 3) and labels.max() < 1000
    with pytest.raises(ValueError, match="--timestep_respacing -> sampler.steps"):
        run([*args[:1], f'flags="{model_flags} --timestep_respacing 250"', *FAST], tmp_path / "x")


# --- errors ------------------------------------------------------------------------------------------------
class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_that_are_not_ours_or_broken(tiny, tmp_path):
    with pytest.raises(ValueError, match="not one of our training checkpoints.*openai_ckpt"):
        run([f"ckpt={tiny['openai']}"], tmp_path / "a")
    with pytest.raises(ValueError, match="ckpt=.*without a preset"):
        run([f"openai_ckpt={tiny['model']}", "model=adm_u_tiny"], tmp_path / "b")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny["model"].read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        run([f"ckpt={truncated}"], tmp_path / "c")
    # a pickle that would run a command if unpickled: refused, nothing executed
    evil = _Boom()
    evil.marker = tmp_path / "executed"
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"adm_config": {}, "state_dict": evil}, f)
    with pytest.raises(ValueError, match="unpickle|cannot be read safely"):
        run([f"ckpt={tmp_path / 'evil.ckpt'}"], tmp_path / "d")
    assert not evil.marker.exists()
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        run([f"ckpt={tmp_path / 'missing.ckpt'}"], tmp_path / "e")
    with pytest.raises(ValueError, match="exactly one of ckpt"):
        run([], tmp_path / "f")
    with pytest.raises(ValueError, match="noisy classifier"):
        run([f"ckpt={tiny['classifier']}"], tmp_path / "g")


def test_classifier_must_fit_the_model(tiny, tmp_path):
    base = [f"ckpt={tiny['model']}", "guidance.scale=1", *FAST]
    five = _classifier_ckpt(tmp_path / "five.ckpt", COSINE, out_channels=5)
    with pytest.raises(ValueError, match="5 classes, the model 3"):
        run([*base, f"classifier_ckpt={five}"], tmp_path / "a")
    big = _classifier_ckpt(tmp_path / "big.ckpt", COSINE, image_size=16)
    with pytest.raises(ValueError, match="16px images, the model draws 8px"):
        run([*base, f"classifier_ckpt={big}"], tmp_path / "b")
    linear = _classifier_ckpt(tmp_path / "linear.ckpt", {**COSINE, "noise_schedule": "linear"})
    with pytest.raises(ValueError, match="schedule=linear steps=1000, the model uses schedule=cosine"):
        run([*base, f"classifier_ckpt={linear}"], tmp_path / "c")
    with pytest.raises(ValueError, match="needs a noisy classifier"):
        run(base, tmp_path / "d")
    with pytest.raises(ValueError, match="diffusion model, not a noisy classifier"):
        run([*base, f"classifier_ckpt={tiny['model']}"], tmp_path / "e")
