"""`voicechat index [DIR]`: build or update the knowledge index of a folder."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

HELP = "build or update the search index of a knowledge folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", nargs="?", metavar="DIR",
                        help="knowledge folder (default: retrieval.knowledge_dir from the config)")
    parser.add_argument("--rebuild", action="store_true", help="re-embed every file")
    parser.add_argument("--index-type", choices=["auto", "flat", "hnsw", "ivf"], default=None,
                        help="faiss index type (default: retrieval.index_type; auto = exact search "
                             "up to 20,000 chunks, IVF above; ivf needs at least 640 chunks)")
    parser.add_argument("--stats", action="store_true", help="print statistics of the index and exit")
    parser.add_argument("--json", action="store_true", help="with --stats: print JSON")


def run(args: argparse.Namespace, config: Any) -> int:
    from voicechat.cli import EXIT_INTERRUPTED
    from voicechat.retrieval import index_location
    from voicechat.retrieval.index import KnowledgeIndex

    knowledge, index_dir = index_location(config.retrieval, config.resolve_path, args.dir)
    if args.stats:
        index = KnowledgeIndex.open(index_dir, knowledge)
        try:
            print_stats(index.stats(), args.json)
        finally:
            index.close()
        return 0
    with ProgressReporter() as reporter:
        try:
            report = build(config, knowledge, index_dir, args.rebuild, args.index_type or config.retrieval.index_type,
                           reporter)
        except KeyboardInterrupt:
            reporter.stop()
            print(interrupted(reporter.files_done, args.rebuild), file=sys.stderr)
            return EXIT_INTERRUPTED
    print(summary(report, index_dir))
    return 0


def build(config: Any, knowledge, index_dir, rebuild: bool, index_type: str, reporter=None):
    return indexer_for(config, knowledge, index_dir, index_type, reporter).update(rebuild=rebuild)


def indexer_for(config: Any, knowledge, index_dir, index_type: str, reporter=None):
    """The indexer of ``knowledge`` with the configured encoder and chunking; the encoder is loaded
    only if something is to be embedded."""
    from voicechat.retrieval import sonar_spec
    from voicechat.retrieval.encoders import SonarTextEncoder, encoder_identity
    from voicechat.retrieval.indexer import Indexer, Settings

    spec = sonar_spec(config.models.sonar_text, config.resolve_path)
    settings = Settings(encoder_identity(spec), config.retrieval.languages, config.retrieval.chunking)
    return Indexer(knowledge, index_dir, settings, lambda: SonarTextEncoder.load(spec, config.offline),
                   reporter, index_type)


def interrupted(files_saved: int, rebuild: bool) -> str:
    """What Ctrl-C leaves behind, and how to go on: a rerun embeds only the files not saved yet,
    unless it rebuilds again."""
    again = "the same command without --rebuild" if rebuild else "the same command again"
    return f"voicechat: interrupted; {files_saved} files were saved to the index, run {again} to continue"


def summary(report, index_dir) -> str:
    parts = [f"{report.files} files", f"{report.chunks_total} chunks"]
    changes = [f"{n} {what}" for n, what in ((report.added, "added"), (report.changed, "changed"),
                                              (report.deleted, "deleted")) if n]
    line = f"index {index_dir}: " + ", ".join(parts)
    line += f" ({', '.join(changes)}; {report.chunks_embedded} chunks embedded)" if changes else " (no changes)"
    if report.repaired:
        line += "; damaged search files rewritten from the index store"
    if report.skipped:
        line += f"; {report.skipped} skipped"
    if report.outside_links:
        links = "link" if report.outside_links == 1 else "links"
        line += f" ({report.outside_links} symbolic {links} out of the folder)"
    return line + f"; {report.index_type or 'empty'} index, {report.seconds:.1f} s"


def print_stats(stats: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(stats, indent=2, ensure_ascii=False))
        return
    langs = ", ".join(f"{lang} {count}" for lang, count in stats["languages"].items()) or "none"
    index = stats["index"]
    tuned = ""
    if "search_param" in index:
        name = "nprobe" if index["type"] == "ivf" else "efSearch"
        tuned = f" ({name} {index['search_param']}, recall@10 {index['tuned_recall_at_10']:.3f} on its tuning sample)"
    rows = [
        ("knowledge folder", stats["knowledge_dir"]),
        ("index folder", stats["index_dir"]),
        ("files", stats["files"]),
        ("passages", stats["passages"]),
        ("chunks", stats["chunks"]),
        ("languages", langs),
        ("index type", index["type"] + tuned),
        ("dimension", stats["dim"]),
        ("text encoder", (stats["encoder"] or {}).get("source")),
        ("size on disk", f"{stats['size_bytes'] / 2**20:.1f} MiB"),
        ("updated", stats["updated"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


class ProgressReporter:
    """Warnings for skipped files, a spinner while a model loads, and a progress bar (files,
    chunks, chunks/s, ETA) on stderr; plain lines in logs and pipes."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, soft_wrap=True)  # a long path stays on its line in logs
        self.progress = None
        self.task = None
        self.files_done = 0
        self.files_total = 0

    def __enter__(self) -> "ProgressReporter":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/dim]", highlight=False)

    @contextmanager
    def loading(self, what: str) -> Iterator[None]:
        """Loading a model takes seconds, minutes on a busy machine: a terminal shows a spinner
        with the time so far, a log gets a line before and after."""
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        began = time.monotonic()
        if self.console.is_terminal:
            with Progress(SpinnerColumn(), TextColumn(f"loading {what}"), TimeElapsedColumn(),
                          console=self.console, transient=True) as spinner:
                spinner.add_task("load", total=None)
                yield
        else:
            self.note(f"loading {what}")
            yield
        self.note(f"loaded {what} in {time.monotonic() - began:.1f} s")

    def skipped(self, path: str, reason: str) -> None:
        self.console.print(f"[yellow]skipped[/yellow] {path}: {reason}", highlight=False, markup=True)

    def planned(self, files: int, chunks: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.files_total = files
        self.progress = Progress(
            TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("chunks"),
            TextColumn("{task.fields[files]}"), TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(), console=self.console, transient=True, disable=not self.console.is_terminal,
        )
        self.progress.start()
        self.task = self.progress.add_task("embed", total=chunks, files=self._files(), rate="")

    def embedded(self, chunks: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, chunks)
            speed = self.progress.tasks[0].speed
            self.progress.update(self.task, rate=f"{speed:.1f} chunks/s" if speed else "")

    def file_done(self, path: str) -> None:
        self.files_done += 1
        if self.progress is not None:
            self.progress.update(self.task, files=self._files())

    def _files(self) -> str:
        return f"{self.files_done}/{self.files_total} files"
