"""The passages retrieved for the current turn: rank, score, file, heading, snippet, injected."""

from __future__ import annotations

from textual.widgets import DataTable

from voicechat.events import Source


class SourcesPanel(DataTable):
    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.add_columns("#", "score", "used", "file", "heading", "snippet")

    def show(self, sources: tuple[Source, ...]) -> None:
        self.clear()
        for source in sources:
            lines = f":{source.lines[0]}-{source.lines[1]}" if source.lines[0] else ""
            self.add_row(
                str(source.rank),
                f"{source.score:.3f}",
                "✔" if source.injected else "",
                f"{source.file}{lines}",
                source.heading,
                " ".join(source.text.split())[:80],
            )
