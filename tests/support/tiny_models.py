"""All tiny random-weight models, written once per test session by the project's generator, and
a config with an index of the sample knowledge folder built with them; plus a test double of the
language model that scripts its first reply."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicechat.config import Config, load_config


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from voicechat.testing.generator import generate

    out = tmp_path_factory.mktemp("tiny-models")
    generate(out, "tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_config(tiny_models_dir: Path) -> Config:
    return load_config(tiny_models_dir / "config.yaml")


@pytest.fixture(scope="session")
def tiny_rag_config(tiny_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The tiny models with an index of knowledge/ on disk (retrieval e2e)."""
    import yaml

    from voicechat.cli import main

    repo = Path(__file__).resolve().parents[2]
    folder = tmp_path_factory.mktemp("rag")
    retrieval = {"rag": "e2e", "index_dir": str(folder / "index"), "knowledge_dir": str(repo / "knowledge")}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(Path(tiny_config.source).read_text()), "retrieval": retrieval}))
    assert main(["--config", str(path), "index", str(repo / "knowledge")]) == 0
    return load_config(path)


class ScriptedFirstReply:
    """Test double around the real backend: the first reply is scripted text (then three speech
    tokens), later replies come from the model."""

    def __init__(self, parts, text: str) -> None:
        tokenizer = parts.text_tokenizer
        self.script = tokenizer.encode(text) + tokenizer.audio_ids([1, 2, 3]) + [tokenizer.special.user]
        self.real = parts.backend
        self.calls = 0

    def stream(self, prompt_ids, params, cancel):
        self.calls += 1
        if self.calls > 1:
            yield from self.real.stream(prompt_ids, params, cancel)
            return
        for token in self.script:
            if cancel.is_set():
                return
            yield token

    def close(self) -> None:
        self.real.close()


@pytest.fixture(scope="session")
def tiny_qwen_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-Omni with the retrieval models, as the generator writes them."""
    from voicechat.testing.generator import generate

    out = tmp_path_factory.mktemp("tiny-qwen")
    generate(out, "tiny", seed=0, voice_model="qwen2.5-omni")
    return out


@pytest.fixture(scope="session")
def tiny_qwen_config(tiny_qwen_models_dir: Path) -> Config:
    return load_config(tiny_qwen_models_dir / "config.yaml")
