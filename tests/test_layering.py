"""The package's import graph: arrows point down (models < weights < lifecycle < engine < cli).

Every `import escnet...` / `from escnet... import` in the package's source is read with `ast`,
function-local imports included (they are dependencies too, only deferred).

The same walk, without the deferred imports, tells which modules load torch when imported: no
command module may, so that the command-line parser (`escnet --help`) does not; a subprocess checks
`escnet --help`, `--version` and every `escnet COMMAND --help` themselves."""
import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path


from escnet import cli

PACKAGE = Path(__file__).resolve().parents[1] / "escnet"
# layer -> the layers it must not import
ENGINE = ("inference", "evaluation", "training", "benchmarks", "commands")
FORBIDDEN = {
    "models": ("weights", "lifecycle", *ENGINE, "cli"),
    "weights": ("lifecycle", *ENGINE, "cli"),
    "lifecycle": (*ENGINE, "cli"),
    **{room: ("cli",) for room in ENGINE},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _nodes(tree: ast.Module, deferred: bool):
    """Every node, or (deferred=False) those run when the module is imported: not inside a function
    body or an `if TYPE_CHECKING:` block."""
    if deferred:
        yield from ast.walk(tree)
        return
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imports(path: Path, deferred: bool = True, prefix: str = "escnet") -> set[str]:
    found = set()
    for node in _nodes(ast.parse(path.read_text(), str(path)), deferred):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith(prefix))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(prefix):
            found.add(node.module)
            # `from escnet.inference import visualize` imports the sub-module escnet.inference.visualize
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if (PACKAGE.parent / node.module.replace(".", "/") / f"{a.name}.py").is_file())
    return found


def _source(module: str) -> Path | None:
    path = PACKAGE.parent / module.replace(".", "/")
    return next((p for p in (path / "__init__.py", path.with_suffix(".py")) if p.is_file()), None)


def torch_at_import(module: str, seen: set[str] | None = None) -> list[str]:
    """The chain of escnet modules through which importing `module` loads torch ([] if it does not)."""
    seen = set() if seen is None else seen
    if module.split(".")[0] == "torch":
        return [module]
    if not module.startswith("escnet") or module in seen or _source(module) is None:
        return []
    seen.add(module)
    parts = module.split(".")
    parents = [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b runs a/__init__.py first
    for target in parents + sorted(imports(_source(module), deferred=False, prefix="")):
        chain = torch_at_import(target, seen)
        if chain:
            return chain if target in parents else [module, *chain]
    return []


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
    assert "escnet.inference.visualize" in imports(PACKAGE / "inference" / "segmenter.py")
    assert _layer("escnet.cli") == "cli" and _layer("escnet.models.sam") == "models"
    assert _layer("escnet.lifecycle") == "lifecycle"


def test_no_upward_arrows():
    arrows = upward_arrows()
    assert not arrows, "imports that point up the layers: " + ", ".join(f"{a} -> {b}" for a, b in sorted(arrows))


def command_names() -> list[str]:
    parser = cli.build_parser()
    return list(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices)


def test_torch_walk_follows_top_level_imports_only():
    assert torch_at_import("escnet.runtime") == []  # torch only inside its functions
    assert torch_at_import("escnet.models.factory") == []  # ... or only for type checkers
    chain = torch_at_import("escnet.training.loop")
    assert chain[0] == "escnet.training.loop" and chain[-1] == "torch"


def test_no_command_module_imports_torch_at_import():
    heavy = [chain for chain in (torch_at_import(c.__name__) for c in cli.COMMANDS) if chain]
    assert not heavy, "command modules that load torch when imported: " + "; ".join(" -> ".join(c) for c in heavy)


# Runs each command line in one fresh interpreter and reports, per command line, its exit status,
# whether torch is loaded after it (once loaded it stays: the first True is the culprit) and the
# start of what it printed.
HELP_SCRIPT = """
import contextlib, io, json, sys
from escnet.cli import main
report = []
for argv in json.loads(sys.argv[1]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
    report.append([argv, status, "torch" in sys.modules, out.getvalue()[:200]])
print(json.dumps(report))
"""


def test_help_and_version_do_not_import_torch():
    from escnet import __version__

    argvs = [["--help"], ["--version"]] + [[name, "--help"] for name in command_names()]
    done = subprocess.run([sys.executable, "-c", HELP_SCRIPT, json.dumps(argvs)], capture_output=True, text=True,
                          check=True)
    report = json.loads(done.stdout)
    assert [argv for argv, *_ in report] == argvs
    for argv, status, torch_loaded, out in report:
        assert status == 0, f"escnet {' '.join(argv)} exited with {status}"
        assert not torch_loaded, f"escnet {' '.join(argv)} loaded torch"
    assert report[0][3].startswith("usage: escnet") and report[1][3].strip() == f"escnet {__version__}"
    for (name, _), _, _, out in report[2:]:
        assert out.startswith(f"usage: escnet {name}"), out
    assert len(report) > 10  # every sub-command, not a few
