import random

import numpy as np
import pytest
import torch

from escnet.training import checkpoint as ck


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((3,), value)}, "optimizer": {}, "scheduler": {}, "config": {"seed": 0}}


def test_roundtrip_restores_rng_of_torch_numpy_python(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    path = ck.save_checkpoint(tmp_path, 5, _state(1.0))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(10), np.random.rand(10), random.random()
    state = ck.load_checkpoint(path)
    ck.set_rng_state(state["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    assert state["step"] == 5 and torch.equal(state["model"]["w"], torch.ones(3))
    assert ck.load_checkpoint(tmp_path)["path"] == str(path)  # a folder means its newest checkpoint


def test_keep_last_n(tmp_path):
    for step in (10, 20, 30, 40):
        ck.save_checkpoint(tmp_path, step, _state(step), keep_last=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [30, 40]
    assert ck.latest_checkpoint(tmp_path).name == "checkpoint_00000040.pt"


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    good = ck.save_checkpoint(tmp_path, 10, _state(1.0))
    before = good.read_bytes()

    def crashing_save(obj, f):
        f.write(b"PK\x03\x04 partial")  # some bytes reach the disk, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, 20, _state(2.0), keep_last=1)
    monkeypatch.undo()
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [10]
    assert good.read_bytes() == before
    assert torch.equal(ck.load_checkpoint(tmp_path)["model"]["w"], torch.ones(3))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".checkpoint_")]


def test_killed_process_leaves_only_a_temporary(tmp_path):
    ck.save_checkpoint(tmp_path, 10, _state(1.0))
    (tmp_path / ".checkpoint_00000020.123.tmp").write_bytes(b"half a file")
    assert ck.latest_checkpoint(tmp_path).name == "checkpoint_00000010.pt"
    assert ck.remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_00000010.pt"]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ck.CheckpointError, match="not found"):
        ck.load_checkpoint(tmp_path / "checkpoint_00000001.pt")
    with pytest.raises(ck.CheckpointError, match="no checkpoint"):
        ck.load_checkpoint(tmp_path)
    bad = tmp_path / "checkpoint_00000002.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="checkpoint_00000002.pt cannot be read"):
        ck.load_checkpoint(bad)
    torch.save({"model": {}}, tmp_path / "checkpoint_00000003.pt")
    with pytest.raises(ck.CheckpointError, match="lacks step, optimizer"):
        ck.load_checkpoint(tmp_path / "checkpoint_00000003.pt")
