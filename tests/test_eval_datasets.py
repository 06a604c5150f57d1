"""Reading HotpotQA and RGB files into questions with their passages, and finding their speech."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from voicechat.errors import VoicechatError
from voicechat.evaluation.datasets import RGBOptions, read_hotpotqa, read_rgb, select_rgb_docs
from voicechat.evaluation.speech import manifest, speech_set, synthesise

DATA = Path(__file__).resolve().parent / "data" / "eval"


def test_hotpotqa_record_becomes_question_with_supporting_passages_marked() -> None:
    first, second = read_hotpotqa(DATA / "hotpot_small.json")
    assert first.id == "q1" and first.answer == "Paris" and first.lang == "en"
    assert [d.title for d in first.docs] == ["Eiffel Tower", "France", "Green tea"]
    assert [d.relevant for d in first.docs] == [True, True, False]
    assert first.docs[1].text == "France is a country in Europe. Its capital is Paris."
    assert second.answers == (("yes",),)


def test_rgb_nested_answers_are_alternatives_and_chinese_is_detected() -> None:
    options = RGBOptions(passages=3, noise_rate=0.4)
    english, chinese = read_rgb(DATA / "rgb_small.jsonl", options)
    assert english.answers == (("Uzbekistan",),) and english.lang == "en" and english.id == "0"
    assert chinese.answers == (("北京", "Beijing"),) and chinese.lang == "zh"
    # 3 passages at noise 0.4: ceil(1.2) = 2 negatives, 1 positive
    assert len(english.docs) == 3 and sum(d.relevant for d in english.docs) == 1


def test_rgb_noise_rate_one_gives_only_negatives() -> None:
    (english, _) = read_rgb(DATA / "rgb_small.jsonl", RGBOptions(passages=3, noise_rate=1.0))
    assert len(english.docs) == 3 and not any(d.relevant for d in english.docs)


def test_rgb_passage_choice_is_reproducible_with_a_seed() -> None:
    a = read_rgb(DATA / "rgb_small.jsonl", RGBOptions(passages=4, noise_rate=0.5, seed=3))
    b = read_rgb(DATA / "rgb_small.jsonl", RGBOptions(passages=4, noise_rate=0.5, seed=3))
    assert a == b


def test_rgb_short_side_is_made_up_from_the_other_below_noise_rate_one() -> None:
    record = {"positive": ["p1"], "negative": ["n1", "n2", "n3", "n4"]}
    docs = select_rgb_docs(record, RGBOptions(passages=4, noise_rate=0.25), "plain", random.Random(0))
    assert sorted(docs) == [("n1", False), ("n2", False), ("n3", False), ("p1", True)]  # 1 positive only
    record = {"positive": ["p1", "p2", "p3"], "negative": ["n1"]}
    docs = select_rgb_docs(record, RGBOptions(passages=4, noise_rate=0.5), "plain", random.Random(0))
    assert sorted(docs) == [("n1", False), ("p1", True), ("p2", True), ("p3", True)]


def test_rgb_integration_variant_takes_one_positive_per_answer_part() -> None:
    record = {"positive": [["a1", "a2"], ["b1"]], "negative": ["n1", "n2", "n3"]}
    docs = select_rgb_docs(record, RGBOptions(passages=4, noise_rate=0.25), "int", random.Random(0))
    positives = sorted(t for t, rel in docs if rel)
    assert len(positives) == 3 and "b1" in positives  # ceil(4 * 0.25) = 1 negative: 3 positives
    assert [t for t, rel in docs if not rel] == ["n1"]


def test_rgb_fact_variant_uses_counterfactual_passages() -> None:
    record = {"positive": ["right"], "positive_wrong": ["wrong"], "negative": ["n1", "n2"]}
    docs = select_rgb_docs(record, RGBOptions(passages=2, noise_rate=0.5), "fact", random.Random(0))
    assert sorted(docs) == [("n1", False), ("wrong", False)]


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"a": 1}', "not a JSON list"),
    ('[{"_id": "x"}]', r"record 1 is not a HotpotQA record \(missing field 'supporting_facts'\)"),
    ('[]', "holds no questions"),
    ('[{"_id": "x", "question": "q", "answer": "a", "supporting_facts": [], "context": [["France", [1, 2]]]}]',
     r"record 1 is not a HotpotQA record \('int' object has no attribute 'strip'\)"),
    ('["not a record"]', r"record 1 is not a HotpotQA record \(string indices must be integers"),
])
def test_broken_hotpotqa_file_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(VoicechatError, match=message):
        read_hotpotqa(path)


def test_missing_or_broken_rgb_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VoicechatError, match="no such dataset file"):
        read_rgb(tmp_path / "absent.jsonl")
    path = tmp_path / "en.jsonl"
    path.write_text('{"id": 1, "query": "q"}\n')
    with pytest.raises(VoicechatError, match="line 1 is not an RGB record"):
        read_rgb(path)
    with pytest.raises(VoicechatError, match="noise-rate"):
        RGBOptions(noise_rate=1.5)


@pytest.mark.parametrize("name, content, message", [
    ("en.jsonl", '{"id": 1, "answer": ["a"]}\n', r"line 1 is not an RGB record \(missing field 'query'\)"),
    ("en.jsonl", '\n\n"text"\n', r"line 3 is not an RGB record \(string indices must be integers, not 'str'\)"),
    ("en_fact.jsonl", '{"id": 1, "query": "q", "answer": "a", "positive": ["p1", "p2"], "positive_wrong": ["w1"],'
     ' "negative": []}\n', r"line 1 is not an RGB record \(list index out of range\)"),
    ("en.jsonl", "\n  \n", "holds no questions"),
])
def test_broken_rgb_record_says_what_is_wrong(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(VoicechatError, match=message):
        read_rgb(path, RGBOptions(passages=2, noise_rate=0.0))


def _wav(path: Path, seconds: float = 0.5, rate: int = 22050) -> None:
    import soundfile

    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.zeros(int(seconds * rate), np.float32), rate)


def test_speech_set_layout_finds_each_question_and_loads_16k(tmp_path: Path) -> None:
    _wav(tmp_path / "hotpotqa" / "female1" / "q1" / "question.wav")
    _wav(tmp_path / "hotpotqa" / "female1" / "q2" / "question.wav")
    source = speech_set(tmp_path, "hotpotqa")
    assert sorted(source.files) == ["q1", "q2"] and not source.synthetic
    assert source.load("q1").shape == (8000,)
    with pytest.raises(VoicechatError, match="no recording of question q9"):
        source.path("q9")
    _wav(tmp_path / "hotpotqa" / "male1" / "q1" / "question.wav")
    with pytest.raises(VoicechatError, match="choose one voice"):
        speech_set(tmp_path, "hotpotqa")


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    _wav(tmp_path / "audio" / "a.wav")
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "q1", "audio": "audio/a.wav", "text": "hello"}) + "\n")
    source = manifest(tmp_path / "m.jsonl")
    assert source.path("q1") == tmp_path / "audio" / "a.wav" and source.texts == {"q1": "hello"}
    (tmp_path / "bad.jsonl").write_text('{"id": "q1"}\n')
    with pytest.raises(VoicechatError, match="line 1 is not a manifest entry"):
        manifest(tmp_path / "bad.jsonl")


def test_manifest_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'\xff\xfe{"id": "q1", "audio": "a.wav"}\n')
    with pytest.raises(VoicechatError, match="m.jsonl: cannot be read as UTF-8 text .*check that it is the speech"):
        manifest(path)


def test_manifest_entry_whose_audio_file_is_missing_names_question_and_path(tmp_path: Path) -> None:
    (tmp_path / "m.jsonl").write_text('{"id": "q1", "audio": "gone.wav"}\n', encoding="utf-8")
    with pytest.raises(VoicechatError, match=f"question q1: no audio file {tmp_path / 'gone.wav'}"):
        manifest(tmp_path / "m.jsonl").path("q1")


def test_synthesis_speaks_english_and_chinese_questions_and_is_marked_synthetic(tmp_path: Path) -> None:
    from tests.support.speech import espeak_available

    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    questions = read_rgb(DATA / "rgb_small.jsonl", RGBOptions(passages=2))
    source = synthesise(questions, tmp_path)
    assert source.synthetic
    for question in questions:
        audio = source.load(question.id)
        assert audio.size > 16000 * 0.5 and np.abs(audio).max() > 0.01


def test_folder_questions_take_one_answer_or_alternatives_and_source_files(tmp_path: Path) -> None:
    from voicechat.evaluation.datasets import read_folder_questions

    path = tmp_path / "questions.jsonl"
    path.write_text(
        '{"id": "tea", "audio": "tea.wav", "text": "Where is green tea grown?", "answers": "China",'
        ' "sources": ["notes/tea.md"]}\n\n'
        '{"id": "capital", "audio": "c.wav", "text": "法国的首都是哪里？", "answers": ["巴黎", "Paris"]}\n'
        '{"id": "free", "audio": "f.wav"}\n', encoding="utf-8")
    tea, capital, free = read_folder_questions(path)
    assert tea.answers == (("China",),) and tea.sources == ("notes/tea.md",) and tea.lang == "en"
    assert tea.relevant_files == ["notes/tea.md"] and tea.docs == ()
    assert capital.answers == (("巴黎", "Paris"),) and capital.lang == "zh" and capital.sources == ()
    assert free.text == "" and free.answers == ()


@pytest.mark.parametrize("content, message", [
    ('{"audio": "a.wav"}\n', "line 1 is not a question entry"),
    ('{"id": "a", "answers": [["x"]]}\n', r"line 1 is not a question entry \(answers must be a string or a list"),
    ('{"id": "a"}\n{"id": "a"}\n', "line 2 repeats question id 'a'"),
    ("not json\n", "line 1 is not valid JSON"),
    ("\n", "holds no questions"),
])
def test_folder_questions_file_errors_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    from voicechat.evaluation.datasets import read_folder_questions

    path = tmp_path / "questions.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(VoicechatError, match=message):
        read_folder_questions(path)


def test_sample_questions_name_files_of_the_sample_knowledge_folder() -> None:
    from voicechat.evaluation.datasets import read_folder_questions

    knowledge = DATA.parents[2] / "knowledge"
    questions = read_folder_questions(DATA / "knowledge_questions.jsonl")
    assert {q.lang for q in questions} == {"en", "zh"}
    for question in questions:
        assert question.text and question.answers and question.sources
        assert all((knowledge / source).is_file() for source in question.sources)
