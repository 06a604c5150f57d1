"""Model resolution: local folders, the Hugging Face cache, and failing fast when offline."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from voicechat import models
from voicechat.config import load_config
from voicechat.errors import ModelError


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def cache_repo(hf_home: Path, repo: str, files: dict[str, bytes]) -> Path:
    """Lay out a repo the way huggingface_hub caches it (refs/main -> snapshots/<commit>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def config_with(tmp_path: Path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path)


@pytest.mark.parametrize("source,kind", [
    ("THUDM/glm-4-voice-9b", "hub"), ("./models/lm", "local"), ("/opt/lm", "local"),
    ("~/lm", "local"), ("sonar_speech_encoder_eng", "fairseq2"),
])
def test_source_kind(source: str, kind: str) -> None:
    assert models.source_kind(source) == kind


def test_needed_roles_follow_the_modes(tmp_path: Path) -> None:
    assert models.needed_roles(config_with(tmp_path, "")) == [
        "lm", "speech_tokenizer", "decoder", "sonar_text", "sonar_speech"]
    remote_asr = config_with(tmp_path, "backend: {kind: glm-server}\nretrieval: {rag: asr}\n")
    assert models.needed_roles(remote_asr) == ["lm", "speech_tokenizer", "decoder", "sonar_text", "asr"]
    assert models.hub_files("lm", remote_asr) == ["tokenizer_config.json", "tokenizer.model"]
    assert "asr" in models.needed_roles(config_with(tmp_path, "retrieval: {two_round: fallback}\n"))
    assert models.needed_roles(config_with(tmp_path, "retrieval: {rag: 'off'}\n")) == [
        "lm", "speech_tokenizer", "decoder"]


def test_local_folder_resolves_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "dec").mkdir()
    (tmp_path / "dec" / "flow.pt").write_bytes(b"x" * 10)
    config = config_with(tmp_path, "models:\n  decoder: ./dec\n")
    status = models.model_status("decoder", config.models.decoder, config)
    assert (status.kind, status.state, status.size_bytes) == ("local", "local", 10)
    assert models.resolve_model("decoder", config) == tmp_path / "dec"


def test_missing_local_folder_is_named(tmp_path: Path) -> None:
    config = config_with(tmp_path, "models:\n  decoder: ./nope\n")
    with pytest.raises(ModelError, match=r"speech decoder \(\./nope\): no such file or folder: .*nope"):
        models.resolve_model("decoder", config)


def test_cached_hub_model_is_found_without_network(tmp_path: Path, hf_home: Path) -> None:
    snapshot = cache_repo(hf_home, "someone/decoder", {"config.yaml": b"a: 1\n", "flow.pt": b"12345", "hift.pt": b"1"})
    config = config_with(tmp_path, "offline: true\nmodels:\n  decoder: someone/decoder\n")
    status = models.model_status("decoder", config.models.decoder, config)
    assert status.state == "cached"
    assert status.path == snapshot
    assert models.resolve_model("decoder", config) == snapshot


def test_partly_downloaded_hub_model_is_missing(tmp_path: Path, hf_home: Path) -> None:
    cache_repo(hf_home, "someone/decoder", {"config.yaml": b"a: 1\n", "flow.pt": b"12345"})  # no hift.pt
    config = config_with(tmp_path, "offline: true\nmodels:\n  decoder: someone/decoder\n")
    assert models.model_status("decoder", config.models.decoder, config).state == "missing"


def test_remote_backend_needs_only_the_lm_tokenizer_files(tmp_path: Path, hf_home: Path) -> None:
    cache_repo(hf_home, "someone/lm", {"tokenizer_config.json": b"{}", "tokenizer.model": b"x"})
    local = config_with(tmp_path, "offline: true\nmodels:\n  lm: someone/lm\n")
    assert models.model_status("lm", local.models.lm, local).state == "missing"
    remote = config_with(tmp_path, "offline: true\nbackend: {kind: glm-server}\nmodels:\n  lm: someone/lm\n")
    assert models.model_status("lm", remote.models.lm, remote).state == "cached"


def test_offline_with_missing_models_fails_fast_naming_all_of_them(tmp_path: Path, hf_home: Path) -> None:
    config = config_with(tmp_path, "offline: true\nretrieval: {rag: 'off'}\nmodels:\n"
                                   "  lm: nobody/lm\n  speech_tokenizer: nobody/tok\n  decoder: nobody/dec\n")
    started = time.monotonic()
    with pytest.raises(ModelError) as caught:
        models.ensure_models(config)
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert message.startswith("missing models: voice language model (nobody/lm); speech tokenizer (nobody/tok); "
                              "speech decoder (nobody/dec)")
    assert message.endswith("run `voicechat models pull` where the model hub can be reached")


def test_hf_hub_offline_variable_counts_as_offline(tmp_path: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = config_with(tmp_path, "models:\n  decoder: nobody/dec\n")
    with pytest.raises(ModelError, match="not downloaded and voicechat is offline"):
        models.resolve_model("decoder", config)


def test_pull_refuses_when_offline(tmp_path: Path) -> None:
    config = config_with(tmp_path, "offline: true\n")
    with pytest.raises(ModelError, match="cannot pull models while offline"):
        models.pull(config, ["decoder"])
