"""The conversation: user turns (duration and a small waveform) and assistant replies streaming in."""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Label, Sparkline, Static


def waveform(samples: np.ndarray, bars: int = 48) -> list[float]:
    """Peak level per bar: enough to recognise one's own utterance at a glance."""
    if samples.size == 0:
        return [0.0]
    chunks = np.array_split(np.abs(samples.astype(np.float32)), min(bars, samples.size))
    return [float(chunk.max()) for chunk in chunks]


class UserTurn(Vertical):
    def __init__(self, seconds: float, samples: np.ndarray | None = None, text: str | None = None) -> None:
        super().__init__(classes="turn user")
        self.seconds = seconds
        self.samples = samples
        self.text = text

    def compose(self) -> ComposeResult:
        if self.text is not None:
            yield Label(f"You (typed): {self.text}", classes="who")
        else:
            yield Label(f"You ({self.seconds:.1f} s)", classes="who")
            yield Sparkline(waveform(self.samples if self.samples is not None else np.zeros(0)), classes="wave")


class AssistantTurn(Vertical):
    def __init__(self) -> None:
        super().__init__(classes="turn assistant")
        self.text = ""
        self.interrupted = False
        # Created here, not in compose, so text arriving before the first refresh is kept.
        self.who = Label("Assistant", classes="who")
        self.body = Static("…", classes="reply")

    def compose(self) -> ComposeResult:
        yield self.who
        yield self.body

    def append(self, delta: str) -> None:
        self.text += delta
        self.body.update(self.text)

    def discard(self, why: str) -> None:
        """This round's reply was dropped; the next round's reply follows below it."""
        self.add_class("discarded")
        self.who.update(f"Assistant (discarded: {why})")
        self.body.update(Text(self.text or "(no text)", style="strike"))

    def finish(self, interrupted: bool) -> None:
        self.interrupted = interrupted
        if interrupted:
            self.add_class("interrupted")
            self.who.update("Assistant (interrupted)")
        if not self.text:
            self.body.update("(no text)")


class Conversation(VerticalScroll):
    """Turns in order; new content keeps the view scrolled to the end."""

    def add_user(self, seconds: float, samples: np.ndarray | None = None, text: str | None = None) -> UserTurn:
        turn = UserTurn(seconds, samples, text)
        self.mount(turn)
        self.scroll_end(animate=False)
        return turn

    def add_assistant(self) -> AssistantTurn:
        turn = AssistantTurn()
        self.mount(turn)
        self.scroll_end(animate=False)
        return turn

    def add_notice(self, text: str, error: bool = False) -> None:
        self.mount(Static(text, classes="notice error" if error else "notice"))
        self.scroll_end(animate=False)
