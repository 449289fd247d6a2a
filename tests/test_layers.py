"""The suite's packages import one way: core <- viz <- trainers / callbacks <- tracking <- launch.py.

Every module's imports are read from its source (function-level imports included), so a lazy
import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each package and the packages it may import; trainers and callbacks are siblings and see
# neither each other nor anything above them, and nothing imports launch.py.
ALLOWED = {
    "core": set(),
    "viz": {"core"},
    "trainers": {"core", "viz"},
    "callbacks": {"core", "viz"},
    "tracking": {"core", "viz", "trainers", "callbacks"},
    "launch": {"core", "viz", "trainers", "callbacks", "tracking"},
}


def suite_imports(path: Path) -> set[str]:
    """Suite packages (``dlhw.X``, and ``launch``) that ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("dlhw.")} & set(ALLOWED)
        found |= {"launch"} & set(names)
    return found


def modules() -> list[tuple[str, Path]]:
    """(package, file) for every module of the suite, launch.py as package ``launch``."""
    out = [("launch", ROOT / "launch.py")]
    for package in sorted(ALLOWED.keys() - {"launch"}):
        out += [(package, f) for f in sorted((ROOT / package).rglob("*.py"))]
    return out


def test_every_package_is_checked():
    assert {p for p, _ in modules()} == set(ALLOWED)


@pytest.mark.parametrize("package,path", modules(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_imports_run_one_way(package, path):
    wrong = suite_imports(path) - ALLOWED[package] - {package}
    assert not wrong, f"{path.relative_to(ROOT)} ({package}) imports {sorted(wrong)}; allowed: {sorted(ALLOWED[package])}"
