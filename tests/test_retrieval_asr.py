"""The asr retrieval mode: a tiny random Whisper in the Hugging Face format, then the SONAR text
encoder against the same index as e2e."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from tests.support.cancellation import CancelledAfterChecks
from voicechat.cancellation import Cancelled
from voicechat.config import ModelSpec, load_config
from voicechat.errors import ModelError
from voicechat.retrieval.asr import WhisperTranscriber
from voicechat.retrieval.retriever import load_retriever


def noise(seconds: float, rate: int) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(int(seconds * rate)) * 0.1).astype(np.float32)


def test_transcriber_uses_the_configured_language_and_otherwise_lets_whisper_detect(whisper_dir):
    spec = ModelSpec(str(whisper_dir), device="cpu")
    chinese = WhisperTranscriber.from_pretrained(whisper_dir, spec, "zh")
    text, lang = chinese.transcribe(noise(2.0, 16000))
    assert isinstance(text, str) and lang == "zho_Hans"
    detected = WhisperTranscriber.from_pretrained(whisper_dir, spec, None)
    assert detected.language is None  # no language is forced, English included
    text, lang = detected.transcribe(noise(2.0, 16000))
    assert isinstance(text, str)


def counting_transcriber(whisper_dir):
    """The transcriber, and the list of input shapes its Whisper generate() is called with."""
    transcriber = WhisperTranscriber.from_pretrained(whisper_dir, ModelSpec(str(whisper_dir), device="cpu"), "en")
    calls = []
    generate = transcriber._model.generate

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return generate(*args, **kwargs)

    transcriber._model.generate = counting
    return transcriber, calls


def test_long_audio_is_transcribed_in_30_second_windows(whisper_dir):
    transcriber, calls = counting_transcriber(whisper_dir)
    transcriber.transcribe(noise(65.0, 16000))
    assert len(calls) == 3


def test_cancelling_long_audio_stops_whisper_inside_its_first_window(whisper_dir):
    transcriber, calls = counting_transcriber(whisper_dir)
    with pytest.raises(Cancelled):  # three windows; the user cancels after the first encoder layer
        transcriber.transcribe(noise(65.0, 16000), CancelledAfterChecks(3))
    assert len(calls) == 1


def test_not_a_whisper_folder_gives_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not a loadable Whisper model"):
        WhisperTranscriber.from_pretrained(tmp_path, ModelSpec(str(tmp_path), device="cpu"))


def test_asr_mode_searches_the_same_index_from_a_config(tmp_path, knowledge, sonar_dir, whisper_dir):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump({
        "models": {"sonar_text": {"source": str(sonar_dir / "text_encoder" / "card.yaml"), "device": "cpu"},
                   "sonar_speech": {"source": str(sonar_dir / "speech_encoder" / "card.yaml"), "device": "cpu"},
                   "asr": {"source": str(whisper_dir), "device": "cpu"}},
        "retrieval": {"knowledge_dir": str(knowledge), "score_threshold": -1.0, "asr_language": "en"},
        "offline": True,
    }))
    config = load_config(config_path)
    from voicechat.commands.index import build
    from voicechat.retrieval import index_location

    folder, index_dir = index_location(config.retrieval, config.resolve_path)
    build(config, folder, index_dir, rebuild=False, index_type="auto")
    retriever = load_retriever(config, {"asr", "e2e"})
    try:
        audio = np.stack([noise(2.0, 44100)] * 2, axis=1)
        asr = retriever.asr(audio, 44100, k=3)
        assert asr.mode == "asr" and asr.query_text is not None and set(asr.timings) >= {"asr"}
        if asr.query_text.strip():
            assert asr.hits and all(h.chunk.file for h in asr.hits)
        e2e = retriever.e2e(audio, 44100, k=3)
        assert e2e.hits and e2e.hits[0].chunk.id in {r.id for r in retriever.index.records(
            [h.chunk.id for h in e2e.hits]).values()}
    finally:
        retriever.index.close()
