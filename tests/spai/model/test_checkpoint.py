"""Our checkpoints: plain data, atomic writes, weights_only loading, strict keys."""

import pickle

import numpy as np
import pytest
import torch

import spai
from spai.errors import CheckpointError


def test_round_trip_rebuilds_architecture_and_scores(tiny_model, tmp_path):
    path = spai.save_checkpoint(tiny_model, tmp_path / "ckpt_epoch_0.pth", epoch=0, metrics={"auc": 0.5})
    model, state = spai.load_checkpoint(path)
    assert state["epoch"] == 0 and state["metrics"] == {"auc": 0.5}
    img = torch.rand(3, 300, 500)
    np.testing.assert_allclose(model.score([img]), tiny_model.score([img]), atol=0)
    again = spai.create_model(checkpoint=path)
    np.testing.assert_allclose(again.score([img]), tiny_model.score([img]), atol=0)


def test_checkpoint_is_loadable_with_weights_only(tiny_model, tmp_path):
    path = spai.save_checkpoint(tiny_model, tmp_path / "c.pth")
    data = torch.load(path, weights_only=True)
    assert isinstance(data["config"], dict) and data["format"] == "spai-deploy/1"


def test_atomic_write_leaves_no_partial_file(tiny_model, tmp_path, monkeypatch):
    target = tmp_path / "c.pth"
    spai.save_checkpoint(tiny_model, target, epoch=1)
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="previous checkpoint"):
        spai.save_checkpoint(tiny_model, target, epoch=2)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]


def test_missing_truncated_and_empty_files_are_clear_errors(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        spai.load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        spai.load_checkpoint(tmp_path / "empty.pth")
    path = spai.save_checkpoint(tiny_model, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated"):
        spai.load_checkpoint(tmp_path / "cut.pth")


def test_nan_weights_are_refused(tiny_model, tmp_path):
    path = spai.save_checkpoint(tiny_model, tmp_path / "c.pth")
    data = torch.load(path, weights_only=True)
    data["model"]["norm.weight"][0] = float("nan")
    torch.save(data, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="NaN"):
        spai.load_checkpoint(tmp_path / "nan.pth")


def test_mismatched_keys_are_listed(tiny_model, tmp_path):
    path = spai.save_checkpoint(tiny_model, tmp_path / "c.pth")
    data = torch.load(path, weights_only=True)
    data["model"]["extra.weight"] = torch.zeros(1)
    del data["model"]["norm.bias"]
    torch.save(data, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing: norm.bias.*unexpected: extra.weight"):
        spai.load_checkpoint(tmp_path / "bad.pth")


def test_a_pickle_that_would_run_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').write('x')",))

    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"model": Evil()}, f)
    with pytest.raises(CheckpointError):
        spai.load_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()
