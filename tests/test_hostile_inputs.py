"""Hostile inputs (issue 24, items 2-7): each ends in one line (or a result) within 60 s under a
4 GiB address-space limit. The files are built small (sparse files, zero-stride tensors, a config
declaring a huge model, a zip bomb, a highly compressible huge PNG) and the CLI or API runs in a
subprocess under ``RLIMIT_AS``, so an unbounded allocation fails the test instead of the machine."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT_BYTES = 4 * 2**30
TIMEOUT_S = 60


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_BYTES, LIMIT_BYTES))


def run_limited(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    """`python ARGS` under the 4 GiB address-space limit and the 60 s timeout, offline, 1 thread."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               ESCNET_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"))
    env.pop("ESCNET_DEBUG", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=env, preexec_fn=_limit, cwd=tmp_path)


def cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    return run_limited(["-m", "escnet", *argv], tmp_path)


def assert_one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The process failed with status 1 and one `escnet...error` line naming `words` (no traceback)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line]
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) >= 1, proc.stderr
    text = errors[0]
    for word in words:
        assert word in text, (word, proc.stderr[-2000:])
    return text


@pytest.fixture
def photo(tmp_path) -> Path:
    import numpy as np
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(path)
    return path


# -- item 2: vocabulary files and class counts -------------------------------------------------


def test_sparse_gigabyte_vocabulary_file_is_refused_by_its_size(tmp_path, photo):
    vocab = tmp_path / "classes.txt"
    with open(vocab, "wb") as f:
        f.truncate(2**30)  # 1 GiB of zeros, no disk blocks
    proc = cli(tmp_path, "segment", str(photo), "--classes", str(vocab), "--out", str(tmp_path / "out"))
    line = assert_one_line(proc, "classes.txt", "ESCNET_MAX_VOCAB_BYTES")
    assert "limit" in line


def test_huge_class_count_is_refused_with_the_bound(tmp_path, photo):
    vocab = tmp_path / "classes.txt"
    vocab.write_text("".join(f"c{i}\n" for i in range(200_000)))
    proc = cli(tmp_path, "segment", str(photo), "--classes", str(vocab), "--out", str(tmp_path / "out"))
    assert_one_line(proc, "200000 classes", "ESCNET_MAX_CLASSES")
