import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "tools" / "study_tables23.py"
_spec = importlib.util.spec_from_file_location("study_tables23", _PATH)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)


def test_paired_summary_is_the_t_interval_of_the_differences():
    s = study.paired_summary([10.0, 20.0, 30.0], [11.0, 22.0, 33.0])  # differences 1, 2, 3: mean 2, sd 1
    assert s["diffs"] == [1.0, 2.0, 3.0] and s["mean"] == pytest.approx(2.0)
    half = 4.303 / 3 ** 0.5
    assert s["low"] == pytest.approx(2.0 - half) and s["high"] == pytest.approx(2.0 + half)
    with pytest.raises(ValueError, match="paired values"):
        study.paired_summary([1.0], [2.0])


def test_readings_are_well_formed_and_table2_runs_on_this_checkout():
    keys = study.available_keys()
    assert all(table in study.TABLES for table, _, _ in study.READINGS.values())
    assert all(a in study.READINGS and b in study.READINGS for a, b in study.COMPARISONS)
    for name in ("t2a_no_sam", "t2b_random", "t2c_pretrained"):
        assert study.missing_keys(study.READINGS[name][2], keys) == []
    assert study.missing_keys(["model.no_such_field=1", "seed=3"], keys) == ["model.no_such_field"]


def test_final_eval_reads_only_a_finished_run(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "eval": {"hIoU": 1.0}}\n{"step": 10, "loss": 0.1}\n')
    assert study.final_eval(tmp_path, 10) is None
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "eval": {"hIoU": 2.0}}\n')
    assert study.final_eval(tmp_path, 10) == {"hIoU": 2.0}


def test_readings_that_resolve_to_one_config_share_one_run():
    """Table 3's point + mask row, the 'all SAM at low_lr' row and the (0, 1) seeding row are the
    default model: the same resolved config as Table 2's pretrained row, so one run; every other
    reading is a run of its own, and the lr rows are runnable (sam_lr exists)."""
    import argparse

    args = argparse.Namespace(sam="sam.pth", out="out", config=study.CONFIG, max_iters=10, threads=1, extra=[])
    sig = {r: study.signature(study.command(r, 0, args)[0]) for r in study.READINGS if study.READINGS[r][0] != "readings"}
    for alias in ("t3d_point_mask", "lr_rule_all", "seed_01"):
        assert sig[alias] == sig["t2c_pretrained"], alias
    others = [s for r, s in sig.items() if r not in ("t3d_point_mask", "lr_rule_all", "seed_01")]
    assert len(set(others)) == len(others)
    assert study.missing_keys(study.READINGS["lr_sam_low"][2], study.available_keys()) == []
    keys = study.available_keys()
    assert study.owner_of("t3d_point_mask", 0, args, keys) == "t2c_pretrained"  # also when only Table 3 is asked for
    assert study.owner_of("t3a_point", 0, args, keys) == "t3a_point"


def test_import_metrics_makes_committed_runs_reusable(tmp_path):
    """A finished run's metrics kept as <reading>_seed<S>.metrics.jsonl become that run's folder with
    the stamp of this invocation's command, so the study reuses it; unfinished files are refused,
    other seeds and unknown names skipped, an existing run folder left alone."""
    import argparse
    import shlex

    kept = tmp_path / "kept"
    kept.mkdir()
    done = '{"step": 10, "eval": {"seen_mIoU": 50.0, "unseen_mIoU": 10.0, "hIoU": 16.7, "mIoU": 40.0}}\n'
    (kept / "t2a_no_sam_seed0.metrics.jsonl").write_text(done)
    (kept / "t2a_no_sam_seed7.metrics.jsonl").write_text(done)  # seed not asked for
    (kept / "nonsense_seed0.metrics.jsonl").write_text(done)
    out = tmp_path / "out"
    args = argparse.Namespace(sam="sam.pth", out=str(out), config=study.CONFIG, max_iters=10, threads=1, extra=[],
                              seeds="0,1")
    assert study.import_metrics(kept, args) == [out / "t2a_no_sam" / "seed0"]
    cmd, run_dir = study.command("t2a_no_sam", 0, args)
    assert (run_dir / "study_command.txt").read_text() == shlex.join(cmd)
    assert study.final_eval(run_dir, 10)["hIoU"] == 16.7
    assert study.import_metrics(kept, args) == []  # already there: left alone
    (kept / "t2b_random_seed1.metrics.jsonl").write_text('{"step": 5, "eval": {"hIoU": 1.0}}\n')
    with pytest.raises(RuntimeError, match="no evaluation at step 10"):
        study.import_metrics(kept, args)
    assert not (out / "t2b_random").exists()  # nothing half-written
