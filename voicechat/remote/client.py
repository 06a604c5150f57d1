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

import queue
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
from voicechat.hold import HeldSpeaker, run_or_hold
from voicechat.remote import codec, protocol

WELCOME_TIMEOUT_S = 30.0
SETTINGS_TIMEOUT_S = 10.0
RECONNECT_WAITS_S = (0.25, 0.5, 1.0, 2.0, 3.0)  # between attempts; then the last one again
STAGE = "engine server"
LOST = object()  # in a link's queues: the connection is gone


class EngineUnavailable(VoicechatError):
    """The engine server cannot be used: unreachable, the token refused, another protocol version."""


class LinkLost(VoicechatError):
    """The connection to the engine server ended."""


class EngineLink:
    """One WebSocket to an engine server, after the handshake. A thread of its own reads every
    message as it comes, so a server that goes away is noticed at once, also between turns: the
    answers to settings go to ``replies``, everything else to ``inbox``."""

    def __init__(self, url: str, connection: Any, welcome: dict[str, Any]) -> None:
        self.url = url
        self.connection = connection
        self.welcome = welcome
        self.inbox: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()
        self.lost = threading.Event()
        self.lost_reason = ""
        self.closed_here = False
        self.on_lost: Callable[[EngineLink], None] | None = None
        self.reader = threading.Thread(target=self._read, name="voicechat-remote-reader", daemon=True)
        self.reader.start()

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
        """The next message that is not an answer to settings; LinkLost once the connection ended."""
        item = self.inbox.get()
        if item is LOST:
            self.inbox.put(LOST)  # every later call says so too
            raise LinkLost(self.lost_reason)
        return item

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for message in self.connection:
                try:
                    header, payload = protocol.unpack(message) if isinstance(message, bytes) else \
                        (protocol.parse(message), b"")
                except protocol.ProtocolError as error:
                    self.lost_reason = f"it sent a message this client cannot read: {error}"
                    self.connection.close()
                    break
                (self.replies if _answers_settings(header) else self.inbox).put((header, payload))
            else:
                self.lost_reason = self.lost_reason or _closed_reason(self.connection)
        except (ConnectionClosed, OSError) as error:
            self.lost_reason = _reason(error)
        finally:
            self.lost.set()
            self.inbox.put(LOST)
            self.replies.put(LOST)
            if self.on_lost is not None:
                self.on_lost(self)

    def close(self) -> None:
        self.closed_here = True
        self.lost_reason = self.lost_reason or "closed by this client"
        self.connection.close()


def _answers_settings(header: dict[str, Any]) -> bool:
    if header.get("type") == "error":
        return header.get("code") == "bad_settings" and header.get("turn") is None
    event = header.get("event")
    return header.get("type") == "event" and isinstance(event, dict) and event.get("kind") == "SettingsChanged"


def _closed_reason(connection: Any) -> str:
    close = getattr(connection, "close_rcvd", None)
    return f"it closed the connection ({close.code} {close.reason})".strip() if close else "the connection closed"


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
    in-process engine would emit them; ``speaker`` plays the reply's audio as it arrives.
    ``reconnect`` opens a new link after a loss: at the next question, and in the background
    as soon as the server is back once ``keep_connected`` was called."""

    def __init__(self, link: EngineLink, emit: Callable[[Event], None], speaker: Speaker | None = None,
                 reconnect: Callable[[], EngineLink] | None = None) -> None:
        self.link: EngineLink | None = None
        self.url = link.url
        self.emit_to_driver = emit
        self.speaker = speaker or CollectingSpeaker()
        self.reconnect = reconnect
        self.turns = 0
        self.cancel = threading.Event()
        self.closed = threading.Event()
        self.in_turn = False
        self.background = False  # reconnect without waiting for a question
        self._connecting = threading.Lock()
        self._settings_lock = threading.Lock()
        self._reconnecting: threading.Thread | None = None
        # (header ids, turns) the server's copy of the history holds; None: not known, so the first
        # turn sends the history (a connection may have served another conversation before)
        self._server_history: tuple[int, int] | None = None
        self._adopt(link)

    @classmethod
    def connect(cls, url: str, token: str | None, emit: Callable[[Event], None],
                speaker: Speaker | None = None) -> RemoteEngine:
        return cls(EngineLink.open(url, token), emit, speaker, reconnect=lambda: EngineLink.open(url, token))

    def _adopt(self, link: EngineLink) -> None:
        """A new link: what the server loaded, and what its copy of the history holds."""
        self.modes = frozenset(link.welcome.get("modes", ()))
        self.voices = tuple(link.welcome.get("voices", ()))
        self.sample_rate = int(link.welcome["sample_rate"])
        self.limits = link.welcome.get("limits", {})
        self.link = link
        link.on_lost = self._lost
        if link.lost.is_set():
            self._lost(link)

    def keep_connected(self) -> None:
        """From now on a lost connection is made again in the background (with a notice)."""
        self.background = True
        if self.link is None or self.link.lost.is_set():
            self._reconnect_in_background()

    def close(self) -> None:
        self.closed.set()
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

    # --- connection -------------------------------------------------------------------------------

    def _lost(self, link: EngineLink) -> None:
        """The link's reader saw it end (on the reader's thread)."""
        if link is not self.link or link.closed_here or self.closed.is_set():
            return
        if not self.in_turn:  # in a turn, the turn says so
            self.emit_to_driver(StageFailed(stage=STAGE, message=(
                f"lost the connection to the engine server at {self.url} ({link.lost_reason}); "
                + ("reconnecting in the background" if self.background else "the next question reconnects"))))
        if self.background:
            self._reconnect_in_background()

    def _reconnect_in_background(self) -> None:
        if self.reconnect is None or (self._reconnecting is not None and self._reconnecting.is_alive()):
            return
        self._reconnecting = threading.Thread(target=self._keep_trying, name="voicechat-remote-reconnect",
                                              daemon=True)
        self._reconnecting.start()

    def _keep_trying(self) -> None:
        attempt = 0
        while not self.closed.wait(RECONNECT_WAITS_S[min(attempt, len(RECONNECT_WAITS_S) - 1)]):
            attempt += 1
            with self._connecting:
                if self.link is not None and not self.link.lost.is_set():
                    return  # a question reconnected meanwhile
                try:
                    link = self.reconnect()
                except VoicechatError:
                    continue
                if self.closed.is_set():
                    link.close()
                    return
                self._reconnected(link)
                return

    def _reconnected(self, link: EngineLink) -> None:
        self._adopt(link)
        self._server_history = (0, 0)
        self.emit_to_driver(Notice(f"reconnected to the engine server at {self.url}"))

    def _usable_link(self, turn: _RemoteTurn) -> EngineLink | None:
        with self._connecting:
            if self.link is not None and not self.link.lost.is_set():
                return self.link
            if self.reconnect is None:
                turn.fail(f"not connected to the engine server at {self.url}")
                return None
            try:
                link = self.reconnect()
            except VoicechatError as error:
                turn.fail(f"{error}; the question was not sent")
                return None
            self._reconnected(link)
            return link

    # --- settings ---------------------------------------------------------------------------------

    def change_settings(self, settings: Settings) -> str | None:
        """Asks the server's conversation to take ``settings``; None when it did, else why not."""
        with self._settings_lock:
            link = self.link
            if link is None or link.lost.is_set():
                return f"not connected to the engine server at {self.url}"
            while not link.replies.empty():  # answers nobody waited for (a timeout before)
                link.replies.get_nowait()
            try:
                link.send({"type": "settings", "rag": settings.rag, "two_round": settings.two_round,
                           "voice": settings.voice})
                answer = link.replies.get(timeout=SETTINGS_TIMEOUT_S)
            except queue.Empty:
                return f"the engine server at {self.url} did not answer within {SETTINGS_TIMEOUT_S:g} s"
            except Exception as error:  # noqa: BLE001 - the connection is gone
                return f"the engine server at {self.url} went away ({_reason(error)})"
            if answer is LOST:
                return f"the engine server at {self.url} went away ({link.lost_reason})"
            header, _ = answer
            return str(header.get("message")) if header["type"] == "error" else None

    # --- turns ------------------------------------------------------------------------------------

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

        self.in_turn = True
        try:
            header = self.turn_header(turn.number, question, settings, history)
            turn.send(link, header, question)
            turn.receive(link)
        except (ConnectionClosed, OSError, VoicechatError) as error:  # the server went away, or sent nonsense
            with self._connecting:
                if self.link is link:
                    self.link = None
            link.close()
            if self.background:
                self._reconnect_in_background()
            turn.lost = True
            turn.fail(f"the engine server at {self.url} went away mid-turn ({_reason(error)}); the conversation "
                      "so far is kept, and " + ("it reconnects in the background" if self.background
                                                else "the next question reconnects"))
        finally:
            self.in_turn = False
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
        run_or_hold(self.hold, lambda: self.engine.emit_to_driver(event))

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
