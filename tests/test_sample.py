"""scripts/sample.py and its shards: in OpenAI's format, per-sample seeds across processes,
resuming, and the errors a user meets (wrong / corrupt checkpoints, classifiers that do not fit)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adm.io.grid import grid_image
from adm.io.shards import ShardLayout, ShardStore, merge_shards
from adm.sampling import LabelPlan, sample_seed


@pytest.fixture
def fast(fast_overrides) -> list[str]:
    return fast_overrides["sample"]


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


def test_merge_streams_shards_into_openai_npz(tmp_path, load_npz):
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
def test_two_processes_draw_what_one_draws(
    tiny_ckpts, tmp_path, one_thread, strategy, fast, run_sample, load_npz
):
    common = [f"ckpt={tiny_ckpts['model']}", f"classifier_ckpt={tiny_ckpts['classifier']}", *fast,
              "guidance.scale=2", "num_samples=6", "batch_size=2", "shard_size=2",
              "trainer.accelerator=cpu"]  # fmt: skip
    one = run_sample(common, tmp_path / "one")
    two = run_sample([*common, "trainer.devices=2", f"trainer.strategy={strategy}"], tmp_path / "two")
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


def test_rerun_skips_finished_shards(tiny_ckpts, tmp_path, one_thread, fast, run_sample, load_npz):
    args = [f"ckpt={tiny_ckpts['model']}", *fast, "num_samples=6", "batch_size=2", "shard_size=2",
            "keep_shards=true", "labels=[2,0]", "save_png=true"]  # fmt: skip
    first = run_sample(args, tmp_path)
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
    again = run_sample(args, tmp_path)
    assert (again["generated_shards"], again["skipped_shards"]) == (2, 1)
    assert shards[0].stat().st_mtime_ns == kept  # not redrawn
    np.testing.assert_array_equal(load_npz(again["samples"])[0], images)

    # complete: nothing to do; other settings in the same folder: refused, naming the difference
    assert run_sample(args, tmp_path)["generated_shards"] == 0
    with pytest.raises(ValueError, match=r"other settings.*seed: 0 -> 1"):
        run_sample([*args, "seed=1"], tmp_path)


def test_ema_by_default_raw_on_request(tiny_ckpts, tmp_path, one_thread, fast, run_sample, load_npz):
    args = [f"ckpt={tiny_ckpts['model']}", *fast, "num_samples=2", "batch_size=2"]
    ema = load_npz(run_sample(args, tmp_path / "ema")["samples"])[0]
    raw = load_npz(run_sample([*args, "use_ema=false"], tmp_path / "raw")["samples"])[0]
    assert not np.array_equal(ema, raw)


def test_openai_weights_with_a_preset(tiny_ckpts, tmp_path, one_thread, fast, run_sample, load_npz):
    shape = ["model.image_size=8", "model.in_channels=1", "model.channel_mult=[1,2]", "model.num_classes=3"]
    result = run_sample([f"openai_ckpt={tiny_ckpts['openai']}", "model=adm_u_tiny", *shape, *fast,
                         "num_samples=2", "batch_size=2"], tmp_path / "openai")  # fmt: skip
    ours = run_sample(
        [f"ckpt={tiny_ckpts['model']}", *fast, "num_samples=2", "batch_size=2"], tmp_path / "ours"
    )
    # the same weights (the EMA ones) and process: the same images
    np.testing.assert_array_equal(load_npz(result["samples"])[0], load_npz(ours["samples"])[0])
    # no preset and no flags: say which presets fit (none does for these tiny weights)
    with pytest.raises(ValueError, match="model=<preset>"):
        run_sample([f"openai_ckpt={tiny_ckpts['openai']}", *fast], tmp_path / "x")
    with pytest.raises(ValueError, match="mis-shaped"):
        run_sample([f"openai_ckpt={tiny_ckpts['openai']}", "model=adm_u_tiny", *fast], tmp_path / "y")


def test_openai_weights_with_pasted_flags(tmp_path, one_thread, fast, run_sample, load_npz):
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
            "guidance.scale=1", *fast, "num_samples=2", "batch_size=2"]  # fmt: skip
    images, labels = load_npz(run_sample(args, tmp_path / "out")["samples"])
    assert images.shape == (2, 64, 64, 3) and labels.max() < 1000
    with pytest.raises(ValueError, match="--timestep_respacing -> sampler.steps"):
        run_sample([*args[:1], f'flags="{model_flags} --timestep_respacing 250"', *fast], tmp_path / "x")


# --- errors ------------------------------------------------------------------------------------------------
class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoints_that_are_not_ours_or_broken(tiny_ckpts, tmp_path, run_sample):
    with pytest.raises(ValueError, match="not one of our training checkpoints.*openai_ckpt"):
        run_sample([f"ckpt={tiny_ckpts['openai']}"], tmp_path / "a")
    with pytest.raises(ValueError, match="ckpt=.*without a preset"):
        run_sample([f"openai_ckpt={tiny_ckpts['model']}", "model=adm_u_tiny"], tmp_path / "b")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(tiny_ckpts["model"].read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        run_sample([f"ckpt={truncated}"], tmp_path / "c")
    # a pickle that would run a command if unpickled: refused, nothing executed (hand-made: no writer would)
    evil = _Boom()
    evil.marker = tmp_path / "executed"
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"adm_config": {}, "state_dict": evil}, f)
    with pytest.raises(ValueError, match="unpickle|cannot be read safely"):
        run_sample([f"ckpt={tmp_path / 'evil.ckpt'}"], tmp_path / "d")
    assert not evil.marker.exists()
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        run_sample([f"ckpt={tmp_path / 'missing.ckpt'}"], tmp_path / "e")
    with pytest.raises(ValueError, match="exactly one of ckpt"):
        run_sample([], tmp_path / "f")
    with pytest.raises(ValueError, match="noisy classifier"):
        run_sample([f"ckpt={tiny_ckpts['classifier']}"], tmp_path / "g")


def test_classifier_must_fit_the_model(tiny_ckpts, tiny_checkpoint, tmp_path, fast, run_sample):
    base = [f"ckpt={tiny_ckpts['model']}", "guidance.scale=1", *fast]
    five = tiny_checkpoint("classifier", overrides=["data.num_classes=5"])
    with pytest.raises(ValueError, match="5 classes, the model 3"):
        run_sample([*base, f"classifier_ckpt={five}"], tmp_path / "a")
    big = tiny_checkpoint("classifier", overrides=["data.image_size=16"])
    with pytest.raises(ValueError, match="16px images, the model draws 8px"):
        run_sample([*base, f"classifier_ckpt={big}"], tmp_path / "b")
    linear = tiny_checkpoint("classifier", overrides=["diffusion=linear"])
    with pytest.raises(ValueError, match="schedule=linear steps=1000, the model uses schedule=cosine"):
        run_sample([*base, f"classifier_ckpt={linear}"], tmp_path / "c")
    with pytest.raises(ValueError, match="needs a noisy classifier"):
        run_sample(base, tmp_path / "d")
    with pytest.raises(ValueError, match="diffusion model, not a noisy classifier"):
        run_sample([*base, f"classifier_ckpt={tiny_ckpts['model']}"], tmp_path / "e")
