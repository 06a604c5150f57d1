"""`voicechat devices`: the audio inputs and outputs PortAudio can see."""

from __future__ import annotations

import argparse

HELP = "list audio input and output devices (the defaults are marked with *)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, config) -> int:
    from rich.console import Console
    from rich.table import Table

    from voicechat.audio.devices import list_devices

    devices = list_devices()
    console = Console()
    if not devices:
        console.print("No audio devices found. Start a sound server (PulseAudio or PipeWire) or connect a device.")
        return 0
    for kind in ("input", "output"):
        table = Table(title=f"{kind.capitalize()} devices", title_justify="left")
        for column in ("", "index", "name", "host API", "channels", "default rate"):
            table.add_column(column, justify="right" if column in ("index", "channels", "default rate") else "left")
        for device in devices:
            channels = device.channels(kind)
            if channels:
                default = device.is_default_input if kind == "input" else device.is_default_output
                table.add_row("*" if default else "", str(device.index), device.name, device.host_api,
                              str(channels), f"{device.default_rate} Hz")
        console.print(table)
    console.print("Choose with audio.input_device / audio.output_device: an index or part of a name.")
    return 0
