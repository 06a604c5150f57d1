"""Where the time went: this turn as a waterfall of stages, plus rolling averages."""

from __future__ import annotations

from collections import deque

from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from voicechat.events import TurnTimings

# (label, field): milestones measured from the end of the user's speech
MILESTONES = [
    ("endpoint", "endpoint_delay_ms"),
    ("first token", "first_token_ms"),
    ("first text", "first_text_ms"),
    ("first speech", "first_speech_token_ms"),
    ("first audio", "first_audio_ms"),
    ("first heard", "first_heard_ms"),
    ("total", "total_ms"),
]
DURATIONS = [("tokenize", "tokenize_ms"), ("retrieve", "retrieve_ms"), ("  embed", "embed_ms"),
             ("  search", "search_ms"), ("network", "network_ms"),
             # a reply prepared in the pause: the work done before the question was confirmed (saved)
             ("preemptive", "preemptive_ms"), ("confirm→audio", "confirmed_to_audio_ms"),
             ("confirm→heard", "confirmed_to_heard_ms")]
ONLY_WHEN_MEASURED = {"network_ms"}  # a remote engine's stage: no row for a turn in this process
BAR_WIDTH = 18


class TimingsPanel(Static):
    def __init__(self, history: int = 20, **kwargs: object) -> None:
        super().__init__("No turn yet.", **kwargs)
        self.history: deque[TurnTimings] = deque(maxlen=history)

    def show(self, timings: TurnTimings) -> None:
        self.history.append(timings)
        self.update(self.timings_table(timings))

    def timings_table(self, timings: TurnTimings) -> Table:
        table = Table(box=None, padding=(0, 1, 0, 0), show_edge=False, header_style="dim", expand=False)
        table.add_column("", no_wrap=True, min_width=13)
        table.add_column("", width=BAR_WIDTH, no_wrap=True)
        table.add_column("this turn", justify="right", no_wrap=True, min_width=9)
        table.add_column("average", justify="right", style="dim", no_wrap=True, min_width=7)
        scale = max((v for _, f in MILESTONES + DURATIONS if (v := getattr(timings, f)) is not None), default=1.0)
        for label, name in DURATIONS + MILESTONES:
            value = getattr(timings, name)
            if name in ONLY_WHEN_MEASURED and value is None and self.average(name) is None:
                continue
            table.add_row(label, self.bar(value, scale), _ms(value), _ms(self.average(name)))
        if timings.prompt_tokens is not None:
            table.add_row("prompt tokens", "", str(timings.prompt_tokens), "")
        table.add_row("underruns", "", str(timings.underruns), "")
        return table

    def average(self, name: str) -> float | None:
        values = [v for t in self.history if (v := getattr(t, name)) is not None]
        return sum(values) / len(values) if values else None

    @staticmethod
    def bar(value: float | None, scale: float) -> Text:
        if value is None or scale <= 0:
            return Text("")
        return Text("█" * max(1, round(BAR_WIDTH * value / scale)), style="cyan")


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"
