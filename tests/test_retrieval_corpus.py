"""Reading documents and cutting them into sentence chunks (no models needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicechat.config import ChunkingConfig
from voicechat.retrieval.chunking import Passage, chunk_passages, detect_language, split_passage, split_sentences
from voicechat.retrieval.corpus import UnreadableFile, decode_text, discover, read_passages

KNOWLEDGE = Path(__file__).resolve().parents[1] / "knowledge"


def sentences(text: str) -> list[str]:
    return [text[a:b] for a, b in split_sentences(text)]


def test_english_sentences_split_at_terminators_but_not_at_abbreviations():
    text = "Mr. Smith arrived at 3 p.m. on Tuesday! Was it late? Dr. J. R. R. Tolkien wrote (e.g. The Hobbit) books."
    assert sentences(text) == ["Mr. Smith arrived at 3 p.m. on Tuesday!", "Was it late?",
                               "Dr. J. R. R. Tolkien wrote (e.g. The Hobbit) books."]


def test_chinese_sentences_split_at_full_width_punctuation_without_spaces():
    assert sentences("北京是中国的首都。上海是最大的城市！你知道吗？“好的。”他说。") == [
        "北京是中国的首都。", "上海是最大的城市！", "你知道吗？", "“好的。”", "他说。"]


def test_windows_overlap_by_the_configured_number_of_sentences():
    passage = Passage("", "One. Two. Three. Four. Five.", 1)
    chunks = chunk_passages([passage], ChunkingConfig(sentences_per_chunk=2, sentence_overlap=1))
    assert [c.text for c in chunks] == ["One. Two.", "Two. Three.", "Three. Four.", "Four. Five."]
    chunks = chunk_passages([passage], ChunkingConfig(sentences_per_chunk=3, sentence_overlap=0))
    assert [c.text for c in chunks] == ["One. Two. Three.", "Four. Five."]


def test_overlong_sentences_are_cut_within_the_chunk_limit():
    words = " ".join(f"word{i}," for i in range(200)) + " end."
    chunks = chunk_passages([Passage("", words, 1)], ChunkingConfig(max_chunk_chars=100))
    assert all(len(c.text) <= 100 for c in chunks) and len(chunks) > 5
    assert "word0," in chunks[0].text and chunks[-1].text.endswith("end.")


def test_long_paragraphs_become_several_parent_passages_with_their_own_lines():
    text = "\n".join(f"Sentence number {i} is here." for i in range(40))
    parts = split_passage(Passage("H", text, 10), 300)
    assert len(parts) > 1 and all(len(p.text) <= 300 for p in parts)
    assert parts[0].start == 10 and parts[1].start == 10 + text[: text.index(parts[1].text)].count("\n")


def test_chunk_line_spans_follow_the_text():
    passage = Passage("", "First line. Still first.\nSecond line here.\nThird line.", 5)
    chunks = chunk_passages([passage], ChunkingConfig(sentences_per_chunk=2, sentence_overlap=1))
    assert [(c.start, c.end) for c in chunks] == [(5, 5), (5, 6), (6, 7)]


@pytest.mark.parametrize("text, allowed, expected", [
    ("The capital of China is Beijing.", ("eng_Latn", "zho_Hans"), "eng_Latn"),
    ("北京是中国的首都，有三千多年的历史。", ("eng_Latn", "zho_Hans"), "zho_Hans"),
    ("Beijing 北京是中国的首都。", ("eng_Latn", "zho_Hans"), "zho_Hans"),
    ("這個問題很難回答。", ("eng_Latn", "zho_Hans", "zho_Hant"), "zho_Hant"),
    ("Der Hund schläft.", ("deu_Latn",), "deu_Latn"),
    ("Привет, как дела?", ("eng_Latn", "zho_Hans"), "eng_Latn"),  # not allowed: first language
])
def test_language_is_chosen_by_script_among_the_configured_languages(text, allowed, expected):
    assert detect_language(text, allowed) == expected


def test_markdown_headings_become_the_heading_path_with_line_numbers():
    passages = read_passages(KNOWLEDGE / "bicycle-maintenance.md")
    chain = next(p for p in passages if p.text.startswith("Clean and lubricate"))
    assert chain.heading == "Bicycle maintenance notes > Chain care"
    lines = (KNOWLEDGE / "bicycle-maintenance.md").read_text().split("\n")
    assert lines[chain.start - 1].startswith("Clean and lubricate")


def test_html_keeps_headings_and_drops_scripts(tmp_path):
    page = tmp_path / "p.html"
    page.write_text("<html><head><style>p{}</style><script>var x=1;</script></head><body>\n"
                    "<h1>Tea</h1>\n<p>Green tea likes\ncool water.</p>\n<h2>Black</h2>\n<p>Boiling water.</p></body></html>")
    passages = read_passages(page)
    assert [(p.heading, p.text, p.start) for p in passages] == [
        ("Tea", "Green tea likes\ncool water.", 3), ("Tea > Black", "Boiling water.", 6)]


def test_rst_sections_and_json_records(tmp_path):
    rst = tmp_path / "a.rst"
    rst.write_text("Guide\n=====\n\nIntro text.\n\nSetup\n-----\n\nRun it.\n")
    assert [(p.heading, p.text, p.start) for p in read_passages(rst)] == [
        ("Guide", "Intro text.", 4), ("Guide > Setup", "Run it.", 9)]
    records = tmp_path / "r.json"
    records.write_text('{"data": [{"title": "A", "text": "Alpha."}, {"name": "B", "content": "Beta."}, {"x": 1}]}')
    assert [(p.heading, p.text, p.start, p.unit) for p in read_passages(records)] == [
        ("A", "Alpha.", 1, "record"), ("B", "Beta.", 2, "record")]
    lines = tmp_path / "r.jsonl"
    lines.write_text('{"title": "Q", "text": "First."}\n\nnot json\n{"text": ["Two", "parts."]}\n')
    assert [(p.heading, p.text, p.start) for p in read_passages(lines)] == [("Q", "First.", 1), ("", "Two\nparts.", 4)]


def test_pdf_pages_are_read_with_page_numbers():
    passages = read_passages(KNOWLEDGE / "coffee-roasting.pdf")
    assert passages and all(p.unit == "page" and p.start >= 1 for p in passages)
    assert any("roast" in p.text.lower() for p in passages)


def test_unreadable_files_give_reasons(tmp_path):
    cases = {
        "empty.txt": (b"", "empty file"),
        "nul.txt": (b"abc\x00def" * 10, "binary file"),
        "blank.md": (b"\n\n   \n", "no text found"),
        "bad.pdf": (b"%PDF-1.4 broken", "not a readable PDF"),
        "list.json": (b'[{"id": 1}]', "no records with a text field"),
    }
    for name, (data, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UnreadableFile, match=reason):
            read_passages(path)


def test_text_encodings_are_detected():
    assert decode_text("naïve".encode("utf-8-sig")) == "naïve"
    assert decode_text("naïve café".encode("utf-16")) == "naïve café"
    assert decode_text("na\xefve".encode("cp1252")) == "naïve"
    assert decode_text(b"a\r\nb\rc") == "a\nb\nc"


def test_discovery_skips_hidden_folders_the_index_and_symlink_loops(tmp_path):
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "a.txt").write_text("x")
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "b.txt").write_text("x")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "c.md").write_text("x")
    (tmp_path / "docs" / "up").symlink_to(tmp_path)
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "missing.txt")
    files, skipped = discover(tmp_path, exclude=tmp_path / "index")
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["docs/c.md"]
    assert {s.path: s.reason for s in skipped} == {
        "dangling.txt": "broken symbolic link", "docs/up": "symbolic link loop (folder already indexed)"}
