"""Evaluating against a folder of images: reference batches from folders, size checks, cached features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adm.data.folder import folder_content_hash, read_folder_images
from adm.metrics import DomainClassifier, evaluate, reference_features
from adm.metrics.extractor import FeatureExtractor
from adm.metrics.fid import frechet_distance, gaussian_stats
from adm.metrics.reference import load_reference
from adm.recipes.evaluate import evaluate_samples, reference_from_folder, resolve_reference


class MeanColour(FeatureExtractor):
    """A stand-in for Inception that names its weights (so its features may be cached): per-channel means and
    spreads of the image, and a count of calls."""

    name = "inception"
    provides = ("pool", "spatial")

    def __init__(self, source: Path):
        super().__init__()
        self.source = str(source)
        self.calls = 0

    def extract(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        x = x.float()
        pool = torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)
        return {"pool": pool, "spatial": pool[:, :2]}


def write_folder(root: Path, size: int, mode: str = "RGB", classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    rng = np.random.default_rng(1)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(6):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            pixels = rng.integers(0, 60, shape) + 100 * k
            Image.fromarray(pixels.astype(np.uint8), mode).save(root / name / f"{i}.png")
    return root


def test_read_folder_images_preprocesses_like_adm(tmp_path: Path):
    folder = write_folder(tmp_path / "imgs", 16)
    Image.new("RGB", (40, 20), (10, 200, 30)).save(tmp_path / "imgs" / "dog" / "wide.png")
    images, labels, names = read_folder_images(folder, 8)
    assert images.shape == (13, 8, 8, 3) and images.dtype == np.uint8
    assert names == ["cat", "dog"] and labels.tolist() == [0] * 6 + [1] * 7
    # the 40x20 file: short side to 8 (16x8), centre crop: still the flat colour
    wide = images[list(sorted(p.name for p in (folder / "dog").iterdir())).index("wide.png") + 6]
    assert (wide == np.array([10, 200, 30], dtype=np.uint8)).all()
    grey, _, _ = read_folder_images(folder, 8, channels=1)
    assert grey.shape == (13, 8, 8, 1)


def test_folder_reference_cached_by_content(tmp_path: Path):
    folder = write_folder(tmp_path / "imgs", 8)
    first = reference_from_folder(folder, 8, 3, tmp_path / "cache")
    stamp = first.stat().st_mtime_ns
    assert reference_from_folder(folder, 8, 3, tmp_path / "cache") == first
    assert first.stat().st_mtime_ns == stamp  # reused, not rewritten
    before = folder_content_hash(folder)
    Image.new("RGB", (8, 8)).save(folder / "cat" / "0.png")  # one file changes
    assert folder_content_hash(folder) != before
    assert reference_from_folder(folder, 8, 3, tmp_path / "cache") != first
    ref = load_reference(first)
    assert ref.images.image_shape == (8, 8, 3) and len(ref.images) == 12
    assert resolve_reference(first, (8, 8, 3)) == str(first)  # a .npz is returned as it is


def test_evaluate_against_folder_matches_direct_computation(tmp_path: Path):
    """evaluate.py reference=<folder>: the FID equals the one computed by hand from the same features."""
    folder = write_folder(tmp_path / "imgs", 8)
    rng = np.random.default_rng(2)
    samples = rng.integers(0, 255, (10, 8, 8, 3)).astype(np.uint8)
    np.savez(tmp_path / "samples.npz", samples, rng.integers(0, 2, 10))
    weights = tmp_path / "fake_weights.pth"
    weights.write_bytes(b"weights")
    extractor = MeanColour(weights)
    ref_path = resolve_reference(folder, (8, 8, 3), tmp_path / "cache")
    got = evaluate(tmp_path / "samples.npz", ref_path, extractor, ["fid"], batch_size=4)
    real, _, _ = read_folder_images(folder, 8)
    f_s = extractor.features(samples)["pool"].numpy()
    f_r = extractor.features(real)["pool"].numpy()
    expected = frechet_distance(*gaussian_stats(f_s), *gaussian_stats(f_r))
    assert got["fid"] == pytest.approx(expected, rel=1e-6) and got["num_reference"] == 12


def test_reference_features_reused_across_runs(tmp_path: Path):
    """A sweep's second run reads the reference's features from the cache: no extractor call, same numbers."""
    folder = write_folder(tmp_path / "imgs", 8)
    ref = reference_from_folder(folder, 8, 3, tmp_path / "cache")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"v1")
    first = MeanColour(weights)
    a = reference_features(ref, first, ["fid", "precision"], batch_size=4, cache_dir=tmp_path / "cache")
    assert first.calls == 3
    second = MeanColour(weights)
    b = reference_features(ref, second, ["fid", "precision"], batch_size=4, cache_dir=tmp_path / "cache")
    assert second.calls == 0
    np.testing.assert_array_equal(a.features["pool"], b.features["pool"])
    assert len(b) == 12 and b.labels.tolist() == a.labels.tolist()
    # other weights: other features, computed afresh
    weights.write_bytes(b"v2")
    third = MeanColour(weights)
    reference_features(ref, third, ["fid", "precision"], batch_size=4, cache_dir=tmp_path / "cache")
    assert third.calls == 3
    # without a cache folder nothing is kept
    fourth = MeanColour(weights)
    reference_features(ref, fourth, ["fid"], batch_size=4)
    assert fourth.calls == 3


@pytest.mark.parametrize("size, mode", [(16, "RGB"), (8, "L")])
def test_size_or_channel_mismatch_is_an_error(tmp_path: Path, size: int, mode: str):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "samples.npz", rng.integers(0, 255, (4, 8, 8, 3)).astype(np.uint8))
    channels = 3 if mode == "RGB" else 1
    ref = rng.integers(0, 255, (6, size, size, channels)).astype(np.uint8)
    np.savez(tmp_path / "ref.npz", ref)
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"w")
    with pytest.raises(ValueError, match=f"reference images .* are {size}x{size} px with {channels} channel"):
        evaluate(tmp_path / "samples.npz", tmp_path / "ref.npz", MeanColour(weights), ["fid"], batch_size=4)


def test_evaluate_recipe_with_folder_reference_and_domain_features(tmp_path: Path, compose):
    """scripts/evaluate.py's recipe: reference=<folder> at the samples' size; metrics.json names both."""
    folder = write_folder(tmp_path / "imgs", 12, mode="L")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "s.npz", rng.integers(0, 255, (8, 8, 8, 1)).astype(np.uint8), rng.integers(0, 2, 8))
    torch.manual_seed(0)
    DomainClassifier(1, 8, 2, width=8).save(tmp_path / "domain.pt")
    cfg = compose(
        "evaluate",
        [
            f"samples={tmp_path / 's.npz'}",
            f"reference={folder}",
            "feature_extractor=domain",
            f"domain_ckpt={tmp_path / 'domain.pt'}",
            f"cache_dir={tmp_path / 'cache'}",
            f"out={tmp_path / 'm.json'}",
            "progress=false",
            "metrics=[fid,accuracy]",
            f"paths.output_dir={tmp_path}",
        ],
    )
    results = evaluate_samples(cfg)
    assert results["num_reference"] == 12 and np.isfinite(results["fid"])
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["reference"] == str(folder) and record["reference_batch"].endswith("_8px_1ch.npz")


def test_evaluate_recipe_rejects_mismatched_npz_before_loading_networks(tmp_path: Path, compose):
    np.savez(tmp_path / "s.npz", np.zeros((4, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "ref.npz", np.zeros((4, 16, 16, 3), np.uint8))
    cfg = compose(
        "evaluate",
        [
            f"samples={tmp_path / 's.npz'}",
            f"reference={tmp_path / 'ref.npz'}",
            f"inception_weights={tmp_path / 'missing.pth'}",  # would fail later: the size check comes first
            f"paths.output_dir={tmp_path}",
        ],
    )
    with pytest.raises(ValueError, match="16x16 px"):
        evaluate_samples(cfg)


def test_make_reference_writes_images_and_labels(tmp_path: Path, compose):
    from adm.recipes.evaluate import make_reference

    folder = write_folder(tmp_path / "imgs", 12)
    cfg = compose(
        "make_reference",
        [f"folder={folder}", "image_size=8", "stats=false", f"out={tmp_path / 'ref.npz'}", "progress=false"],
    )
    out = make_reference(cfg)
    assert out["classes"] == ["cat", "dog"] and out["image_shape"] == [8, 8, 3]
    with np.load(tmp_path / "ref.npz") as data:
        assert data["arr_0"].shape == (12, 8, 8, 3) and data["arr_1"].tolist() == [0] * 6 + [1] * 6


def test_make_reference_checks_inception_weights_first(tmp_path: Path, monkeypatch, compose):
    from adm.recipes.evaluate import make_reference

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = compose(
        "make_reference",
        [f"folder={tmp_path / 'nowhere'}", "image_size=8", f"inception_weights={tmp_path / 'no.pth'}"],
    )
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        make_reference(cfg)  # the weights are checked before the (missing) folder is read


# --- sampling runs: what scoring needs is checked before anything is drawn or recorded ---------------------
def test_sample_run_checks_scoring_inputs_before_recording(tmp_path: Path, tiny_checkpoint, run_sample):
    # a model with a fixed variance (learn_sigma=false) whose checkpoint records its data's class names
    overrides = ["diffusion=linear", "model.learn_sigma=false"]
    ckpt = tiny_checkpoint(overrides=overrides, class_names=["ant", "bee", "cow"])
    base = [f"ckpt={ckpt}", "guidance.scale=0", "sampler=ddim", "sampler.steps=2", "num_samples=4"]
    base += ["batch_size=4", "progress=false"]
    np.savez(tmp_path / "ref16.npz", np.zeros((6, 16, 16, 1), np.uint8))
    out = tmp_path / "run"
    weights = ["evaluate.inception_weights=" + str(tmp_path / "missing.pth")]
    with pytest.raises(FileNotFoundError, match="Inception weights"):
        run_sample([*base, f"evaluate.reference={tmp_path / 'ref16.npz'}", *weights], out)
    assert not (out / "sample_info.json").exists() and not (out / "shards").exists()

    torch.manual_seed(0)
    DomainClassifier(1, 8, 3, width=8).save(tmp_path / "domain.pt")
    domain = [f"evaluate.domain_ckpt={tmp_path / 'domain.pt'}"]
    with pytest.raises(ValueError, match="16x16 px"):
        run_sample([*base, f"evaluate.reference={tmp_path / 'ref16.npz'}", *domain], out)
    assert not (out / "sample_info.json").exists()

    # the corrected command, in the same folder, runs; labels by the names the checkpoint records
    np.savez(tmp_path / "ref8.npz", np.zeros((6, 8, 8, 1), np.uint8))
    result = run_sample([*base, f"evaluate.reference={tmp_path / 'ref8.npz'}", *domain, "labels=cow"], out)
    assert (out / "sample_info.json").is_file() and "fid" in result["metrics"]
    with np.load(result["samples"]) as data:
        assert data["arr_1"].tolist() == [2, 2, 2, 2]
        images = data["arr_0"]
    # grid.png carries the class names under the images (and grid_captions=false leaves them out)
    from PIL import Image

    from adm.io.grid import grid_image

    grid = np.asarray(Image.open(result["grid"]))
    assert grid.shape[:2] == grid_image(images, captions=["cow"] * 4).shape[:2]
    assert np.array_equal(grid, grid_image(images, captions=["cow"] * 4)[..., 0])
    plain = run_sample([*base, "labels=cow", "grid_captions=false"], tmp_path / "plain")
    assert np.asarray(Image.open(plain["grid"])).shape[:2] == grid_image(images).shape[:2] != grid.shape[:2]
    with pytest.raises(ValueError, match=r"the classes are \['ant', 'bee', 'cow'\]"):
        run_sample([*base, "labels=[ant,dog]"], tmp_path / "other")


def test_settings_of_a_run_that_drew_nothing_are_replaced(tmp_path: Path):
    from adm.io.shards import ShardLayout, ShardStore

    layout = ShardLayout(num_samples=2, shard_size=2)
    ShardStore(
        tmp_path, fingerprint={"seed": 0}, layout=layout, image_shape=(4, 4, 3), with_labels=False
    ).prepare()
    again = ShardStore(
        tmp_path, fingerprint={"seed": 1}, layout=layout, image_shape=(4, 4, 3), with_labels=False
    )
    again.prepare()  # no sample was drawn with seed 0: nothing to protect
    assert json.loads((tmp_path / "sample_info.json").read_text())["fingerprint"] == {"seed": 1}
    again.write_shard(0, np.zeros((2, 4, 4, 3), np.uint8), None)
    with pytest.raises(ValueError, match="other settings"):
        ShardStore(
            tmp_path, fingerprint={"seed": 2}, layout=layout, image_shape=(4, 4, 3), with_labels=False
        ).prepare()
