"""The example class-folder dataset made from MNIST-5k digits reads back as the folder data module sees it."""

from __future__ import annotations

import numpy as np
import pytest

from adm.data.datamodules import load_mnist5k
from adm.data.examples import main, write_digit_folders
from adm.data.folder import read_folder_images


def test_digit_folders_are_coloured_class_folders_of_the_chosen_digits(tmp_path):
    counts = write_digit_folders(tmp_path, [7, 0], size=32, per_class=6, seed=3)
    assert counts == {"seven": 6, "zero": 6}
    images, labels, names = read_folder_images(tmp_path, 32)
    assert names == ["seven", "zero"] and images.shape == (12, 32, 32, 3)
    assert np.bincount(labels).tolist() == [6, 6]
    # Coloured strokes: the darkest pixel of an image is not grey, and images differ in colour.
    darkest = images.reshape(12, -1, 3)[np.arange(12), images.reshape(12, -1, 3).sum(-1).argmin(1)]
    assert (darkest.max(1) - darkest.min(1)).max() > 20
    # The digit's shape survives: ink where MNIST has it (the first 'seven' of MNIST-5k, resized).
    digits, digit_labels = load_mnist5k()
    first_seven = digits[np.flatnonzero(digit_labels == 7)[0]]
    ink = images[0].astype(float).mean(-1) < 128
    assert ink.any() and (first_seven.repeat(32, 0)[::28].repeat(32, 1)[:, ::28] > 128)[ink].mean() > 0.7


def test_grey_digits_and_no_overwrite(tmp_path, capsys):
    main([str(tmp_path), "--classes", "1", "--per-class", "3", "--grey", "--size", "28"])
    assert "Wrote 3 images" in capsys.readouterr().out
    images, _, names = read_folder_images(tmp_path, 28, channels=1)
    assert names is None or names == ["one"]
    assert images.shape == (3, 28, 28, 1)
    with pytest.raises(FileExistsError, match="not empty"):
        write_digit_folders(tmp_path, [1], per_class=2)
    with pytest.raises(ValueError, match="digits 0-9"):
        write_digit_folders(tmp_path / "other", [12])


def test_folder_ruler_learns_the_folder_classes(tmp_path):
    from adm.metrics.domain import DomainClassifier, train_folder_ruler
    from adm.metrics.domain import main as ruler_main

    write_digit_folders(tmp_path / "data", [0, 1], size=16, per_class=100, seed=1)
    accuracy = train_folder_ruler(tmp_path / "data", tmp_path / "ruler.pt", image_size=16, epochs=20)
    assert accuracy >= 0.9  # zeros against ones, 40 held-out images
    ruler = DomainClassifier.load(tmp_path / "ruler.pt")
    assert (ruler.in_channels, ruler.image_size, ruler.num_classes) == (3, 16, 2)
    (tmp_path / "flat").mkdir()
    (tmp_path / "data" / "zero" / "0000.png").rename(tmp_path / "flat" / "a.png")
    with pytest.raises(ValueError, match="no class folders"):
        ruler_main([str(tmp_path / "flat"), str(tmp_path / "x.pt"), "--size", "16"])
