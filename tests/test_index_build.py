"""Building, updating and opening the knowledge index with the tiny SONAR text encoder."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from voicechat.config import ChunkingConfig, RetrievalConfig
from voicechat.errors import KnowledgeIndexError
from voicechat.retrieval import faiss_index
from voicechat.retrieval import indexer as indexer_module
from voicechat.retrieval.encoders import encoder_identity
from voicechat.retrieval.index import KnowledgeIndex
from voicechat.retrieval.indexer import Indexer, Settings
from voicechat.retrieval.retriever import Retriever

LANGS = ("eng_Latn", "zho_Hans")


class CountingEncoder:
    """Wraps the real tiny encoder and counts what it is asked to embed."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.texts: list[str] = []

    def embed(self, texts, langs, progress=None):
        self.texts.extend(texts)
        return self.inner.embed(texts, langs, progress)


class Loader:
    def __init__(self, encoder) -> None:
        self.encoder = encoder
        self.loads = 0

    def __call__(self):
        self.loads += 1
        return self.encoder


def make_indexer(folder: Path, text_encoder, text_spec, chunking=ChunkingConfig(), index_type="auto"):
    encoder = CountingEncoder(text_encoder)
    loader = Loader(encoder)
    settings = Settings(encoder_identity(text_spec), LANGS, chunking)
    indexer = Indexer(folder, folder / ".voicechat-index", settings, loader, index_type=index_type)
    return indexer, loader, encoder


def open_retriever(folder: Path, text_encoder, **config) -> Retriever:
    index = KnowledgeIndex.open(folder / ".voicechat-index")
    return Retriever(index, RetrievalConfig(languages=LANGS, **config), text=text_encoder)


def all_chunks(folder: Path) -> list[tuple[int, str, str]]:
    db = sqlite3.connect(folder / ".voicechat-index" / "store.sqlite")
    try:
        return db.execute("SELECT id, file, text FROM chunks WHERE live = 1 ORDER BY id").fetchall()
    finally:
        db.close()


def test_every_chunk_text_retrieves_its_own_chunk_first(knowledge, text_encoder, text_spec):
    indexer, _, _ = make_indexer(knowledge, text_encoder, text_spec)
    report = indexer.update()
    assert report.chunks_total > 20 and report.index_type == "flat"
    retriever = open_retriever(knowledge, text_encoder)
    chunks = all_chunks(knowledge)
    texts = [text for _, _, text in chunks]
    for chunk_id, _, text in chunks:
        if texts.count(text) > 1:
            continue
        hits = retriever.index.search(text_encoder.embed([text], LANGS[0] if text.isascii() else LANGS[1]), 1)[0]
        assert hits[0][0] == chunk_id, text
        assert hits[0][1] == pytest.approx(1.0, abs=2e-3)


def test_hits_carry_file_heading_line_span_and_parent_passage(knowledge, text_encoder, text_spec):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    retriever = open_retriever(knowledge, text_encoder)
    question = ("Clean and lubricate the chain every 300 kilometres, and after every ride in the rain. "
                "Wipe off the old lubricant first, put one drop on each roller, turn the pedals, and wipe "
                "off the excess.")  # one chunk's exact text: random weights only recognise identity
    hit = retriever.text(question, k=1, lang="eng_Latn").hits[0]
    assert hit.source == "bicycle-maintenance.md"
    assert hit.chunk.heading == "Bicycle maintenance notes > Chain care"
    lines = (knowledge / "bicycle-maintenance.md").read_text().split("\n")
    assert lines[hit.chunk.start - 1].startswith("Clean and lubricate the chain")
    assert hit.chunk.text == question
    assert "stretched by more than 0.5 percent" in hit.passage  # the whole paragraph, not the chunk
    assert hit.location == f"lines {hit.chunk.start}-{hit.chunk.end}"


def test_chinese_chunks_are_embedded_as_chinese(knowledge, text_encoder, text_spec):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    langs = {file: lang for _, file, lang in sqlite3.connect(knowledge / ".voicechat-index" / "store.sqlite")
             .execute("SELECT id, file, lang FROM chunks")}
    assert langs["zh/giant-panda.md"] == "zho_Hans"
    assert langs["solar-system.txt"] == "eng_Latn"


def test_unchanged_folder_is_not_reembedded_and_encoder_is_not_loaded(knowledge, text_encoder, text_spec):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    indexer, loader, _ = make_indexer(knowledge, text_encoder, text_spec)
    report = indexer.update()
    assert loader.loads == 0
    assert report.unchanged == report.files and report.chunks_embedded == 0 and not report.exported


def test_touched_but_identical_file_is_not_reembedded(knowledge, text_encoder, text_spec):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    path = knowledge / "solar-system.txt"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    indexer, loader, _ = make_indexer(knowledge, text_encoder, text_spec)
    report = indexer.update()
    assert loader.loads == 0 and report.changed == 0


def test_changed_file_replaces_its_chunks_and_other_ids_stay(knowledge, text_encoder, text_spec):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    before = all_chunks(knowledge)
    path = knowledge / "solar-system.txt"
    path.write_text(path.read_text() + "\nPluto was reclassified as a dwarf planet in 2006.\n")
    indexer, _, encoder = make_indexer(knowledge, text_encoder, text_spec)
    report = indexer.update()
    after = all_chunks(knowledge)
    assert report.changed == 1 and report.added == 0
    assert {c for c in before if c[1] != "solar-system.txt"} == {c for c in after if c[1] != "solar-system.txt"}
    new = [c for c in after if c[1] == "solar-system.txt"]
    assert min(c[0] for c in new) > max(c[0] for c in before)  # fresh ids, never reused
    assert any("Pluto" in c[2] for c in new)
    assert len(encoder.texts) == len(new)  # only the changed file was embedded
    hit = open_retriever(knowledge, text_encoder).text(
        "Pluto was reclassified as a dwarf planet in 2006.", k=1, lang="eng_Latn").hits[0]
    assert hit.source == "solar-system.txt" and hit.score == pytest.approx(1.0, abs=2e-3)


def test_deleted_file_drops_its_chunks(knowledge, text_encoder, text_spec):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    (knowledge / "faq.jsonl").unlink()
    report = make_indexer(knowledge, text_encoder, text_spec)[0].update()
    assert report.deleted == 1
    assert not [c for c in all_chunks(knowledge) if c[1] == "faq.jsonl"]
    index = KnowledgeIndex.open(knowledge / ".voicechat-index")
    assert "faq.jsonl" not in index.manifest["files"]
    assert len(index) == len(all_chunks(knowledge))


def test_changed_chunking_is_explained_and_everything_is_reembedded(knowledge, text_encoder, text_spec):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    chunking = dataclasses.replace(ChunkingConfig(), sentences_per_chunk=3)
    indexer, loader, _ = make_indexer(knowledge, text_encoder, text_spec, chunking)
    report = indexer.update()
    assert "sentences_per_chunk: 2 -> 3" in report.rebuilt_reason
    assert report.added == report.files and loader.loads == 1
    manifest = json.loads((knowledge / ".voicechat-index" / "manifest.json").read_text())
    assert manifest["chunking"]["sentences_per_chunk"] == 3


def test_changed_encoder_weights_are_detected(knowledge, text_encoder, text_spec, tmp_path):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    copy = tmp_path / "other"
    import shutil

    shutil.copytree(Path(text_spec.source).parent, copy)
    with open(copy / "model.pt", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x01\x02\x03")
    other = dataclasses.replace(text_spec, source=str(copy / "card.yaml"))
    report = make_indexer(knowledge, text_encoder, other)[0].update()
    assert "text encoder" in report.rebuilt_reason


class InterruptingEncoder(CountingEncoder):
    """Test double: the real encoder, but Ctrl-C arrives during the second batch of chunks."""

    def embed(self, texts, langs, progress=None):
        if self.texts:
            raise KeyboardInterrupt
        return super().embed(texts, langs, progress)


def test_interrupted_run_leaves_a_usable_index_and_a_rerun_continues(knowledge, text_encoder, text_spec,
                                                                     monkeypatch):
    first, _, _ = make_indexer(knowledge, text_encoder, text_spec)
    first.update()
    old_count = len(KnowledgeIndex.open(knowledge / ".voicechat-index"))
    for name in ("a", "b", "c"):
        (knowledge / f"new-{name}.txt").write_text(f"Document {name} is new. It has two sentences.\n")
    path = knowledge / "solar-system.txt"
    path.write_text("The Sun is a star.\n")
    monkeypatch.setattr(indexer_module, "GROUP_CHUNKS", 1)
    interrupted, _, _ = make_indexer(knowledge, text_encoder, text_spec)
    interrupted._load_encoder = lambda: InterruptingEncoder(text_encoder)
    with pytest.raises(KeyboardInterrupt):
        interrupted.update()
    # the previous index still opens and every hit resolves to a stored chunk
    retriever = open_retriever(knowledge, text_encoder)
    assert len(retriever.index) == old_count
    hits = retriever.text("The Solar System formed about 4.6 billion years ago.", k=4, lang="eng_Latn").hits
    assert hits and all(h.chunk.text for h in hits)
    retriever.index.close()
    # the rerun embeds only what the interrupted run did not save
    rerun, _, encoder = make_indexer(knowledge, text_encoder, text_spec)
    report = rerun.update()
    assert report.added + report.changed == 3  # one of the four was saved before the interruption
    assert report.exported
    final = KnowledgeIndex.open(knowledge / ".voicechat-index")
    assert set(final.manifest["files"]) >= {"new-a.txt", "new-b.txt", "new-c.txt"}
    assert len(final) == len(all_chunks(knowledge))


def test_export_interrupted_after_store_commit_is_finished_without_the_encoder(knowledge, text_encoder,
                                                                            text_spec, monkeypatch):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    (knowledge / "extra.txt").write_text("An extra document arrived.\n")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(indexer_module, "export", crash)
    with pytest.raises(KeyboardInterrupt):
        make_indexer(knowledge, text_encoder, text_spec)[0].update()
    monkeypatch.undo()
    indexer, loader, _ = make_indexer(knowledge, text_encoder, text_spec)
    report = indexer.update()
    assert loader.loads == 0 and report.exported
    assert "extra.txt" in KnowledgeIndex.open(knowledge / ".voicechat-index").manifest["files"]


def test_truncated_faiss_file_is_reported_not_crashed_on(knowledge, text_encoder, text_spec):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    path = knowledge / ".voicechat-index" / "vectors.faiss"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(KnowledgeIndexError, match="vectors.faiss.*corrupt.*truncated"):
        KnowledgeIndex.open(knowledge / ".voicechat-index")
    report = make_indexer(knowledge, text_encoder, text_spec)[0].update()  # repaired from the store
    assert report.exported and report.chunks_embedded == 0
    assert len(KnowledgeIndex.open(knowledge / ".voicechat-index")) == report.chunks_total


def test_corrupt_manifest_is_rewritten_and_a_corrupt_store_needs_a_rebuild(knowledge, text_encoder, text_spec):
    make_indexer(knowledge, text_encoder, text_spec)[0].update()
    index_dir = knowledge / ".voicechat-index"
    (index_dir / "manifest.json").write_text("{ not json")
    with pytest.raises(KnowledgeIndexError, match="manifest.json.*corrupt"):
        KnowledgeIndex.open(index_dir)
    indexer, loader, _ = make_indexer(knowledge, text_encoder, text_spec)
    report = indexer.update()  # the manifest is derived: written again from the store
    assert report.repaired == "manifest.json: the file is unreadable" and loader.loads == 0
    (index_dir / "store.sqlite").write_bytes(b"garbage" * 1000)
    for name in ("store.sqlite-wal", "store.sqlite-shm"):
        (index_dir / name).unlink(missing_ok=True)
    with pytest.raises(KnowledgeIndexError, match="store.sqlite.*corrupt.*--rebuild"):
        make_indexer(knowledge, text_encoder, text_spec)[0].update()
    report = make_indexer(knowledge, text_encoder, text_spec)[0].update(rebuild=True)
    assert "damaged" in report.rebuilt_reason and report.chunks_total > 0


def test_missing_index_and_missing_folder_messages(tmp_path, text_encoder, text_spec):
    with pytest.raises(KnowledgeIndexError, match="no knowledge index here.*voicechat index"):
        KnowledgeIndex.open(tmp_path / "nowhere")
    indexer, _, _ = make_indexer(tmp_path / "absent", text_encoder, text_spec)
    with pytest.raises(KnowledgeIndexError, match="no such knowledge folder"):
        indexer.update()


def test_bad_files_are_skipped_with_one_reason_each(tmp_path, text_encoder, text_spec):
    folder = tmp_path / "kb"
    (folder / ".git").mkdir(parents=True)
    (folder / ".git" / "notes.txt").write_text("hidden folder text.")
    (folder / "good.txt").write_text("A good sentence.")
    (folder / "empty.txt").write_text("")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (folder / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me br\xfbl\xe9e.".encode("latin-1"))
    (folder / "image.png").write_bytes(b"\x89PNG")
    (folder / "broken.json").write_text("{")
    (folder / "sub").mkdir()
    (folder / "sub" / "loop").symlink_to(folder)
    skipped: dict[str, str] = {}

    class Reporter(indexer_module.SilentReporter):
        def skipped(self, path, reason):
            skipped[path] = reason

    indexer, _, _ = make_indexer(folder, text_encoder, text_spec)
    indexer.reporter = Reporter()
    report = indexer.update()
    assert skipped == {
        "empty.txt": "empty file",
        "binary.txt": "binary file (not text)",
        "image.png": "unsupported file type .png",
        "broken.json": "invalid JSON (line 1: Expecting property name enclosed in double quotes)",
        "sub/loop": "symbolic link loop (folder already indexed)",
    }
    assert report.skipped == 5 and report.added == 2
    texts = [t for _, _, t in all_chunks(folder)]
    assert "Café crème brûlée." in texts and "hidden folder text." not in texts


def test_forced_approximate_index_types_are_tuned_to_the_recall_target(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 64)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, 5000)] + 0.3 * rng.standard_normal((5000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for kind in ("ivf", "hnsw"):
        index, params = faiss_index.build_faiss(vectors, kind)
        assert params["type"] == kind and params["tuned_recall_at_10"] >= 0.95
        queries = faiss_index.tuning_queries(vectors, seed=7)
        truth = faiss_index.exact_search(vectors, queries, 10)
        _, rows = index.search(queries, 10)
        assert faiss_index.recall_at_k(rows, truth) >= 0.95
    assert faiss_index.choose_index_type(10_000) == "flat"
    assert faiss_index.choose_index_type(2_000_000) == "ivf"


@pytest.mark.slow
def test_index_type_override_is_kept_until_changed_back(knowledge, text_encoder, text_spec, monkeypatch):
    monkeypatch.setattr(faiss_index, "FLAT_MAX_CHUNKS", 10)
    rng = np.random.default_rng(0)
    for i in range(12):  # enough chunks (> 1000) to train an IVF index
        words = " ".join(f"term{j}" for j in rng.integers(0, 5000, 12))
        sentences = [f"Note {i}-{s} mentions {words[: 8 + s % 40]}." for s in range(90)]
        (knowledge / f"notes-{i}.txt").write_text("\n\n".join(sentences))
    report = make_indexer(knowledge, text_encoder, text_spec, index_type="hnsw")[0].update()
    assert report.index_type == "hnsw" and report.chunks_total > 1000
    again = make_indexer(knowledge, text_encoder, text_spec, index_type="hnsw")[0].update()
    assert not again.exported
    auto = make_indexer(knowledge, text_encoder, text_spec)[0].update()
    assert auto.exported and auto.index_type == "ivf" and auto.chunks_embedded == 0
    index = KnowledgeIndex.open(knowledge / ".voicechat-index")
    assert index.manifest["index"]["tuned_recall_at_10"] >= 0.95
