"""`voicechat` / `voicechat chat`: the conversation screen."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from voicechat.config import Config

if TYPE_CHECKING:
    from voicechat.tui.app import VoicechatApp

HELP = "talk: the conversation screen (also what `voicechat` alone starts)"
# What C libraries (ALSA, JACK, PortAudio) write to stderr while the screen runs: the latest
# conversation's, in the user's log folder.
STDERR_LOG = "chat-stderr.log"


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
    from voicechat.allocator import keep_large_buffers_out_of_the_heap
    from voicechat.live import LiveConversation
    from voicechat.tui.app import VoicechatApp
    from voicechat.tui.stderr_redirect import StderrRedirect

    keep_large_buffers_out_of_the_heap()  # memory stays flat over a long conversation
    conversation = LiveConversation(config, save=not args.no_save, use_audio=not args.no_audio)
    app = VoicechatApp(config, conversation)
    with StderrRedirect(_user_log_dir() / STDERR_LOG, on_lines=_audio_warnings_to(app)):
        app.run()
    if conversation.session.failure is not None:
        raise VoicechatError(f"the conversation could not start: {conversation.session.failure}")
    return 0


def _user_log_dir() -> Path:
    from platformdirs import user_log_dir

    return Path(user_log_dir("voicechat"))


def _audio_warnings_to(app: VoicechatApp) -> Callable[[int, str], None]:
    from voicechat.events import AudioWarnings
    from voicechat.tui.app import EngineEvent

    def show(count: int, latest: str) -> None:
        # Only a running app takes messages from other threads; lines written before it runs are
        # in the count shown with the next one.
        if app.is_running:
            app.post_message(EngineEvent(AudioWarnings(count, latest)))

    return show
