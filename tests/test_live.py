"""A live conversation without audio devices: typed questions, the session log, switching modes."""

from __future__ import annotations

import dataclasses
import json
import queue
from pathlib import Path

import soundfile

from voicechat.config import Config
from voicechat.events import Event, Notice, StageFailed, StateChanged, TurnFinished
from voicechat.live import LiveConversation
from voicechat.sessions import read_turns


def wait_for(events: queue.Queue, kind: type, timeout: float = 120) -> Event:
    while True:
        event = events.get(timeout=timeout)
        if isinstance(event, kind):
            return event


def text_only(config: Config, sessions: Path) -> Config:
    return dataclasses.replace(config, retrieval=dataclasses.replace(config.retrieval, rag="off"),
                               sessions=dataclasses.replace(config.sessions, dir=str(sessions)))


def test_each_turn_is_on_disk_as_soon_as_it_ends(tiny_config: Config, tmp_path: Path) -> None:
    events: queue.Queue = queue.Queue()
    live = LiveConversation(text_only(tiny_config, tmp_path / "sessions"), use_audio=False)
    live.start(events.put)
    assert wait_for(events, StateChanged).new == "listening"
    live.cycle_voice()  # default -> calm
    live.ask_text("How long should green tea steep?")
    finished = wait_for(events, TurnFinished)
    assert wait_for(events, StateChanged).new == "listening"
    # No close(): as if the process died right after the turn.
    (folder,) = (tmp_path / "sessions").iterdir()
    (turn,) = read_turns(folder / "turns.jsonl")
    assert turn["question"] == "How long should green tea steep?"
    assert turn["reply_text"] == finished.reply_text
    assert turn["voice"] == "calm"
    assert turn["timings"]["prompt_tokens"] > 0
    audio, rate = soundfile.read(folder / turn["reply_audio"])
    assert rate == 22050 and audio.size > 0
    assert "How long should green tea steep?" in live.session.transcript_text()
    live.close()


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "turns.jsonl"
    path.write_text(json.dumps({"turn": 1}) + "\n" + '{"turn": 2, "reply_te')
    assert read_turns(path) == [{"turn": 1}]


def test_loading_failure_is_reported_not_raised(tiny_config: Config, tmp_path: Path) -> None:
    broken = dataclasses.replace(tiny_config, models=dataclasses.replace(
        tiny_config.models, decoder=dataclasses.replace(tiny_config.models.decoder, source=str(tmp_path / "nope"))))
    events: queue.Queue = queue.Queue()
    live = LiveConversation(text_only(broken, tmp_path), use_audio=False)
    live.start(events.put)
    failed = wait_for(events, StageFailed)
    assert failed.stage == "loading"
    assert failed.message == f"missing models: speech decoder ({tmp_path / 'nope'}): no such file or folder"
    assert wait_for(events, StateChanged).new == "error"
    assert live.session.failure == failed.message  # `voicechat` then exits non-zero with this line
    live.ask_text("anyone there?")
    assert "could not start" in wait_for(events, Notice).text
    live.close()
