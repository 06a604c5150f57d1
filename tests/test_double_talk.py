"""Double talk: the user speaking over the reply, told from the reply's echo by the microphone and
the played audio side by side; and the listener cutting the reply on it, through the real AEC3."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.pulse import room_response
from tests.support.speech import RATE, speak
from tests.test_barge_in import SpeakerDouble
from tests.test_echo import REPLY, db, pcm
from voicechat.audio.barge_in import BargeInJudge
from voicechat.audio.double_talk import NearEndDetector
from voicechat.audio.echo import EchoCanceller, PlayedAudio, webrtc_aec3
from voicechat.audio.events import Interrupted, Level, SpeechStarted, UtteranceEnded
from voicechat.audio.listener import Listener
from voicechat.audio.turn import SileroVad
from voicechat.config import AudioConfig

BLOCK = 640
QUESTION_AT = 4 * RATE
ECHO_DELAY_S = 0.08


@pytest.fixture(scope="module")
def reply() -> np.ndarray:
    return speak(REPLY, "en-us", 150)


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return speak("Wait, what about oolong tea?", "en-gb+f3", 170)


def microphone(reply: np.ndarray, question: np.ndarray | None, ser_db: float = 0.0) -> tuple[np.ndarray, float]:
    """The reply's echo through a room (80 ms late, 250 ms of reverberation), with the question
    ``ser_db`` against the echo from 4 s on; and the question's onset in seconds."""
    echo = np.concatenate([np.zeros(int(ECHO_DELAY_S * RATE)), np.convolve(reply, room_response())])[:reply.size]
    near = echo + np.random.default_rng(0).standard_normal(echo.size) * 1e-4
    if question is None:
        return near, float("inf")
    question = question * 10 ** ((db(echo[QUESTION_AT:QUESTION_AT + question.size]) + ser_db - db(question)) / 20)
    near[QUESTION_AT:QUESTION_AT + question.size] += question
    onset = QUESTION_AT + int(np.flatnonzero(np.abs(question) > 0.02 * np.abs(question).max())[0])
    return near, onset / RATE


def heard_at(reply: np.ndarray, near: np.ndarray) -> tuple[list[float], NearEndDetector]:
    detector, heard = NearEndDetector(), []
    for start in range(0, near.size - BLOCK + 1, BLOCK):
        detector.push(pcm(near[start:start + BLOCK]), pcm(reply[start:start + BLOCK]))
        if detector.take_heard():
            heard.append((start + BLOCK) / RATE)
    return heard, detector


def test_the_echo_of_the_reply_alone_is_never_taken_for_the_user(reply):
    heard, detector = heard_at(reply, microphone(reply, None)[0])
    assert detector.ready and detector.delay_frames == round(ECHO_DELAY_S * 100)
    assert heard == []
    assert detector.echo_share() == 0.0 or detector.echo_share() > 0.5  # the reply, or its pause


@pytest.mark.parametrize("ser_db", [0.0, -5.0])
def test_a_question_over_the_echo_is_heard_within_300_ms(reply, question, ser_db):
    near, onset = microphone(reply, question, ser_db)
    heard, _ = heard_at(reply, near)
    assert heard and onset - 0.02 <= heard[0] <= onset + 0.3


def test_nothing_is_heard_before_the_echo_is_learnt(question):
    detector = NearEndDetector()
    loud = pcm(question[:BLOCK * 10])
    for start in range(0, loud.size, BLOCK):
        detector.push(loud[start:start + BLOCK], np.zeros(BLOCK, np.int16))  # nothing played
    assert not detector.ready and not detector.take_heard()


def listen_with_canceller(reply: np.ndarray, voice: np.ndarray):
    """The reply played until cut (a speaker double), its echo through the room from what was
    actually played, plus ``voice``, heard by a listener with the real AEC3 and its double-talk
    detector, block by block with device stamps."""
    from scipy.signal import lfilter

    room = np.concatenate([np.zeros(int(ECHO_DELAY_S * RATE)), room_response()])
    state = np.zeros(room.size - 1)
    played = PlayedAudio()
    canceller = EchoCanceller(webrtc_aec3(), played, input_latency_s=0.04)
    speaker = SpeakerDouble(playing=True)
    events: list = []
    listener = Listener(AudioConfig(), events.append, speaker, echo=canceller, judge=BargeInJudge(SileroVad.load()))
    noise = np.random.default_rng(0).standard_normal(voice.size) * 1e-4
    t0, cut_at = 500.0, None
    for start in range(0, voice.size - BLOCK + 1, BLOCK):
        sent = reply[start:start + BLOCK] if speaker.playing else np.zeros(BLOCK)
        played.add(t0 + start / RATE, sent.astype(np.float32), RATE, 0.04)
        echo, state = lfilter(room, [1.0], sent, zi=state)
        near = echo + voice[start:start + BLOCK] + noise[start:start + BLOCK]
        listener._block(pcm(near), t0 + (start + BLOCK) / RATE)
        if speaker.flushed and cut_at is None:
            cut_at = (start + BLOCK) / RATE
    return [e for e in events if not isinstance(e, Level)], cut_at, canceller


def voice_over(reply: np.ndarray, question: np.ndarray | None, ser_db: float) -> tuple[np.ndarray, float]:
    """The question alone, at ``ser_db`` against the reply's echo, from 4 s on, and its onset."""
    near, onset = microphone(reply, question, ser_db)
    return near - microphone(reply, None)[0], onset


def test_the_echo_alone_never_cuts_the_reply(reply):
    events, cut_at, canceller = listen_with_canceller(reply, np.zeros(reply.size))
    assert canceller.converged and canceller.near_end.ready
    assert cut_at is None and events == []


def test_a_question_over_the_echo_at_minus_5_db_cuts_the_reply_within_300_ms_and_is_heard(reply, question):
    voice, onset = voice_over(reply, question, -5.0)
    events, cut_at, _ = listen_with_canceller(reply, voice[:QUESTION_AT + question.size + RATE])
    assert cut_at is not None and onset <= cut_at <= onset + 0.3
    kinds = [type(e) for e in events]
    assert kinds[0] is Interrupted and events[0].by == "speech"
    assert kinds[1] is SpeechStarted and kinds[-1] is UtteranceEnded and kinds.count(SpeechStarted) == 1
    assert events[-1].duration >= 0.7 * question.size / RATE  # the question, most of it kept
