"""Capture, endpointing, playback and turn-taking on real (virtual) PulseAudio devices."""

from __future__ import annotations

import queue
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import correlate

from tests.support.pulse import SPEAKER_RATE
from tests.support.speech import RATE, question
from voicechat.audio.capture import Capture
from voicechat.audio.events import Interrupted, SpeechStarted, UtteranceEnded
from voicechat.audio.listener import Listener
from voicechat.audio.player import DECODER_RATE, Player
from voicechat.audio.resample import resample
from voicechat.config import AudioConfig
from voicechat.errors import AudioError

pytestmark = pytest.mark.audio


def best_match(recorded: np.ndarray, reference: np.ndarray) -> tuple[float, int]:
    """Normalised cross-correlation peak of ``reference`` inside ``recorded`` and its offset."""
    scores = correlate(recorded, reference, mode="valid")
    offset = int(np.argmax(np.abs(scores)))
    segment = recorded[offset:offset + reference.size]
    return float(abs(scores[offset]) / np.sqrt(np.sum(reference**2) * np.sum(segment**2))), offset


def next_event(events: queue.Queue, kind: type, timeout: float = 20.0):
    while True:
        event = events.get(timeout=timeout)
        if isinstance(event, kind):
            return event


@pytest.mark.slow
def test_question_spoken_into_the_microphone_comes_out_as_one_utterance(pulse):
    spoken = question("en")
    events: queue.Queue = queue.Queue()
    listener = Listener(AudioConfig(), events.put)
    listener.start()
    try:
        pulse.play(np.concatenate([np.zeros(RATE // 2, np.float32), spoken, np.zeros(RATE, np.float32)]), RATE)
        utterance = next_event(events, UtteranceEnded)
    finally:
        listener.stop()
    audio = utterance.audio.astype(np.float32) / 32768
    assert audio.size >= spoken.size
    score, offset = best_match(audio, spoken)
    assert score > 0.99
    assert offset <= AudioConfig().vad.preroll_ms / 1000 * RATE + 480  # the first syllable is not clipped
    assert abs(utterance.t - time.monotonic()) < 2.0  # live events are on the monotonic clock
    assert listener.capture is None


@pytest.mark.slow
@pytest.mark.parametrize("rate", [None, 48000])  # the device takes 22050 Hz, or we resample
def test_reply_played_through_the_player_arrives_intact_and_in_order(pulse, rate):
    reply = resample(question("en"), RATE, DECODER_RATE)
    recording = pulse.record()
    assert recording.wait_for_bytes(1)
    with Player(config=AudioConfig().playback, rate=rate) as speaker:
        began = time.monotonic()
        speaker.begin()
        for start in range(0, reply.size, 1764):  # one speech token of audio at a time
            speaker.push(reply[start:start + 1764])
        speaker.end()
        assert speaker.wait(timeout=30)
        assert began < speaker.first_audio_at < time.monotonic()  # on the engine's clock
        assert recording.wait_for_sound(reply.size / DECODER_RATE, SPEAKER_RATE)
        assert speaker.underruns == 0
        assert speaker.played_s == pytest.approx(reply.size / DECODER_RATE, abs=0.02)
    heard = recording.stop()
    expected = resample(reply, DECODER_RATE, SPEAKER_RATE)
    score, _ = best_match(heard, expected)
    assert score > 0.999


def test_flush_silences_the_reply_at_once(pulse):
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(5 * DECODER_RATE) / DECODER_RATE)).astype(np.float32)
    recording = pulse.record()
    assert recording.wait_for_bytes(1)
    with Player(config=AudioConfig().playback) as speaker:
        speaker.begin()
        speaker.push(tone)
        assert recording.wait_for_sound(0.5, SPEAKER_RATE)
        speaker.flush()
        played = speaker.played_s
        assert not speaker.push(tone)  # the cut reply's remaining audio is dropped
        assert speaker.wait(timeout=5)
        assert recording.wait_for_sound(played + 1.0, SPEAKER_RATE)
    heard = recording.stop()
    loud = np.flatnonzero(np.abs(heard) > 1e-3)
    sounding = (loud[-1] - loud[0]) / SPEAKER_RATE
    block = AudioConfig().playback.block_ms / 1000
    assert sounding <= played + block + 0.01
    assert sounding < 1.5


@pytest.mark.slow
def test_without_barge_in_speech_during_playback_starts_no_turn(pulse):
    events: queue.Queue = queue.Queue()
    with Player() as speaker:
        listener = Listener(AudioConfig(barge_in=False), events.put, speaker)
        listener.start()
        try:
            speaker.begin()
            speaker.push(np.zeros(8 * DECODER_RATE, np.float32) + 1e-4)
            speaker.end()
            talk = pulse.play(np.concatenate([question("en"), np.zeros(RATE, np.float32)]), RATE)
            talk.wait(timeout=30)
            assert speaker.playing  # the reply is still going
            speaker.flush()
        finally:
            listener.stop()
    seen = []
    while not events.empty():
        seen.append(events.get())
    assert not [e for e in seen if isinstance(e, (SpeechStarted, UtteranceEnded, Interrupted))]


@pytest.mark.slow
def test_with_barge_in_speech_during_playback_interrupts_and_becomes_the_next_turn(pulse):
    events: queue.Queue = queue.Queue()
    interrupted = []
    spoken = question("en")
    with Player() as speaker:
        listener = Listener(AudioConfig(barge_in=True), events.put, speaker, lambda: interrupted.append(True))
        listener.start()
        try:
            speaker.begin()
            speaker.push(np.full(20 * DECODER_RATE, 1e-4, np.float32))
            speaker.end()
            pulse.play(np.concatenate([spoken, np.zeros(RATE, np.float32)]), RATE)
            cut = next_event(events, Interrupted)
            assert interrupted and cut.by == "speech" and 0 < cut.played_s < 10
            assert speaker.wait(timeout=1)  # flushed
            utterance = next_event(events, UtteranceEnded)
        finally:
            listener.stop()
    score, _ = best_match(utterance.audio.astype(np.float32) / 32768, spoken)
    assert score > 0.99  # captured from its pre-roll: nothing lost to the interruption


def test_interrupt_key_cuts_the_reply_at_any_time(pulse):
    events: queue.Queue = queue.Queue()
    cancelled = []
    with Player() as speaker:
        listener = Listener(AudioConfig(), events.put, speaker, lambda: cancelled.append(True))
        speaker.begin()
        speaker.push(np.full(10 * DECODER_RATE, 0.01, np.float32))
        listener.interrupt()
        assert speaker.wait(timeout=1) and not speaker.playing
    cut = next_event(events, Interrupted)
    assert cut.by == "key" and cancelled


def test_device_errors_are_messages_not_tracebacks(pulse):
    with pytest.raises(AudioError, match="no input device matches 'no-such-microphone'"):
        Capture("no-such-microphone").open()
    with pytest.raises(AudioError, match="no output device with index 99"):
        Player(device=99).open()
    with pytest.raises(AudioError, match="sample rate"):
        Player(rate=1).open()


def test_unavailable_device_message_says_what_to_do():
    from voicechat.audio.devices import DeviceInfo, open_error, sounddevice

    sd = sounddevice()
    device = DeviceInfo(3, "USB mic", "ALSA", 1, 0, 48000)
    message = str(open_error(sd.PortAudioError("Device unavailable", -9985), device, "input"))
    assert "'USB mic' is busy or unavailable" in message and "audio.input_device" in message


GONE_SCRIPT = """
import os, queue, sys
sys.path.insert(0, os.getcwd())
from tests.support.pulse import PulseServer, use_server
from pathlib import Path
from voicechat.audio.events import DeviceFailed, Level
from voicechat.audio.listener import Listener
from voicechat.audio.player import Player
from voicechat.config import AudioConfig
from voicechat.errors import AudioError
import numpy as np

server = PulseServer(Path(sys.argv[1]))
server.start()
use_server(server)
events = queue.Queue()
listener = Listener(AudioConfig(), events.put)
listener.start()
speaker = Player().open()
speaker.begin()
speaker.push(np.zeros(22050, np.float32))
assert isinstance(events.get(timeout=10), Level)
server.stop()
while not isinstance(event := events.get(timeout=20), DeviceFailed):
    pass
print("FAILED:", event.message, flush=True)
try:
    speaker.push(np.zeros(22050, np.float32))
except AudioError as error:
    print("SPEAKER:", error, flush=True)
server.start()  # the sound server is back: listening starts again
listener.start()
while not isinstance(event := events.get(timeout=20), Level):
    pass
print("LISTENING AGAIN", flush=True)
os._exit(0)  # PortAudio may still hold the dead stream; do not wait for it at exit
"""


def test_microphone_gone_mid_stream_is_reported_and_listening_can_restart(tmp_path):
    # In a separate process: a dead sound server leaves PortAudio state this process should not share.
    if shutil.which("pulseaudio") is None:
        pytest.skip("PulseAudio is not installed")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", GONE_SCRIPT, str(tmp_path)], cwd=repo,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "FAILED: the input device 'default' stopped delivering audio" in done.stdout
    assert "SPEAKER: the output device 'default' stopped playing" in done.stdout
    assert "LISTENING AGAIN" in done.stdout


@pytest.mark.slow
def test_finished_question_into_the_microphone_ends_before_the_silence_wait(pulse, smart_turn_path):
    from tests.support.piper_speech import say
    from voicechat.audio.turn import SileroVad, SmartTurn, TurnDetector

    config = AudioConfig()
    spoken = say("How many hours of sleep does a teenager need every night?")
    events: queue.Queue = queue.Queue()
    listener = Listener(config, events.put, turn=TurnDetector(SmartTurn.load(smart_turn_path), 0.5, SileroVad.load()))
    listener.start()
    try:
        pulse.play(np.concatenate([np.zeros(RATE // 2, np.float32), spoken, np.zeros(2 * RATE, np.float32)]), RATE)
        utterance = next_event(events, UtteranceEnded)
    finally:
        listener.stop()
    assert utterance.reason == "complete"
    assert utterance.decision_delay < config.vad.trailing_ms / 1000
    assert best_match(utterance.audio.astype(np.float32) / 32768, spoken)[0] > 0.99


REPLY = ("Green tea should steep for two to three minutes in water just below boiling, then the leaves "
         "come out so that the cup does not turn bitter. Black tea takes longer, four or five minutes.")


def speak_over_the_room(pulse, echo_cancellation: bool, barge_in: bool | None, question: np.ndarray | None = None):
    """The assistant speaks a reply through the virtual speaker, which loops back into the virtual
    microphone 60 ms late and 6 dB quieter (tests/support/pulse.py EchoPath); ``question`` is
    played into the microphone over it. Returns the listener's events and whether the reply
    played to its end."""
    from tests.support.pulse import EchoPath
    from tests.support.speech import speak
    from voicechat.audio.echo import load_echo_canceller

    events: queue.Queue = queue.Queue()
    seen: list = []

    def heard(event) -> None:
        seen.append(event)
        events.put(event)

    room = EchoPath(pulse)
    try:
        with Player() as speaker:
            canceller, warning = load_echo_canceller(echo_cancellation, speaker)
            assert warning is None
            listener = Listener(AudioConfig(barge_in=barge_in), heard, speaker, echo=canceller)
            listener.start()
            try:
                speaker.begin()
                speaker.push(resample(speak(REPLY, "en-us", 150), RATE, DECODER_RATE))
                speaker.end()
                if question is not None:
                    pulse.play(question, RATE)
                assert speaker.wait(timeout=60)
                to_the_end = speaker.played_s > 8.0
                if question is not None:
                    next_event(events, UtteranceEnded)
            finally:
                listener.stop()
    finally:
        room.stop()
    return seen, to_the_end


@pytest.mark.slow
def test_on_open_speakers_the_assistant_does_not_interrupt_itself_with_echo_cancelled(pulse):
    seen, to_the_end = speak_over_the_room(pulse, echo_cancellation=True, barge_in=None)
    assert to_the_end
    assert not [e for e in seen if isinstance(e, (SpeechStarted, UtteranceEnded, Interrupted))]
    # The same room without the canceller, barge-in forced on: its own echo cuts the reply.
    seen, to_the_end = speak_over_the_room(pulse, echo_cancellation=False, barge_in=True)
    assert not to_the_end
    assert [e for e in seen if isinstance(e, Interrupted) and e.by == "speech"]


@pytest.mark.slow
def test_on_open_speakers_a_question_spoken_over_the_reply_interrupts_it_and_is_captured(pulse):
    from tests.support.speech import speak

    spoken = 0.5 * speak("Wait, what about oolong tea?", "en-gb+f3", 170)  # as loud as the echo
    question = np.concatenate([np.zeros(3 * RATE, np.float32), spoken, np.zeros(RATE, np.float32)])
    seen, to_the_end = speak_over_the_room(pulse, echo_cancellation=True, barge_in=None, question=question)
    assert not to_the_end
    (cut,) = [e for e in seen if isinstance(e, Interrupted)]
    assert cut.by == "speech" and cut.played_s > 2.5  # not before the question began
    (utterance,) = [e for e in seen if isinstance(e, UtteranceEnded)]
    score, _ = best_match(utterance.audio.astype(np.float32) / 32768, spoken)
    assert score > 0.6  # the question, not the echo
