"""The test-model generator writes models plus a config.yaml that voicechat loads as is."""

from __future__ import annotations

from pathlib import Path

from voicechat import models
from voicechat.config import load_config
from voicechat.testing.generator import WRITERS, generate


def test_generated_config_loads_and_points_inside_the_output_folder(tmp_path: Path) -> None:
    path = generate(tmp_path / "models", "tiny", seed=0)
    config = load_config(path)
    assert config.offline
    assert config.resolve_path(config.retrieval.index_dir) == tmp_path / "models" / "index"
    for name in WRITERS:
        assert (tmp_path / "models").iterdir(), name


def test_every_generated_model_resolves_locally(tmp_path: Path) -> None:
    config = load_config(generate(tmp_path / "models", "tiny", seed=0))
    for role in models.ROLE_NAMES:
        spec = getattr(config.models, role)
        if models.source_kind(spec.source) == "local":
            assert models.model_status(role, spec, config).state == "local", role


def test_the_vllm_sized_language_model_has_head_size_64_and_the_tiny_vocabulary(tmp_path: Path) -> None:
    import json

    generate(tmp_path / "tiny", "tiny", seed=0, only=["lm"])
    config = load_config(generate(tmp_path / "vllm", "tiny", seed=0, only=["lm"], lm_size="tiny-vllm"))
    folder = Path(config.models.lm.source)
    chatglm = json.loads((folder / "config.json").read_text())
    # vLLM takes the head size from hidden / heads; its CPU attention has no kernel for 16
    assert chatglm["hidden_size"] // chatglm["num_attention_heads"] == chatglm["kv_channels"] == 64
    for name in ("tokenizer.model", "tokenizer_config.json"):
        assert (folder / name).read_bytes() == (tmp_path / "tiny" / folder.name / name).read_bytes()
