"""Knowledge retrieval: reading and chunking documents, SONAR encoders, the faiss index, and the
retriever that the conversation engine, `voicechat search` and the evaluation harness use."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from voicechat.config import ModelSpec, RetrievalConfig


def index_location(retrieval: RetrievalConfig, resolve: Callable[[str], Path],
                   knowledge_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(knowledge folder, index folder): the folder given on the command line or in the config;
    the index in ``retrieval.index_dir`` if set, else inside the knowledge folder."""
    from voicechat.retrieval.index import default_index_dir

    knowledge = Path(knowledge_dir).expanduser() if knowledge_dir else resolve(retrieval.knowledge_dir)
    index_dir = resolve(retrieval.index_dir) if retrieval.index_dir else default_index_dir(knowledge)
    return knowledge.resolve(), index_dir.resolve()


def sonar_spec(spec: ModelSpec, resolve: Callable[[str], Path]) -> ModelSpec:
    """A SONAR model spec whose card-file path (relative to the config file) is made absolute;
    card names pass through."""
    source = spec.source
    if source.endswith((".yaml", ".yml")) or source.startswith((".", "/", "~")):
        return dataclasses.replace(spec, source=str(resolve(source)))
    return spec
