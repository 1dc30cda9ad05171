"""The runtime helpers: device choice, thread count, torchrun set-up (single process), peak memory."""
import os

import pytest
import torch

from escnet import runtime
from escnet.runtime import default_threads, peak_memory, physical_cores, resolve_device, set_threads, setup_runtime


def test_auto_and_named_devices():
    expected = "cuda" if torch.cuda.is_available() else ("mps" if runtime._mps_available() else "cpu")
    assert resolve_device("auto").type == expected == resolve_device(None).type
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'gpu0'; use auto, cpu, cuda, mps"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_cuda_without_gpu_is_reported():
    with pytest.raises(ValueError, match="device 'cuda' requested but no CUDA GPU is available"):
        resolve_device("cuda")


def test_mps_without_metal_is_reported(monkeypatch):
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    with pytest.raises(ValueError, match="device 'mps' requested but Apple's Metal backend is not available"):
        resolve_device("mps")
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "mps"


def test_threads_default_to_the_callers_setting_else_the_usable_physical_cores(monkeypatch, restore_threads):
    assert 1 <= physical_cores() <= (os.cpu_count() or 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert set_threads(None) == 1 and torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(runtime, "_cgroup_quota", lambda: None)
    assert default_threads() == physical_cores()
    monkeypatch.setattr(runtime, "physical_cores", lambda: 8)
    monkeypatch.setattr(runtime, "_cgroup_quota", lambda: 1.5)  # a container allowed 1.5 CPUs
    assert set_threads(None) == 2 and os.environ["OMP_NUM_THREADS"] == "2" == os.environ["MKL_NUM_THREADS"]
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        set_threads(0)


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert runtime._cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert runtime._cgroup_quota(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert runtime._cgroup_quota(tmp_path) == 2.0


def test_single_process_runtime_and_peak_memory(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = setup_runtime("cpu")
    assert (rt.rank, rt.world_size, rt.device, rt.main, rt.initialized_here) == (0, 1, torch.device("cpu"), True, False)
    rt.close()
    peak = peak_memory("cpu")
    assert set(peak) == {"peak_rss_MiB"} and peak["peak_rss_MiB"] > 10  # a Python process with torch loaded
