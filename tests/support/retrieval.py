"""Tiny random SONAR encoders, written once per test session by the project's generator and
loaded through the same card path as the published models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from voicechat.config import ModelSpec

REPO = Path(__file__).resolve().parents[2]
KNOWLEDGE = REPO / "knowledge"


@pytest.fixture(scope="session")
def sonar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicechat.testing import sonar

    out = tmp_path_factory.mktemp("models")
    sonar.write(out, "tiny", seed=0)
    return out / "sonar"


@pytest.fixture(scope="session")
def text_spec(sonar_dir: Path) -> ModelSpec:
    return ModelSpec(str(sonar_dir / "text_encoder" / "card.yaml"), device="cpu")


@pytest.fixture(scope="session")
def speech_spec(sonar_dir: Path) -> ModelSpec:
    return ModelSpec(str(sonar_dir / "speech_encoder" / "card.yaml"), device="cpu")


@pytest.fixture(scope="session")
def text_encoder(text_spec: ModelSpec):
    from voicechat.retrieval.encoders import SonarTextEncoder

    return SonarTextEncoder.load(text_spec, offline=True)


@pytest.fixture(scope="session")
def speech_encoder(speech_spec: ModelSpec):
    from voicechat.retrieval.encoders import SonarSpeechEncoder

    return SonarSpeechEncoder.load(speech_spec, offline=True)


@pytest.fixture
def knowledge(tmp_path: Path) -> Path:
    """A private copy of the sample knowledge folder."""
    folder = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE, folder, ignore=shutil.ignore_patterns(".voicechat-index"))
    return folder


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicechat.testing import asr

    out = tmp_path_factory.mktemp("whisper")
    asr.write(out, "tiny", seed=0)
    return out / "whisper"


@pytest.fixture
def config_file(tmp_path: Path, sonar_dir: Path, knowledge: Path) -> Path:
    """A config with the tiny SONAR encoders over the ``knowledge`` folder."""
    import yaml

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"sonar_text": {"source": str(sonar_dir / "text_encoder" / "card.yaml"), "device": "cpu"},
                   "sonar_speech": {"source": str(sonar_dir / "speech_encoder" / "card.yaml"), "device": "cpu"}},
        # random weights put speech and text vectors far apart: keep every hit
        "retrieval": {"knowledge_dir": str(knowledge), "score_threshold": -1.0},
        "offline": True,
    }))
    return path
