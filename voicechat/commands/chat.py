"""`voicechat` / `voicechat chat`: the conversation screen."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from voicechat.config import Config

if TYPE_CHECKING:
    from voicechat.sessions import SessionLog
    from voicechat.tui.app import VoicechatApp

HELP = "talk: the conversation screen (also what `voicechat` alone starts)"
STDERR_LOG = "stderr.log"  # what C libraries write to stderr while the screen runs


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
    from voicechat.tui.stderr_redirect import StderrRedirect

    save = not args.no_save and config.sessions.save
    session_log = _session_log(config) if save else None
    conversation = LiveConversation(config, save=save, use_audio=not args.no_audio, session_log=session_log)
    app = VoicechatApp(config, conversation)
    stderr_log = session_log.folder / STDERR_LOG if session_log else _user_log_dir() / f"chat-{STDERR_LOG}"
    with StderrRedirect(stderr_log, on_lines=_audio_warnings_to(app)):
        app.run()
    return 0


def _session_log(config: Config) -> SessionLog | None:
    """The conversation's folder, made before the screen starts so that the stderr log goes in it;
    when it cannot be made, the conversation tries again and says why on screen."""
    from voicechat.errors import VoicechatError
    from voicechat.sessions import open_session_log

    try:
        return open_session_log(config)
    except VoicechatError:
        return None


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
