"""Double talk: the user speaking over the reply, told from the reply's echo by the microphone and
the played audio side by side; and the listener cutting the reply on it, through the real AEC3."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.echo_room import BLOCK, ECHO_DELAY_S, converse, pcm, room_echo, voice_at
from tests.support.speech import RATE, speak
from tests.test_echo import REPLY
from voicechat.audio.double_talk import NearEndDetector
from voicechat.audio.events import Interrupted, SpeechStarted, UtteranceEnded

QUESTION_AT = 4 * RATE


@pytest.fixture(scope="module")
def reply() -> np.ndarray:
    return speak(REPLY, "en-us", 150)


@pytest.fixture(scope="module")
def question() -> np.ndarray:
    return speak("Wait, what about oolong tea?", "en-gb+f3", 170)


def microphone(reply: np.ndarray, question: np.ndarray | None, ser_db: float = 0.0) -> tuple[np.ndarray, float]:
    """The reply's echo through the room, with the question ``ser_db`` against the echo from 4 s
    on; and the question's onset in seconds."""
    echo = room_echo(reply)
    near = echo + np.random.default_rng(0).standard_normal(echo.size) * 1e-4
    if question is None:
        return near, float("inf")
    voice, onset = voice_at(question, echo, QUESTION_AT, ser_db, echo.size)
    return near + voice, onset


def heard_at(reply: np.ndarray, near: np.ndarray) -> tuple[list[float], NearEndDetector]:
    detector, heard = NearEndDetector(), []
    for start in range(0, near.size - BLOCK + 1, BLOCK):
        detector.push(pcm(near[start:start + BLOCK]), pcm(reply[start:start + BLOCK]))
        if detector.take_heard() is not None:
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


def test_a_gap_in_the_report_of_what_was_played_is_not_taken_for_the_user(reply):
    """The device played on, but the player's report of it has a 50 ms hole: the echo there has no
    reference, and must not pass for a voice (a dry path, as on the live loopback: no reverberation
    to cover the hole)."""
    delay = int(ECHO_DELAY_S * RATE)
    near = np.concatenate([np.zeros(delay), 0.5 * reply])[:reply.size]
    near += np.random.default_rng(0).standard_normal(near.size) * 1e-4
    reported = reply.copy()
    reported[5 * RATE:5 * RATE + 800] = 0.0
    detector, heard = NearEndDetector(), []
    for start in range(0, near.size - BLOCK + 1, BLOCK):
        detector.push(pcm(near[start:start + BLOCK]), pcm(reported[start:start + BLOCK]))
        heard += [start] if detector.take_heard() is not None else []
    assert detector.ready and heard == []


def test_nothing_is_heard_before_the_echo_is_learnt(question):
    detector = NearEndDetector()
    loud = pcm(question[:BLOCK * 10])
    for start in range(0, loud.size, BLOCK):
        detector.push(loud[start:start + BLOCK], np.zeros(BLOCK, np.int16))  # nothing played
    assert not detector.ready and detector.take_heard() is None


def test_the_echo_alone_never_cuts_the_reply(reply):
    events, cut_at, canceller = converse(reply, np.zeros(reply.size))
    assert canceller.converged and canceller.near_end.ready
    assert cut_at is None and events == []


def test_a_question_over_the_echo_at_minus_5_db_cuts_the_reply_within_300_ms_and_is_heard(reply, question):
    length = QUESTION_AT + question.size + RATE
    voice, onset = voice_at(question, room_echo(reply), QUESTION_AT, -5.0, length)
    events, cut_at, _ = converse(reply, voice)
    assert cut_at is not None and onset <= cut_at <= onset + 0.3
    kinds = [type(e) for e in events]
    assert kinds[0] is Interrupted and events[0].by == "speech"
    assert kinds[1] is SpeechStarted and kinds[-1] is UtteranceEnded and kinds.count(SpeechStarted) == 1
    ended = events[-1]
    assert abs(ended.start - (500.0 + onset)) <= 0.1  # from the voice's onset, though the canceller hid it
    assert ended.audio_start <= 500.0 + onset and ended.duration >= 0.7 * question.size / RATE
