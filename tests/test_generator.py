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
