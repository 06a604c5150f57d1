"""The fixtures in tests/support/ are registered once, in conftest.py. A test module that imported
one would get a copy of its own, and a session-scoped tiny model would be built again for it."""

from __future__ import annotations

import ast
from pathlib import Path

from tests import conftest

TESTS = Path(__file__).resolve().parent


def fixture_names(path: Path) -> set[str]:
    def is_fixture(decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return isinstance(target, ast.Attribute) and target.attr == "fixture"

    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and any(is_fixture(d) for d in node.decorator_list)}


def test_every_support_module_with_fixtures_is_registered_in_conftest() -> None:
    with_fixtures = {f"tests.support.{path.stem}" for path in (TESTS / "support").glob("*.py") if fixture_names(path)}
    assert with_fixtures <= set(conftest.pytest_plugins)


def test_no_test_module_imports_a_fixture_from_a_support_module() -> None:
    imported = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.support."):
                fixtures = fixture_names(TESTS / "support" / f"{node.module.rsplit('.', 1)[1]}.py")
                imported += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name in fixtures]
    assert not imported, "use the fixture by name; conftest.py registers it:\n" + "\n".join(imported)
