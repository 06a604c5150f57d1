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
    import sys

    from voicechat.errors import VoicechatError

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise VoicechatError("the conversation screen needs a terminal; "
                             "in scripts use `voicechat ask AUDIO` or `voicechat ask --text QUESTION`")
    from voicechat.live import LiveConversation
    from voicechat.tui.app import VoicechatApp

    conversation = LiveConversation(config, save=not args.no_save, use_audio=not args.no_audio)
    VoicechatApp(config, conversation).run()
    if conversation.session.failure is not None:
        raise VoicechatError(f"the conversation could not start: {conversation.session.failure}")
    return 0
