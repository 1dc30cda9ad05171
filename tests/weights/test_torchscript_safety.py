"""TorchScript archives are read without running anything in them (issue 13, the most severe defect)."""
from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from typing import Tuple

import pytest
import torch
from safetensors.torch import save_file

from escnet.cli import main
from escnet.weights.common import WeightsError, read_state_dict, read_torchscript_state_dict


class _Leaf(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(2, 3)
        self.register_buffer("buf", torch.arange(4.0))

    def forward(self, x):
        return self.lin(x)


class _Benign(torch.nn.Module):
    """Parameters of several dtypes, a strided view, a None and a non-persistent buffer, a plain tensor attribute."""

    def __init__(self):
        super().__init__()
        self.leaf = _Leaf()
        self.fp16 = torch.nn.Parameter(torch.randn(2, 2).half())
        self.view = torch.nn.Parameter(torch.randn(5, 3)[:, 1])
        self.blocks = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
        self.register_buffer("ids", torch.arange(3))
        self.register_buffer("none", None)
        self.register_buffer("scratch", torch.ones(1), persistent=False)
        self.plain = torch.zeros(3)  # an attribute, not a parameter or buffer: not in state_dict()

    def forward(self, x):
        return self.blocks(self.leaf(x)[:, :2])


class _Evil(torch.nn.Module):
    """Its TorchScript __setstate__ (run by torch.jit.load) creates the file named in its state."""

    def __init__(self, marker: str):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(2))
        self.marker = marker

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, bool, str]:
        return (self.w, self.training, self.marker)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, bool, str]) -> None:
        written = torch.from_file(state[2], True, 4, dtype=torch.uint8)
        written.fill_(65)
        self.w = state[0]
        self.marker = state[2]
        self.training = state[1] and bool(written.sum() >= 0)


class _EvilOuter(torch.nn.Module):
    def __init__(self, marker: str):
        super().__init__()
        self.payload = _Evil(marker)
        self.q = torch.nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.payload(x)


@pytest.fixture()
def evil(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(_EvilOuter(str(marker))), str(path))
    shutil.copy(path, tmp_path / "evil.pth")
    assert not marker.exists()
    return path, marker


def test_reads_what_jit_load_reads(tmp_path):
    path = tmp_path / "benign.pt"
    torch.jit.save(torch.jit.script(_Benign()), str(path))
    expected = torch.jit.load(str(path)).state_dict()
    got = read_torchscript_state_dict(path)
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
    assert read_state_dict(path).keys() == got.keys()  # read_state_dict dispatches TorchScript archives here


def test_the_hostile_fixture_really_runs_code_under_jit_load(evil):
    path, marker = evil
    torch.jit.load(str(path))
    assert marker.exists()  # so the tests below, where it stays absent, can fail


def test_hostile_archive_refused_by_the_reader(evil):
    path, marker = evil
    with pytest.raises(WeightsError, match="__setstate__"):
        read_torchscript_state_dict(path)
    assert not marker.exists()


def test_foreign_global_in_data_pkl_is_never_called(tmp_path):
    marker = tmp_path / "MARKER"
    benign = tmp_path / "benign.pt"
    torch.jit.save(torch.jit.script(_Benign()), str(benign))

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    crafted = tmp_path / "crafted.pt"
    with zipfile.ZipFile(benign) as src, zipfile.ZipFile(crafted, "w") as dst:
        for item in src.infolist():
            data = pickle.dumps(Payload(), protocol=2) if item.filename.endswith("/data.pkl") else src.read(item)
            dst.writestr(item, data)
    with pytest.raises(WeightsError, match="system"):
        read_torchscript_state_dict(crafted)
    assert not marker.exists()


def _tiny_clip_file(tmp_path):
    from escnet.models.factory import create_model

    path = tmp_path / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("escnet", "tiny").clip.state_dict().items()}, str(path))
    return path


def test_every_cli_convert_path_leaves_no_marker(evil, tmp_path, capsys):
    path, marker = evil
    pth = path.with_suffix(".pth")
    clip = _tiny_clip_file(tmp_path)
    for argv in (["--clip", str(path), "--random-sam"], ["--clip", str(pth), "--random-sam"],
                 ["--clip", str(clip), "--sam", str(path)],
                 ["--clip", str(clip), "--sam", str(pth)], ["--catseg", str(pth)], ["--catseg", str(path)]):
        code = main(["convert", "--preset", "tiny", *argv, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code != 0, argv
        assert "escnet: error:" in err and "Traceback" not in err, err
        assert not marker.exists(), argv


def test_every_train_init_path_leaves_no_marker(evil):
    from escnet.training.config import load_config
    from escnet.training.loop import build_model

    path, marker = evil
    pth = str(path.with_suffix(".pth"))
    for overrides in (["init_clip=" + str(path)], ["init_clip=" + pth], ["arch=catseg", "init_clip=" + str(path)],
                      ["init_model=" + pth], ["init_model=" + str(path)]):
        cfg = load_config(None, ["preset=tiny", *overrides])
        with pytest.raises(WeightsError):
            build_model(cfg)
        assert not marker.exists(), overrides


def test_init_sam_path_leaves_no_marker(evil, tmp_path):
    from escnet.training.config import load_config
    from escnet.training.loop import build_model

    path, marker = evil
    cfg = load_config(None, ["preset=tiny", f"init_clip={_tiny_clip_file(tmp_path)}", f"init_sam={path}"])
    with pytest.raises(WeightsError):
        build_model(cfg)
    assert not marker.exists()


def test_load_pretrained_and_segmenter_leave_no_marker(evil):
    from escnet.inference.segmenter import Segmenter
    from escnet.lifecycle import load_pretrained

    path, marker = evil
    for p in (path, path.with_suffix(".pth")):
        with pytest.raises(WeightsError):
            load_pretrained(p)
        with pytest.raises(WeightsError):
            Segmenter.from_pretrained(p)
    assert not marker.exists()


def test_storage_records_are_checked_against_their_declared_size(tmp_path):
    benign = tmp_path / "benign.pt"
    torch.jit.save(torch.jit.script(_Benign()), str(benign))
    crafted = tmp_path / "short.pt"
    with zipfile.ZipFile(benign) as src, zipfile.ZipFile(crafted, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[:2] if item.filename.endswith("/data/0") else data)
    with pytest.raises(WeightsError, match="storage '0' has 2 bytes"):
        read_torchscript_state_dict(crafted)
