"""Shared fixtures. Area-specific fixtures live in tests/support/ modules and are imported by the
tests that need them."""

from __future__ import annotations

from pathlib import Path

import pytest

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
