"""Shared fixtures. Area-specific fixtures live in tests/support/ modules, registered here once:
a session-scoped fixture (a tiny model) is then built once per test session, where a module that
imported it would get a copy of its own. Test modules import only plain helpers from them."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.support.decoder",
    "tests.support.engine_server",
    "tests.support.lm",
    "tests.support.piper_speech",
    "tests.support.pulse",
    "tests.support.retrieval",
    "tests.support.speech_tokenizer",
    "tests.support.tiny_models",
    "tests.support.vllm",
]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    # The second core is often busy; two threads ran tiny models 10-20x slower.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    path = SHARED / "reference"
    if not path.is_dir():
        pytest.skip("the shared reference folder (../shared/reference) is not beside this checkout")
    return path
