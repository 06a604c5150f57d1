"""The `voicechat` command: parse arguments, load the config, hand over to one command module.

Each subcommand lives in voicechat/commands/<name>.py with HELP, add_arguments(parser) and
run(args, config) -> exit code; a command with subcommands of its own (`eval rgb`) returns their
parsers from add_arguments, and they take the global flags too. Command modules import heavy
libraries inside run(), so that `voicechat --help` and argument errors stay instant.

Exit codes: 0 done; 1 the command ran but something failed (a turn, a missing model); 2 an error
the user can fix, printed as one line; 130 interrupted (Ctrl+C); 141 (128 + SIGPIPE, as a command
killed by the broken pipe reports) when the reader of stdout went away, as in
`voicechat search ... | head -1`: nothing more is printed, and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from voicechat import __version__
from voicechat.errors import VoicechatError

# name -> module under voicechat.commands; order is the order shown in --help
COMMANDS: dict[str, str] = {
    "chat": "chat",
    "ask": "ask",
    "doctor": "doctor",
    "models": "models",
    "index": "index",
    "search": "search",
    "serve": "serve",
    "tokenize": "tokenize",
    "detokenize": "detokenize",
    "devices": "devices",
    "mic-test": "mic_test",
    "vad": "vad",
    "eval": "eval",
}

DEFAULT_COMMAND = "chat"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

log = logging.getLogger("voicechat")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicechat",
        allow_abbrev=False,  # `serve --engine` is not an abbreviation of --engine-url
        description="Talk with your documents: a hands-free voice assistant for GLM-4-Voice "
        "with speech retrieval over a local knowledge folder. Without a command it starts the "
        "conversation screen.",
    )
    parser.add_argument("--version", action="version", version=f"voicechat {__version__}")
    _add_global_flags(parser)
    _command_module(DEFAULT_COMMAND).add_arguments(parser)  # `voicechat --no-save` starts the chat
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = _command_module(module_name)
        # The default command's flags exist on both levels: its subparser must not reset them.
        default = argparse.SUPPRESS if name == DEFAULT_COMMAND else None
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP, argument_default=default)
        _add_global_flags(sub, suppress_defaults=True)
        for nested in module.add_arguments(sub) or ():
            _add_global_flags(nested, suppress_defaults=True)
    return parser


def _add_global_flags(parser: argparse.ArgumentParser, suppress_defaults: bool = False) -> None:
    """Global flags work before or after the command name."""
    default = argparse.SUPPRESS if suppress_defaults else None
    group = parser.add_argument_group("global options")
    group.add_argument("--config", type=Path, metavar="PATH", default=default,
                       help="config file (default: ./config.yaml, else the user config folder)")
    group.add_argument("--knowledge", metavar="DIR", default=default,
                       help="knowledge folder whose index is used (default: from config)")
    group.add_argument("--voice", metavar="NAME", default=default, help="voice style preset")
    group.add_argument("--rag", choices=["e2e", "asr", "off"], default=default,
                       help="retrieval mode: SONAR speech embedding, ASR transcript, or none")
    group.add_argument("--two-round", choices=["off", "rewrite", "fallback"], default=default,
                       help="two-round retrieval mode")
    group.add_argument("--offline", action="store_true", default=default,
                       help="never contact a model hub; use local and cached models only")
    group.add_argument("--threads", type=_thread_count, metavar="N", default=default,
                       help="CPU threads a model may use (default: runtime.threads, else all cores)")
    group.add_argument("--engine-url", metavar="URL", default=default,
                       help="a remote engine (`voicechat serve --engine` there), e.g. ws://gpu-box:10001: "
                            "the models run there, the microphone and speaker here (engine.url)")
    group.add_argument("--engine-token-env", metavar="VAR", default=default,
                       help="environment variable holding the remote engine's bearer token (engine.token_env)")
    group.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                       default=default, help="log verbosity; debug also shows tracebacks")


def _thread_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of threads, 1 or more, got {text!r}")
    return int(text)


def _command_module(name: str) -> Any:
    return importlib.import_module(f"voicechat.commands.{name}")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Command-line flags as dotted config keys."""
    flags = {
        "knowledge": "retrieval.knowledge_dir",
        "voice": "voice",
        "rag": "retrieval.rag",
        "two_round": "retrieval.two_round",
        "engine_url": "engine.url",
        "engine_token_env": "engine.token_env",
    }
    overrides = {key: getattr(args, flag) for flag, key in flags.items() if getattr(args, flag, None)}
    if "retrieval.knowledge_dir" in overrides:  # a path typed on the command line is relative to here
        folder = Path(overrides["retrieval.knowledge_dir"]).expanduser().absolute()
        if not folder.is_dir():
            what = "is a file" if folder.exists() else "does not exist"
            raise VoicechatError(f"--knowledge {folder}: {what}; give the folder of your notes")
        overrides["retrieval.knowledge_dir"] = str(folder)
    if getattr(args, "offline", None):
        overrides["offline"] = True
    if getattr(args, "threads", None):
        overrides["runtime.threads"] = args.threads
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = (getattr(args, "log_level", None) or "warning").upper()
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if level not in ("DEBUG", "INFO"):  # transformers' advice to its developers is noise to our users
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not sys.stderr.isatty():  # fairseq2's progress bars leave blank lines in logs and pipes
        os.environ.setdefault("FAIRSEQ2_NO_PROGRESS", "1")
    debug = level == "DEBUG"
    try:
        from voicechat.config import load_config

        config = load_config(getattr(args, "config", None), config_overrides(args))
        if config.runtime.threads:  # before any model work
            from voicechat.placement import set_cpu_threads

            set_cpu_threads(config.runtime.threads)
        module = _command_module(COMMANDS[args.command or DEFAULT_COMMAND])
        return int(module.run(args, config) or 0)
    except VoicechatError as error:
        if debug:
            log.exception("error")
        print(f"voicechat: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        if debug:
            log.exception("interrupted")
        print("voicechat: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry_point() -> None:
    try:
        try:
            code = main()
        finally:
            sys.stdout.flush()  # output still buffered meets a closed pipe here rather than at exit
    except BrokenPipeError:
        code = _stdout_reader_gone()
    if code == EXIT_INTERRUPTED:
        _exit_interrupted()
    sys.exit(code)


def _exit_interrupted() -> None:
    """Ends the process at once after Ctrl-C. The clean-ups registered to run at exit (log
    handlers, temporary folders) run, then the process ends without the interpreter's tear-down
    of every module, which takes one to four seconds once torch is loaded. Model work has stopped
    by now (see voicechat.cancellation)."""
    import atexit
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C would interrupt the clean-ups
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # the reader went away, or the stream was closed
            pass
    os._exit(EXIT_INTERRUPTED)


def _stdout_reader_gone() -> int:
    """The program reading our stdout has closed it (`| head -1`): whatever is left to print goes
    to the null device, so that Python's flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_BROKEN_PIPE
