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
