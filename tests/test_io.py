"""adm.io: all-or-nothing writes, OpenAI's sample-file format (quantisation, headers, .npz sets, reference
batches, shards, grids) and the one table of metric names every consumer takes its names from."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adm.io.files import (
    atomic_torch_save,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    file_sha256,
)
from adm.io.grid import save_grid
from adm.io.images import as_uint8_nchw, from_uint8, quantize, to_uint8
from adm.io.npz import BaseSamples, open_samples, read_images, read_npy_header, save_npz, write_pngs
from adm.io.shards import ShardLayout, ShardStore
from adm.metrics.reference import load_reference


def _images(n: int, seed: int, shape=(8, 8, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- atomic writes


def test_atomic_write_keeps_old_file_when_the_writer_fails_midway(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"fid": 1.5})
    with pytest.raises(RuntimeError, match="disk went away"), atomic_write(path) as f:
        f.write(b'{"fid": 9')  # half of the new content is out when the writer dies
        raise RuntimeError("disk went away")
    assert json.loads(path.read_text()) == {"fid": 1.5}  # the old file, intact
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left behind


def test_atomic_write_interrupted_torch_save_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "w.pt"

    def dies(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"w": torch.zeros(2)}, path)
    assert list((tmp_path / "sub").iterdir()) == []  # neither the target nor a temporary file


def test_atomic_write_conveniences_and_permissions(tmp_path):
    text = atomic_write_text(tmp_path / "a" / "b.txt", "héllo\n")
    assert text.read_text(encoding="utf-8") == "héllo\n"
    assert stat.S_IMODE(text.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's private 0600
    raw = atomic_write_bytes(tmp_path / "c.bin", b"\x00\x01")
    assert raw.read_bytes() == b"\x00\x01"
    js = atomic_write_json(tmp_path / "d.json", {"a": [1, 2]})
    assert js.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "e.json", {"p": Path("x")})  # not JSON: fails before writing
    assert not (tmp_path / "e.json").exists()
    assert json.loads(atomic_write_json(tmp_path / "e.json", {"p": Path("x")}, default=str).read_text()) == {
        "p": "x"
    }
    ckpt = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "w.pt")
    assert torch.equal(torch.load(ckpt, weights_only=True)["w"], torch.arange(3))
    assert file_sha256(raw) == hashlib.sha256(b"\x00\x01").hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ---------------------------------------------------------------- quantisation


def test_quantize_is_bit_exact_with_openai_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.rand(2, 3, 8, 8, generator=g) * 2.4 - 1.2,  # beyond [-1, 1] too: clamped
            (torch.arange(256.0).view(1, 1, 16, 16).expand(2, 3, 16, 16) / 127.5 - 1)[..., :8, :8],
            torch.full((2, 3, 8, 8), -1.0),
            torch.full((2, 3, 8, 8), 1.0),
        ]
    )
    # the formula in numpy float32: ((x + 1) * 127.5), clamp to [0, 255], truncate, NCHW -> NHWC
    a = x.numpy()
    expected = np.clip((a + np.float32(1)) * np.float32(127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    got = quantize(x)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (8, 8, 8, 3) and got.is_contiguous()
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(to_uint8(x), expected)
    assert isinstance(to_uint8(x), np.ndarray)
    # truncation, not rounding: 0.9 of the way to level 1 is still level 0, 254.9 is 254
    assert quantize(torch.tensor([0.9, 254.9]).view(1, 1, 1, 2) / 127.5 - 1).flatten().tolist() == [0, 254]


def test_uint8_round_trip():
    u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    x = from_uint8(u)
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 3, 16, 16)
    assert x.min() == -1 and x.max() == 1
    # Truncation: u / 127.5 - 1 may come back a hair below level u and drop to u - 1; pixel centres do not.
    back = to_uint8(x).astype(int) - u
    assert back.min() >= -1 and back.max() == 0
    centres = from_uint8(u) + 0.5 / 127.5
    np.testing.assert_array_equal(to_uint8(centres), u)
    np.testing.assert_array_equal(as_uint8_nchw(u).numpy(), u.transpose(0, 3, 1, 2))
    assert torch.equal(as_uint8_nchw(centres), as_uint8_nchw(u))  # both layouts give the same uint8
    assert tuple(as_uint8_nchw(u[..., 0]).shape) == (1, 1, 16, 16)  # (N, H, W) grey
    with pytest.raises(ValueError, match="expected uint8 images"):
        from_uint8(u.astype(np.float32))
    with pytest.raises(ValueError, match=r"float images must be \(N, C, H, W\)"):
        as_uint8_nchw(x.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="dtype torch.int64"):
        as_uint8_nchw(torch.zeros(1, 4, 4, 3, dtype=torch.int64))


# ---------------------------------------------------------------- headers and sample files


def test_npy_header_reader_on_real_files(tmp_path):
    images, labels = _images(5, 0, (4, 6, 3)), np.arange(5)
    np.savez(tmp_path / "s.npz", images, labels)
    with zipfile.ZipFile(tmp_path / "s.npz") as zf:
        with zf.open("arr_0.npy") as fp:
            shape, fortran, dtype = read_npy_header(fp)
            assert (shape, fortran, dtype) == ((5, 4, 6, 3), False, np.dtype(np.uint8))
            assert fp.read() == images.tobytes()  # left at the first data byte
        with zf.open("arr_1.npy") as fp:
            assert read_npy_header(fp)[::2] == ((5,), labels.dtype)
    # format version 2.0 headers (written for very wide dtypes) read the same way
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, images, version=(2, 0))
    buffer.seek(0)
    assert read_npy_header(buffer) == ((5, 4, 6, 3), False, np.dtype(np.uint8))
    assert buffer.read() == images.tobytes()
    with pytest.raises(ValueError, match="magic"):
        read_npy_header(io.BytesIO(b"not an npy file at all"))


def test_save_npz_read_images_round_trip(tmp_path):
    images = _images(5, 7)
    x_0 = (torch.from_numpy(images).permute(0, 3, 1, 2).float() + 0.5) / 127.5 - 1  # model layout
    path = save_npz(tmp_path / "out" / "a.npz", x_0, torch.arange(5))
    with np.load(path) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        np.testing.assert_array_equal(data["arr_0"], images)
        np.testing.assert_array_equal(data["arr_1"], np.arange(5))
        assert data["arr_1"].dtype == np.int64
    first, first_labels = read_images(path, 3)
    np.testing.assert_array_equal(first, images[:3])
    np.testing.assert_array_equal(first_labels, [0, 1, 2])
    none, none_labels = read_images(path, 0)
    assert none.shape == (0, 8, 8, 3) and none_labels.shape == (0,)
    assert read_images(save_npz(tmp_path / "u.npz", images), 99)[1] is None
    with pytest.raises(ValueError, match=r"labels must be \(5,\)"):
        save_npz(tmp_path / "b.npz", images, np.arange(4))
    assert not (tmp_path / "b.npz").exists()


def test_base_samples_load(tmp_path):
    images = _images(6, 1, (4, 4, 1))
    save_npz(tmp_path / "base.npz", images, np.arange(6) % 3)
    base = BaseSamples.load(tmp_path / "base.npz")
    assert len(base) == 6 and base.image_shape == (4, 4, 1)
    got, labels = base(range(2, 5))
    np.testing.assert_array_equal(got, images[2:5])
    np.testing.assert_array_equal(labels, [2, 0, 1])
    with pytest.raises(ValueError, match="holds 6"):
        base(range(4, 8))
    with pytest.raises(FileNotFoundError, match="base samples not found"):
        BaseSamples.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "float.npz", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="expected uint8"):
        BaseSamples.load(tmp_path / "float.npz")


def test_write_pngs_names_and_modes(tmp_path):
    write_pngs(tmp_path / "rgb", range(10, 12), _images(2, 0), np.array([3, 4]))
    assert sorted(p.name for p in (tmp_path / "rgb").iterdir()) == ["000010_y3.png", "000011_y4.png"]
    grey = _images(1, 0, (5, 5, 1))
    write_pngs(tmp_path / "grey", range(7, 8), grey, None)
    with Image.open(tmp_path / "grey" / "000007.png") as im:
        assert im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), grey[0, ..., 0])


# ---------------------------------------------------------------- grids


@pytest.mark.parametrize("channels", [3, 1])
def test_grid_geometry_and_padding(tmp_path, channels):
    images = _images(5, 2, (3, 4, channels))
    images.setflags(write=False)  # as read straight from a sample file's bytes
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "non-writable tensor" warning
        path = save_grid(images, tmp_path / "grid.png", nrow=2)
    with Image.open(path) as im:
        assert im.mode == ("RGB" if channels == 3 else "L")
        grid = np.asarray(im).reshape(im.height, im.width, channels)
    assert grid.shape == (3 * (3 + 2) + 2, 2 * (4 + 2) + 2, channels)  # 3 rows of 2, 2-px padding
    mask = np.ones(grid.shape[:2], bool)
    for i, image in enumerate(images):
        r, c = divmod(i, 2)
        y, x = 2 + r * 5, 2 + c * 6
        np.testing.assert_array_equal(grid[y : y + 3, x : x + 4], image)
        mask[y : y + 3, x : x + 4] = False
    mask[12:15, 8:12] = False  # the empty sixth cell is background too, and white
    assert (grid[mask] == 255).all() and (grid[12:15, 8:12] == 255).all()


def test_grid_default_rows_and_single_image(tmp_path):
    with Image.open(save_grid(_images(10, 0, (2, 2, 3)), tmp_path / "ten.png")) as im:
        assert im.size == (4 * 4 + 2, 3 * 4 + 2)  # about square: 4 per row, 3 rows
    one = _images(1, 0, (2, 3, 3))
    with Image.open(save_grid(one, tmp_path / "one.png", nrow=8)) as im:
        grid = np.asarray(im)
    assert grid.shape == (6, 7, 3)  # padded all round like any grid
    np.testing.assert_array_equal(grid[2:4, 2:5], one[0])
    with pytest.raises(ValueError, match="quantise float images with to_uint8"):
        save_grid(np.zeros((2, 4, 4, 3), np.float32), tmp_path / "bad.png")


# ---------------------------------------------------------------- sample sets and reference batches


def _write_shards(folder: Path, sizes, seed=0) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = _images(sum(sizes), seed), np.arange(sum(sizes)) % 2
    start = 0
    for i, n in enumerate(sizes):
        save = np.savez_compressed if i == 1 else np.savez  # both storage modes stream
        save(folder / f"shard_{i:03d}.npz", images[start : start + n], labels[start : start + n])
        start += n
    return images, labels


def test_sample_shards_stream_in_order(tmp_path):
    images, labels = _write_shards(tmp_path / "s", [5, 7, 3])
    source = open_samples(tmp_path / "s")
    assert len(source) == 15 and source.image_shape == (8, 8, 3) and source.has_labels
    batches = list(source.batches(4))
    assert max(len(b) for b, _ in batches) == 4
    np.testing.assert_array_equal(np.concatenate([b for b, _ in batches]), images)
    np.testing.assert_array_equal(np.concatenate([lab for _, lab in batches]), labels)
    np.testing.assert_array_equal(source.labels(), labels)
    limited = np.concatenate([b for b, _ in source.batches(4, limit=9)])
    np.testing.assert_array_equal(limited, images[:9])
    files = sorted((tmp_path / "s").glob("*.npz"))
    assert len(open_samples([files[0], files[2]])) == 8
    assert len(open_samples(str(files[1]))) == 7


def test_grey_images_without_channel_axis(tmp_path):
    np.savez(tmp_path / "g.npz", _images(3, 0, (8, 8)))
    source = open_samples(tmp_path / "g.npz")
    assert source.image_shape == (8, 8, 1) and not source.has_labels and source.labels() is None
    ((batch, labels),) = list(source.batches(8))
    assert batch.shape == (3, 8, 8, 1) and labels is None


@pytest.mark.parametrize(
    "arrays, match",
    [
        (
            {"arr_0": np.zeros((2, 8, 8, 3), np.float32)},
            r"'arr_0' has shape \(2, 8, 8, 3\) and dtype float32; expected uint8",
        ),
        (
            {"arr_0": np.zeros((2, 3, 8, 8), np.uint8)},
            r"'arr_0' has shape \(2, 3, 8, 8\) and dtype uint8; expected uint8",
        ),
        (
            {"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "arr_1": np.zeros(3, np.int64)},
            r"'arr_1' has shape \(3,\)",
        ),
        (
            {"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "arr_1": np.zeros(2, np.float32)},
            r"'arr_1' .* float32",
        ),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, r"has no 'arr_0' \(keys: \['images'\]\)"),
        (
            {"arr_0": np.asfortranarray(np.zeros((2, 8, 8, 3), np.uint8))},
            r"Fortran order; expected C order",
        ),
    ],
)
def test_bad_sample_file_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        open_samples(tmp_path / "bad.npz")


def test_truncated_sample_file_is_a_clear_error(tmp_path):
    path = save_npz(tmp_path / "t.npz", _images(4, 0))
    with zipfile.ZipFile(path) as zf:
        member = zf.read("arr_0.npy")
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as zf:  # a readable zip whose images end early
        zf.writestr("arr_0.npy", member[: len(member) - 50])
    with pytest.raises(ValueError, match="truncated"):
        list(open_samples(tmp_path / "cut.npz").batches(2))


def test_sample_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such sample file"):
        open_samples(tmp_path / "missing.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .npz files"):
        open_samples(tmp_path / "empty")
    (tmp_path / "x.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not an .npz archive"):
        open_samples(tmp_path / "x.npz")
    np.savez(tmp_path / "a.npz", _images(2, 0))
    np.savez(tmp_path / "b.npz", _images(2, 0, (4, 4, 3)))
    with pytest.raises(ValueError, match="different shapes"):
        open_samples([tmp_path / "a.npz", tmp_path / "b.npz"])


@pytest.mark.parametrize(
    "arrays, match",
    [
        (
            {"arr_0": np.zeros((4, 8, 8, 3), np.int64)},
            r"'arr_0' has shape \(4, 8, 8, 3\) and dtype int64; expected uint8",
        ),
        (
            {"mu": np.zeros(2047)},
            r"'mu' has shape \(2047,\) and dtype float64; expected a float array of shape \(2048,\)",
        ),
        (
            {"mu": np.zeros(2048, np.int32)},
            r"'mu' has shape \(2048,\) and dtype int32; expected a float array",
        ),
        (
            {"mu_s": np.zeros((2023, 1))},
            r"'mu_s' has shape \(2023, 1\) .* expected a float array of shape \(2023,\)",
        ),
        ({"mu": np.zeros(2048)}, r"has 'mu' but not 'sigma'"),
        ({"labels": np.zeros(3)}, r"neither 'arr_0' .* nor precomputed 'mu'/'sigma'"),
    ],
)
def test_bad_reference_batch_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "ref.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_reference(tmp_path / "ref.npz")


def test_reference_batch_with_images_and_statistics(tmp_path):
    mu, sigma = np.zeros(2048, np.float32), np.eye(2048, dtype=np.float32)
    np.savez(tmp_path / "ref.npz", arr_0=_images(3, 0), mu=mu, sigma=sigma)
    ref = load_reference(tmp_path / "ref.npz")
    assert len(ref.images) == 3 and set(ref.stats) == {"pool"}
    assert ref.stats["pool"][1].dtype == np.float64
    _write_shards(tmp_path / "folder", [2, 3])
    folder = load_reference(tmp_path / "folder")
    assert len(folder.images) == 5 and folder.stats == {}


# ---------------------------------------------------------------- shards


def test_shard_store_checks_finished_shards(tmp_path):
    layout = ShardLayout(num_samples=5, shard_size=2)
    assert layout.num_shards == 3 and layout.indices(2) == range(4, 5)
    assert layout.shards_of(1, 2) == [1]
    store = ShardStore(
        tmp_path, fingerprint={"seed": 0}, layout=layout, image_shape=(4, 4, 3), with_labels=True
    )
    store.prepare()
    info = json.loads((tmp_path / "sample_info.json").read_text())
    assert info["fingerprint"] == {"seed": 0} and info["digest"] == store.digest
    assert store.check_shard(0, None) == "missing"
    store.write_shard(0, _images(2, 0, (4, 4, 3)), np.array([1, 2]))
    assert store.check_shard(0, np.array([1, 2])) is None
    assert store.check_shard(0, np.array([2, 1])) == "its labels differ from the run's labels"
    store.write_shard(1, _images(1, 0, (4, 4, 3)), np.array([0]))
    assert "expected uint8 (2, 4, 4, 3)" in store.check_shard(1, None)
    store.shard_path(2).write_bytes(b"PK garbage")
    assert store.check_shard(2, None).startswith("unreadable")
    other = ShardStore(
        tmp_path, fingerprint={"seed": 1}, layout=layout, image_shape=(4, 4, 3), with_labels=True
    )
    with pytest.raises(ValueError, match="other settings"):
        other.check_shard(0, None)
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
        other.prepare()
    with pytest.raises(ValueError, match="num_samples and shard_size must be >= 1"):
        ShardLayout(0, 2)


# ---------------------------------------------------------------- metric names


def test_metric_table_is_the_source_of_every_metric_list():
    from adm.callbacks.fid import _NEED_REFERENCE
    from adm.metrics import FEATURE_KINDS
    from adm.metrics.evaluate import _REFERENCE_NEEDS, METRIC_KINDS
    from adm.metrics.evaluate import METRICS as EVALUATE_METRICS
    from adm.metrics.names import METRIC_LABELS, METRIC_TABLE, METRICS, NEEDS_REFERENCE, metric_names
    from adm.recipes.demo import METRICS as DEMO_METRICS
    from adm.recipes.evaluate import LABELS
    from adm.recipes.sweep import _TITLES, METRIC_COLUMNS

    names = [m.name for m in METRIC_TABLE]
    assert len(set(names)) == len(names) and tuple(names) == METRICS == EVALUATE_METRICS
    assert all(m.kind in FEATURE_KINDS for m in METRIC_TABLE)
    assert all(m.reference in ("none", "stats", "features") for m in METRIC_TABLE)
    assert {m.name: m.kind for m in METRIC_TABLE} == METRIC_KINDS
    assert set(_NEED_REFERENCE) == set(_REFERENCE_NEEDS) == NEEDS_REFERENCE
    assert tuple(METRIC_COLUMNS) == METRICS and set(_TITLES) == set(METRICS)
    assert set(DEMO_METRICS) <= set(METRICS)
    assert {k: v for k, v in LABELS.items() if k in METRICS} == METRIC_LABELS and set(METRICS) <= set(LABELS)
    with pytest.raises(ValueError, match=r"unknown metric 'kid'; choose from \['fid'"):
        metric_names("fid", "kid")


def test_metric_table_matches_what_compute_metrics_does():
    """Every name in the table is computed, and its 'reference' entry tells the truth."""
    from adm.metrics import FeatureSet, compute_metrics
    from adm.metrics.names import METRICS, NEEDS_REFERENCE

    rng = np.random.default_rng(0)
    kinds = {"pool": 4, "spatial": 5, "logits": 3}
    samples = FeatureSet(
        "x", features={k: rng.standard_normal((20, d)) for k, d in kinds.items()}, labels=np.arange(20) % 3
    )
    reference = FeatureSet("x", features={k: rng.standard_normal((20, d)) for k, d in kinds.items()})
    out = compute_metrics(samples, reference, METRICS, split_size=10, k=3)
    assert set(out) == set(METRICS)
    alone = [m for m in METRICS if m not in NEEDS_REFERENCE]
    assert set(compute_metrics(samples, None, alone, split_size=10)) == set(alone)
    for m in NEEDS_REFERENCE:
        with pytest.raises(ValueError, match="need a reference batch"):
            compute_metrics(samples, None, [m])
