"""The shape of the house (`shared/design/architecture.md`): every top-level module or folder of trl_sso stands on a
floor of its own and imports only from the floors below it, counting imports inside functions too, so that no two of
them depend on each other, even through different modules of a folder; and no modules import each other in a
circle."""

import ast
import sys
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[1] / "trl_sso"
# Bottom to top, one module or folder a floor; it imports from the floors below it (and from itself).
# `trl_sso/__init__.py` (the lazy public API) stands above them all.
FLOORS = [
    "names",
    "retries",
    "logs",
    "files",
    "runtime",
    "quiet",
    "hub_token",
    "options",
    "loss",
    "segment_attention",
    "sharing",
    "data",
    "tokens",
    "offline",
    "models",
    "config",
    "checkers",
    "principles",
    "signal",
    "cards",
    "trainer",
    "hub",
    "generation",
    "online_config",
    "online_trainer",
    "scripts",
    "cli",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The top-level module or folder `module` belongs to (`trl_sso.signal.report` -> `signal`)."""
    return module.split(".")[1] if "." in module else module


def floor(module: str) -> int:
    return len(FLOORS) if module == "trl_sso" else FLOORS.index(unit(module))


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


def test_every_module_has_a_floor():
    missing = sorted({unit(m) for m in graph() if m != "trl_sso"} - set(FLOORS))
    assert not missing, f"add {missing} to FLOORS"


def test_no_module_imports_from_its_floor_or_above_but_its_own_folder():
    """An import goes down, or stays inside its own module or folder: `principles` importing from `signal/` while
    `signal/` imports `principles` fails here, whichever floor each stands on."""
    upward = [
        f"{source} (floor {floor(source) + 1}, {unit(source)}) imports {target} (floor {floor(target) + 1})"
        for source, targets in graph().items()
        if source != "trl_sso"
        for target in targets
        if unit(target) != unit(source) and floor(target) >= floor(source)
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


# The one module of helpers the commands of `trl_sso/scripts/` share; every other module there is one command
SCRIPT_HELPERS = ("trl_sso.scripts.common",)


def test_no_command_script_imports_another():
    """A command's module in `trl_sso/scripts/` imports only the one module of shared helpers, never another command,
    and every other module there is a command's: a new command is its row in the table plus its own file."""
    from trl_sso.cli.table import COMMANDS

    tangled = [
        f"{source} imports {target}"
        for source, targets in graph().items()
        if source.startswith("trl_sso.scripts.")
        for target in targets
        if target.startswith("trl_sso.scripts.") and target not in SCRIPT_HELPERS
    ]
    assert not tangled, "\n".join(tangled)
    modules = {path.stem for path in (PACKAGE / "scripts").glob("*.py")} - {"__init__"}
    helpers = {module.rpartition(".")[2] for module in SCRIPT_HELPERS}
    commands = {entry.runner.partition(":")[0].rpartition(".")[2] for entry in COMMANDS.values()}
    assert modules - helpers <= commands, (
        f"modules of trl_sso/scripts/ that are no command: {modules - helpers - commands}"
    )
    helpers_reach_commands = [t for h in SCRIPT_HELPERS for t in graph()[h] if t.startswith("trl_sso.scripts.")]
    assert all(t in SCRIPT_HELPERS for t in helpers_reach_commands), helpers_reach_commands


def test_the_command_table_points_at_each_commands_function():
    from trl_sso.cli.table import COMMANDS

    for name, entry in COMMANDS.items():
        module = entry.runner.partition(":")[0]
        assert module.startswith("trl_sso.scripts."), (name, entry.runner)
