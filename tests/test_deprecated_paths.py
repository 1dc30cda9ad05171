"""The old escnet.engine.X import paths (README, docs, tools and user code name them) still import for
one release: each warns with a DeprecationWarning naming the new path and then is the new module."""
import importlib
import re
import sys
from pathlib import Path

import pytest

from escnet.engine import MOVED

ROOT = Path(__file__).resolve().parents[1]
# the escnet.engine.X that README.md, docs/, tests/ and tools/ named when escnet.engine was split
NAMED_AT_THE_SPLIT = ("benchmark", "benchmark_command", "checkpoint", "config", "evaluate", "export", "inference",
                      "metrics", "optim", "outputs", "pretrain_sam", "protocol", "segment", "text_cache", "train",
                      "visualize")


def documented_old_paths() -> set[str]:
    """Every escnet.engine.X the README, docs/ and tools/ name (dotted, or `from escnet.engine import X`)."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "tools").rglob("*.py"))]
    found = set()
    for path in texts:
        text = path.read_text(errors="replace")
        found.update(re.findall(r"escnet\.engine\.([a-z_]+)", text))
        for names in re.findall(r"from escnet\.engine import \(?([a-z_ ,]+)", text):
            found.update(n.split(" as ")[0].strip() for n in names.split(",") if n.strip())
    return found


def test_every_documented_old_path_has_a_stand_in():
    documented = documented_old_paths()
    assert {"outputs", "text_cache", "evaluate", "protocol", "benchmark"} <= documented  # the scan finds them
    named = documented | set(NAMED_AT_THE_SPLIT)
    assert named <= set(MOVED), f"documented but gone: {sorted(named - set(MOVED))}"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_imports_warns_and_is_the_new_module(old):
    name, new = f"escnet.engine.{old}", MOVED[old]
    sys.modules.pop(name, None)
    with pytest.warns(DeprecationWarning, match=re.escape(new)):
        module = importlib.import_module(name)
    assert module is importlib.import_module(new)
    assert module.__name__ == new


def test_from_engine_import_form_reaches_the_new_module():
    import escnet.engine

    sys.modules.pop("escnet.engine.text_cache", None)
    vars(escnet.engine).pop("text_cache", None)  # as in a fresh process
    with pytest.warns(DeprecationWarning, match="escnet.inference.text_cache"):
        from escnet.engine import text_cache
    from escnet.inference import text_cache as new

    assert text_cache is new
