"""Pick the microphone: the engine reopens capture on the chosen device."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option

from voicechat.events import DeviceChoice


class DevicePicker(ModalScreen[DeviceChoice | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, devices: list[DeviceChoice]) -> None:
        super().__init__()
        self.devices = devices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Choose the microphone (enter to pick, escape to cancel)", classes="title")
            if not self.devices:
                yield Label("No input device found: type your questions in the text box instead.")
            options = [Option(f"{d.index}: {d.name}{'  (default)' if d.is_default else ''}", id=str(d.index))
                       for d in self.devices]
            yield OptionList(*options)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.devices[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)
