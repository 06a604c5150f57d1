"""The engine server (`voicechat serve --engine`): the whole engine on this machine, one
conversation per WebSocket (protocol: voicechat.remote.protocol).

The models are loaded once and shared by every conversation; each conversation has its own
Engine (its own cancellation), history and settings, so its turns run exactly as they would in the
client's process. A bearer token guards every request; without one the server binds to loopback
only. A conversation whose client goes away has its turn cancelled at the next token or chunk.
"""

from __future__ import annotations

import hmac
import http
import logging
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import numpy as np

from voicechat import __version__
from voicechat.assemble import retrieval_modes
from voicechat.config import Config
from voicechat.engine import Components, Engine, EngineConfig, Settings, TurnInput
from voicechat.errors import VoicechatError
from voicechat.events import Event, SettingsChanged, TurnStarted
from voicechat.glm.prompt import Conversation
from voicechat.remote import codec, protocol

log = logging.getLogger(__name__)

MODEL_RATE = 16000
HELLO_TIMEOUT_S = 10.0
RAG_MODES = ("e2e", "asr", "off")
TWO_ROUND_MODES = ("off", "rewrite", "fallback")


class RequestRefused(VoicechatError):
    """A client message the server cannot act on; its text goes back to that client."""

    def __init__(self, code: str, message: str, turn: int | None = None) -> None:
        super().__init__(message)
        self.code, self.turn = code, turn


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int
    max_utterance_s: float


class EngineServer:
    """Serves ``parts`` (loaded by the caller, closed by it too) on ``host:port``."""

    def __init__(self, config: Config, parts: Components, host: str = "127.0.0.1", port: int = 10001,
                 token: str | None = None) -> None:
        from websockets.sync.server import serve

        self.config = config
        self.parts = parts
        self.token = token
        self.limits = Limits(config.serve.max_frame_bytes, config.serve.max_utterance_s)
        self.conversations = 0
        self.turns_running = 0
        self._lock = threading.Lock()
        self.server = serve(self._serve_conversation, host, port, process_request=self._check_request,
                            max_size=self.limits.max_frame_bytes, compression=None, ping_interval=20,
                            ping_timeout=20, server_header=f"voicechat/{__version__}")

    @property
    def url(self) -> str:
        host, port = self.server.socket.getsockname()[:2]
        return f"ws://{host}:{port}"

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def shutdown(self) -> None:
        self.server.shutdown()

    # --- requests ---------------------------------------------------------------------------------

    def _check_request(self, connection: Any, request: Any) -> Any:
        """Refuses a wrong or missing token before the WebSocket opens; answers the health check."""
        if self.token is not None:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token\n")
        path = request.path.split("?")[0].rstrip("/")
        if path == protocol.HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, protocol.dump(self.health()) + "\n")
        if path != protocol.PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"not found; conversations are at {protocol.PATH}\n")
        return None

    def health(self) -> dict[str, Any]:
        with self._lock:
            return {"status": "ok", "protocol": protocol.PROTOCOL_VERSION, "conversations": self.conversations,
                    "turns_running": self.turns_running, "threads": threading.active_count()}

    def _count(self, what: str, change: int) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + change)

    def _serve_conversation(self, connection: Any) -> None:
        self._count("conversations", 1)
        try:
            ServedConversation(self, connection).run()
        except Exception:  # noqa: BLE001 - one conversation's bug must not stop the others
            log.exception("conversation failed")
        finally:
            self._count("conversations", -1)

    # --- what every conversation is told ----------------------------------------------------------

    def welcome(self) -> dict[str, Any]:
        config, parts = self.config, self.parts
        retriever = parts.retriever
        voice_roles = ("omni",) if config.voice_model == "qwen2.5-omni" else ("lm", "speech_tokenizer", "decoder")
        models = {role: getattr(config.models, role).source
                  for role in (*voice_roles, "sonar_speech", "sonar_text", "asr")}
        models["backend"] = config.backend.kind if config.backend.kind == "local" else \
            f"{config.backend.kind} {config.backend.url}"
        if retriever is not None:
            models["knowledge"] = str(config.resolve_path(config.retrieval.knowledge_dir))
        return {
            "type": "welcome", "protocol": protocol.PROTOCOL_VERSION, "server": f"voicechat {__version__}",
            "models": models, "modes": sorted(retriever.modes) if retriever is not None else [],
            "voice_model": config.voice_model, "voices": list(config.model_voices), "sample_rate": parts.decoder.sample_rate,
            "settings": _settings_json(Settings.from_config(config)), "top_k": config.retrieval.top_k,
            "generation": asdict(config.generation),
            "limits": {"max_frame_bytes": self.limits.max_frame_bytes,
                       "max_utterance_s": self.limits.max_utterance_s},
        }


class NetworkSpeaker:
    """The engine's speaker on the server: the audio goes out as events; what the user heard is
    what the client says it played when it interrupted (all of it otherwise)."""

    def __init__(self, connected: Callable[[], bool]) -> None:
        self.connected = connected
        self.played = float("inf")
        self.underruns = 0
        self.first_audio_at = None  # the device is the client's

    def begin(self) -> None:
        self.played = float("inf")

    def push(self, audio: np.ndarray) -> bool:
        return self.connected()

    def end(self) -> None:
        pass

    def flush(self) -> None:
        pass

    @property
    def played_s(self) -> float:
        return self.played


class ServedConversation:
    """One client's conversation: reads its messages, runs its turns one at a time on a thread of
    their own (so that an interrupt is read while a turn runs), and sends the events back."""

    def __init__(self, server: EngineServer, connection: Any) -> None:
        self.server = server
        self.connection = connection
        self.gone = threading.Event()
        self.speaker = NetworkSpeaker(lambda: not self.gone.is_set())
        self.engine = Engine(EngineConfig.from_config(server.config), server.parts, self.emit, self.speaker)
        self.settings = Settings.from_config(server.config)
        self.history = Conversation()
        self.turn: threading.Thread | None = None
        self._send_lock = threading.Lock()

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            if not self.handshake():
                return
            for message in self.connection:
                try:
                    self.handle(message)
                except RequestRefused as refused:
                    self.send({"type": "error", "code": refused.code, "message": str(refused),
                               **({"turn": refused.turn} if refused.turn is not None else {})})
        except ConnectionClosed:
            pass
        finally:
            self.gone.set()
            self.engine.interrupt()  # the client went away: its turn stops at the next token or chunk
            if self.turn is not None:
                self.turn.join()

    def handshake(self) -> bool:
        try:
            hello = protocol.parse(self.connection.recv(timeout=HELLO_TIMEOUT_S))
        except TimeoutError:
            self.connection.close(protocol.CLOSE_PROTOCOL, "no hello")
            return False
        except protocol.ProtocolError as error:
            self.connection.close(protocol.CLOSE_PROTOCOL, f"expected a hello: {error}")
            return False
        version = hello.get("protocol")
        if hello["type"] != "hello" or version != protocol.PROTOCOL_VERSION:
            message = (f"this engine server speaks protocol {protocol.PROTOCOL_VERSION} (voicechat {__version__}); "
                       f"the client speaks {version!r}: install the same voicechat version on both machines")
            self.send({"type": "error", "code": "version", "message": message})
            self.connection.close(protocol.CLOSE_VERSION, "protocol version mismatch")
            return False
        self.send(self.server.welcome())
        return True

    # --- messages ---------------------------------------------------------------------------------

    def handle(self, message: str | bytes) -> None:
        try:
            if isinstance(message, bytes):
                header, payload = protocol.unpack(message)
            else:
                header, payload = protocol.parse(message), b""
        except protocol.ProtocolError as error:
            raise RequestRefused("bad_message", f"the engine server could not read a message: {error}") from None
        kind = header["type"]
        if kind == "turn":
            self.start_turn(header, payload)
        elif kind == "interrupt":
            played = header.get("played_s")
            self.speaker.played = float(played) if isinstance(played, (int, float)) else float("inf")
            self.engine.interrupt()
        elif kind == "settings":
            self.settings = self.loaded(self.read_settings(header))
            s = self.settings
            self.emit(SettingsChanged(rag=s.rag, two_round=s.two_round, voice=s.voice))
        else:
            raise RequestRefused("bad_message", f"the engine server does not know the message type {kind!r}")

    def read_settings(self, values: dict[str, Any], turn: int | None = None) -> Settings:
        wanted = replace(self.settings, **{k: values[k] for k in ("rag", "two_round", "voice") if k in values})
        voices = self.server.config.voices
        if wanted.rag not in RAG_MODES or wanted.two_round not in TWO_ROUND_MODES:
            raise RequestRefused("bad_settings", f"unknown retrieval setting {wanted.rag!r}/{wanted.two_round!r}",
                                 turn)
        if wanted.voice not in voices:
            raise RequestRefused("bad_settings", f"the engine server has no voice {wanted.voice!r}; "
                                                 f"it has: {', '.join(voices)}", turn)
        return wanted

    def loaded(self, settings: Settings) -> Settings:
        """A switch to retrieval whose models this server has not loaded is refused (a turn that
        asks for it anyway answers without those passages, and says so)."""
        retriever = self.server.parts.retriever
        have = retriever.modes if retriever is not None else frozenset()
        missing = retrieval_modes(settings.rag, settings.two_round) - have
        if missing:
            raise RequestRefused("bad_settings", f"the engine server has not loaded the {', '.join(sorted(missing))} "
                                                 f"retrieval models (it has: {', '.join(sorted(have)) or 'none'})")
        return settings

    def start_turn(self, header: dict[str, Any], payload: bytes) -> None:
        number = header.get("id")
        if not isinstance(number, int):
            raise RequestRefused("bad_message", "a turn needs its id (a number)")
        if self.turn is not None and self.turn.is_alive():
            raise RequestRefused("busy", "a turn is still running in this conversation; interrupt it first", number)
        settings = self.read_settings(header.get("settings") or {}, number)
        question = self.read_question(header, payload, number)
        if "history" in header:
            self.history = read_history(header["history"], number)
        self.turn = threading.Thread(target=self.run_turn, args=(number, question, settings),
                                     name=f"voicechat-remote-turn-{number}", daemon=True)
        self.server._count("turns_running", 1)
        self.turn.start()

    def read_question(self, header: dict[str, Any], payload: bytes, number: int) -> TurnInput:
        text = header.get("text")
        if text is not None:
            if not isinstance(text, str) or not text.strip() or payload:
                raise RequestRefused("bad_message", "a typed question needs its text, and no audio", number)
            return TurnInput(text=text)
        if header.get("rate") != MODEL_RATE or header.get("format") != protocol.PCM_FORMAT:
            raise RequestRefused("bad_message", f"a spoken question is {MODEL_RATE} Hz {protocol.PCM_FORMAT} audio",
                                 number)
        samples = header.get("samples")
        if not isinstance(samples, int) or samples <= 0 or samples * 2 != len(payload):
            raise RequestRefused("bad_message", "the question's audio does not have the length its header says",
                                 number)
        seconds, limit = samples / MODEL_RATE, self.server.limits.max_utterance_s
        if seconds > limit:
            raise RequestRefused("too_long", f"the question is {seconds:.1f} s long; this engine server takes at "
                                             f"most {limit:g} s (serve.max_utterance_s)", number)
        audio = np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0
        return TurnInput(audio=audio)

    # --- the turn ---------------------------------------------------------------------------------

    def run_turn(self, number: int, question: TurnInput, settings: Settings) -> None:
        remembered = None
        try:
            result = self.engine.run_turn(question, settings, self.history)
            if result.prompt is not None:
                first = not self.history.header
                self.history.add(result.prompt, result.heard_ids)
                remembered = {"header": list(result.prompt.header) if first else None,
                              "dropped_turns": result.prompt.dropped_turns,
                              "question": list(result.prompt.remembered_ids), "reply": list(result.heard_ids)}
        except Exception as error:  # noqa: BLE001 - reported to this client; the others go on
            log.exception("turn failed")
            self.send({"type": "error", "code": "engine", "turn": number,
                       "message": f"the engine failed: {type(error).__name__}: {error}"})
        finally:
            self.server._count("turns_running", -1)
        self.send({"type": "turn_done", "id": number, "remembered": remembered})

    def emit(self, event: Event) -> None:
        if isinstance(event, TurnStarted):
            event = replace(event, audio=None)  # the client has its question
        data, payload = codec.encode(event)
        if payload is None:
            self.send({"type": "event", "event": data})
        else:
            self.send_frame({"type": "event", "event": data}, payload)

    def send(self, message: dict[str, Any]) -> None:
        self._send(protocol.dump(message))

    def send_frame(self, header: dict[str, Any], payload: bytes) -> None:
        self._send(protocol.pack(header, payload))

    def _send(self, data: str | bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        if self.gone.is_set():
            return
        try:
            with self._send_lock:
                self.connection.send(data)
        except ConnectionClosed:
            self.gone.set()
            self.engine.interrupt()


def read_history(data: Any, turn: int) -> Conversation:
    def ids(value: Any) -> list[int]:
        if not isinstance(value, list) or not all(isinstance(i, int) and i >= 0 for i in value):
            raise RequestRefused("bad_message", "a history holds lists of token ids", turn)
        return value

    if not isinstance(data, dict) or not isinstance(data.get("turns", []), list):
        raise RequestRefused("bad_message", "a history is an object with header and turns", turn)
    turns = []
    for pair in data.get("turns", []):
        if not isinstance(pair, list) or len(pair) != 2:
            raise RequestRefused("bad_message", "a history turn is a [question, reply] pair", turn)
        turns.append((ids(pair[0]), ids(pair[1])))
    return Conversation(header=ids(data.get("header", [])), turns=turns)


def _settings_json(settings: Settings) -> dict[str, str]:
    return {"rag": settings.rag, "two_round": settings.two_round, "voice": settings.voice}
