"""Listening while the assistant may be speaking: microphone -> endpointer in a thread, with the
turn-taking rule between the user's voice and the assistant's playback.

With an :class:`~voicechat.audio.echo.EchoCanceller`, everything downstream (the endpointer, the
turn model, push-to-talk recordings, and so the speech tokenizer and SONAR) hears the microphone
with the assistant's voice taken out, and barge-in is on unless ``audio.barge_in: false`` (from
the moment the canceller has learnt the echo path; half-duplex until then): speech during
playback interrupts it: playback is flushed, ``on_interrupt`` is called so the engine
cancels the reply, and the new utterance is captured from its pre-roll as usual. With a
:class:`~voicechat.audio.barge_in.BargeInJudge`, a speech start while the reply plays is only a
candidate, held back until Silero confirms it on the cleaned audio: the canceller's residual echo
then neither cuts the reply nor becomes a question. Once the canceller's
:class:`~voicechat.audio.double_talk.NearEndDetector` has learnt the echo, it decides instead
where the reply is heard: the microphone holding more than the reply's echo cuts the reply at
once (the canceller would take a voice over the echo out with it), and a start it explains as the
echo is never confirmed.

Without one, half-duplex (unless ``audio.barge_in: true``, for headphones): while a reply plays,
and for ``echo_tail_ms`` after it, the microphone is ignored, because with loudspeakers it hears
the assistant. :meth:`Listener.interrupt` cuts a reply for a key press either way.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol

import numpy as np

from voicechat.audio.barge_in import STEP_S, BargeInJudge
from voicechat.audio.capture import Capture
from voicechat.audio.echo import EchoCanceller
from voicechat.audio.endpointer import Endpointer
from voicechat.audio.events import (
    AudioEvent, DeviceFailed, Interrupted, Level, SpeechStarted, UtteranceDiscarded, UtteranceEnded,
)
from voicechat.audio.resample import MODEL_RATE
from voicechat.audio.turn import TurnDetector
from voicechat.config import AudioConfig
from voicechat.errors import AudioError


class Speaker(Protocol):
    """What the listener needs from the player."""

    @property
    def playing(self) -> bool: ...

    @property
    def played_s(self) -> float: ...

    def flush(self) -> None: ...


class Listener:
    """``Listener(config, on_event, speaker, on_interrupt).start()``; events arrive on the
    listener's thread. After a DeviceFailed event, :meth:`start` again (optionally with another
    device) to reopen."""

    def __init__(
        self,
        config: AudioConfig,
        on_event: Callable[[AudioEvent], None],
        speaker: Speaker | None = None,
        on_interrupt: Callable[[], None] | None = None,
        turn: TurnDetector | None = None,
        echo: EchoCanceller | None = None,
        judge: BargeInJudge | None = None,
    ) -> None:
        self.config = config
        self.judge = judge  # confirms speech during playback (with echo cancelled); None: any speech
        self.echo = echo  # the assistant's voice taken out of the microphone; None: not available
        self.turn = turn  # the learned end of turn (audio.turn: smart); None: silence alone
        self.on_event = on_event
        self.speaker = speaker
        self.on_interrupt = on_interrupt or (lambda: None)
        self.capture: Capture | None = None
        self.endpointer: Endpointer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deaf_until = 0.0  # half-duplex: ignore the microphone until then
        self._recording: list[np.ndarray] | None = None  # push-to-talk: every block while held
        self._recording_lock = threading.Lock()
        self._held: list[AudioEvent] | None = None  # a speech start during playback, not yet confirmed
        self._judged_from = 0.0  # Silero's steps ending after this count for the held start
        self._cut = False  # the reply playing now was cut by speech

    def start(self, device: str | int | None = None) -> None:
        """Open the microphone (``device``, else audio.input_device) and start listening. Raises
        AudioError when the device cannot be opened."""
        self.stop()
        capture = Capture(device if device is not None else self.config.input_device,
                          block_ms=self.config.capture_block_ms)
        capture.open()
        self.capture = capture
        if self.echo is not None:
            self.echo.input_latency_s = capture.latency_s
        self.endpointer = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="voicechat-listener", daemon=True)
        self._thread.start()

    @property
    def barge_in(self) -> bool:
        """Speech during playback interrupts it: audio.barge_in, else whether echo is cancelled."""
        return self.config.barge_in if self.config.barge_in is not None else self.echo is not None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        if self.capture is not None:
            self.capture.close()
            self.capture = None

    def start_recording(self) -> None:
        """Keep every block from now on (push-to-talk), pauses included."""
        with self._recording_lock:
            self._recording = []

    def stop_recording(self) -> np.ndarray:
        """What was heard since start_recording, as 16 kHz mono int16 (empty if nothing)."""
        with self._recording_lock:
            blocks, self._recording = self._recording or [], None
        return np.concatenate(blocks) if blocks else np.zeros(0, np.int16)

    def interrupt(self, by: str = "key") -> None:
        """Cut the assistant's reply now (a key press, or speech in barge-in mode)."""
        speaker = self.speaker
        played = speaker.played_s if speaker is not None else 0.0
        if speaker is not None:
            speaker.flush()
        self.on_interrupt()
        self.on_event(Interrupted(t=time.monotonic(), played_s=played, by=by))  # type: ignore[arg-type]

    # --- the listening thread ---------------------------------------------------------------------

    def _run(self) -> None:
        capture = self.capture
        try:
            while not self._stop.is_set():
                block = capture.read(timeout=0.2)
                if block is not None:
                    self._block(block.samples, block.t_end)
        except AudioError as error:
            capture.close()
            self.on_event(DeviceFailed(t=time.monotonic(), message=str(error)))

    def _block(self, samples: np.ndarray, t_end: float) -> None:
        voice_for = None  # seconds the user has been speaking over the reply, as the canceller heard
        if self.echo is not None:
            samples, t_end = self.echo.process(samples, t_end)
            if not samples.size:
                return
            voice_for = self.echo.near_end.take_heard()  # asked every block, so that it is never stale
        with self._recording_lock:
            if self._recording is not None:
                self._recording.append(samples)
        if self.endpointer is None:
            origin = t_end - samples.size / MODEL_RATE
            if self.turn is not None:
                self.turn.reset()  # a reopened microphone is a new stream
            self.endpointer = Endpointer(self.config.vad, origin=origin, turn=self.turn)
            if self.judge is not None:
                self.judge.restart(origin)
            self._held = None
        if self.judge is not None:
            self.judge.push(samples)
        if self._half_duplex_deaf(t_end):
            self.endpointer.skip(samples.size)
            self._held = None
            return
        for event in self.endpointer.push(samples):
            self._speech_event(event)
        playing = self.speaker is not None and self.speaker.playing
        self._cut &= playing  # a new reply can be cut again
        if voice_for is not None and playing and self.barge_in:
            self._barge_in(voice_since=t_end - voice_for)
        elif self._held is not None and self._confirmed():
            self._barge_in()

    def _speech_event(self, event: AudioEvent) -> None:
        playing = self.speaker is not None and self.speaker.playing
        if isinstance(event, SpeechStarted) and playing and self.judge is not None:
            self._held = [event]  # the user, or the canceller's residual echo: Silero decides
            self._judged_from = event.t - STEP_S  # the step that ends as the start is decided counts
        elif self._held is not None and not isinstance(event, Level):
            self._held.append(event)
            if isinstance(event, (UtteranceEnded, UtteranceDiscarded)):
                self._held = None  # it ended unconfirmed: the echo, dropped without a trace
        else:
            if isinstance(event, SpeechStarted) and playing:
                self._cut_reply()
            self.on_event(event)

    def _confirmed(self) -> bool:
        """Silero hears a voice in the held start, and it is not the reply's echo let through."""
        detector = self.echo.near_end if self.echo is not None else None
        if detector is not None and detector.ready and detector.echo_share() > 0.5:
            return False
        return self.judge.speech_after(self._judged_from)

    def _barge_in(self, voice_since: float | None = None) -> None:
        """The user speaks over the reply: cut it (if it still plays), then pass on any held
        speech start, so the utterance reaches the conversation whole. ``voice_since``: when the
        double-talk detector heard the voice begin, where the endpointer may not have yet."""
        held, self._held = self._held or [], None
        self._cut_reply()
        if not held and voice_since is not None:
            started = self.endpointer.begin(voice_since)
            held = [started] if started is not None else []
        for event in held:
            self.on_event(event)

    def _cut_reply(self) -> None:
        """Interrupt the reply by speech, once: while it fades out it still counts as playing."""
        if self.speaker is not None and self.speaker.playing and not self._cut:
            self._cut = True
            self.interrupt(by="speech")

    def _half_duplex_deaf(self, now: float) -> bool:
        if self.speaker is None or self.config.barge_in is True:
            return False
        if self.barge_in and self.echo.converged:  # not before the canceller has learnt the room
            return False
        if self.speaker.playing:
            self._deaf_until = now + self.config.echo_tail_ms / 1000
            return True
        return now < self._deaf_until
