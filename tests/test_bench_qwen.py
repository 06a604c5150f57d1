"""scripts/bench_qwen.py at tiny size on the CPU: every Qwen2.5-Omni stage measured, GLM-4-Voice's
turns beside it in the same run, nothing failed. No assertion here is about time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bench_gpu import failures, is_figure

REPO = Path(__file__).resolve().parents[1]
QWEN_STAGES = ("audio_encoder_ms", "prompt_build_ms", "first_text_ms", "first_code_ms", "first_token2wav_chunk_ms",
               "first_chunk_audio_ms", "end_of_question_to_first_audio_ms", "thinker_prefill_ms", "thinker_step_ms",
               "talker_prefill_ms", "talker_step_ms")


@pytest.mark.slow
def test_tiny_cpu_run_measures_every_stage_of_both_voice_models() -> None:
    done = subprocess.run([sys.executable, "scripts/bench_qwen.py", "--size", "tiny", "--glm", "tiny", "--turns", "2",
                           "--reply-codes", "150"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert failures(report) == []
    turns = report["qwen2_5_omni"]["turns"]
    assert turns["turns"] == 2 and turns["prompt_tokens"]["p50"] > 800
    for key in QWEN_STAGES:
        assert is_figure(turns[key]) and "p50" in turns[key], key
    assert turns["codes_before_first_audio"]["p50"] == 48  # two blocks and their two blocks of look-ahead
    reply = report["qwen2_5_omni"]["token2wav_reply"]
    assert reply["audio_s"] == 3.0 and reply["rtf"] > 0
    first = report["qwen2_5_omni"]["token2wav_first_chunk"]
    assert first["1_block"]["codes_waited_for"] == 36 and first["2_block"]["codes_waited_for"] == 48
    assert first["2_block"]["audio_ms"] > first["1_block"]["audio_ms"] > 0
    glm = report["glm_4_voice"]
    assert "p50" in glm["turns"]["end_of_question_to_first_audio_ms"]
    assert abs(glm["decoder_reply"]["audio_s"] - 3.0) < 0.1  # 38 speech tokens for the same 3 s
