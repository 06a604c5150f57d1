"""Echo cancellation: the assistant's voice taken out of the microphone by WebRTC AEC3, paired with
what the player sent by the blocks' time stamps."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.support.echo_room import db, pcm, room_echo
from tests.support.speech import RATE, speak
from voicechat.audio.echo import EchoCanceller, FarEndTimeline, PlayedAudio, load_echo_canceller, webrtc_aec3
from voicechat.audio.endpointer import Endpointer
from voicechat.audio.events import SpeechStarted
from voicechat.audio.listener import Listener
from voicechat.config import AudioConfig

BLOCK = 640  # 40 ms microphone blocks
REPLY = ("Green tea should steep for two to three minutes in water just below boiling, then the "
         "leaves come out so that the cup does not turn bitter.")
QUESTION_AT = 4 * RATE


def through_canceller(reply: np.ndarray, microphone: np.ndarray) -> np.ndarray:
    """The reply sent to a device block by block and the microphone heard block by block, with the
    stamps devices give (the speaker reports 40 ms of output latency), through the canceller."""
    played = PlayedAudio()
    canceller = EchoCanceller(webrtc_aec3(), played, input_latency_s=0.04)
    t0, out = 500.0, []
    for start in range(0, microphone.size - BLOCK + 1, BLOCK):
        played.add(t0 + start / RATE, reply[start:start + BLOCK].astype(np.float32), RATE, 0.04)
        cleaned, _ = canceller.process(pcm(microphone[start:start + BLOCK]), t0 + (start + BLOCK) / RATE)
        out.append(cleaned)
    return np.concatenate(out).astype(np.float32) / 32768


@pytest.fixture(scope="module")
def echo_path():
    """A reply, its echo through a room (80 ms late, 0.5 direct gain, 250 ms reverberation), and a
    question from another voice, as loud as the echo, from 4 s on."""
    reply = speak(REPLY, "en-us", 150)
    echo = room_echo(reply)
    question = speak("Wait, what about oolong tea?", "en-gb+f3", 170)
    question = question * 10 ** ((db(echo[QUESTION_AT:QUESTION_AT + question.size]) - db(question)) / 20)
    near = np.zeros(reply.size)
    near[QUESTION_AT:QUESTION_AT + question.size] = question
    return reply, echo, near


def speech_starts(samples: np.ndarray) -> list[float]:
    return [e.t for e in Endpointer().push(pcm(samples)) if isinstance(e, SpeechStarted)]


def test_the_echo_of_a_reply_is_removed_from_the_microphone(echo_path):
    reply, echo, _ = echo_path
    cleaned = through_canceller(reply, echo)
    converged = slice(int(1.5 * RATE), cleaned.size)
    assert db(echo[converged]) - db(cleaned[converged]) > 20  # dB of echo return loss enhancement
    assert speech_starts(echo)  # heard raw, the echo starts an utterance: a false barge-in
    assert speech_starts(cleaned) == []


def test_a_question_spoken_over_the_echo_is_kept_and_starts_an_utterance(echo_path):
    reply, echo, near = echo_path
    cleaned = through_canceller(reply, echo + near)
    question = near[QUESTION_AT:QUESTION_AT + int(1.5 * RATE)]
    lag = 128  # AEC3 delays its output by 8 ms

    def kept(signal: np.ndarray) -> float:
        part = signal[QUESTION_AT + lag:QUESTION_AT + lag + question.size]
        return float(np.dot(part, question) / np.sqrt(np.sum(part**2) * np.sum(question**2)))

    assert kept(cleaned) > 0.6
    starts = speech_starts(cleaned)
    assert len(starts) == 1 and 0 <= starts[0] - QUESTION_AT / RATE < 0.3


def test_played_audio_is_laid_on_the_timeline_where_it_was_sent():
    timeline = FarEndTimeline(seconds=1.0)
    tone = np.ones(160, np.float32) * 0.5
    timeline.write(10.0, tone, RATE)
    timeline.write(10.0 + 160 / RATE + 0.05, tone, RATE)  # a callback 50 ms late: it follows on
    timeline.write(10.8, tone, RATE)  # the next reply after a pause
    start = round(10.0 * RATE)
    read = timeline.read(start - 10, 10 + 320 + 10)
    assert not read[:10].any() and np.allclose(read[10:330], 0.5) and not read[330:].any()
    pause = timeline.read(start + 320, round(0.8 * RATE) - 320)
    assert not pause.any()
    assert np.allclose(timeline.read(round(10.8 * RATE), 160), 0.5)
    timeline.write(10.8 + 0.005, tone, RATE)  # stamped sooner than the last block said: moved earlier
    assert np.allclose(timeline.read(round(10.805 * RATE), 160), 0.5)
    assert not timeline.read(start - 3 * RATE, 160).any()  # older than what is kept


def test_without_the_canceller_the_conversation_stays_half_duplex_with_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "pywebrtc_audio", None)  # as if the package were missing

    class SpeakerDouble:
        played = None

    speaker = SpeakerDouble()
    canceller, warning = load_echo_canceller(True, speaker)  # type: ignore[arg-type]
    assert canceller is None and speaker.played is None
    assert warning.startswith("echo cancellation is not available (pywebrtc-audio: ")
    assert "\n" not in warning and "audio.barge_in: true" in warning
    assert not Listener(AudioConfig(), lambda event: None, echo=canceller).barge_in


def test_barge_in_follows_the_canceller_unless_configured():
    canceller, warning = load_echo_canceller(True, type("SpeakerDouble", (), {"played": None})())
    assert warning is None
    assert Listener(AudioConfig(), lambda event: None, echo=canceller).barge_in
    assert not Listener(AudioConfig(barge_in=False), lambda event: None, echo=canceller).barge_in
    assert Listener(AudioConfig(barge_in=True), lambda event: None).barge_in
    assert load_echo_canceller(False, type("SpeakerDouble", (), {"played": None})()) == (None, None)
