"""`voicechat eval`: HotpotQA and RGB with spoken questions, retrieval modes side by side."""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from voicechat.config import Config

HELP = "evaluate answers, retrieval and latency on HotpotQA or RGB with spoken questions"
SYNTHETIC_MARK = "SYNTHETIC"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    datasets = parser.add_subparsers(dest="eval_dataset", metavar="DATASET", required=True)
    for name, help_text in (("hotpotqa", "HotpotQA distractor JSON"), ("rgb", "RGB JSON lines (en, zh, _int, _fact)")):
        sub = datasets.add_parser(name, help=f"evaluate on {help_text}", description=f"Evaluate on {help_text}.")
        sub.add_argument("data", type=Path, help="the dataset file")
        _speech_arguments(sub)
        sub.add_argument("--modes", default="e2e,asr,text", help="comma-separated: e2e, asr, text, norag, rewrite, fallback")
        sub.add_argument("--limit", type=int, help="evaluate the first N questions (a random N with --seed)")
        sub.add_argument("--seed", type=int, help="choose the --limit questions at random with this seed")
        sub.add_argument("--scope", choices=["question", "global"], default="question",
                         help="search each question's own passages, or one index over all passages")
        sub.add_argument("--top-k", type=int, help="passages retrieved (default: 4 for HotpotQA, 2 for RGB)")
        sub.add_argument("--out", type=Path, required=True, help="results folder (a rerun resumes)")
        if name == "rgb":
            sub.add_argument("--noise-rate", type=float, default=0.4, help="share of negative passages (0-1)")
            sub.add_argument("--passages", type=int, default=5, help="passages per question")
            sub.add_argument("--correct-rate", type=float, default=0.0, help="_fact files: share of correct positives")
    synth = datasets.add_parser("synth", help="speak a dataset's questions with espeak-ng into a speech set",
                                description="Write ROOT/<dataset>/espeak-ng/<id>/question.wav for every question "
                                            "(marked synthetic), to evaluate with --speech ROOT.")
    synth.add_argument("dataset", choices=["hotpotqa", "rgb"])
    synth.add_argument("data", type=Path)
    synth.add_argument("--out", type=Path, required=True, help="speech set root folder")
    synth.add_argument("--limit", type=int)


def _speech_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--speech", type=Path, metavar="ROOT", help="recordings as ROOT/<dataset>/<voice>/<id>/question.wav")
    group.add_argument("--manifest", type=Path, help="JSON lines with id, audio (and optional text)")
    group.add_argument("--synth", action="store_true", help="speak the questions with espeak-ng (synthetic)")
    parser.add_argument("--speech-voice", metavar="VOICE", help="the voice folder under ROOT/<dataset>/")


def read_questions(args: argparse.Namespace, dataset: str):
    from voicechat.evaluation.datasets import RGBOptions, read_hotpotqa, read_rgb

    if dataset == "hotpotqa":
        return read_hotpotqa(args.data)
    options = RGBOptions(getattr(args, "passages", 5), getattr(args, "noise_rate", 0.4),
                         getattr(args, "correct_rate", 0.0), getattr(args, "seed", None) or 0)
    return read_rgb(args.data, options)


def choose(questions: list, limit: int | None, seed: int | None) -> list:
    if limit is None or limit >= len(questions):
        return questions
    if limit < 1:
        from voicechat.errors import VoicechatError

        raise VoicechatError(f"--limit must be at least 1, got {limit}")
    if seed is None:
        return questions[:limit]
    keep = set(random.Random(seed).sample(range(len(questions)), limit))
    return [q for i, q in enumerate(questions) if i in keep]


def speech_source(args: argparse.Namespace, dataset: str, questions: list):
    from voicechat.evaluation import speech

    if args.synth:
        return speech.synthesise(questions, args.out / "speech-synthetic")
    if args.manifest:
        return speech.manifest(args.manifest)
    source = speech.speech_set(args.speech, dataset, args.speech_voice)
    if (args.speech / dataset / SYNTHETIC_MARK).exists():
        source = speech.SpeechSource("synthetic", source.description, source.files, source.texts)
    return source


def run(args: argparse.Namespace, config: Config) -> int:
    if args.eval_dataset == "synth":
        return run_synth(args)
    from voicechat.assemble import load_components
    from voicechat.evaluation import report, runner

    dataset = args.eval_dataset
    modes = runner.parse_modes(args.modes)
    questions = choose(read_questions(args, dataset), args.limit, args.seed)
    top_k = args.top_k or (4 if dataset == "hotpotqa" else 2)
    spec = runner.RunSpec(dataset, tuple(modes), top_k, args.scope)
    args.out.mkdir(parents=True, exist_ok=True)
    speech = speech_source(args, dataset, questions)
    for question in questions:
        speech.path(question.id)  # every recording exists before anything runs
    info = run_info(args, config, spec, questions, speech)
    info = runner.check_run_info(args.out, info)
    results = runner.ResultsFile(args.out / runner.RESULTS)
    off = _rag_off(config)  # the runner hands each question's retriever to the engine
    with _Bar("loading models") as bar:
        text, speech_encoder, transcriber = runner.load_encoders(config, modes)
        parts = load_components(off, lambda step, done, total: bar.update(done, total, f"loading {step}"))
    scopes = runner.Scopes(config, text, speech_encoder, transcriber, top_k)
    try:
        with _Bar(f"{dataset} questions x modes") as bar:
            records = runner.run(off, parts, scopes, questions, speech, spec, results, bar.update)
    finally:
        parts.close()
        summary = report.write_summary(args.out, info, results.records)
        report.write_plots(args.out, summary)
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    return 1 if any(r["problems"] for r in records) else 0


def _rag_off(config: Config) -> Config:
    import dataclasses

    return dataclasses.replace(config, retrieval=dataclasses.replace(config.retrieval, rag="off", two_round="off"))


def run_info(args, config: Config, spec, questions: list, speech) -> dict:
    import dataclasses

    options = {"top_k": spec.top_k, "scope": spec.scope}
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
        "options": options,
        "speech": {"kind": speech.kind, "description": speech.description, "synthetic": speech.synthetic},
        "models": {name: dataclasses.asdict(spec_) for name, spec_ in vars(config.models).items()
                   if dataclasses.is_dataclass(spec_)},
        "generation": dataclasses.asdict(config.generation),
        "voice": config.voice,
    }


def run_synth(args: argparse.Namespace) -> int:
    from voicechat.evaluation import speech

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

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=True)
        self.task = self.bar.add_task(self.description, total=None)
        self.bar.start()
        return self

    def update(self, done: int, total: int, description: str | None = None) -> None:
        self.bar.update(self.task, completed=done, total=total, description=description or self.description)

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()
