"""Checkpoints are read without executing anything: weights_only loading and clear errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from adm.compat.flags import load_openai_checkpoint
from adm.io.safe_load import safe_torch_load


def _touch(path: str) -> None:
    Path(path).write_text("code ran")


class Payload:
    """Unpickling this object calls _touch(marker): what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _malicious_files(tmp_path: Path) -> tuple[Path, list[Path]]:
    marker = tmp_path / "marker.txt"
    state = {"input_blocks.0.0.weight": torch.zeros(2, 3, 3, 3), "payload": Payload(marker)}
    files = [tmp_path / "zip.pt", tmp_path / "legacy.pt", tmp_path / "raw.pkl"]
    torch.save(state, files[0])
    torch.save(state, files[1], _use_new_zipfile_serialization=False)
    files[2].write_bytes(pickle.dumps(state, protocol=2))
    return marker, files


def test_the_payload_is_live(tmp_path):
    """Control: an unsafe load of the same file does run the payload (so the tests below can fail)."""
    marker, files = _malicious_files(tmp_path)
    torch.load(files[0], weights_only=False)
    assert marker.read_text() == "code ran"


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker, files = _malicious_files(tmp_path)
    for path in files:
        with pytest.raises(ValueError, match="refusing to unpickle arbitrary objects.*Nothing was executed"):
            safe_torch_load(path)
        with pytest.raises(ValueError, match="refusing to unpickle arbitrary objects"):
            load_openai_checkpoint(path, "--image_size 64 --num_channels 192")
        with pytest.raises(ValueError, match="refusing to unpickle arbitrary objects"):
            load_openai_checkpoint(path)
    assert not marker.exists()


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "64x64_diffusion.pt"
    with pytest.raises(FileNotFoundError, match=str(path)):
        safe_torch_load(path)
    with pytest.raises(FileNotFoundError, match="64x64_diffusion.pt"):
        load_openai_checkpoint(path)


def test_truncated_and_corrupt_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(1000.0)}, good)
    assert torch.equal(safe_torch_load(good)["w"], torch.arange(1000.0))
    data = good.read_bytes()
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.arange(1000.0)}, legacy, _use_new_zipfile_serialization=False)
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "truncated_legacy.pt": legacy.read_bytes()[:-100],
        "empty.pt": b"",
        "text.pt": b"this is not a checkpoint",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="not a readable torch checkpoint|cannot be read safely"):
            safe_torch_load(tmp_path / name)
