"""The package's import graph: every top-level room has a rank, and arrows point down the ranks.

Every `import escnet...` / `from escnet... import` in the package's source is read with `ast`,
function-local imports included (they are dependencies too, only deferred). A module may import its
own room and rooms of a lower rank, nothing else (one declared exception below); and the module
graph, deferred imports included, has no cycle. The rank table is the one in docs/package-map.md.

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
# room (a sub-package or a top-level module of escnet) -> rank; a room imports only lower ranks
RANKS = {
    "errors": 0,  # the error types and their one-line form: every room may raise them
    "fileio": 1, "progress": 1, "runtime": 1, "modelcard": 1,  # plain helpers, no model
    "models": 2,  # the networks (nn.Modules and their configs)
    "weights": 3, "data": 3, "registry": 3,  # public weight formats -> models; datasets; the named-model table
    "lifecycle": 4,  # save / load / build a model in escnet's format
    "hub": 5,  # names -> local paths: fetch, verify, convert (imports the registry; nothing imports back)
    "inference": 6, "evaluation": 6,  # the Segmenter and its protocol / outputs / text cache / ONNX; metrics
    "training": 7, "demo": 7,  # the training loop (evaluates while training); the web demo over a Segmenter
    "benchmarks": 8,  # measures inference and training
    "commands": 9,  # one module per `escnet X`
    "cli": 10,
    "__main__": 11,
    "engine": 12,  # deprecated stand-ins for the old escnet.engine.X paths: nothing may import them
}
# the declared exceptions (source module, imported module): models/common.py reads class names the
# way the vocabulary parser writes them (display_name), which lives with the vocabularies in data/
EXCEPTIONS = {("escnet.models.common", "escnet.data.vocab")}


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


def module_graph() -> dict[str, set[str]]:
    """escnet module -> the escnet modules it imports (deferred imports included; the package
    `escnet` itself, which imports nothing, is left out)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        graph[_module_name(path)] = {t for t in imports(path) if t != "escnet" and _source(t) is not None}
    return graph


def upward_arrows(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """Imports of a room of the same or a higher rank (other than the module's own room)."""
    arrows = set()
    for source, targets in graph.items():
        for target in targets:
            a, b = _layer(source), _layer(target)
            if a != b and RANKS[b] >= RANKS[a] and (source, target) not in EXCEPTIONS:
                arrows.add((source, target))
    return arrows


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as [a, b, ..., a], or [] if it has none (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph.get(root, ())))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return []


def test_the_walk_sees_imports():
    assert "escnet.weights.sam" in imports(PACKAGE / "lifecycle.py")  # a function-local import
    assert "escnet.inference.visualize" in imports(PACKAGE / "inference" / "segmenter.py")
    assert _layer("escnet.cli") == "cli" and _layer("escnet.models.sam") == "models"
    assert _layer("escnet.lifecycle") == "lifecycle"


def test_every_room_has_a_rank():
    rooms = {_layer(module) for module in module_graph()} - {""}
    assert rooms == set(RANKS), f"rooms without a rank: {sorted(rooms - set(RANKS))}; ranked but gone: " \
                                f"{sorted(set(RANKS) - rooms)}"


def test_no_upward_arrows():
    graph = module_graph()
    arrows = upward_arrows(graph)
    assert not arrows, "imports that point up the ranks: " + ", ".join(f"{a} -> {b}" for a, b in sorted(arrows))
    assert all(b in graph[a] for a, b in EXCEPTIONS), "a declared exception that no longer exists: drop it"


def test_the_rank_check_and_cycle_search_see_what_they_look_for():
    assert upward_arrows({"escnet.models.clip": {"escnet.hub"}}) == {("escnet.models.clip", "escnet.hub")}
    assert upward_arrows({"escnet.hub": {"escnet.registry"}, "escnet.models.common": {"escnet.data.vocab"}}) == set()
    assert upward_arrows({"escnet.inference.x": {"escnet.evaluation.y"}})  # same rank, other room
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles_deferred_imports_included():
    cycle = find_cycle(module_graph())
    assert not cycle, "an import cycle: " + " -> ".join(cycle)


def test_nothing_imports_the_deprecated_engine_paths():
    graph = module_graph()
    users = sorted(a for a, targets in graph.items() for b in targets
                   if _layer(b) == "engine" and _layer(a) != "engine")
    assert not users, f"modules that import escnet.engine: {users}"


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
