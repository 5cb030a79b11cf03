"""docs/architecture.md, checked: which package may import which, no import circle, no command imported outside
the front end, and no function over 60 lines without a comment saying why."""
import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "darkpy"
MAX_FUNCTION_LINES = 60
LONG_FUNCTION_MARK = "# long:"  # on the line above a longer function, followed by the reason

# docs/architecture.md "What may import what", lowest first: a module may import its own rank and the ranks below.
RANKS = [
    {"__init__", "cfg", "activations", "image", "data", "boxes", "weights"},
    {"layers"},
    {"heads"},
    {"model"},
    {"evaluation", "export", "summary", "paths", "shapes", "anchors"},
    {"training"},
    {"commands", "darknet", "api"},
    {"cli", "__main__"},
]
RANK_OF = {name: rank for rank, names in enumerate(RANKS) for name in names}


def modules() -> Iterator[Tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / Path(*name.split("."))).is_dir()


def darkpy_imports(name: str, path: Path) -> Set[str]:
    """The darkpy modules a module imports (anywhere in it, relative imports resolved)."""
    found = set()
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "darkpy"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "darkpy":
                continue
            for alias in node.names:  # `from darkpy.x import y` may name a submodule y
                found.add(f"{base}.{alias.name}" if _is_package(f"{base}.{alias.name}") or
                          (PACKAGE.parent / Path(*f"{base}.{alias.name}".split("."))).with_suffix(".py").exists()
                          else base)
    return {module for module in found if module != name}


def top_level(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_graph() -> Dict[str, Set[str]]:
    return {name: darkpy_imports(name, path) for name, path in modules()}


def test_every_module_has_a_rank():
    unranked = sorted({top_level(name) for name, _ in modules()} - set(RANK_OF))
    assert not unranked, f"add these to docs/architecture.md and RANKS: {unranked}"


def test_no_module_imports_a_higher_layer():
    wrong = [f"{name} imports {target}" for name, targets in import_graph().items() for target in targets
             if RANK_OF.get(top_level(target), 0) > RANK_OF.get(top_level(name), 0)]
    assert not wrong, "imports against docs/architecture.md:\n  " + "\n  ".join(sorted(wrong))


def test_no_import_circle():
    graph = import_graph()
    state: Dict[str, int] = {}
    circles: List[str] = []

    def visit(node: str, stack: List[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target in graph and not state.get(target):
                visit(target, stack + [target])
        state[node] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [module])
    assert not circles, "import circles:\n  " + "\n  ".join(circles)


def _comment_above(lines: List[str], first: int) -> str:
    """The block of comment lines right above line `first` (1-based)."""
    above = []
    for line in reversed(lines[:first - 1]):
        if not line.strip().startswith("#"):
            break
        above.append(line)
    return "\n".join(above)


def test_long_functions_say_why():
    long = []
    for name, path in modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and LONG_FUNCTION_MARK not in _comment_above(lines, first):
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines without a '{LONG_FUNCTION_MARK} why' line above:\n  " \
                     + "\n  ".join(long)
