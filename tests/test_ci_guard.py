"""The CI guard of tests/conftest.py, run for real: pytest in a subprocess on tiny test files next to
a copy of the suite's conftest. Under CI an unexpected skip (a test's or a whole module's) makes the
run fail; an allow-listed skip does not; outside CI skips stay skips; hypothesis runs derandomized."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

UNEXPECTED = '''
import pytest

def test_passes():
    assert True

def test_skips_unexpectedly():
    pytest.skip("escnet.engine.inference failed to import")
'''
MODULE_SKIP = '''
import pytest
pytest.importorskip("escnet_module_that_does_not_exist")

def test_never_runs():
    assert True
'''
ALLOWED = '''
import pytest
import torch
from hypothesis import settings

@pytest.mark.skipif(True, reason="needs a CUDA GPU")
def test_cuda_only():
    assert torch.cuda.is_available()

def test_hypothesis_profile_is_fixed_under_ci():
    assert settings.default.derandomize and settings.default.database is None
'''


def _run(tmp_path, files: dict[str, str], ci: str | None, *args: str) -> subprocess.CompletedProcess:
    folder = tmp_path / "suite"
    folder.mkdir(exist_ok=True)
    shutil.copy(CONFTEST, folder / "conftest.py")
    for name, text in files.items():
        (folder / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(folder),
                           "-c", os.devnull, *args, str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=300)


def test_unexpected_skips_fail_the_run_under_ci(tmp_path):
    run = _run(tmp_path, {"test_unexpected.py": UNEXPECTED, "test_module_skip.py": MODULE_SKIP}, "1")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "unexpected skips" in run.stdout
    assert "test_unexpected.py::test_skips_unexpectedly: escnet.engine.inference failed to import" in run.stdout
    assert "test_module_skip.py" in run.stdout.split("unexpected skips")[1]


def test_allowed_skips_pass_under_ci_with_a_fixed_hypothesis_profile(tmp_path):
    run = _run(tmp_path, {"test_allowed.py": ALLOWED}, "true")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 1 skipped" in run.stdout


def test_outside_ci_a_skip_is_a_skip_unless_asked(tmp_path):
    files = {"test_unexpected.py": UNEXPECTED}
    run = _run(tmp_path, files, None)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "unexpected skips" not in run.stdout
    run = _run(tmp_path, files, "0", "--fail-on-skip")
    assert run.returncode == 1 and "unexpected skips" in run.stdout, run.stdout + run.stderr
