"""The learned end of turn: Whisper features, the Smart Turn and Silero ONNX models, the endpointer
asking them, and the fall back to silence when the model cannot be used."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.support.piper_speech import QUESTIONS, say, say_with_pause
from tests.support.speech import RATE, noise, question, scene
from voicechat.audio.endpointer import find_utterances
from voicechat.audio.events import Level, UtteranceEnded
from voicechat.audio.turn import SileroVad, SmartTurn, TurnDetector, load_turn_detector, log_mel_features
from voicechat.config import TURN_PRESETS, Config, VadConfig
from voicechat.errors import ModelError


class Constant:
    """A turn model with a fixed answer."""

    def __init__(self, probability: float) -> None:
        self.value, self.calls = probability, 0

    def probability(self, audio: np.ndarray) -> float:
        self.calls += 1
        return self.value


def utterances(events):
    return [e for e in events if isinstance(e, UtteranceEnded)]


def test_features_equal_whisper_feature_extractor_for_the_last_8_seconds():
    from transformers import WhisperFeatureExtractor

    audio = (np.random.default_rng(0).standard_normal(3 * RATE) * 0.1).astype(np.float32)
    padded = np.pad(audio, (8 * RATE - audio.size, 0))  # zeros in front, as Smart Turn is fed
    reference = WhisperFeatureExtractor(chunk_length=8)(
        padded, sampling_rate=RATE, padding="max_length", max_length=8 * RATE, truncation=True,
        do_normalize=True, return_tensors="np").input_features[0]
    ours = log_mel_features(audio)
    assert ours.shape == (80, 800)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    longer = np.concatenate([np.ones(RATE, np.float32), audio, audio, audio])
    np.testing.assert_array_equal(log_mel_features(longer), log_mel_features(longer[-8 * RATE:]))


def test_turn_model_that_says_complete_ends_the_utterance_after_the_first_check():
    config = VadConfig(preset="relaxed", turn_silence_ms=150)
    speech = scene([1.0, question("en-first"), 2.0])  # no pause inside
    (_, true_end), = speech.speech
    ended, = utterances(find_utterances(speech.samples, config, TurnDetector(Constant(0.9), 0.5)))
    assert ended.reason == "complete"
    assert ended.t - ended.model_s <= true_end + 0.15 + 0.1  # one check after the end, give or take a syllable's decay


class TickingClock:
    """Test double for the detector's clock: every reading is ``step`` seconds after the last, as
    if each answer of the model took that long."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_decision_time_includes_the_turn_models_compute_time():
    config = VadConfig(preset="relaxed", turn_silence_ms=150)
    speech = scene([1.0, question("en-first"), 2.0])
    instant, slow = TurnDetector(Constant(0.9), 0.5), TurnDetector(Constant(0.9), 0.5)
    instant.clock, slow.clock = TickingClock(0.0), TickingClock(0.25)
    at_once, = utterances(find_utterances(speech.samples, config, instant))
    later, = utterances(find_utterances(speech.samples, config, slow))
    assert later.reason == at_once.reason == "complete"
    assert later.t == pytest.approx(at_once.t + 0.25) and later.model_s == pytest.approx(0.25)
    assert later.end == at_once.end


def test_turn_model_that_says_unfinished_leaves_the_end_to_the_longest_silence():
    config = VadConfig(preset="default")
    speech = scene([1.0, question("en"), 2.0])
    model = Constant(0.1)
    ended, = utterances(find_utterances(speech.samples, config, TurnDetector(model, 0.5)))
    assert ended.reason == "silence"
    assert model.calls >= 1
    longest = VadConfig(trailing_silence_ms=config.smart.longest_ms)  # the preset's longest wait
    silence_only, = utterances(find_utterances(speech.samples, longest))
    assert ended.t == silence_only.t


def test_level_events_carry_the_last_end_of_turn_probability():
    speech = scene([1.0, question("en"), 2.0])
    levels = [e for e in find_utterances(speech.samples, VadConfig(), TurnDetector(Constant(0.3), 0.5))
              if isinstance(e, Level)]
    assert levels[0].turn_probability is None and levels[-1].turn_probability == 0.3
    two = scene([1.0, question("en"), 2.0, question("en"), 2.0])
    levels = [e for e in find_utterances(two.samples, VadConfig(), TurnDetector(Constant(0.3), 0.5))
              if isinstance(e, Level)]
    second = next(e for e in levels if e.speaking and e.t > two.speech[1][0])
    assert second.turn_probability is None  # an answer is shown for its own utterance only
    assert all(e.turn_probability is None for e in find_utterances(speech.samples, VadConfig())
               if isinstance(e, Level))


def test_silero_hears_speech_but_not_steady_noise():
    silero = SileroVad.load()
    speech = silero.push(question("en"))
    hiss = SileroVad.load().push(noise(3.0, -30.0))
    assert np.mean(np.array(speech) > 0.5) > 0.5
    assert max(hiss) < 0.5


@pytest.mark.parametrize("noise_dbfs", [-40.0, -30.0, -25.0])
def test_steady_noise_alone_triggers_nothing_with_silero(noise_dbfs):
    detector = TurnDetector(Constant(1.0), 0.5, SileroVad.load())
    assert not utterances(find_utterances(scene([5.0], noise_dbfs).samples, VadConfig(), detector))


# --- the real model -------------------------------------------------------------------------------


def detector(path, threshold):
    return TurnDetector(SmartTurn.load(path), threshold, SileroVad.load())


PAUSES = (0.3, 0.5, 0.7, 1.0)


def spoken(number: int, pause: float, noise_dbfs: float):
    first, second = QUESTIONS[number]
    before, after = say_with_pause(first, second)
    return f"{first} ... ({pause} s) ... {second}", scene([1.0, before, pause, after, 1.5], noise_dbfs, seed=number)


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(TURN_PRESETS))
@pytest.mark.parametrize("noise_dbfs", [-40.0, -30.0, -25.0])  # 20, 10 and 5 dB SNR
def test_question_is_not_cut_inside_a_pause_shorter_than_the_first_check_nor_ended_after_the_longest_silence(
        smart_turn_path, preset, noise_dbfs):
    config = VadConfig(preset=preset)
    smart = config.smart
    for number, pause in enumerate(PAUSES):
        said, speech = spoken(number * 11 + len(preset), pause, noise_dbfs)
        (_, _), (second_start, true_end) = speech.speech
        found = utterances(find_utterances(speech.samples, config, detector(smart_turn_path, smart.threshold)))
        assert found, f"{said}: no utterance"
        decided = found[0].t - found[0].model_s  # on the audio's clock, without the model's compute
        assert decided <= found[0].end + smart.longest_ms / 1000 + config.frame_ms / 1000
        if pause * 1000 < smart.silence_ms:  # the model is not asked inside this pause
            assert decided >= second_start, f"{said}: cut inside the pause"
        if decided >= second_start:
            assert decided <= true_end + smart.longest_ms / 1000 + config.frame_ms / 1000


@pytest.mark.slow
def test_finished_question_ends_sooner_than_the_silence_wait(smart_turn_path):
    config = VadConfig(preset="default")
    faster = 0
    for number in range(4):
        first, second = QUESTIONS[number]
        speech = scene([1.0, say(f"{first} {second}"), 1.5], seed=number)
        (_, true_end), = speech.speech
        ended = utterances(find_utterances(speech.samples, config, detector(smart_turn_path, config.smart.threshold)))[0]
        silence_only = utterances(find_utterances(speech.samples, config))[0]  # today's endpointer
        decided = ended.t - ended.model_s  # on the audio's clock, without the model's compute
        faster += ended.reason == "complete" and decided < silence_only.t
        assert decided <= true_end + config.smart.longest_ms / 1000 + config.frame_ms / 1000
    assert faster >= 3


# --- a model that cannot be used -------------------------------------------------------------------


def smart_config(tmp_path, source):
    config = Config()
    models = dataclasses.replace(config.models, turn=dataclasses.replace(config.models.turn, source=str(source)))
    return dataclasses.replace(config, models=models, audio=dataclasses.replace(config.audio, turn="smart"))


@pytest.mark.parametrize("content", [None, b"not an onnx file", b"\x08\x07" * 100])
def test_missing_or_corrupt_turn_model_gives_one_line_and_the_silence_endpointer(tmp_path, content):
    path = tmp_path / "smart-turn-v3.2-cpu.onnx"
    if content is not None:
        path.write_bytes(content)
    found, warning = load_turn_detector(smart_config(tmp_path, path))
    assert found is None
    assert "\n" not in warning and "ending turns after silence instead" in warning
    speech = scene([1.0, question("en"), 2.0])
    assert len(utterances(find_utterances(speech.samples, VadConfig(), found))) == 1


def test_corrupt_model_file_is_a_model_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="broken.onnx"):
        SmartTurn.load(path)


def test_silence_mode_needs_no_turn_model(tmp_path):
    config = smart_config(tmp_path, tmp_path / "absent")
    config = dataclasses.replace(config, audio=dataclasses.replace(config.audio, turn="silence"))
    assert load_turn_detector(config) == (None, None)
