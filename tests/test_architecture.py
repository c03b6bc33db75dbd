"""The layout's promises, checked on the source: imports go one way (commands -> workflows -> core),
no import cycles, the LoRA core never imports transformers, no module grows past ~400 lines."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "lorafit"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every lorafit-or-other module `path` imports, at any depth of the file (function-level too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def lorafit_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_relative_imports_so_the_graph_is_complete():
    relative = [str(p) for p in PACKAGE.rglob("*.py")
                if any(isinstance(n, ast.ImportFrom) and n.level > 0 for n in ast.walk(ast.parse(p.read_text())))]
    assert relative == []


def test_no_import_cycles():
    graph = lorafit_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def layer(module: str) -> int:
    """2: commands (lorafit.cli, lorafit.commands), 1: workflows, 0: the core."""
    if module in ("lorafit.cli", "lorafit.__main__") or module.startswith("lorafit.commands"):
        return 2
    return 1 if module.startswith("lorafit.workflows") else 0


def test_layers_import_one_way():
    # Core packages never import a workflow or a command; workflows never import a command.
    upward = [f"{name} -> {dep}" for name, deps in lorafit_graph().items() for dep in deps if layer(dep) > layer(name)]
    assert upward == []


def test_lora_core_imports_nothing_from_transformers():
    # DESIGN.md: lorafit/lora is torch + safetensors only; checked in the source and at run time.
    offenders = [str(p) for p in (PACKAGE / "lora").rglob("*.py")
                 if any(m == "transformers" or m.startswith("transformers.") for m in imports_of(p))]
    assert offenders == []
    code = "import sys, lorafit.lora; print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_no_module_over_the_size_limit():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
