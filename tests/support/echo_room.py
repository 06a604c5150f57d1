"""A reply played on open speakers in a simulated room, heard by voicechat's Listener with the real
WebRTC AEC3 and its double-talk detector: the echo is made block by block from what the player
actually sent (so it stops when the reply is cut), and a voice is added to the microphone."""

from __future__ import annotations

import numpy as np

from tests.support.pulse import room_response
from tests.support.speech import RATE

BLOCK = 640  # the microphone's 40 ms blocks
ECHO_DELAY_S = 0.08


class SpeakerDouble:
    """A test double for the player: playing a reply, or not, until flushed."""

    def __init__(self, playing: bool) -> None:
        self.playing = playing
        self.played_s = 2.0
        self.flushed = False

    def flush(self) -> None:
        self.flushed, self.playing = True, False


def pcm(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * 32768), -32768, 32767).astype(np.int16)


def db(samples: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-20))


def room_echo(reply: np.ndarray) -> np.ndarray:
    """The whole reply's echo: 80 ms late, through a room with 250 ms of reverberation."""
    return np.concatenate([np.zeros(int(ECHO_DELAY_S * RATE)), np.convolve(reply, room_response())])[:reply.size]


def voice_at(question: np.ndarray, echo: np.ndarray, at: int, ser_db: float, length: int) -> tuple[np.ndarray, float]:
    """``question`` placed at sample ``at`` of a track ``length`` long, ``ser_db`` against the echo
    over its span; and its onset (first loud sample) in seconds."""
    span = echo[at:at + question.size]
    track = np.zeros(length)
    track[at:at + question.size] = question * 10 ** ((db(span) + ser_db - db(question)) / 20)
    onset = at + int(np.flatnonzero(np.abs(question) > 0.02 * np.abs(question).max())[0])
    return track, onset / RATE


def converse(reply: np.ndarray, voice: np.ndarray, seed: int = 0):
    """The reply played (until the listener cuts it; an all-zero reply: nothing plays), its echo
    through the room, plus ``voice`` and a little noise, heard by a listener with the real AEC3 and
    Silero's barge-in judge, barge-in on as configured by default. Returns the events passed on (levels left out), when the reply was cut
    (seconds into the stream, or None), and the canceller."""
    from scipy.signal import lfilter

    from voicechat.audio.barge_in import BargeInJudge
    from voicechat.audio.echo import EchoCanceller, PlayedAudio, webrtc_aec3
    from voicechat.audio.events import Level
    from voicechat.audio.listener import Listener
    from voicechat.audio.turn import SileroVad
    from voicechat.config import AudioConfig

    room = np.concatenate([np.zeros(int(ECHO_DELAY_S * RATE)), room_response()])
    state = np.zeros(room.size - 1)
    played = PlayedAudio()
    canceller = EchoCanceller(webrtc_aec3(), played, input_latency_s=0.04)
    speaker = SpeakerDouble(playing=bool(np.any(reply)))
    events: list = []
    listener = Listener(AudioConfig(), events.append, speaker, echo=canceller,
                        judge=BargeInJudge(SileroVad.load()))
    noise = np.random.default_rng(seed).standard_normal(voice.size) * 1e-4
    t0, cut_at = 500.0, None
    for start in range(0, voice.size - BLOCK + 1, BLOCK):
        sent = reply[start:start + BLOCK] if speaker.playing else np.zeros(BLOCK)
        played.add(t0 + start / RATE, sent.astype(np.float32), RATE, 0.04)
        echo, state = lfilter(room, [1.0], sent, zi=state)
        listener._block(pcm(echo + voice[start:start + BLOCK] + noise[start:start + BLOCK]), t0 + (start + BLOCK) / RATE)
        if speaker.flushed and cut_at is None:
            cut_at = (start + BLOCK) / RATE
    return [e for e in events if not isinstance(e, Level)], cut_at, canceller
