"""tools/mutate.py's list stays runnable: every mutant's text occurs once in its file (a change to the
code under a mutant fails here, not silently in the next mutation run), ids are unique, every test
path exists; and reports of runs over parts merge into one (docs/testing.md, Mutation score)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("escnet_mutate_tool", REPO / "tools" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = mutate  # dataclasses look their module up
_spec.loader.exec_module(mutate)

OPERATORS = {"sign", "aggregate", "normalisation", "off-by-one", "compare", "constant", "swap", "branch"}


def test_no_mutant_is_stale():
    assert mutate.check(mutate.MUTANTS, REPO) == {}, "update `find` of these mutants (python tools/mutate.py --list)"


def test_mutants_are_well_formed():
    ids = [m.id for m in mutate.MUTANTS]
    assert len(ids) == len(set(ids))
    for m in mutate.MUTANTS:
        assert m.operator in OPERATORS and m.find != m.replace and m.what, m.id
        paths = [t.split("::")[0] for t in m.tests if t.endswith(".py") or "::" in t]
        assert paths and all((REPO / p).is_file() for p in paths), m.id


def test_reports_of_parts_merge_into_one():
    def row(mid, outcome, equivalent=""):
        return {"id": mid, "outcome": outcome, "equivalent": equivalent}

    first = {"mutants": [row("P3", "survived"), row("E5", "survived", "same map")]}
    second = {"mutants": [row("C1", "killed"), row("P3", "killed")]}
    merged = mutate.merge_reports([first, second])
    assert [r["id"] for r in merged["mutants"]] == ["C1", "E5", "P3"]  # MUTANTS' order
    s = merged["summary"]
    assert s["killed"] == 2 and s["survived"] == [] and s["equivalent"] == 1 and s["score"] == 1.0
