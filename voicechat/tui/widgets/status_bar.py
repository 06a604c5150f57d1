"""One line: what the assistant is doing, the microphone level and the active modes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rich.text import Text
from textual.widgets import Static

STATE_STYLES = {
    "loading": "yellow",
    "listening": "green",
    "hearing": "bold green",
    "pausing": "green",
    "thinking": "yellow",
    "speaking": "cyan",
    "muted": "dim",
    "interrupted": "magenta",
    "error": "bold red",
}


@dataclass(frozen=True)
class Status:
    state: str = "loading"
    level: float = 0.0  # 0..1
    rag: str = "e2e"
    two_round: str = "off"
    voice: str = "default"
    backend: str = "local"
    loading: tuple[str, ...] = ()  # retrieval modes being loaded
    muted: bool = False
    detail: str = ""
    audio_warnings: int = 0
    turn_probability: float | None = None  # the end-of-turn model's last answer in this utterance


class StatusBar(Static):
    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.status = Status()

    def on_mount(self) -> None:
        self.update(self.status_text())

    def set(self, **changes: object) -> None:
        status = replace(self.status, **changes)
        if status != self.status:
            self.status = status
            self.update(self.status_text())

    def status_text(self) -> Text:
        s = self.status
        meter = "▮" * round(10 * min(1.0, max(0.0, s.level)))
        line = Text()
        line.append(f" {s.state.upper():<9}", style=STATE_STYLES.get(s.state, ""))
        line.append(" mic muted      " if s.muted else f" mic {meter:<10} ", style="dim" if s.muted else "green")
        if s.state == "pausing" and s.turn_probability is not None:
            line.append(f" finished? {s.turn_probability:.2f} ", style="green")
        line.append(f" rag:{s.rag}  two-round:{s.two_round}  voice:{s.voice}  backend:{s.backend}")
        if s.loading:
            line.append(f"  loading {', '.join(s.loading)}…", style="yellow")
        if s.audio_warnings:
            line.append(f"  audio warnings: {s.audio_warnings}", style="yellow")
        if s.detail:
            line.append(f"  {s.detail}", style="dim")
        return line
