"""The shape of the house (`shared/design/architecture.md`): every module of trl_sso imports only from its own layer
or below, counting imports inside functions too, and no modules import each other in a circle."""

import ast
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "trl_sso"
# Bottom to top; a module imports from its own layer or below. `trl_sso/__init__.py` (the lazy public API) stands
# above them all.
LAYERS = [
    ("loss", "sharing", "files", "retries", "runtime", "logs", "names", "options", "hub_token", "quiet"),
    ("data", "config", "offline", "tokens"),
    ("cards", "trainer", "hub", "signal", "principles"),
    ("generation", "online_config", "online_trainer"),
    ("scripts",),
    ("cli",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    if module == "trl_sso":
        return len(LAYERS)
    first = module.split(".")[1]
    return next(i for i, names in enumerate(LAYERS) if first in names)


def imports(path: Path) -> set[str]:
    """The trl_sso modules `path` imports, at its top or inside its functions."""
    me, found = module_name(path), set()
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])]) if node.level else node.module
            if target == "trl_sso" and [a.name for a in node.names] == ["__version__"]:
                continue  # the version string, which any module may read
            if target.startswith("trl_sso"):
                # `from . import data` names a module; `from .data import X` names a name of it
                found |= {
                    f"{target}.{a.name}"
                    for a in node.names
                    if (PACKAGE.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
                } or {target}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("trl_sso")}
    return {target for target in found if target != me}


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [
        f"{source} (layer {layer(source) + 1}) imports {target} (layer {layer(target) + 1})"
        for source, targets in graph().items()
        if source != "trl_sso"
        for target in targets
        if layer(target) > layer(source)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    edges = graph()
    # a package imports its own modules (`generation/__init__.py`): those edges are no circle
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    sys.setrecursionlimit(10_000)
    state, circles = {}, []

    def visit(module, path):
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)
