"""Knowledge retrieval: reading and chunking documents, SONAR encoders, the faiss index, and the
retriever that the conversation engine, `voicechat search` and the evaluation harness use."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from voicechat.config import RetrievalConfig


def index_location(retrieval: RetrievalConfig, resolve: Callable[[str], Path],
                   knowledge_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(knowledge folder, index folder): the folder given on the command line or in the config;
    the index in ``retrieval.index_dir`` if set, else inside the knowledge folder."""
    from voicechat.retrieval.index import default_index_dir

    knowledge = Path(knowledge_dir).expanduser() if knowledge_dir else resolve(retrieval.knowledge_dir)
    index_dir = resolve(retrieval.index_dir) if retrieval.index_dir else default_index_dir(knowledge)
    return knowledge.resolve(), index_dir.resolve()
