"""A new user's trip-ups (issue 24 item 13), each reproduced through the public API or the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from escnet.cli import main
from escnet.errors import DemonstrationModelWarning

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
    return path


def test_from_pretrained_without_a_model_names_the_demonstration_model():
    from escnet import Segmenter

    with pytest.warns(DemonstrationModelWarning, match="demonstration model.*catseg-vitl14"):
        Segmenter.from_pretrained(None, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DemonstrationModelWarning)
        Segmenter.from_pretrained("escnet-synthetic-tiny", device="cpu")  # named on purpose: no warning


def test_cli_prints_its_notice_once_and_no_python_warning(photo, tmp_path, capfd):
    assert main(["segment", str(photo), "--classes", "cat", "--out", str(tmp_path / "o")]) == 0
    err = capfd.readouterr().err
    assert err.count("demonstration model") == 1 and "Warning" not in err


def _run(args, tmp_path, **env):
    environ = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", ESCNET_CACHE=str(tmp_path / "cache"),
                   HF_HOME=str(tmp_path / "hf"), **env)
    environ.pop("HF_HUB_OFFLINE", None) if "HF_HUB_OFFLINE" not in env else None
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "escnet", *args], capture_output=True, text=True, timeout=120,
                          env=environ, cwd=tmp_path)
    return proc, time.monotonic() - start


def test_a_missing_local_folder_is_not_sent_to_the_hub(photo, tmp_path):
    (tmp_path / "models").mkdir()
    for name in ("models/catseg-vitl14", "models/mine"):
        proc, _ = _run(["segment", str(photo), "--classes", "cat", "--model", name, "--out", "o"], tmp_path,
                       HF_ENDPOINT="http://127.0.0.1:9")
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and f"no such folder: {name}" in lines[0], proc.stderr
        assert "Retrying" not in proc.stderr and "--fetch" not in proc.stderr


def test_an_unreachable_hub_fails_at_once_in_one_line(photo, tmp_path):
    """Port 9 on 127.0.0.1 refuses connections, as a machine without network does; huggingface_hub alone
    retried five times (~25 s, a line per retry)."""
    proc, seconds = _run(["segment", str(photo), "--classes", "cat", "--model", "someone/some-model", "--out", "o"],
                         tmp_path, HF_ENDPOINT="http://127.0.0.1:9")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "cannot be reached" in lines[0] and "Retrying" not in proc.stderr
    assert seconds < 20, seconds
    proc, _ = _run(["segment", str(photo), "--classes", "cat", "--model", "someone/some-model", "--out", "o"],
                   tmp_path, HF_HUB_OFFLINE="1")
    assert proc.returncode == 1 and "HF_HUB_OFFLINE is set" in proc.stderr and "Retrying" not in proc.stderr


def test_out_pointing_at_a_file_fails_before_the_model_is_loaded(photo, tmp_path, capsys, monkeypatch):
    from escnet.inference import segmenter as inference

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(inference.Segmenter, "from_pretrained", no_model)
    for out in (photo, photo / "sub"):
        assert main(["segment", str(photo), "--classes", "cat", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "not a folder" in err[0] and str(out) in err[0]


@pytest.mark.parametrize("argv, cause", [
    (["--classes", "cat, cat"], "VocabularyError"),
    (["--classes", "cat", "--model", "no/such/model"], "ModelNotFoundError"),
])
def test_debug_shows_the_traceback_of_vocabulary_and_model_errors(photo, tmp_path, argv, cause):
    base = ["segment", str(photo), "--out", str(tmp_path / "o"), *argv]
    proc, _ = _run(base, tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc, _ = _run(["--debug", *base], tmp_path)
    assert "Traceback" in proc.stderr and cause in proc.stderr, proc.stderr


def test_every_command_error_exits_1_as_the_readme_says(photo, tmp_path, capsys):
    """README, Robustness: 'one line `escnet: error: ...` and exit status 1'."""
    assert main(["segment", str(photo), "--classes", "", "--out", str(tmp_path / "o")]) == 1
    assert main(["segment", str(photo), "--classes", "cat", "--model", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 1
    assert main(["models", "--fetch", "no-such-entry"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 3 and all(line.startswith("escnet: error: ") for line in err), err
