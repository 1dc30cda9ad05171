"""The benchmark command runs end to end (numbers are not asserted: performance is a benchmark, not a test)."""
import json

from escnet.cli import main
from escnet.engine.benchmark import bench_ppg


def test_ppg_benchmark_reports_both_timings():
    res = bench_ppg(t=8, repeats=1)
    assert res["T"] == 8 and res["batched_ms"] > 0 and res["sklearn_loop_ms"] > 0
    assert res["speedup"] == res["sklearn_loop_ms"] / res["batched_ms"]


def test_models_benchmark_measures_both_architectures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--what", "models", "--sizes", "tiny", "--classes", "3", "--protocols", "single",
                 "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["models"]
    assert [r["arch"] for r in rows] == ["escnet", "catseg"]
    for r in rows:
        assert "error" not in r, r
        assert r["gflops"] > 0 and r["latency_s"] > 0 and r["peak_mem_MiB"] > 0 and r["params_M"] > 0
    table = capsys.readouterr().out
    assert "ESC/CAT GFLOPs" in table and "| tiny | 3 | single | escnet |" in table


def test_train_benchmark_runs_the_real_step_for_both(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", "--what", "train", "--train-size", "tiny", "--train-classes", "5", "--train-steps", "2",
                 "--warmup", "0", "--train-checkpointing", "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["train"]
    assert [r["arch"] for r in rows] == ["escnet", "catseg"]
    for r in rows:
        assert "error" not in r, r
        assert r["T"] == 5 and r["steps"] == 2 and r["steps_per_s"] > 0 and r["peak_mem_MiB"] > 0
        assert abs(r["step_s"] * r["steps_per_s"] - 1) < 1e-9 and r["loss"] > 0
        assert 0 < r["saved_for_backward_GiB_checkpointed"] < r["saved_for_backward_GiB"]
    esc, cat = rows
    assert esc["trainable_M"] > cat["trainable_M"]  # ESC-Net adds SAM blocks to what trains
    assert "ESC/CAT step time" in capsys.readouterr().out


def _die(code, q):
    import os

    os._exit(code)


def test_a_benchmark_process_that_dies_gives_an_error_row_not_a_hang():
    from escnet.engine.benchmark import _in_subprocess

    res = _in_subprocess(_die, 3)
    assert res == {"error": "the benchmark process died with exit code 3"}
