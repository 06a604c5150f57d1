"""Shown while the models load: which model, and how many of them are ready."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import Label, ProgressBar


class LoadingScreen(Screen[None]):
    def __init__(self, total: int) -> None:
        super().__init__()
        # Created here so progress that arrives before the first refresh is not lost.
        self.bar = ProgressBar(total=total, show_eta=False)
        self.step = Label("")

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Loading models…", classes="title")
            yield self.bar
            yield self.step

    def show_progress(self, step: str, done: int) -> None:
        self.step.update(step)
        self.bar.update(progress=done)
