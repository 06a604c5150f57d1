"""The package's layers import one way, as import-linter's contracts would check them.

Imports are read from the source with ast: at module level, inside functions and under
TYPE_CHECKING alike, so that an import moved into a function cannot hide a cycle. A function-level
import is for start-up time (a heavy library loaded when first needed), not for breaking a cycle.
That `voicechat --help` loads no heavy library is checked by running it, in test_cli.py.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "voicechat"

# Top to bottom: a module imports from its own layer and the layers below, never from above.
# Each name is a top-level module or subpackage with everything in it. The evaluation drives
# conversation sessions, so it sits beside them.
LAYERS: dict[str, tuple[str, ...]] = {
    "user interface": ("voicechat.__main__", "voicechat.cli", "voicechat.commands", "voicechat.tui"),
    "conversation": ("voicechat.session", "voicechat.sessions", "voicechat.live", "voicechat.evaluation"),
    "engine": ("voicechat.engine", "voicechat.hold", "voicechat.assemble", "voicechat.testing", "voicechat.remote"),
    "parts": ("voicechat.audio", "voicechat.retrieval", "voicechat.glm", "voicechat.qwen"),
    "base": ("voicechat", "voicechat.allocator", "voicechat.cancellation", "voicechat.config", "voicechat.errors",
             "voicechat.events", "voicechat.models", "voicechat.placement", "voicechat.sonar_cards",
             "voicechat.worker"),
}
PLACED = {name for names in LAYERS.values() for name in names}
MODEL_LIBRARIES = ("torch", "transformers", "fairseq2", "sonar", "faiss")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a module of the package, or a dotted name outside it
    line: int
    at_import_time: bool  # runs when the source module is imported: not in a function or TYPE_CHECKING

    def __str__(self) -> str:
        return f"{MODULES[self.source].relative_to(REPO)}:{self.line} imports {self.target}"


def part(name: str) -> str:
    """What a rule names: the package's top-level module or subpackage (voicechat.retrieval for
    voicechat.retrieval.index), or a library's top-level package (textual for textual.widgets)."""
    names = name.split(".")
    return ".".join(names[:2]) if names[0] == "voicechat" else names[0]


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_statements(body: list[ast.stmt], at_import_time: bool) -> Iterator[tuple[ast.stmt, bool]]:
    for stmt in body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            yield stmt, at_import_time
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from import_statements(stmt.body, False)
        elif isinstance(stmt, ast.If) and is_type_checking(stmt.test):
            yield from import_statements(stmt.body, False)
            yield from import_statements(stmt.orelse, at_import_time)
        else:  # class bodies and if/try/with/for blocks run with their parent
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.stmt):
                    yield from import_statements([child], at_import_time)
                elif isinstance(child, (ast.excepthandler, ast.match_case)):
                    yield from import_statements(child.body, at_import_time)


def imported_names(module: str, node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:  # relative: from the package holding this module, up level - 1 packages
        package = module.split(".") if MODULES[module].name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


def read_imports() -> list[Import]:
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, at_import_time in import_statements(tree.body, True):
            found += [Import(module, target, node.lineno, at_import_time) for target in imported_names(module, node)]
    return found


IMPORTS = read_imports()


def imports(sources: tuple[str, ...], targets: tuple[str, ...]) -> str:
    """The imports from ``sources`` into ``targets``, one a line; empty when there are none."""
    return "\n".join(str(i) for i in IMPORTS if part(i.source) in sources and part(i.target) in targets)


def test_every_part_of_the_package_has_a_layer() -> None:
    unplaced = sorted({part(module) for module in MODULES} - PLACED)
    assert not unplaced, f"add these to LAYERS in {Path(__file__).name}: {unplaced}"


@pytest.mark.parametrize("layer", list(LAYERS))
def test_a_layer_imports_nothing_from_the_layers_above_it(layer: str) -> None:
    order = list(LAYERS)
    above = tuple(name for upper in order[:order.index(layer)] for name in LAYERS[upper])
    found = imports(LAYERS[layer], above)
    assert not found, f"the {layer} layer imports from a layer above it:\n{found}"


def test_the_engine_does_not_know_who_assembles_or_drives_it() -> None:
    found = imports(("voicechat.engine",), ("voicechat.assemble", "voicechat.evaluation", "voicechat.testing"))
    assert not found, found


def test_retrieval_and_the_voice_models_are_independent_and_audio_imports_none() -> None:
    found = "\n".join(filter(None, [
        imports(("voicechat.retrieval",), ("voicechat.glm", "voicechat.qwen")),
        imports(("voicechat.glm", "voicechat.qwen"), ("voicechat.retrieval",)),
        imports(("voicechat.glm",), ("voicechat.qwen",)),
        imports(("voicechat.audio",), ("voicechat.retrieval", "voicechat.glm", "voicechat.qwen")),
    ]))
    assert not found, found


def test_only_the_user_interface_imports_textual() -> None:
    below = tuple(PLACED - set(LAYERS["user interface"]))
    found = imports(below, ("textual",))
    assert not found, found


def runs_on_import(name: str) -> list[str]:
    """What importing ``name`` runs: voicechat, voicechat.glm and voicechat.glm.lm for
    voicechat.glm.lm; for a library, its top-level name, which is what the rules name."""
    names = name.split(".")
    if names[0] != "voicechat":
        return [names[0]]
    return [".".join(names[:n]) for n in range(1, len(names) + 1)]


def loaded_on_import(module: str) -> dict[str, list[str]]:
    """Every module that importing ``module`` runs, by following import-time imports, each with
    the chain of imports that reaches it."""
    chains = {name: [name] for name in runs_on_import(module)}
    pending = list(chains)
    while pending:
        current = pending.pop()
        for i in IMPORTS:
            if i.source != current or not i.at_import_time:
                continue
            for name in runs_on_import(i.target):
                if name not in chains:
                    chains[name] = chains[current] + [name]
                    if name in MODULES:
                        pending.append(name)
    return chains


@pytest.mark.parametrize("module", [m for m in MODULES if part(m) == "voicechat.tui"])
def test_the_tui_starts_without_loading_torch_or_another_model_library(module: str) -> None:
    chains = loaded_on_import(module)
    heavy = [" -> ".join(chain) for name, chain in chains.items() if name in MODEL_LIBRARIES]
    assert not heavy, "\n".join(heavy)
