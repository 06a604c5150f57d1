"""`voicechat doctor`: is everything in place to talk? Says what to run when it is not."""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass

from voicechat.config import Config

HELP = ("check Python, torch, accelerator, audio devices, models and the index; with --engine-url, "
        "the remote engine (reachable, its version, the models it loaded)")


@dataclass(frozen=True)
class Check:
    area: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")


def run(args: argparse.Namespace, config: Config) -> int:
    checks = [*runtime_checks(), audio_check(), echo_check(config)]
    if config.engine.url:  # the models and the index are on the engine server's machine
        checks.append(engine_check(config))
    else:
        checks += [*model_checks(config), index_check(config)]
    if args.json:
        import json

        print(json.dumps([c.__dict__ for c in checks], indent=2, ensure_ascii=False))
    else:
        print(f"config: {config.source}")
        for check in checks:
            mark = "ok " if check.ok else ("!! " if check.required else "-- ")
            print(f"{mark} {check.area:<24} {check.detail}")
            if not check.ok and check.fix:
                print(f"    {'':<24} → {check.fix}")
    return 1 if any(c.required and not c.ok for c in checks) else 0


def runtime_checks() -> list[Check]:
    checks = [Check("python", True, platform.python_version())]
    try:
        import torch
    except ImportError as error:
        return checks + [Check("torch", False, f"not importable ({error})", "reinstall voicechat")]
    checks.append(Check("torch", True, torch.__version__))
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        checks.append(Check("accelerator", True, f"{name}, {memory:.0f} GiB"))
    else:
        checks.append(Check("accelerator", False, "none: models run on the CPU, far slower than real time",
                            "use a CUDA GPU, or a remote backend (backend.kind: glm-server or openai)",
                            required=False))
    return checks


def audio_check() -> Check:
    try:
        import sounddevice
    except OSError as error:
        return Check("audio devices", False, f"PortAudio is not available ({error})",
                     "install the system package libportaudio2", required=False)
    try:
        devices = sounddevice.query_devices()
    except sounddevice.PortAudioError as error:
        return Check("audio devices", False, str(error), "start a sound server (PulseAudio/PipeWire)", required=False)
    inputs = sum(1 for d in devices if d["max_input_channels"] > 0)
    outputs = sum(1 for d in devices if d["max_output_channels"] > 0)
    ok = inputs > 0 and outputs > 0
    return Check("audio devices", ok, f"{inputs} input, {outputs} output",
                 "" if ok else "connect a microphone and speakers, or type questions in the app",
                 required=False)


def engine_check(config: Config) -> Check:
    """The remote engine answers, speaks this client's protocol and says what it loaded."""
    from voicechat.errors import VoicechatError
    from voicechat.remote.client import EngineLink, token_from_env

    try:
        link = EngineLink.open(config.engine.url, token_from_env(config.engine.token_env))
    except VoicechatError as error:
        return Check("remote engine", False, str(error), "start `voicechat serve --engine` on the engine machine, "
                                                         "and give its address and token here")
    link.close()
    welcome = link.welcome
    models = welcome.get("models", {})
    modes = ", ".join(welcome.get("modes", ())) or "none"
    detail = (f"{welcome.get('server')} (protocol {welcome.get('protocol')}) at {config.engine.url}: "
              f"{welcome.get('voice_model', 'glm-4-voice')} {models.get('lm') or models.get('omni')} "
              f"({models.get('backend')}), retrieval modes {modes}")
    if models.get("knowledge"):
        detail += f", knowledge {models['knowledge']}"
    return Check("remote engine", True, detail)


def echo_check(config: Config) -> Check:
    """Whether the assistant's voice can be taken out of the microphone (barge-in on speakers)."""
    from voicechat.audio.echo import canceller_status

    if not config.audio.echo_cancellation:
        return Check("echo cancellation", True, "off (audio.echo_cancellation: false)", required=False)
    ok, detail = canceller_status()
    return Check("echo cancellation", ok, detail if ok else f"{detail}; the microphone is ignored while the "
                 "assistant speaks", "pip install pywebrtc-audio (or reinstall voicechat)", required=False)


def model_checks(config: Config) -> list[Check]:
    from voicechat import models
    from voicechat.commands.models import format_size

    checks = []
    needed = models.needed_roles(config)
    for role in needed + models.optional_roles(config):
        status = models.model_status(role, getattr(config.models, role), config)
        detail = f"{status.state}, {format_size(status.size_bytes)}: {status.spec.source}"
        if role not in needed and status.state == "missing":
            detail += "; turns end after silence instead"
        fix = "" if status.state != "missing" else (
            f"fix models.{role}.source in the config" if status.kind == "local" else "run `voicechat models pull`")
        checks.append(Check(models.ROLE_NAMES[role], status.state != "missing", detail, fix,
                            required=role in needed))
    return checks


def index_check(config: Config) -> Check:
    """What `voicechat index` will find, without embedding or writing anything: the same checks."""
    from voicechat.commands.index import indexer_for
    from voicechat.errors import VoicechatError
    from voicechat.retrieval import index_location
    from voicechat.retrieval.index import KnowledgeIndex
    from voicechat.retrieval.indexer import UNFINISHED

    knowledge, index_dir = index_location(config.retrieval, config.resolve_path)
    required = config.retrieval.rag != "off"
    run_index = f"run `voicechat index {knowledge}`"
    try:
        checkup = indexer_for(config, knowledge, index_dir, config.retrieval.index_type).checkup()
    except VoicechatError as error:
        return Check("knowledge index", False, str(error), "", required)
    if checkup.action == "build":
        return Check("knowledge index", False, checkup.detail, run_index, required)
    if checkup.action == "refuse":
        return Check("knowledge index", False, checkup.detail, "", required)
    if checkup.action == "reembed":
        return Check("knowledge index", False, f"out of date: {checkup.detail}",
                     f"{run_index} (embeds every file again)", required)
    if checkup.action == "repair":
        return Check("knowledge index", False, f"{index_dir}/{checkup.detail}",
                     f"{run_index} (rewrites the search files from the index store; nothing is re-embedded)", required)
    if checkup.detail == UNFINISHED:
        return Check("knowledge index", False, f"{index_dir}: {checkup.detail}", f"{run_index} to finish it",
                     required)
    try:
        index = KnowledgeIndex.open(index_dir, knowledge)
    except VoicechatError as error:
        return Check("knowledge index", False, str(error), "", required)
    try:
        stats = index.stats()
    finally:
        index.close()
    detail = f"{stats['files']} files, {stats['chunks']} chunks, {stats['index_type']}: {index_dir}"
    if checkup.action == "refresh":  # searchable as it is; the next `voicechat index` rewrites it
        detail += f" ({checkup.detail}; `voicechat index {knowledge}` rewrites the search files)"
    return Check("knowledge index", True, detail)
