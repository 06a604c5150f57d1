"""The tiny random GLM-4-Voice-9B checkpoint, written once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicechat.testing import lm

    out = tmp_path_factory.mktemp("lm")
    entries = lm.write(out, "tiny", seed=0)
    return Path(entries["models"]["lm"]["source"])
