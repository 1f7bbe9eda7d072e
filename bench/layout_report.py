"""Size and shape of the code: modules, lines, the largest file, import cycles.

    .venv/bin/python bench/layout_report.py [TREE] [--graph]

Counts the Python modules of `ernie_style/` and `pretrain_tasks/` under TREE (default: this
checkout), their lines, the largest file, and the import cycles among them: every import counts,
also those inside functions, so a cycle that only works because one side imports lazily is still
listed. `--graph` prints each module's imports of the others. Used for the before/after figures
of the package-layout change (issue 14).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGES = ("ernie_style", "pretrain_tasks")


def find_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports (resolving relative imports and `from pkg import mod`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join([*parts[: len(parts) - node.level + 1], node.module])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return groups


def main(argv: list[str] | None = None) -> int:
    """Print the report for a tree."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("tree", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--graph", action="store_true", help="print every module's imports")
    args = parser.parse_args(argv)
    root = Path(args.tree)
    modules = find_modules(root)
    lines = {n: len(p.read_text(encoding="utf-8").splitlines()) for n, p in modules.items()}
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    flat = [
        n
        for n, p in modules.items()
        if n.startswith("ernie_style.") and n.count(".") == 1 and p.name != "__init__.py"
    ]
    largest = max(lines, key=lines.__getitem__)
    print(f"modules: {len(modules)} ({len(flat)} flat modules at the top of ernie_style/)")
    print(f"lines: {sum(lines.values())}")
    print(f"largest file: {modules[largest].relative_to(root)} ({lines[largest]} lines)")
    cycles = import_cycles(graph)
    print(f"import cycles: {len(cycles)}")
    for group in cycles:
        print("  " + " <-> ".join(group))
    if args.graph:
        for name in sorted(graph):
            print(f"{name} -> {', '.join(sorted(graph[name])) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
