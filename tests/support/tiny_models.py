"""All tiny random-weight models, written once per test session by the project's generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicechat.config import Config, load_config


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicechat.testing.generator import generate

    out = tmp_path_factory.mktemp("tiny-models")
    generate(out, "tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_config(tiny_models_dir: Path) -> Config:
    return load_config(tiny_models_dir / "config.yaml")
