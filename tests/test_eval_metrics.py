"""Metric functions against hand-computed cases."""

from __future__ import annotations

import pytest

from voicechat.evaluation.metrics import (
    char_error_rate, exact_match, f1_score, is_rejection, normalize_answer, percentiles, reciprocal_rank,
    recall_at_k, rgb_correct, word_error_rate,
)


def test_hotpotqa_normalisation_drops_case_punctuation_and_articles() -> None:
    assert normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert exact_match("the Paris.", "Paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0


def test_hotpotqa_f1_by_hand() -> None:
    # pred tokens: paris france (2); gold: paris (1); common 1 -> P 0.5, R 1 -> F1 2/3
    assert f1_score("Paris, France", "Paris") == pytest.approx(2 / 3)
    # pred: barack obama was president (4); gold: president obama (2): common 2 -> P .5 R 1
    assert f1_score("Barack Obama was the president", "President Obama") == pytest.approx(2 / 3)
    assert f1_score("no", "yes") == 0.0
    assert f1_score("yes it is", "yes") == 0.0  # yes/no answers must match exactly
    assert f1_score("London", "Paris") == 0.0


def test_rgb_accuracy_needs_every_part_and_any_alternative() -> None:
    assert rgb_correct("It was held in Beijing.", [["北京", "Beijing"]])
    assert rgb_correct("2022年冬奥会在北京举行。", [["北京", "Beijing"]])
    assert not rgb_correct("它在上海举行。", [["北京", "Beijing"]])
    assert not rgb_correct("Messi scored", [["Messi"], ["Mbappe"]])
    assert rgb_correct("Messi and MBAPPE scored", [["Messi"], ["Mbappe"]])


def test_rejection_is_recognised_in_english_and_chinese() -> None:
    assert is_rejection("Insufficient information to answer.")
    assert is_rejection("抱歉，信息不足，无法回答。")
    assert not is_rejection("The answer is Paris.")


def test_recall_and_reciprocal_rank_by_hand() -> None:
    retrieved = ["3", "1", "7", "2"]
    assert recall_at_k(retrieved, {"1", "2"}, 2) == 0.5
    assert recall_at_k(retrieved, {"1", "2"}, 4) == 1.0
    assert reciprocal_rank(retrieved, {"7", "2"}) == pytest.approx(1 / 3)
    assert reciprocal_rank(retrieved, {"9"}) == 0.0
    assert recall_at_k(retrieved, set(), 2) is None and reciprocal_rank(retrieved, set()) is None


def test_word_and_character_error_rates_by_hand() -> None:
    # one substitution (the->a), one deletion (there) in 5 words
    assert word_error_rate("Is the tower there, really?", "is a tower really") == pytest.approx(2 / 5)
    # 北京举办 vs 北京举行: one substitution in 4 characters; punctuation ignored
    assert char_error_rate("北京举办。", "北京举行") == pytest.approx(1 / 4)
    assert word_error_rate("", "") == 0.0


def test_percentiles_skip_missing_values() -> None:
    assert percentiles([10.0, None, 20.0, 30.0]) == {"p50": 20.0, "p90": pytest.approx(28.0)}
    assert percentiles([None]) == {"p50": None, "p90": None}
