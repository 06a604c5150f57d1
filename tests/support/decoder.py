"""Tiny random-weight decoder, written once per test session in the published layout."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_decoder_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicechat.testing import decoder as writer

    entries = writer.write(tmp_path_factory.mktemp("decoder"), "tiny", seed=0)
    return Path(entries["models"]["decoder"]["source"])


@pytest.fixture(scope="session")
def tiny_decoder(tiny_decoder_folder: Path):
    from voicechat.glm.decoder import SpeechDecoder

    return SpeechDecoder.from_pretrained(tiny_decoder_folder, device="cpu")
