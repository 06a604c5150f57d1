"""`voicechat` / `voicechat chat`: the conversation screen."""

from __future__ import annotations

import argparse

from voicechat.config import Config

HELP = "talk: the conversation screen (also what `voicechat` alone starts)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-save", action="store_true", help="do not keep a session log of this conversation")
    parser.add_argument("--no-audio", action="store_true",
                        help="no microphone or speaker: type questions, read replies")


def run(args: argparse.Namespace, config: Config) -> int:
    from voicechat.live import LiveConversation
    from voicechat.tui.app import VoicechatApp

    conversation = LiveConversation(config, save=not getattr(args, "no_save", False),
                                    use_audio=not getattr(args, "no_audio", False))
    VoicechatApp(config, conversation).run()
    return 0
