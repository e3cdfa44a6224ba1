"""The package's shape: the evaluator needs no Lightning, and no module-level import cycle exists."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_cam"


def test_evaluate_and_its_report_import_without_lightning():
    code = (
        "import sys, lightning_cam; lightning_cam.evaluate; from lightning_cam.evaluation import EvaluationReport, "
        "EvaluationOptions, summarise; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _module_imports(path: Path, modules: set[str]) -> set[str]:
    """The ``lightning_cam`` modules imported at module level (function-level imports are lazy);
    ``from package import submodule`` counts as importing the submodule."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:  # module level only (`if TYPE_CHECKING:` bodies never run)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lightning_cam"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found.update(subs or {node.module})
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lightning_cam"))
    return found


def test_no_module_level_import_cycle():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {m: {i for i in _module_imports(p, set(modules)) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ importing its own submodules is how packages work; a submodule importing
    # its package's __init__ back is the cycle to catch
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for nxt in graph[m]:
            if m.startswith(nxt + ".") and nxt != m:  # a submodule importing its parent package
                if state.get(nxt) == 1:
                    raise AssertionError(f"import cycle: {' -> '.join([*stack, m, nxt])}")
                continue
            if state.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack, m, nxt])}")
            if state.get(nxt) is None:
                visit(nxt, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if state.get(m) is None:
            visit(m, [])
