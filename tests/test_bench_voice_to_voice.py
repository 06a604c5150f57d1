"""The pure parts of scripts/bench_voice_to_voice.py: recorders' sample times from their chunks'
arrivals, the order the configurations take turns in, sound onsets and costs per 10 ms."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_voice_to_voice", REPO / "scripts" / "bench_voice_to_voice.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def arrivals(rate: int, chunk: int, chunks: int, start: float, lost_after: int | None = None, seed: int = 0):
    """(sample count, arrival) of a recorder whose chunk ending at sample n was captured at
    start + n / rate and delivered 5-40 ms later; samples after chunk ``lost_after`` are 0.5 s late
    (a block dropped)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(1, chunks + 1):
        count = index * chunk
        captured = start + count / rate + (0.5 if lost_after is not None and index > lost_after else 0.0)
        delay = 0.005 if index % 10 == 0 else 0.005 + rng.uniform(0, 0.035)
        rows.append((count, captured + delay))
    return rows


def test_a_sample_time_is_its_capture_plus_the_least_delivery_delay(bench) -> None:
    rows = arrivals(16000, 320, 500, start=100.0)
    for index in (0, 1234, 80000, 159999):
        assert bench.sample_time(rows, index, 16000) == pytest.approx(100.0 + index / 16000 + 0.005, abs=1e-9)


def test_samples_lost_move_the_times_after_them_only(bench) -> None:
    rows = arrivals(48000, 960, 500, start=5.0, lost_after=250)
    assert bench.sample_time(rows, 960 * 100, 48000) == pytest.approx(5.0 + 2.0 + 0.005, abs=1e-9)
    assert bench.sample_time(rows, 960 * 400, 48000) == pytest.approx(5.0 + 8.0 + 0.5 + 0.005, abs=1e-9)


def test_sample_at_is_the_inverse_of_sample_time(bench) -> None:
    rows = arrivals(16000, 320, 500, start=42.0)
    for index in (500, 33333, 150000):
        assert bench.sample_at(rows, bench.sample_time(rows, index, 16000), 16000) == index


def test_every_configuration_hears_every_question_and_they_take_turns(bench) -> None:
    order = bench.block_order(["before", "after"], 12, 5)
    assert [name for name, _ in order] == ["before", "after", "after", "before", "before", "after"]
    for name in ("before", "after"):
        assert sorted(n for config, numbers in order if config == name for n in numbers) == list(range(12))


def test_sound_onsets_and_ends(bench) -> None:
    samples = np.zeros(100, np.float32)
    samples[[20, 30, 70]] = [0.5, -0.01, 0.002]
    assert bench.first_loud(samples) == 20
    assert bench.first_loud(samples, start=21) == 30
    assert bench.last_loud(samples) == 70
    assert bench.first_loud(samples, start=71) is None
    assert bench.last_loud(np.zeros(10)) is None


def test_cost_per_10_ms(bench) -> None:
    assert bench.per_10ms(1.0, 100.0) == {"ms_per_10ms": 0.1, "core_percent": 1.0}


def test_summary_skips_missing_values(bench) -> None:
    figures = bench.summary([100.0, None, 300.0, 200.0])
    assert figures["p50"] == 200.0 and figures["n"] == 3 and figures["min"] == 100.0
    assert bench.summary([None]) is None
