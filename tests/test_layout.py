"""The library's layout, read from its imports: teaching packages never import the book's machinery or
the chapter chain, no two files import each other in a loop, and no llmbook import hides inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "src" / "lib" / "llmbook"
ABOVE_TEACHING = ("llmbook.book", "llmbook.chain")  # the machinery and the chain sit above the teaching code


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(LIBRARY.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported llmbook module, inside a function?) for every import statement of ``path``."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative import
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                candidates = [f"{base}.{alias.name}" for alias in child.names]
                targets = [c if c in known else base for c in candidates]
            for target in targets:
                while target and target not in known:  # `from llmbook.x import name` imports module llmbook.x
                    target = target.rpartition(".")[0]
                if target.startswith("llmbook"):
                    found.append((target, in_function))
            visit(child, nested)

    visit(tree, False)
    return found


def graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: {target for target, _ in imports(path, known) if target != name} for name, path in modules().items()}


def test_teaching_packages_never_import_the_machinery_or_the_chain() -> None:
    offenders = {
        name: sorted(t for t in targets if t.startswith(ABOVE_TEACHING))
        for name, targets in graph().items()
        if not name.startswith(ABOVE_TEACHING) and any(t.startswith(ABOVE_TEACHING) for t in targets)
    }
    assert not offenders, offenders


def test_no_import_cycles_between_files() -> None:
    edges = graph()
    # package __init__ files only re-export; an edge into a package face stands for its modules
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if target.startswith(node + "."):
                continue  # a package's __init__ importing its own modules is not a loop
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if state.get(target) is None and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(edges):
        if name not in state and (cycle := visit(name)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def test_no_llmbook_import_inside_a_function() -> None:
    known = set(modules())
    hidden = {name: sorted({t for t, inside in imports(path, known) if inside}) for name, path in modules().items()}
    hidden = {name: targets for name, targets in hidden.items() if targets}
    assert not hidden, hidden
