"""Retrieval modes (e2e speech, text), merging, two-round blocks and encoder loading, with the tiny
random SONAR encoders loaded by card like the published ones."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.cancellation import CancelledAfterChecks
from tests.support.retrieval import REPO
from voicechat.cancellation import Cancelled
from voicechat.config import ModelSpec, RetrievalConfig
from voicechat.errors import AudioError, ModelError
from voicechat.glm.prompt import needs_fallback
from voicechat.retrieval.encoders import SonarSpeechEncoder, SonarTextEncoder, encoder_identity, speech_segments
from voicechat.retrieval.index import KnowledgeIndex
from voicechat.retrieval.indexer import Indexer, Settings
from voicechat.retrieval.retriever import Retriever, merge_hits
from voicechat.sonar_cards import sonar_model_status

LANGS = ("eng_Latn", "zho_Hans")


@pytest.fixture
def retriever(knowledge, text_encoder, speech_encoder, text_spec):
    settings = Settings(encoder_identity(text_spec), LANGS, RetrievalConfig().chunking)
    Indexer(knowledge, knowledge / ".voicechat-index", settings, lambda: text_encoder).update()
    index = KnowledgeIndex.open(knowledge / ".voicechat-index")
    yield Retriever(index, RetrievalConfig(languages=LANGS, score_threshold=-1.0),
                    speech=speech_encoder, text=text_encoder)
    index.close()


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    return np.repeat(mono[:, None], channels, axis=1) if channels > 1 else mono


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


class RecordingSpeechEncoder:
    """Wraps the real tiny speech encoder and keeps the audio it was given."""

    def __init__(self, inner) -> None:
        self.inner, self.dim, self.received = inner, inner.dim, []

    def embed(self, audio_16k, cancel=None):
        self.received.append(audio_16k)
        return self.inner.embed(audio_16k, cancel)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * rate / len(samples))


@pytest.mark.parametrize("rate, channels", [(44100, 2), (48000, 1), (8000, 1), (22050, 2), (16000, 1)])
def test_speech_at_any_rate_and_channel_count_reaches_the_encoder_as_16k_mono(retriever, speech_encoder,
                                                                             rate, channels):
    recorder = RecordingSpeechEncoder(speech_encoder)
    e2e = Retriever(retriever.index, retriever.config, speech=recorder)
    result = e2e.e2e(tone(2.0, rate, channels), rate)
    assert result.mode == "e2e" and result.hits
    (audio,) = recorder.received
    assert audio.ndim == 1 and audio.dtype == np.float32 and len(audio) == 32000
    assert dominant_hz(audio, 16000) == pytest.approx(220, abs=1)  # the pitch survived: resampled, not relabelled


def test_e2e_hits_are_ranked_passages_with_provenance(retriever):
    result = retriever.e2e(tone(1.5, 16000), 16000, k=3)
    assert len(result.hits) == 3
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    assert len({h.chunk.passage_id for h in result.hits}) == 3
    for hit in result.hits:
        assert (retriever.index.index_dir.parent / hit.source).is_file()
        assert hit.chunk.text in " ".join(hit.passage.split()) or hit.chunk.unit != "line"
    assert set(result.timings) == {"embed", "search"}


def test_utterance_longer_than_the_encoder_limit_is_split_not_crashed_on(speech_encoder):
    long = tone(100.0, 16000)
    segments = speech_segments(long)
    assert len(segments) == 2 and sum(len(s) for s in segments) == len(long)
    vector = speech_encoder.embed(long)
    assert vector.shape == (speech_encoder.dim,) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_cancelling_a_long_recording_stops_the_speech_encoder_between_layers(speech_encoder):
    first_layer = next(m for m in speech_encoder._pipeline.model.modules() if isinstance(m, torch.nn.ModuleList))[0]
    first_layer_runs = []
    hook = first_layer.register_forward_hook(lambda *args: first_layer_runs.append(1))
    try:
        with pytest.raises(Cancelled):  # three segments; the user cancels after the first layer
            speech_encoder.embed(tone(130.0, 16000), CancelledAfterChecks(3))
    finally:
        hook.remove()
    assert first_layer_runs == [1]


@pytest.mark.parametrize("samples, rate, message", [
    (np.zeros(0, np.float32), 16000, "empty"),
    (np.zeros(16000, np.float32), 0, "invalid sample rate"),
    (np.full(16000, np.nan, np.float32), 16000, "NaN"),
    (np.zeros((2, 2, 100), np.float32), 16000, "shape"),
])
def test_bad_question_audio_gives_a_clear_error(retriever, samples, rate, message):
    with pytest.raises(AudioError, match=message):
        retriever.e2e(samples, rate)


def test_a_mode_without_its_encoder_says_which_model_is_missing(retriever):
    bare = Retriever(retriever.index, retriever.config, text=retriever.text_encoder)
    with pytest.raises(ModelError, match="e2e needs the SONAR speech encoder"):
        bare.e2e(tone(1.0, 16000), 16000)
    with pytest.raises(ModelError, match="asr needs the speech recogniser"):
        bare.asr(tone(1.0, 16000), 16000)


def test_hits_of_one_passage_are_merged_and_the_threshold_drops_weak_hits(retriever):
    chunks = retriever.index.records(range(1, 200))
    passage_id, members = next((pid, [c for c in chunks.values() if c.passage_id == pid])
                               for pid in {c.passage_id for c in chunks.values()}
                               if sum(c.passage_id == pid for c in chunks.values()) >= 2)
    query = retriever.text_encoder.embed([members[0].text], members[0].lang)[0]
    hits = retriever.search_vector(query, k=4)
    top = hits[0]
    assert top.chunk.passage_id == passage_id and top.chunk.id == members[0].id
    assert len({h.chunk.passage_id for h in hits}) == len(hits)
    strict = Retriever(retriever.index, dataclasses.replace(retriever.config, score_threshold=0.999),
                       text=retriever.text_encoder)
    assert [h.chunk.id for h in strict.search_vector(query, k=4)] == [members[0].id]


def test_rewrite_round_merges_the_stated_need_with_the_first_hits(retriever):
    first = retriever.e2e(tone(1.0, 16000), 16000, k=2)
    need = ("Jupiter is the largest planet. Its diameter is about eleven times that of Earth, and its "
            "Great Red Spot is a storm larger than Earth that has been observed for more than 350 years.")
    merged = retriever.rewrite(first, need, k=4)
    assert merged.hits[0].chunk.text == need and merged.hits[0].score == pytest.approx(1.0, abs=2e-3)
    assert {h.chunk.passage_id for h in first.hits} <= {h.chunk.passage_id for h in merged.hits} or len(merged.hits) == 4
    assert "rewrite_embed" in merged.timings and merged.query_text == need


def test_merge_keeps_one_hit_per_passage_with_the_best_score(retriever):
    a = retriever.text("The Sun is a star.", k=3)
    b = retriever.text("The Sun is a star.", k=3)
    merged = merge_hits([a.hits, b.hits], 3)
    assert [h.chunk.passage_id for h in merged] == [h.chunk.passage_id for h in a.hits]


@pytest.mark.parametrize("reply, expected", [
    ("Insufficient information. I cannot answer that.", True),
    ("I'm not sure, the context does not say.", True),
    ("I am not entirely sure about that.", True),
    ("信息不足，无法回答。", True),
    ("The chain should be lubricated every 300 kilometres.", False),
    ("Road tyres run at 5.5 to 7 bar. " * 20 + "I am not sure.", False),  # only the leading text counts
])
def test_fallback_is_triggered_by_an_insufficient_information_reply(reply, expected):
    assert needs_fallback(reply) is expected


def test_card_files_report_local_and_unknown_names_report_missing(text_spec, speech_spec):
    state, path = sonar_model_status(text_spec.source)
    assert state == "local" and path.name == "model.pt"
    assert sonar_model_status("no_such_sonar_model")[0] == "missing"


def test_offline_missing_published_model_fails_fast_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRSEQ2_CACHE_DIR", str(tmp_path / "empty-cache"))
    from voicechat import sonar_cards

    monkeypatch.setattr(sonar_cards, "fairseq2_cache_dir", lambda: tmp_path / "empty-cache")
    began = time.perf_counter()
    with pytest.raises(ModelError, match="not in the fairseq2 cache and offline mode is on"):
        SonarSpeechEncoder.load(ModelSpec("sonar_speech_encoder_eng", device="cpu"), offline=True)
    assert time.perf_counter() - began < 30  # a generous bound: no download attempt was made


def test_unknown_card_name_and_unreadable_card_file_give_model_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown SONAR model 'no_such_model'"):
        SonarTextEncoder.load(ModelSpec("no_such_model", device="cpu"))
    bad = tmp_path / "card.yaml"
    bad.write_text("just a string")
    with pytest.raises(ModelError, match="not a fairseq2 asset card"):
        SonarTextEncoder.load(ModelSpec(str(bad), device="cpu"))


def test_corrupt_checkpoint_gives_a_model_error(tmp_path, text_spec):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(Path(text_spec.source).parent, folder)
    (folder / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot be loaded"):
        SonarTextEncoder.load(ModelSpec(str(folder / "card.yaml"), device="cpu"))


def test_test_cards_load_by_name_from_the_user_asset_folder(sonar_dir):
    """The generated cards are real fairseq2 cards: found by name like the published ones."""
    code = ("import torch; torch.set_num_threads(1)\n"
            "from voicechat.config import ModelSpec\n"
            "from voicechat.retrieval.encoders import SonarTextEncoder\n"
            "from voicechat.sonar_cards import sonar_model_status\n"
            "e = SonarTextEncoder.load(ModelSpec('voicechat_test_sonar_text_encoder', device='cpu'), offline=True)\n"
            "print(e.embed(['A sentence.'], 'eng_Latn').shape, sonar_model_status('voicechat_test_sonar_text_encoder')[0])\n")
    env = {**os.environ, "FAIRSEQ2_USER_ASSET_DIR": str(sonar_dir / "text_encoder")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "local" and "(1, 32)" in out.stdout


def test_float16_on_cpu_is_refused_with_advice(text_spec):
    with pytest.raises(ModelError, match="float16 is not supported on the CPU"):
        SonarTextEncoder.load(dataclasses.replace(text_spec, dtype="float16"))


def test_silence_and_a_steady_tone_still_give_a_unit_vector(speech_encoder):
    t = np.arange(32000) / 16000
    for audio in (np.zeros(32000, np.float32), (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)):
        vector = speech_encoder.embed(audio)
        assert np.isfinite(vector).all() and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_bfloat16_encoders_agree_with_float32(text_spec, speech_spec, text_encoder, speech_encoder):
    text16 = SonarTextEncoder.load(dataclasses.replace(text_spec, dtype="bfloat16"))
    speech16 = SonarSpeechEncoder.load(dataclasses.replace(speech_spec, dtype="bfloat16"))
    sentence = "The Sun holds 99.86 percent of the mass of the Solar System."
    assert cosine(text16.embed([sentence], "eng_Latn")[0], text_encoder.embed([sentence], "eng_Latn")[0]) > 0.98
    audio = tone(1.0, 16000)
    assert cosine(speech16.embed(audio), speech_encoder.embed(audio)) > 0.95
