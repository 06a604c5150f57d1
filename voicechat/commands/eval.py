"""`voicechat eval`: HotpotQA, RGB or your own folder with spoken questions, retrieval modes (and
voice models) side by side."""

from __future__ import annotations

import argparse
import dataclasses
import random
from pathlib import Path

from voicechat.config import Config
from voicechat.errors import VoicechatError

HELP = "evaluate answers, retrieval and latency on HotpotQA, RGB or your own folder with spoken questions"
SYNTHETIC_MARK = "SYNTHETIC"
DATASETS = {
    "hotpotqa": "HotpotQA distractor JSON",
    "rgb": "RGB JSON lines (en, zh, _int, _fact)",
    "folder": "questions about your knowledge folder: JSON lines with id, audio, and optional text, "
              "answers (accepted alternatives) and sources (files relative to the folder). The folder is "
              "--knowledge DIR (default: retrieval.knowledge_dir); its index is updated first",
}
DEFAULT_TOP_K = {"hotpotqa": 4, "rgb": 2, "folder": 4}


def add_arguments(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Returns the parsers of the datasets, which take the global flags too."""
    datasets = parser.add_subparsers(dest="eval_dataset", metavar="DATASET", required=True)
    parsers = []
    for name, help_text in DATASETS.items():
        sub = datasets.add_parser(name, help=f"evaluate on {help_text.split(':')[0]}",
                                  description=f"Evaluate on {help_text}.")
        parsers.append(sub)
        sub.add_argument("data", type=Path, help="the questions file")
        if name == "folder":  # its --knowledge is the global flag
            sub.add_argument("--synth", action="store_true",
                             help="speak each question's text with espeak-ng instead of its audio (synthetic)")
        else:
            _speech_arguments(sub)
            sub.add_argument("--scope", choices=["question", "global"], default="question",
                             help="search each question's own passages, or one index over all passages")
        default_modes = "e2e,asr" if name == "folder" else "e2e,asr,text"
        sub.add_argument("--modes", default=default_modes,
                         help=f"comma-separated: e2e, asr, text, norag, rewrite, fallback (default: {default_modes})")
        sub.add_argument("--voice-models", metavar="LIST",
                         help="comma-separated: glm-4-voice, qwen2.5-omni; the same questions through each, "
                              "side by side (default: the config's voice_model)")
        sub.add_argument("--limit", type=int, help="evaluate the first N questions (a random N with --seed)")
        sub.add_argument("--seed", type=int, help="choose the --limit questions at random with this seed")
        sub.add_argument("--top-k", type=int,
                         help=f"passages retrieved (default: {DEFAULT_TOP_K[name]}); with --engine-url, the engine "
                              "server's retrieval.top_k")
        sub.add_argument("--out", type=Path, required=True, help="results folder (a rerun resumes)")
        if name == "rgb":
            sub.add_argument("--noise-rate", type=float, default=0.4, help="share of negative passages (0-1)")
            sub.add_argument("--passages", type=int, default=5, help="passages per question")
            sub.add_argument("--correct-rate", type=float, default=0.0, help="_fact files: share of correct positives")
    synth = datasets.add_parser("synth", help="speak a dataset's questions with espeak-ng into a speech set",
                                description="Write ROOT/<dataset>/espeak-ng/<id>/question.wav for every question "
                                            "(marked synthetic), to evaluate with --speech ROOT.")
    synth.add_argument("dataset", choices=["hotpotqa", "rgb"], help="the dataset the questions file is from")
    synth.add_argument("data", type=Path, help="the questions file")
    synth.add_argument("--out", type=Path, required=True, help="speech set root folder")
    synth.add_argument("--limit", type=int, help="speak the first N questions")
    return parsers + [synth]


def _speech_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--speech", type=Path, metavar="ROOT", help="recordings as ROOT/<dataset>/<voice>/<id>/question.wav")
    group.add_argument("--manifest", type=Path, help="JSON lines with id, audio (and optional text)")
    group.add_argument("--synth", action="store_true", help="speak the questions with espeak-ng (synthetic)")
    parser.add_argument("--speech-voice", metavar="VOICE", help="the voice folder under ROOT/<dataset>/")


def read_questions(args: argparse.Namespace, dataset: str):
    from voicechat.evaluation.datasets import RGBOptions, read_folder_questions, read_hotpotqa, read_rgb

    if dataset == "hotpotqa":
        return read_hotpotqa(args.data)
    if dataset == "folder":
        return read_folder_questions(args.data)
    options = RGBOptions(getattr(args, "passages", 5), getattr(args, "noise_rate", 0.4),
                         getattr(args, "correct_rate", 0.0), getattr(args, "seed", None) or 0)
    return read_rgb(args.data, options)


def choose(questions: list, limit: int | None, seed: int | None) -> list:
    if limit is None or limit >= len(questions):
        return questions
    if limit < 1:
        raise VoicechatError(f"--limit must be at least 1, got {limit}")
    if seed is None:
        return questions[:limit]
    keep = set(random.Random(seed).sample(range(len(questions)), limit))
    return [q for i, q in enumerate(questions) if i in keep]


def speech_source(args: argparse.Namespace, dataset: str, questions: list):
    from voicechat.evaluation import speech

    if args.synth:
        return speech.synthesise(questions, args.out / "speech-synthetic")
    if dataset == "folder":
        return speech.manifest(args.data)
    if args.manifest:
        return speech.manifest(args.manifest)
    source = speech.speech_set(args.speech, dataset, args.speech_voice)
    if (args.speech / dataset / SYNTHETIC_MARK).exists():
        source = speech.SpeechSource("synthetic", source.description, source.files, source.texts)
    return source


def run(args: argparse.Namespace, config: Config) -> int:
    if args.eval_dataset == "synth":
        return run_synth(args)
    from voicechat.allocator import keep_large_buffers_out_of_the_heap
    from voicechat.assemble import load_components
    from voicechat.evaluation import report, runner

    keep_large_buffers_out_of_the_heap()  # memory stays flat over many questions
    dataset = args.eval_dataset
    check_out_folder(args.out)
    modes = runner.parse_modes(args.modes)
    voice_configs = per_voice_model(config, args.voice_models)
    if args.top_k is not None and args.top_k < 1:
        raise VoicechatError(f"--top-k must be at least 1, got {args.top_k}")
    questions = choose(read_questions(args, dataset), args.limit, args.seed)
    check_texts(questions, modes, args.synth)
    if config.engine.url:
        return run_remote(args, config, dataset, modes, questions)
    top_k = args.top_k or DEFAULT_TOP_K[dataset]
    knowledge = index_dir = None
    if dataset == "folder":
        knowledge, index_dir = knowledge_folder(config)
    spec = runner.RunSpec(dataset, tuple(modes), top_k, "folder" if knowledge else args.scope)
    speech = speech_source(args, dataset, questions)  # synthesis is written into --out
    for question in questions:
        speech.path(question.id)  # every audio file exists before anything runs
    args.out.mkdir(parents=True, exist_ok=True)
    info = run_info(args, config, spec, questions, speech, knowledge, list(voice_configs))
    info = runner.check_run_info(args.out, info)
    results = runner.ResultsFile(args.out / runner.RESULTS)
    with _Bar("loading retrieval encoders"):
        text, speech_encoder, transcriber = runner.load_encoders(config, modes)
    scopes = runner.Scopes(config, text, speech_encoder, transcriber, top_k, index_dir)
    if knowledge:
        update_folder_index(scopes, knowledge, index_dir, questions)
    plots = True
    try:
        for voice_model, voice_config in voice_configs.items():  # one voice model in memory at a time
            off = _rag_off(voice_config)  # the runner hands each question's retriever to the engine
            with _Bar(f"loading {voice_model}") as bar:
                parts = load_components(off, lambda step, done, total: bar.update(done, total, f"loading {step}"))
            try:
                with _Bar(f"{dataset} questions x modes ({voice_model})") as bar:
                    records = runner.run(off, parts, scopes, questions, speech, spec, results, bar.update)
            finally:
                parts.close()
    except KeyboardInterrupt:
        plots = False  # seconds of matplotlib while the user waits; the rerun that finishes draws them
        raise
    finally:
        summary = report.write_summary(args.out, info, results.records)
        if plots:
            report.write_plots(args.out, summary)
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    return 1 if any(r["problems"] for r in records) else 0


def run_remote(args: argparse.Namespace, config: Config, dataset: str, modes: list[str], questions: list) -> int:
    """The questions asked of a remote engine (--engine-url), about its machine's knowledge folder."""
    from voicechat.commands.ask import connect_remote
    from voicechat.evaluation import report, runner
    from voicechat.remote.client import EngineLink, RemoteEngine

    if dataset != "folder":
        raise VoicechatError("with --engine-url, eval asks about the engine server's own knowledge folder: use "
                             "`voicechat eval folder`; hotpotqa and rgb index each question's passages on this machine")
    if "text" in modes:
        raise VoicechatError("mode text retrieves on this machine; leave it out of --modes with --engine-url")
    if args.voice_models is not None:
        raise VoicechatError("--voice-models loads each voice model on this machine; with --engine-url the "
                             "engine server's voice model answers: leave out one of the two")
    link = connect_remote(config)
    try:
        top_k = check_remote_engine(link.welcome, config.engine.url, modes, args.top_k)
        spec = runner.RunSpec(dataset, tuple(modes), top_k, "folder")
        speech = speech_source(args, dataset, questions)
        for question in questions:
            speech.path(question.id)
    except BaseException:
        link.close()
        raise
    args.out.mkdir(parents=True, exist_ok=True)
    config = dataclasses.replace(config, voice_model=link.welcome.get("voice_model", config.voice_model))
    info = run_info(args, config, spec, questions, speech)
    # the answers come from the server's models and generation settings, not this machine's config
    info["options"]["engine"] = config.engine.url
    info["models"] = {role: {"source": source} for role, source in link.welcome.get("models", {}).items()}
    info["generation"] = link.welcome.get("generation", {})
    info = runner.check_run_info(args.out, info)
    results = runner.ResultsFile(args.out / runner.RESULTS)
    url, current = config.engine.url, [link]  # one connection for every question; a new one after a loss

    def reconnect() -> EngineLink:
        current[0] = connect_remote(config)
        return current[0]

    try:
        with _Bar(f"{dataset} questions x modes on {url}") as bar:
            records = runner.run_remote(config, lambda emit: RemoteEngine(current[0], emit, reconnect=reconnect),
                                        questions, speech, spec, results, bar.update)
    finally:
        current[0].close()
        summary = report.write_summary(args.out, info, results.records)
        report.write_plots(args.out, summary)
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    return 1 if any(r["problems"] for r in records) else 0


def check_remote_engine(welcome: dict, url: str, modes: list[str], top_k: int | None) -> int:
    """The engine server has loaded what the modes need; returns the passages it retrieves (a
    different --top-k would change the prompts, so it is refused rather than ignored)."""
    from voicechat.assemble import retrieval_modes
    from voicechat.evaluation.runner import MODES

    loaded = set(welcome.get("modes", ()))
    missing = {m for mode in modes for m in retrieval_modes(*MODES[mode])} - loaded
    if missing:
        raise VoicechatError(f"the engine server at {url} has not loaded the {', '.join(sorted(missing))} retrieval "
                             f"models that --modes {','.join(modes)} need (it has: {', '.join(sorted(loaded)) or 'none'}); "
                             "load them there (retrieval.rag, retrieval.two_round) or leave those modes out")
    served = welcome.get("top_k")
    if top_k is not None and served is not None and top_k != served:
        raise VoicechatError(f"the engine server at {url} retrieves {served} passages (its retrieval.top_k); "
                             f"leave out --top-k or give --top-k {served}")
    return int(served or top_k or DEFAULT_TOP_K["folder"])


def per_voice_model(config: Config, names: str | None) -> dict[str, Config]:
    """The config each voice model runs with: the same but for voice_model (its voice preset must
    fit it)."""
    from voicechat.evaluation.runner import parse_voice_models

    chosen = parse_voice_models(names) if names is not None else [config.voice_model]
    configs = {}
    for name in chosen:
        preset = config.voice_preset()
        if not preset.fits(name):
            raise VoicechatError(f"voice preset {config.voice!r} is not for {name}; choose a voice preset "
                                 f"both voice models have (default)")
        configs[name] = dataclasses.replace(config, voice_model=name)
    return configs


def check_out_folder(out: Path) -> None:
    """--out is a folder, or a path where one can be made, and this user may write there; the
    check leaves nothing behind."""
    import tempfile

    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"is inside {path}, which is a file"
                raise VoicechatError(f"--out {out} {where}; choose a folder")
            try:
                tempfile.TemporaryDirectory(dir=path).cleanup()
            except OSError as error:
                raise VoicechatError(f"--out {out}: cannot write in {path} ({error.strerror or error}); "
                                     "choose another folder") from None
            return


def knowledge_folder(config: Config) -> tuple[Path, Path]:
    """(knowledge folder, its index folder) for questions about the user's own folder; --knowledge
    has set retrieval.knowledge_dir."""
    from voicechat.retrieval import index_location

    knowledge, index_dir = index_location(config.retrieval, config.resolve_path)
    if not knowledge.is_dir():
        raise VoicechatError(f"{knowledge}: no such knowledge folder; name an existing folder with --knowledge DIR")
    return knowledge, index_dir


def check_texts(questions: list, modes: list[str], synth: bool) -> None:
    """The text oracle and synthesis need the words of every question."""
    needs = "--synth" if synth else "mode text" if "text" in modes else None
    missing = [q.id for q in questions if not q.text]
    if needs and missing:
        raise VoicechatError(f"{needs} needs the text of every question; {len(missing)} have none "
                             f"(first: {missing[0]}); add \"text\" to them or leave out {needs}")


def update_folder_index(scopes, knowledge: Path, index_dir: Path, questions: list) -> None:
    """Brings the folder's index up to date, as `voicechat index` does, and checks that every
    source a question names is in it."""
    from voicechat.commands.index import ProgressReporter, summary
    from voicechat.retrieval.manifest import read_manifest

    with ProgressReporter() as reporter:
        report = scopes.update(knowledge, index_dir, reporter)
    print(summary(report, index_dir))
    indexed = (read_manifest(index_dir) or {}).get("files", {})
    for question in questions:
        for source in question.sources:
            if source not in indexed:
                raise VoicechatError(f"question {question.id}: source {source!r} is not in the index of {knowledge}; "
                                     "name files relative to the knowledge folder")


def _rag_off(config: Config) -> Config:
    return dataclasses.replace(config, retrieval=dataclasses.replace(config.retrieval, rag="off", two_round="off"))


def run_info(args, config: Config, spec, questions: list, speech, knowledge: Path | None = None,
             voice_models: list[str] | None = None) -> dict:
    options = {"top_k": spec.top_k, "scope": spec.scope}
    if knowledge:
        options["knowledge"] = str(knowledge)
    for name in ("noise_rate", "passages", "correct_rate"):
        if hasattr(args, name):
            options[name] = getattr(args, name)
    return {
        "dataset": spec.dataset,
        "data": str(args.data),
        "limit": args.limit,
        "seed": args.seed,
        "questions": [q.id for q in questions],
        "modes": list(spec.modes),
        "voice_models": voice_models or [config.voice_model],
        "options": options,
        "speech": {"kind": speech.kind, "description": speech.description, "synthetic": speech.synthetic},
        "models": {name: dataclasses.asdict(spec_) for name, spec_ in vars(config.models).items()
                   if dataclasses.is_dataclass(spec_)},
        "generation": dataclasses.asdict(config.generation),
        "voice": config.voice,
    }


def run_synth(args: argparse.Namespace) -> int:
    from voicechat.evaluation import speech

    check_out_folder(args.out)
    questions = choose(read_questions(args, args.dataset), args.limit, None)
    base = args.out / args.dataset
    source = speech.synthesise(questions, base / "espeak-ng")
    (base / SYNTHETIC_MARK).write_text("questions spoken by espeak-ng\n", encoding="utf-8")
    print(f"{len(source.files)} synthetic questions in {base / 'espeak-ng'}")
    return 0


class _Bar:
    """A progress bar with ETA on stderr."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __enter__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)
        self.task = self.bar.add_task(self.description, total=None)
        self.bar.start()
        return self

    def update(self, done: int, total: int, description: str | None = None) -> None:
        self.bar.update(self.task, completed=done, total=total, description=description or self.description)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()
