"""Barge-in while the assistant speaks: a speech start is held until Silero VAD confirms it on the
cleaned audio; one it does not confirm neither cuts the reply nor becomes a question."""

from __future__ import annotations

import numpy as np

from tests.support.echo_room import SpeakerDouble
from tests.support.speech import RATE, speak
from voicechat.audio.barge_in import BargeInJudge, load_barge_in_judge
from voicechat.audio.events import Interrupted, Level, SpeechStarted, UtteranceDiscarded, UtteranceEnded
from voicechat.audio.listener import Listener
from voicechat.audio.turn import SileroVad
from voicechat.config import AudioConfig

BLOCK = 640  # the microphone's 40 ms blocks


def hum(seconds: float = 0.8) -> np.ndarray:
    """A 140 Hz buzz swelling four times a second: webrtcvad takes it for speech, Silero does not
    (what the canceller's residual echo is to them)."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (((t * 140) % 1 - 0.5) * 0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def listen(sound: np.ndarray, playing: bool, judge: BargeInJudge | None = None):
    """``sound`` between a second of near-silence on each side, heard block by block by a
    listener whose speaker is ``playing``; the events it passes on, and the speaker."""
    events: list = []
    speaker = SpeakerDouble(playing)
    listener = Listener(AudioConfig(barge_in=True), events.append, speaker,
                        judge=judge or BargeInJudge(SileroVad.load()))
    stream = np.concatenate([np.zeros(RATE), sound, np.zeros(RATE)]).astype(np.float32)
    stream += np.random.default_rng(0).standard_normal(stream.size).astype(np.float32) * 1e-4
    pcm = np.clip(stream * 32768, -32768, 32767).astype(np.int16)
    t0 = 100.0
    for start in range(0, pcm.size - BLOCK + 1, BLOCK):
        listener._block(pcm[start:start + BLOCK], t0 + (start + BLOCK) / RATE)
    return [e for e in events if not isinstance(e, Level)], speaker


def test_a_hum_the_endpointer_takes_for_speech_starts_an_utterance_when_nothing_plays():
    events, _ = listen(hum(), playing=False)
    assert isinstance(events[0], SpeechStarted)  # the endpointer alone hears it as speech


def test_while_the_reply_plays_a_start_silero_does_not_confirm_is_dropped_without_a_trace():
    events, speaker = listen(hum(), playing=True)
    assert events == [] and not speaker.flushed  # no cut, no question, no discarded utterance


def test_while_the_reply_plays_a_voice_interrupts_it_and_reaches_the_conversation_whole():
    question = speak("Wait, what about oolong tea?", "en-gb+f3", 170)
    events, speaker = listen(question, playing=True)
    assert speaker.flushed
    kinds = [type(e) for e in events]
    assert kinds[:2] == [Interrupted, SpeechStarted] and kinds[-1] is UtteranceEnded
    assert events[0].by == "speech"
    ended = events[-1]
    assert ended.start <= 100.0 + 1.05  # from the question's onset, not from the confirmation
    assert ended.duration >= 0.8 * question.size / RATE
    assert UtteranceDiscarded not in kinds


def test_the_judge_times_silero_steps_on_the_endpointers_clock():
    judge = BargeInJudge(SileroVad.load())
    judge.restart(origin=50.0)
    silence = np.zeros(RATE, np.int16)
    judge.push(silence)
    assert not judge.speech_after(50.0)
    speech = np.clip(speak("Hold on, how tall is it?", "en-gb+f2", 170) * 32768, -32768, 32767).astype(np.int16)
    for start in range(0, speech.size, BLOCK):
        judge.push(speech[start:start + BLOCK])
    assert judge.speech_after(51.0) and not judge.speech_after(51.0 + speech.size / RATE)


def test_the_judge_loads_from_the_silero_package():
    judge, warning = load_barge_in_judge()
    assert warning is None and isinstance(judge, BargeInJudge)


def test_a_corrupt_silero_file_is_one_line_and_barge_in_goes_on_unconfirmed(tmp_path, monkeypatch):
    from voicechat.audio import turn

    corrupt = tmp_path / "silero_vad.onnx"
    corrupt.write_bytes(b"not a model")
    monkeypatch.setattr(turn, "silero_path", lambda: corrupt)
    judge, warning = load_barge_in_judge()
    assert judge is None
    assert "\n" not in warning and str(corrupt) in warning and "echo may interrupt" in warning
