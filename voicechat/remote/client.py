"""A remote engine: the turns run on an engine server (`voicechat serve --engine`), the microphone,
endpointing and speaker stay here.

``RemoteEngine`` has the surface of voicechat.engine.Engine that the conversation session uses
(``run_turn``, ``interrupt``, the loaded retrieval ``modes`` and the reply's ``sample_rate``), so
the TUI, `voicechat ask` and the evaluation drive it unchanged and see the same events. The
server's time stamps are moved onto this machine's clock by anchoring its ``TurnStarted`` at the
moment the question was sent; the reply's audio is stamped when it arrives, and the difference for
its first chunk is the turn's ``network_ms``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from voicechat import __version__
from voicechat.engine import CollectingSpeaker, Settings, Speaker, TurnInput, TurnResult
from voicechat.errors import ConfigError, VoicechatError
from voicechat.events import (
    AudioChunk, Event, Notice, Retrieved, SpeechTokenized, StageFailed, TextDelta, TurnConfirmed, TurnFinished,
    TurnStarted, TurnTimings,
)
from voicechat.glm.prompt import Conversation, Prompt
from voicechat.hold import HeldSpeaker
from voicechat.remote import codec, protocol

WELCOME_TIMEOUT_S = 30.0
STAGE = "engine server"


class EngineUnavailable(VoicechatError):
    """The engine server cannot be used: unreachable, the token refused, another protocol version."""


class EngineLink:
    """One WebSocket to an engine server, after the handshake."""

    def __init__(self, url: str, connection: Any, welcome: dict[str, Any]) -> None:
        self.url = url
        self.connection = connection
        self.welcome = welcome

    @classmethod
    def open(cls, url: str, token: str | None, timeout: float = 10.0) -> EngineLink:
        """Connects and says hello; EngineUnavailable says why not, in one line."""
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
        from websockets.sync.client import connect

        address = url.rstrip("/") + protocol.PATH if not url.rstrip("/").endswith(protocol.PATH) else url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            connection = connect(address, additional_headers=headers, open_timeout=timeout, max_size=None,
                                 compression=None, proxy=None, user_agent_header=f"voicechat/{__version__}",
                                 legacy=True)  # the connection itself, closed by EngineLink.close
        except InvalidURI:
            raise ConfigError(f"--engine-url {url}: not a ws:// or wss:// address") from None
        except InvalidStatus as error:
            raise EngineUnavailable(_refusal(url, error.response.status_code)) from None
        except (OSError, TimeoutError, InvalidHandshake) as error:
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise EngineUnavailable(f"cannot reach the engine server at {url} ({reason}); start "
                                    "`voicechat serve --engine` there, or check --engine-url") from None
        try:
            connection.send(protocol.dump({"type": "hello", "protocol": protocol.PROTOCOL_VERSION,
                                           "client": f"voicechat {__version__}"}))
            welcome = protocol.parse(connection.recv(timeout=WELCOME_TIMEOUT_S))
        except (ConnectionClosed, TimeoutError, protocol.ProtocolError, OSError) as error:
            connection.close()
            raise EngineUnavailable(f"the engine server at {url} did not welcome this client ({error})") from None
        if welcome["type"] == "error":
            connection.close()
            raise EngineUnavailable(f"the engine server at {url} refused this client: {welcome.get('message')}")
        if welcome["type"] != "welcome" or welcome.get("protocol") != protocol.PROTOCOL_VERSION:
            connection.close()
            raise EngineUnavailable(f"the engine server at {url} speaks protocol {welcome.get('protocol')!r}, "
                                    f"this client {protocol.PROTOCOL_VERSION}: install the same voicechat version "
                                    "on both machines")
        return cls(url, connection, welcome)

    def send(self, message: dict[str, Any]) -> None:
        self.connection.send(protocol.dump(message))

    def send_frame(self, header: dict[str, Any], payload: bytes) -> None:
        self.connection.send(protocol.pack(header, payload))

    def receive(self) -> tuple[dict[str, Any], bytes]:
        message = self.connection.recv()
        return protocol.unpack(message) if isinstance(message, bytes) else (protocol.parse(message), b"")

    def close(self) -> None:
        self.connection.close()


def _refusal(url: str, status: int) -> str:
    if status == 401:
        return (f"the engine server at {url} refused the token (HTTP 401): give the server's token in the "
                "environment variable named by --engine-token-env (engine.token_env)")
    return f"the engine server at {url} answered HTTP {status}; is it `voicechat serve --engine`?"


def token_from_env(variable: str | None) -> str | None:
    import os

    if not variable:
        return None
    token = os.environ.get(variable)
    if not token:
        raise ConfigError(f"--engine-token-env names {variable}, but that environment variable is empty")
    return token


class RemoteEngine:
    """Turns on an engine server for one conversation. ``emit`` gets the events as the
    in-process engine would emit them; ``speaker`` plays the reply's audio as it arrives."""

    def __init__(self, link: EngineLink, emit: Callable[[Event], None], speaker: Speaker | None = None,
                 reconnect: Callable[[], EngineLink] | None = None) -> None:
        self.link: EngineLink | None = link
        self.url = link.url
        self.emit_to_driver = emit
        self.speaker = speaker or CollectingSpeaker()
        self.reconnect = reconnect
        self.modes = frozenset(link.welcome.get("modes", ()))
        self.sample_rate = int(link.welcome["sample_rate"])
        self.limits = link.welcome.get("limits", {})
        self.turns = 0
        self.cancel = threading.Event()
        # (header ids, turns) the server's copy of the history holds; None: not known, so the first
        # turn sends the history (a connection may have served another conversation before)
        self._server_history: tuple[int, int] | None = None

    @classmethod
    def connect(cls, url: str, token: str | None, emit: Callable[[Event], None],
                speaker: Speaker | None = None) -> RemoteEngine:
        return cls(EngineLink.open(url, token), emit, speaker, reconnect=lambda: EngineLink.open(url, token))

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def interrupt(self) -> None:
        self.cancel.set()
        self.speaker.flush()
        played = self.speaker.played_s
        self._send_interrupt(None if played == float("inf") else played)

    def stop_turn(self) -> None:
        """Cancels the turn on the server (a held turn that was dropped; nothing of it played)."""
        self.cancel.set()
        self._send_interrupt(None)

    def _send_interrupt(self, played: float | None) -> None:
        link = self.link
        if link is not None:
            try:
                link.send({"type": "interrupt", "played_s": played})
            except Exception:  # noqa: BLE001 - the connection is gone: the turn's reader says so
                pass

    def run_turn(self, question: TurnInput, settings: Settings, history: Conversation) -> TurnResult:
        """A held turn (``question.hold``) runs on the server at once; here its events and audio
        wait in the hold. Dropped, it leaves nothing: not its number, and not the server's copy of
        the history, which is sent again with the next turn."""
        self.cancel.clear()
        hold = question.hold
        turn = _RemoteTurn(self, self.turns + 1, question)
        if hold is not None:
            hold.on_drop(self.stop_turn)
        result = self._run(turn, question, settings, history)
        if hold is not None and not hold.released:
            self._server_history = None  # the server remembered a question the conversation did not ask
            return result
        self.turns = turn.number
        if result.prompt is not None:
            dropped = result.prompt.dropped_turns
            self._server_history = (len(history.header or result.prompt.header),
                                    len(history.turns) - min(dropped, len(history.turns)) + 1)
        return result

    def _run(self, turn: _RemoteTurn, question: TurnInput, settings: Settings, history: Conversation) -> TurnResult:
        if question.hold is not None and question.hold.dropped:
            return turn.finish()  # dropped before it was sent
        limit = self.limits.get("max_utterance_s")
        if question.audio is not None and limit and len(question.audio) / 16000 > limit:
            turn.fail(f"the question is {len(question.audio) / 16000:.1f} s long; the engine server takes at most "
                      f"{limit:g} s (its serve.max_utterance_s)")
            return turn.finish()
        link = self._usable_link(turn)
        if link is None:
            return turn.finish()
        from websockets.exceptions import ConnectionClosed

        try:
            header = self.turn_header(turn.number, question, settings, history)
            turn.send(link, header, question)
            turn.receive(link)
        except (ConnectionClosed, OSError, VoicechatError) as error:  # the server went away, or sent nonsense
            self.link = None
            turn.lost = True
            turn.fail(f"the engine server at {self.url} went away mid-turn ({_reason(error)}); the conversation "
                      "so far is kept, and the next question reconnects")
        return turn.finish()

    def turn_header(self, number: int, question: TurnInput, settings: Settings,
                    history: Conversation) -> dict[str, Any]:
        header: dict[str, Any] = {"type": "turn", "id": number, "settings": {
            "rag": settings.rag, "two_round": settings.two_round, "voice": settings.voice}}
        if (len(history.header), len(history.turns)) != self._server_history:
            header["history"] = {"header": list(history.header), "turns": [[q, r] for q, r in history.turns]}
        if question.text is not None:
            header["text"] = question.text
        return header

    def _usable_link(self, turn: _RemoteTurn) -> EngineLink | None:
        if self.link is not None:
            return self.link
        if self.reconnect is None:
            turn.fail(f"not connected to the engine server at {self.url}")
            return None
        try:
            self.link = self.reconnect()
        except VoicechatError as error:
            turn.fail(f"{error}; the question was not sent")
            return None
        self._server_history = (0, 0)
        self.emit_to_driver(Notice(f"reconnected to the engine server at {self.url}"))
        return self.link


class _RemoteTurn:
    """One turn's events as they arrive, moved onto this machine's clock."""

    def __init__(self, engine: RemoteEngine, number: int, question: TurnInput) -> None:
        self.engine = engine
        self.number = number
        self.question = question
        self.hold = question.hold
        self.speaker = engine.speaker if self.hold is None else HeldSpeaker(engine.speaker, self.hold)
        self.events: list[Event] = []
        self.audio: list[np.ndarray] = []
        self.sources = ()
        self.reply_text = ""
        self.server_finished: TurnFinished | None = None
        self.remembered: dict[str, Any] | None = None
        self.sent_at = time.monotonic()
        self.anchor: float | None = None  # the server's clock reading for its TurnStarted
        self.network_ms: float | None = None
        self.started = False
        self.lost = False

    def emit(self, event: Event) -> None:
        self.events.append(event)
        if self.hold is None:
            self.engine.emit_to_driver(event)
        else:
            self.hold.run(lambda: self.engine.emit_to_driver(event))

    def fail(self, message: str) -> None:
        self.emit(StageFailed(stage=STAGE, message=message))

    def send(self, link: EngineLink, header: dict[str, Any], question: TurnInput) -> None:
        self.speaker.begin()
        if question.audio is None:
            link.send(header)
        else:
            pcm = np.clip(np.round(np.asarray(question.audio, np.float32) * 32768.0), -32768, 32767).astype("<i2")
            link.send_frame({**header, "samples": int(pcm.size), "rate": 16000, "format": protocol.PCM_FORMAT},
                            pcm.tobytes())
        self.sent_at = time.monotonic()

    def receive(self, link: EngineLink) -> None:
        while True:
            message, payload = link.receive()
            kind = message["type"]
            if kind == "event":
                self.on_event(codec.decode(message.get("event"), payload or None))
            elif kind == "turn_done" and message.get("id") == self.number:
                self.remembered = message.get("remembered")
                return
            elif kind == "error" and message.get("turn") in (None, self.number):
                self.fail(str(message.get("message")))
                if message.get("turn") == self.number and not self.started:
                    return  # refused before it started: no turn_done follows

    def on_event(self, event: Event) -> None:
        arrived = time.monotonic()
        if isinstance(event, TurnStarted):
            self.started, self.anchor = True, event.t
            q = self.question
            self.emit(replace(event, audio=q.audio, speech_end_t=q.speech_end_t, t=self.sent_at))
            return
        mapped = self.local(event.t)
        if isinstance(event, AudioChunk):
            if self.engine.cancel.is_set() or not self.speaker.push(event.samples):
                return
            if self.network_ms is None:
                self.network_ms = (arrived - mapped) * 1000
            self.audio.append(event.samples)
            self.emit(replace(event, t=arrived))
        elif isinstance(event, TurnFinished):
            self.server_finished = event
        else:
            if isinstance(event, (SpeechTokenized, Retrieved)):
                event = replace(event, started=self.local(event.started))
            if isinstance(event, Retrieved):
                self.sources = event.sources
            if isinstance(event, TextDelta):
                self.reply_text += event.text
            self.emit(replace(event, t=mapped))

    def local(self, server_t: float) -> float:
        return server_t - (self.anchor if self.anchor is not None else server_t) + self.sent_at

    def finish(self) -> TurnResult:
        engine, speaker = self.engine, self.speaker
        speaker.end()
        if self.hold is not None and self.hold.wait():  # a held turn ends once decided
            self.emit(TurnConfirmed(t=self.hold.confirmed_at, audio_ready=self.hold.audio_ready_at))
        end_t = time.monotonic()
        server = self.server_finished
        if self.network_ms is None and server is not None:
            self.network_ms = (end_t - self.local(server.t)) * 1000
        interrupted = engine.cancel.is_set() or self.lost or bool(server and server.interrupted)
        timings = TurnTimings.from_events(self.events, end_t=end_t, underruns=speaker.underruns,
                                          first_heard_at=speaker.first_audio_at)
        finished = TurnFinished(turn=self.number, reply_text=server.reply_text if server else self.reply_text,
                                interrupted=interrupted, timings=replace(timings, network_ms=self.network_ms),
                                t=end_t)
        self.emit(finished)
        audio = np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)
        prompt, heard = self.remembered_prompt()
        return TurnResult(finished, self.sources, audio, self.events, prompt, heard)

    def remembered_prompt(self) -> tuple[Prompt | None, list[int]]:
        """What the turn added to the server's history, as the session adds it to its copy."""
        kept = self.remembered
        if not kept:
            return None, []
        prompt = Prompt(ids=[], header=list(kept.get("header") or []), turn_ids=[],
                        remembered_ids=list(kept["question"]), dropped_turns=int(kept["dropped_turns"]),
                        dropped_passages=0)
        return prompt, list(kept["reply"])


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
