"""The real app with a real LiveConversation on the tiny random-weight models, driven through Pilot:
what the screen shows is what the conversation did."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import pytest

from tests.support.speech import speak
from tests.support.tiny_models import ScriptedFirstReply
from voicechat.assemble import load_components
from voicechat.config import Config
from voicechat.engine import TurnInput
from voicechat.live import LiveConversation
from voicechat.sessions import read_turns
from voicechat.tui.app import VoicechatApp
from voicechat.tui.widgets.conversation import AssistantTurn
from voicechat.tui.widgets.status_bar import StatusBar

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config(tiny_rag_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The tiny models with an index of knowledge/ on disk, and retrieval off at the start."""
    sessions = tmp_path_factory.mktemp("live-tui-sessions")
    return dataclasses.replace(tiny_rag_config, retrieval=dataclasses.replace(tiny_rag_config.retrieval, rag="off"),
                               sessions=dataclasses.replace(tiny_rag_config.sessions, dir=str(sessions)))


async def wait_for(pilot, condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await pilot.pause(0.1)


def status(app: VoicechatApp):
    return app.query_one(StatusBar).status


def notices(app: VoicechatApp) -> list[str]:
    return [str(n.message) for n in app._notifications]


async def start(app: VoicechatApp, pilot) -> None:
    await wait_for(pilot, lambda: status(app).state == "listening", "the models to load")


async def test_switching_to_an_unloaded_mode_loads_it_and_the_status_shows_only_what_is_true(config: Config) -> None:
    live = LiveConversation(config, save=False, use_audio=False)
    app = VoicechatApp(config, live)
    async with app.run_test(size=(140, 40)) as pilot:
        await start(app, pilot)
        assert status(app).rag == "off"
        await pilot.press("r")  # off -> e2e: its encoders were never loaded
        await wait_for(pilot, lambda: status(app).loading or status(app).rag == "e2e", "the switch to begin")
        assert status(app).rag == "off" or not status(app).loading  # never "e2e" while it is loading
        await wait_for(pilot, lambda: status(app).rag == "e2e" and not status(app).loading, "e2e to load")
        assert live.session.loaded_modes >= {"e2e", "text"}
        await pilot.press("q")


async def test_push_to_talk_with_nothing_said_returns_to_listening(config: Config, pulse) -> None:
    live = LiveConversation(config, save=False, use_audio=True)
    app = VoicechatApp(config, live)
    async with app.run_test(size=(140, 40)) as pilot:
        await start(app, pilot)
        await pilot.press("space")
        await wait_for(pilot, lambda: status(app).state == "hearing", "push-to-talk to start")
        await pilot.pause(0.5)  # silence from the virtual microphone
        await pilot.press("space")
        await wait_for(pilot, lambda: status(app).state == "listening", "the state to return")
        assert "nothing was said" in notices(app)
        assert not app.query(AssistantTurn)  # no turn was started
        await pilot.press("m", "space")  # muted: push-to-talk says so and starts nothing
        await pilot.pause(0.3)
        assert status(app).state == "muted" and any("muted" in n for n in notices(app))
        await pilot.press("q")


async def test_a_fallback_round_is_shown_discarded_and_screen_transcript_and_log_agree(config: Config) -> None:
    fallback = dataclasses.replace(config, retrieval=dataclasses.replace(config.retrieval, rag="e2e",
                                                                         two_round="fallback"))

    def load(cfg, progress=None, on_warning=None):
        parts = load_components(cfg, progress, on_warning)
        return dataclasses.replace(parts, backend=ScriptedFirstReply(parts, "insufficient information"))

    live = LiveConversation(fallback, save=True, load=load, use_audio=False)
    app = VoicechatApp(fallback, live)
    async with app.run_test(size=(140, 40)) as pilot:
        await start(app, pilot)
        live.session.ask(TurnInput(audio=speak("How long should green tea steep?")))
        await wait_for(pilot, lambda: len(app.query(AssistantTurn)) == 2 and status(app).state == "listening",
                       "both rounds")
        first, final = app.query(AssistantTurn)
        assert first.has_class("discarded") and first.text == "insufficient information"
        assert "retrying with ASR retrieval" in str(first.who.render())
        (turn,) = read_turns(live.session.log.path)
        assert turn["reply_text"] == final.text == live.session.transcript[0][1]
        assert "insufficient information" not in final.text
        await pilot.press("q")


async def test_escape_interrupts_the_reply_and_the_screen_says_so(config: Config) -> None:
    long_replies = dataclasses.replace(config, generation=dataclasses.replace(config.generation, max_new_tokens=2000))
    live = LiveConversation(long_replies, save=False, use_audio=False)
    app = VoicechatApp(long_replies, live)
    async with app.run_test(size=(140, 40)) as pilot:
        await start(app, pilot)
        live.ask_text("Tell me a long story.")
        await wait_for(pilot, lambda: status(app).state == "speaking", "the reply to speak")
        await pilot.press("escape")
        await wait_for(pilot, lambda: status(app).state == "listening", "the reply to stop")
        (reply,) = app.query(AssistantTurn)
        assert reply.interrupted and "interrupted" in str(reply.who.render())
        assert live.session.transcript[0][2] is True
        await pilot.press("q")

