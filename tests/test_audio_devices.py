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
    assert utterance.decision_delay - utterance.model_s < config.vad.trailing_ms / 1000
    assert best_match(utterance.audio.astype(np.float32) / 32768, spoken)[0] > 0.99


REPLY = ("Green tea should steep for two to three minutes in water just below boiling, then the leaves "
         "come out so that the cup does not turn bitter. Black tea takes longer, four or five minutes.")


def speak_over_the_room(pulse, echo_cancellation: bool, barge_in: bool | None, question: np.ndarray | None = None):
    """The assistant speaks a reply through the virtual speaker, which loops back into the virtual
    microphone 60 ms late and 6 dB quieter (tests/support/pulse.py EchoPath); ``question`` is
    played into the microphone over it, 3 s in, and waited for. Returns the listener's events, what the microphone heard
    and what the listener heard (the cleaned audio, recorded as push-to-talk records it)."""
    from tests.support.pulse import MIC_RATE, MIC_SINK, EchoPath
    from tests.support.speech import speak
    from voicechat.audio.echo import load_echo_canceller

    events: queue.Queue = queue.Queue()
    seen: list = []

    def heard(event) -> None:
        seen.append(event)
        events.put(event)

    room = EchoPath(pulse)
    microphone = pulse.record(source=f"{MIC_SINK}.monitor", rate=MIC_RATE)
    assert microphone.wait_for_bytes(1)
    try:
        with Player() as speaker:
            canceller, warning = load_echo_canceller(echo_cancellation, speaker)
            assert warning is None
            listener = Listener(AudioConfig(barge_in=barge_in), heard, speaker, echo=canceller)
            listener.start()
            listener.start_recording()
            try:
                speaker.begin()
                speaker.push(resample(speak(REPLY, "en-us", 150), RATE, DECODER_RATE))
                speaker.end()
                if question is not None:
                    pulse.play(np.concatenate([np.zeros(3 * RATE, np.float32), question, np.zeros(RATE, np.float32)]), RATE)
                assert speaker.wait(timeout=60)
                deadline = time.monotonic() + 30  # the question has ended by then
                while question is not None and time.monotonic() < deadline and not any(
                        isinstance(e, UtteranceEnded) and best_match(e.audio / 32768, question)[0] > 0.6 for e in seen):
                    try:
                        events.get(timeout=1)
                    except queue.Empty:
                        pass
            finally:
                cleaned = listener.stop_recording().astype(np.float32) / 32768
                listener.stop()
    finally:
        room.stop()
    return seen, microphone.stop(), cleaned


def speech_level_db(samples: np.ndarray, skip_s: float = 2.0) -> float:
    """Mean power from ``skip_s`` after the first sound on (the canceller has learnt the room)."""
    loud = np.flatnonzero(np.abs(samples) > 1e-3)
    part = samples[loud[0] + int(skip_s * RATE):] if loud.size else samples
    return float(10 * np.log10(np.mean(np.square(part, dtype=np.float64)) + 1e-20))


@pytest.mark.slow
def test_on_open_speakers_the_echo_canceller_takes_the_reply_out_of_the_microphone(pulse):
    seen, heard, cleaned = speak_over_the_room(pulse, echo_cancellation=True, barge_in=None)
    assert speech_level_db(heard) - speech_level_db(cleaned) > 15  # dB of echo removed
    # The same room without the canceller, barge-in forced on: its own echo cuts the reply at once.
    seen, _, _ = speak_over_the_room(pulse, echo_cancellation=False, barge_in=True)
    (cut,) = [e for e in seen if isinstance(e, Interrupted)]
    assert cut.by == "speech" and cut.played_s < 2.0


@pytest.mark.slow
def test_on_open_speakers_a_question_spoken_over_the_reply_interrupts_it(pulse):
    from tests.support.speech import speak

    spoken = 0.5 * speak("Wait, what about oolong tea?", "en-gb+f3", 170)  # as loud as the echo
    seen, _, _ = speak_over_the_room(pulse, echo_cancellation=True, barge_in=None, question=spoken)
    (cut,) = [e for e in seen if isinstance(e, Interrupted)]
    assert cut.by == "speech" and cut.played_s < 8.0  # the reply is 11.7 s long


def test_the_player_reports_every_block_it_sends_with_when_it_sent_it(pulse):
    from voicechat.audio.echo import PlayedAudio

    reply = resample(question("en"), RATE, DECODER_RATE)
    with Player() as speaker:
        speaker.played = PlayedAudio()
        began = time.monotonic()
        speaker.begin()
        speaker.push(reply)
        speaker.end()
        assert speaker.wait(timeout=30)
        blocks = speaker.played.take()
    stamps = [t for t, _, _, _ in blocks]
    assert began <= stamps[0] and stamps == sorted(stamps) and stamps[-1] <= time.monotonic()
    assert {rate for _, _, rate, _ in blocks} == {speaker.rate}
    assert all(delay > 0 for _, _, _, delay in blocks)  # the device's output latency
    sent = np.concatenate([samples for _, samples, _, _ in blocks])
    score, _ = best_match(sent, resample(reply, DECODER_RATE, speaker.rate))
    assert score > 0.999  # what reached the device, silence between replies included
