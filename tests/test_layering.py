"""The package's import graph: arrows point down (models < weights < lifecycle < engine < cli).

Every `import escnet...` / `from escnet... import` in the package's source is read with `ast`,
function-local imports included (they are dependencies too, only deferred)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "escnet"
# layer -> the layers it must not import
FORBIDDEN = {
    "models": ("weights", "lifecycle", "engine", "cli"),
    "weights": ("lifecycle", "engine", "cli"),
    "lifecycle": ("engine", "cli"),
    "engine": ("cli",),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("escnet"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("escnet"):
            found.add(node.module)
            # `from escnet.engine import visualize` imports the sub-module escnet.engine.visualize
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if (PACKAGE.parent / node.module.replace(".", "/") / f"{a.name}.py").is_file())
    return found


def upward_arrows() -> set[tuple[str, str]]:
    arrows = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        for target in imports(path):
            if _layer(target) in FORBIDDEN.get(_layer(source), ()):
                arrows.add((source, target))
    return arrows


def test_the_walk_sees_imports():
    assert "escnet.weights.sam" in imports(PACKAGE / "lifecycle.py")  # a function-local import
    assert "escnet.engine.visualize" in imports(PACKAGE / "engine" / "inference.py")
    assert _layer("escnet.cli") == "cli" and _layer("escnet.models.sam") == "models"
    assert _layer("escnet.lifecycle") == "lifecycle"


def test_no_upward_arrows():
    arrows = upward_arrows()
    assert not arrows, "imports that point up the layers: " + ", ".join(f"{a} -> {b}" for a, b in sorted(arrows))
