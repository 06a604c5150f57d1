"""`voicechat ask AUDIO`: one turn, headless, through the same engine as the app."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from voicechat.config import Config

HELP = "ask one spoken (or --text) question and print the reply, its sources and timings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="?", type=Path, help="the question as an audio file (any rate)")
    parser.add_argument("--text", help="a typed question instead of audio")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="write the spoken reply here (.wav, .flac or .ogg, from the name)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace, config: Config) -> int:
    from voicechat.assemble import load_components
    from voicechat.audio.files import check_output, write_audio
    from voicechat.engine import TurnInput
    from voicechat.errors import VoicechatError
    from voicechat.events import Event, StageFailed
    from voicechat.session import ConversationSession

    if (args.audio is None) == (args.text is None):
        raise VoicechatError("give either an audio file or --text \"question\"")
    if args.text is not None and not args.text.strip():
        raise VoicechatError("--text is empty; give the question to ask")
    if args.out is not None:
        check_output(args.out, args.audio)  # format and permission, before the reply is generated
    question = TurnInput(text=args.text) if args.audio is None else TurnInput(audio=read_question(args.audio, config))
    warnings: list[str] = []
    failures: list[str] = []

    def collect(event: Event) -> None:
        if isinstance(event, StageFailed):
            failures.append(f"{event.stage}: {event.message}")

    session = ConversationSession(config, collect, save=False)
    if config.engine.url:
        from voicechat.remote.client import RemoteEngine

        link = connect_remote(config)
        session.ready(None, engine=lambda emit: RemoteEngine(link, emit))
        closing = link
    else:
        with _progress() as report:
            parts = load_components(config, report, on_warning=warnings.append)
        session.ready(parts)
        closing = parts
    try:
        result = session.run_turn(question)
    finally:
        closing.close()
    rate = session.engine.sample_rate if session.parts is None else session.parts.decoder.sample_rate
    report_turn(args, result, rate, warnings + failures)  # the reply is shown even if the file cannot be written
    if args.out is not None:
        write_audio(args.out, result.reply_audio, rate)
    return 1 if failures else 0


def connect_remote(config: Config):
    """The connection to the remote engine (engine.url). A refused token, an unreachable server
    or another protocol version is one line (EngineUnavailable)."""
    from voicechat.remote.client import EngineLink, token_from_env

    return EngineLink.open(config.engine.url, token_from_env(config.engine.token_env))


def read_question(path: Path, config: Config):
    """The recorded question at 16 kHz; a recording without speech is not a question to answer,
    and one longer than the microphone would take (audio.vad.max_utterance_s) is refused rather
    than cut: the end of a question often holds what it asks."""
    from voicechat.audio.endpointer import contains_speech
    from voicechat.audio.files import read_speech
    from voicechat.audio.resample import MODEL_RATE
    from voicechat.errors import AudioError

    samples = read_speech(path)
    seconds, limit = samples.size / MODEL_RATE, config.audio.vad.max_utterance_s
    if seconds > limit:
        raise AudioError(f"{path}: {seconds:.1f} s is too long for a question (at most {limit:g} s, "
                         "audio.vad.max_utterance_s); trim the recording, or raise that setting")
    if not contains_speech(samples, config.audio.vad):
        raise AudioError(f"{path}: no speech in this recording (silence, noise, or shorter than "
                         f"{config.audio.vad.min_utterance_ms} ms); record the question again")
    return samples


def report_turn(args: argparse.Namespace, result, rate: int, problems: list[str]) -> None:
    finished = result.finished
    if args.json:
        print(json.dumps({
            "reply": finished.reply_text,
            "sources": [asdict(s) for s in result.sources],
            "timings": asdict(finished.timings),
            "reply_audio_seconds": round(result.reply_audio.size / rate, 3),
            "problems": problems,
        }, ensure_ascii=False, indent=2))
        return
    for problem in problems:
        print(f"voicechat: warning: {problem}", file=sys.stderr)
    print(finished.reply_text or "(no text in the reply)")
    if result.sources:
        print("\nsources:")
        for s in result.sources:
            print(f"  {s.rank}. {s.score:.3f} {s.file} {s.heading}".rstrip())
    print("\ntimings (ms):")
    for name, value in asdict(finished.timings).items():
        if value is not None:
            print(f"  {name:<24} {value:.0f}" if isinstance(value, float) else f"  {name:<24} {value}")


class _progress:
    """A progress bar on stderr while the models load."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        console = Console(stderr=True)
        self.bar = Progress(TextColumn("loading {task.description}"), BarColumn(),
                            console=console, transient=True, disable=not console.is_terminal)
        self.task = self.bar.add_task("models", total=1)
        self.bar.start()
        return self.update

    def update(self, step: str, done: int, total: int) -> None:
        self.bar.update(self.task, description=step, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()
