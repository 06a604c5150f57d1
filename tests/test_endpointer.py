"""The endpointer on real speech (espeak-ng, English and Mandarin) mixed with silence and noise."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.speech import RATE, noise, question, scene
from voicechat.audio.endpointer import Endpointer, find_utterances
from voicechat.audio.events import Level, SpeechStarted, UtteranceDiscarded, UtteranceEnded
from voicechat.config import VAD_PRESETS, VadConfig

NOISE_LEVELS = [None, -50.0, -40.0, -30.0]  # dBFS; speech is at -20 dBFS RMS


def utterances(events):
    return [e for e in events if isinstance(e, UtteranceEnded)]


@pytest.mark.parametrize("noise_dbfs", NOISE_LEVELS)
@pytest.mark.parametrize("language", ["en", "zh"])
def test_endpoint_comes_within_trailing_silence_plus_one_frame_of_the_true_end(language, noise_dbfs):
    config = VadConfig()
    speech = scene([1.0, question(language), 2.0], noise_dbfs)
    (true_start, true_end), = speech.speech
    found = utterances(find_utterances(speech.samples, config))
    assert len(found) == 1
    ended = found[0]
    frame = config.frame_ms / 1000
    assert ended.t <= true_end + config.trailing_ms / 1000 + frame
    assert ended.end >= true_end - 0.1  # the end of the speech is in the utterance, give or take a syllable's decay
    assert ended.reason == "silence"


@pytest.mark.parametrize("noise_dbfs", NOISE_LEVELS)
def test_start_of_speech_lies_within_the_preroll_of_the_utterance_audio(noise_dbfs):
    config = VadConfig()
    speech = scene([1.0, question("en"), 2.0], noise_dbfs)
    (true_start, true_end), = speech.speech
    ended, = utterances(find_utterances(speech.samples, config))
    frame = config.frame_ms / 1000  # the start is known to the frame
    assert ended.audio_start <= true_start <= ended.audio_start + config.preroll_ms / 1000 + frame
    assert ended.audio.dtype == np.int16
    first = int(round(ended.audio_start * RATE))
    np.testing.assert_array_equal(ended.audio, speech.samples[first:first + ended.audio.size])


@pytest.mark.parametrize("preset", ["relaxed", "default"])
def test_pause_between_words_shorter_than_trailing_silence_does_not_split_utterance(preset):
    config = VadConfig(preset=preset)
    speech = scene([1.0, question("en-first"), 0.4, question("en-second"), 2.0])
    found = utterances(find_utterances(speech.samples, config))
    assert len(found) == 1
    assert found[0].start <= speech.speech[0][0] + 0.03 and found[0].end >= speech.speech[1][1] - 0.1


def test_pause_longer_than_trailing_silence_separates_two_questions():
    speech = scene([1.0, question("en"), 1.5, question("zh"), 2.0])
    found = utterances(find_utterances(speech.samples, VadConfig(preset="default")))
    assert len(found) == 2
    for ended, (start, end) in zip(found, speech.speech):
        assert ended.audio_start <= start and ended.end >= end - 0.1


@pytest.mark.parametrize("noise_dbfs", [-60.0, -40.0, -30.0, -20.0])
@pytest.mark.parametrize("aggressiveness", [0, 3])
def test_steady_noise_alone_triggers_nothing(noise_dbfs, aggressiveness):
    events = find_utterances(scene([8.0], noise_dbfs).samples, VadConfig(aggressiveness=aggressiveness))
    assert not [e for e in events if not isinstance(e, Level)]


def test_noise_starting_during_speech_does_not_hold_the_utterance_open():
    config = VadConfig()
    speech = scene([1.0, question("en"), 5.0])
    (_, true_end), = speech.speech
    mixed = speech.samples.astype(np.float32)
    loud = slice(int((true_end - 1.0) * RATE), None)
    mixed[loud] += noise(mixed[loud].size / RATE, -25.0) * 32768
    ended, = utterances(find_utterances(np.clip(mixed, -32768, 32767).astype(np.int16), config))
    assert ended.reason == "silence"
    assert ended.t <= true_end + config.trailing_ms / 1000 + 0.6  # the noise floor adapts in about half a second


def test_click_shorter_than_min_utterance_is_discarded():
    click = question("en")[: int(0.2 * RATE)]
    events = find_utterances(scene([1.0, click, 2.0]).samples, VadConfig())
    assert not utterances(events)
    assert [type(e) for e in events if not isinstance(e, Level)] == [SpeechStarted, UtteranceDiscarded]


def test_speech_longer_than_max_length_is_cut():
    config = VadConfig(max_utterance_s=2.0)
    speech = scene([0.5, question("en"), 1.0])
    found = utterances(find_utterances(speech.samples, config))
    assert found[0].reason == "max_length"
    assert found[0].audio.size <= 2.0 * RATE


def test_trailing_silence_follows_the_preset_unless_given():
    assert [VadConfig(preset=p).trailing_ms for p in VAD_PRESETS] == list(VAD_PRESETS.values())
    assert VadConfig(preset="relaxed", trailing_silence_ms=500).trailing_ms == 500


def test_events_do_not_depend_on_how_the_audio_is_cut_into_blocks():
    samples = scene([1.0, question("en"), 1.5, question("zh"), 2.0], -40.0).samples
    whole = find_utterances(samples)
    endpointer = Endpointer()
    rng = np.random.default_rng(1)
    pieces, position = [], 0
    while position < samples.size:
        size = int(rng.integers(1, 1500))
        pieces.extend(endpointer.push(samples[position:position + size]))
        position += size
    pieces.extend(endpointer.finish())
    def comparable(event):
        if isinstance(event, UtteranceEnded):
            return (event.t, event.start, event.end, event.audio_start, event.reason, event.audio.tobytes())
        return event

    assert [comparable(e) for e in whole] == [comparable(e) for e in pieces]


def test_utterance_in_progress_at_the_end_of_the_stream_is_closed():
    speech = scene([0.5, question("en")])
    found = utterances(find_utterances(speech.samples))
    assert [e.reason for e in found] == ["stream_end"]


def test_skipped_audio_is_ignored_but_keeps_the_clock():
    speech = scene([1.0, question("en"), 2.0])
    endpointer = Endpointer()
    half = speech.samples.size // 2
    endpointer.skip(half)
    events = endpointer.push(speech.samples[half:]) + endpointer.finish()
    ended = utterances(events)
    assert all(e.start >= half / RATE for e in ended)
    assert [e.t for e in events if isinstance(e, Level)][0] > half / RATE


# --- pauses inside an utterance ------------------------------------------------------------------


def test_the_last_pause_carries_exactly_the_audio_the_end_of_the_utterance_carries():
    from voicechat.audio.events import Paused, Resumed

    events = find_utterances(scene([1.0, question("en"), 2.0]).samples, VadConfig())
    ended, = utterances(events)
    marks = [e for e in events if isinstance(e, (Paused, Resumed, UtteranceEnded))]
    assert isinstance(marks[-2], Paused) and marks[-1] is ended
    assert np.array_equal(marks[-2].audio, ended.audio)
    assert (marks[-2].start, marks[-2].end, marks[-2].audio_start) == (ended.start, ended.end, ended.audio_start)
    assert ended.end + 0.2 <= marks[-2].t < ended.t
    for earlier, after in zip(marks[:-2:2], marks[1:-2:2]):  # a pause between words is resumed
        assert isinstance(earlier, Paused) and isinstance(after, Resumed)


def test_speech_after_a_pause_resumes_the_utterance_and_its_end_holds_both_parts():
    from voicechat.audio.events import Paused, Resumed

    config = VadConfig(trailing_silence_ms=1200)
    speech = scene([1.0, question("en"), 0.6, question("en-first"), 2.0])
    events = find_utterances(speech.samples, config)
    ended, = utterances(events)
    (_, first_end), (second_start, _) = speech.speech
    inside = [e for e in events if isinstance(e, (Paused, Resumed)) and first_end < e.t < second_start + 0.2]
    assert [type(e) for e in inside] == [Paused, Resumed]
    assert inside[0].audio.size < ended.audio.size
    assert np.array_equal(inside[0].audio, ended.audio[:inside[0].audio.size])

