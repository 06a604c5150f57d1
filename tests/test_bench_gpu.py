"""scripts/bench_gpu.py at tiny size on the CPU prints every figure the GPU run prints: measured, or
skipped with its reason. No assertion here is about time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

STAGES = ("speech_tokenizer_ms", "prompt_build_ms", "prefill_ms", "decode_step_ms", "first_10_speech_tokens_ms",
          "first_decoder_chunk_ms", "first_chunk_audio_ms", "end_of_question_to_first_audio_ms")
VARIANTS = {
    "lm_decode_step": ("dynamic", "eager", "cuda-graph", "compile"),
    "flow_cuda_graphs": ("eager", "cuda_graphs"),
    "warm_up": ("baseline", "fast"),
    "first_chunk": ("10_tokens", "5_tokens"),
    "precision": ("lm", "decoder", "speech_tokenizer"),
}
CUDA_ONLY = (("lm_decode_step", "cuda-graph"), ("lm_decode_step", "compile"), ("flow_cuda_graphs", "cuda_graphs"))


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    done = subprocess.run([sys.executable, "scripts/bench_gpu.py", "--size", "tiny", "--device", "cpu", "--turns", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def is_figure(value: Any) -> bool:
    """A number, p50/p90 of numbers, or a skip with its reason."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return True
    if isinstance(value, dict) and "skipped" in value:
        return isinstance(value["skipped"], str) and len(value["skipped"]) > 5
    return isinstance(value, dict) and all(isinstance(value.get(k), (int, float)) for k in ("p50", "p90", "n"))


def failures(value: Any, where: str = "") -> list[str]:
    if isinstance(value, dict):
        found = [f"{where}: {value['failed']}"] if "failed" in value else []
        return found + [f for key, item in value.items() for f in failures(item, f"{where}.{key}")]
    return []


@pytest.mark.slow
def test_tiny_cpu_run_reports_every_stage_measured(report: dict[str, Any]) -> None:
    for table in ("stages", "stages_fast"):
        assert report[table]["turns"] == 2
        for key in STAGES:
            assert is_figure(report[table][key]), (table, key, report[table][key])
        for key in set(STAGES) - {"prompt_build_ms"}:
            assert "p50" in report[table][key], (table, key)
    assert report["prompt"]["tokens"] > 800
    for key in ("rtf", "first_chunk_ms", "last_chunk_ms"):
        assert report["decoder_rtf"][key] > 0


@pytest.mark.slow
def test_tiny_cpu_run_reports_every_variant_or_why_it_was_skipped(report: dict[str, Any]) -> None:
    variants = report["variants"]
    assert failures(report) == []
    for variant, keys in VARIANTS.items():
        for key in keys:
            assert key in variants[variant], (variant, key)
    for variant, key in CUDA_ONLY:
        assert variants[variant][key] == {"skipped": "cuda only"}
    assert variants["nf4"]["skipped"]
    assert "p50" in variants["lm_decode_step"]["eager"]["decode_step_ms"]
    assert variants["lm_decode_step"]["eager"]["logits_vs_dynamic"]["max_rel"] < 1e-4
    for part in ("lm", "decoder", "speech_tokenizer"):
        assert "float32" in variants["precision"][part] and "bfloat16" in variants["precision"][part]
    assert variants["precision"]["lm"]["max_abs"] >= 0
    assert variants["precision"]["decoder"]["mel"]["max_abs"] >= 0
    assert variants["precision"]["decoder"]["audio"]["max_abs"] >= 0
    for size in ("10_tokens", "5_tokens"):
        assert "p50" in variants["first_chunk"][size]["end_of_question_to_first_audio_ms"]
    assert variants["warm_up"]["fast"]["warm_up_at_load_s"] >= 0
    assert variants["warm_up"]["baseline"]["turn_1_ms"] > 0
    assert "p50" in variants["sonar"]["forward_ms"]
