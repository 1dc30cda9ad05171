import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """The suite never reads or writes the user's escnet cache (text features, converted models)."""
    previous = os.environ.get("ESCNET_CACHE")
    os.environ["ESCNET_CACHE"] = str(tmp_path_factory.mktemp("escnet-cache"))
    yield
    if previous is None:
        os.environ.pop("ESCNET_CACHE", None)
    else:
        os.environ["ESCNET_CACHE"] = previous


@pytest.fixture
def restore_threads(monkeypatch):
    """Code under test may set the process's thread count and its OMP/MKL environment
    (escnet.runtime.set_threads); give the test process its own back."""
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("MKL_NUM_THREADS", os.environ.get("MKL_NUM_THREADS", "1"))
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
