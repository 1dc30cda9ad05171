"""Pinned outputs (tests/pinned/*.npz) recomputed and compared to 1e-4; regenerated only by
`python tools/pin_outputs.py --why "..."`, which logs the reason in CHANGELOG.md (docs/testing.md)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("pin_outputs", REPO / "tools" / "pin_outputs.py")
pin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pin)

PINNED = sorted(p.stem for p in pin.PINNED_DIR.glob("*.npz"))


def test_every_case_is_pinned_or_pending_and_every_file_is_a_case():
    assert set(PINNED) <= set(pin.CASES), f"files without a case: {set(PINNED) - set(pin.CASES)}"
    unpinned = [c for c in pin.CASES if c not in PINNED and c not in pin.PENDING]
    assert not unpinned, f"cases {unpinned} have no file: run tools/pin_outputs.py --why '...' {' '.join(unpinned)}"
    assert "catseg_tiny" in PINNED


@pytest.mark.parametrize("case", PINNED)
def test_pinned_outputs_are_reproduced(case):
    problems = pin.compare(pin.load(pin.path_of(case)), pin.CASES[case]())
    assert not problems, (f"{case} no longer reproduces its pinned output: {'; '.join(problems)}. If the change is "
                          f"intended: python tools/pin_outputs.py --why '<reason>' {case}")


def test_compare_catches_a_change_beyond_the_tolerance():
    pinned = {"logits": np.zeros((2, 3), np.float32), "labels": np.zeros(4, np.int64)}
    assert pin.compare(pinned, {k: v.copy() for k, v in pinned.items()}) == []
    assert pin.compare(pinned, {"logits": pinned["logits"] + 5e-5, "labels": pinned["labels"]}) == []
    assert "max |difference| 0.0002" in pin.compare(pinned, {"logits": pinned["logits"] + 2e-4, "labels": pinned["labels"]})[0]
    assert "1 of 4 values differ" in pin.compare(pinned, {"logits": pinned["logits"], "labels": np.array([0, 0, 1, 0])})[0]
    assert "pinned" in pin.compare(pinned, {"logits": pinned["logits"]})[0]
    nan = {"logits": np.full((2, 3), np.nan, np.float32), "labels": pinned["labels"]}
    assert pin.compare(pinned, nan)  # NaN never passes


def test_regeneration_needs_a_reason_and_logs_it(tmp_path, capsys):
    out, log = tmp_path / "pinned", tmp_path / "CHANGELOG.md"
    log.write_text("# Changelog\n\n## Pinned outputs\n\nintro\n\n## Other\n\n- kept\n")
    with pytest.raises(SystemExit):
        pin.main(["catseg_tiny", "--out-dir", str(out), "--changelog", str(log)])  # no --why
    with pytest.raises(SystemExit):
        pin.main(["catseg_tiny", "--why", "  ", "--out-dir", str(out), "--changelog", str(log)])
    assert not out.exists()
    assert pin.main(["catseg_tiny", "--why", "first", "--out-dir", str(out), "--changelog", str(log)]) == 0
    assert pin.main(["catseg_tiny", "--why", "again", "--out-dir", str(out), "--changelog", str(log)]) == 0
    assert pin.compare(pin.load(pin.path_of("catseg_tiny")), pin.load(out / "catseg_tiny.npz")) == []
    text = log.read_text()
    section, other = text.split("## Other")
    entries = [line for line in section.splitlines() if line.startswith("- ")]
    assert len(entries) == 2 and "`catseg_tiny` (new;" in entries[0] and entries[0].endswith(": first")
    assert "max |change| 0" in entries[1] and entries[1].endswith(": again")
    assert "- kept" in other
    assert pin.main(["--check", "catseg_tiny", "--out-dir", str(out)]) == 0
