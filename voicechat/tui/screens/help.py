"""The key bindings, read from the app so they can never disagree with it."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        """``keys``: (the keys as the user types them, what they do)."""
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table(title="voicechat keys", expand=True)
        table.add_column("key")
        table.add_column("what it does")
        for keys, description in self.keys:
            table.add_row(keys, description)
        table.add_row("enter", "send the typed question (in the text box)")
        with VerticalScroll(classes="dialog"):
            yield Static(table)
            yield Static("Speak when the status says LISTENING. Press escape or q to close.", classes="hint")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss()
