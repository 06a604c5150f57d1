"""The active configuration, as YAML, with the file it came from."""

from __future__ import annotations

import dataclasses

import yaml
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from voicechat.config import Config


def config_as_yaml(config: Config) -> str:
    data = dataclasses.asdict(config)
    data.pop("source", None)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


class ConfigScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,c", "close", "Close")]

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog"):
            yield Label(f"Active configuration (from {self.config.source})", classes="title")
            yield Static(config_as_yaml(self.config), classes="yaml")

    def action_close(self) -> None:
        self.dismiss()
