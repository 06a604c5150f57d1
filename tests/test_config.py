"""Loading config.yaml: defaults, precedence, presets and the one-line error messages."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from voicechat.config import Config, VoicePreset, load_config
from voicechat.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path: Path, **overrides: object) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, dict(overrides))
    return str(caught.value)


def test_shipped_config_yaml_equals_the_built_in_defaults() -> None:
    shipped = load_config(REPO / "config.yaml")
    assert dataclasses.replace(shipped, source="built-in defaults") == Config()


def test_shipped_config_yaml_documents_every_key() -> None:
    text = (REPO / "config.yaml").read_text(encoding="utf-8")

    import typing

    def all_keys(cls: type) -> set[str]:
        hints = typing.get_type_hints(cls)
        names = set()
        for f in dataclasses.fields(cls):
            if f.metadata.get("internal"):
                continue
            names.add(f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                names |= all_keys(hints[f.name])
        return names

    undocumented = [k for k in all_keys(Config) if not re.search(rf"^\s*{re.escape(k)}:", text, re.M)]
    assert undocumented == []


def test_every_number_in_the_config_has_bounds() -> None:
    import typing

    one_sided = {"audio.input_device", "audio.output_device"}  # device indexes: no upper bound

    def unbounded(cls: type, where: str = "") -> list[str]:
        found = []
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint, dotted = hints[f.name], f"{where}{f.name}"
            if dataclasses.is_dataclass(hint):
                found += unbounded(hint, dotted + ".")
                continue
            kinds = {hint, *typing.get_args(hint)}
            kinds |= {inner for kind in kinds for inner in typing.get_args(kind)}  # tuple[int, ...]
            low, high = f.metadata.get("range", (None, None))
            if kinds & {int, float} and (low is None or (high is None and dotted not in one_sided)):
                found.append(dotted)
        return found

    assert unbounded(Config) == []
    assert unbounded(VoicePreset, "voices.*.") == []


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.retrieval.top_k == 4
    assert config.source == str(tmp_path / "config.yaml")


def test_partial_section_keeps_other_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "models:\n  lm:\n    device: cuda:1\naudio:\n  vad:\n    preroll_ms: 400\n"))
    assert config.models.lm.device == "cuda:1"
    assert config.models.lm.source == "THUDM/glm-4-voice-9b"
    assert config.models.lm.dtype == "bfloat16"
    assert config.audio.vad.preroll_ms == 400
    assert config.audio.vad.aggressiveness == 2


def test_model_given_as_a_plain_string_is_its_source(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "models:\n  decoder: ./my-decoder\n"))
    assert config.models.decoder.source == "./my-decoder"
    assert config.resolve_path(config.models.decoder.source) == tmp_path / "my-decoder"


def test_out_of_range_value_names_file_key_and_expectation(tmp_path: Path) -> None:
    path = write(tmp_path, "audio:\n  vad:\n    aggressiveness: 7\n")
    assert error_of(path) == f"{path}: audio.vad.aggressiveness: expected an integer 0-3, got 7"


def test_misspelt_key_suggests_the_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, "retrieval:\n  topk: 3\n")
    assert error_of(path) == f"{path}: retrieval.topk: unknown key (did you mean 'top_k'?)"


def test_wrong_type_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "generation:\n  temperature: hot\n")
    assert error_of(path) == f"{path}: generation.temperature: expected a number 0-2, got 'hot'"
    path = write(tmp_path, "audio:\n  barge_in: 1\n")
    assert "audio.barge_in: expected true or false, got 1" in error_of(path)
    path = write(tmp_path, "audio:\n  preemptive: sometimes\n")
    assert error_of(path) == f"{path}: audio.preemptive: expected true or false, got 'sometimes'"
    path = write(tmp_path, "audio:\n  vad:\n    pause_ms: 5\n")
    assert error_of(path) == f"{path}: audio.vad.pause_ms: expected an integer 30-10000, got 5"


def test_choice_lists_the_valid_values(tmp_path: Path) -> None:
    path = write(tmp_path, "retrieval:\n  rag: e2f\n")
    assert error_of(path) == f"{path}: retrieval.rag: expected one of e2e, asr, off, got 'e2f' (did you mean 'e2e'?)"


def test_bare_off_in_yaml_means_off(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "retrieval:\n  two_round: off\n")).retrieval.two_round == "off"


def test_malformed_yaml_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "audio:\n  vad: [1\n  x: 2\n")
    assert re.fullmatch(rf"{re.escape(str(path))}: line 3, column \d+: invalid YAML: .+", error_of(path))


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    assert error_of(path) == f"{path}: expected a mapping of sections at the top level"


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "audio: loud\n")
    assert error_of(path) == f"{path}: audio: expected a mapping, got 'loud'"


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such config file"


def test_command_line_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "retrieval:\n  rag: asr\n")
    config = load_config(path, {"retrieval.rag": "off", "voice": "calm"})
    assert config.retrieval.rag == "off"
    assert config.voice == "calm"


def test_local_config_yaml_is_used_when_no_path_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "retrieval:\n  top_k: 9\n")
    monkeypatch.chdir(tmp_path)
    assert load_config().retrieval.top_k == 9


def test_user_config_dir_is_the_last_resort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "voicechat").mkdir(parents=True)
    (tmp_path / "xdg" / "voicechat" / "config.yaml").write_text("retrieval:\n  top_k: 7\n")
    assert load_config().retrieval.top_k == 7


def test_built_in_voice_presets_are_available() -> None:
    config = Config()
    assert {"default", "calm", "cheerful", "brisk", "slow-and-clear", "storyteller", "mandarin"} <= set(config.voices)
    assert config.voice_preset("brisk").generation.max_new_tokens == 600


def test_each_voice_model_offers_only_its_own_voice_presets() -> None:
    glm, qwen = Config(), Config(voice_model="qwen2.5-omni")
    assert list(glm.model_voices) == ["default", "calm", "cheerful", "brisk", "slow-and-clear", "storyteller",
                                      "mandarin"]
    assert list(qwen.model_voices) == ["default", "chelsie", "ethan"]


def test_a_voice_preset_of_the_other_voice_model_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "voice: chelsie\n")
    assert error_of(path) == f"{path}: voice preset 'chelsie' is not for glm-4-voice; choose one of: default, calm, " \
                             "cheerful, brisk, slow-and-clear, storyteller, mandarin"
    qwen = write(tmp_path, "voice_model: qwen2.5-omni\nvoice: calm\n")
    assert error_of(qwen) == f"{qwen}: voice preset 'calm' is not for qwen2.5-omni; choose one of: default, " \
                             "chelsie, ethan"
    assert load_config(qwen, {"voice": "ethan"}).voice_preset().speaker == "Ethan"


def test_a_user_preset_with_a_speaker_is_for_qwen_and_cannot_be_for_glm(tmp_path: Path) -> None:
    path = write(tmp_path, "voices:\n  soft-ethan:\n    description: Ethan.\n    speaker: Ethan\n")
    config = load_config(path)
    assert "soft-ethan" not in config.model_voices
    assert "soft-ethan" in load_config(path, {"voice_model": "qwen2.5-omni"}).model_voices
    wrong = write(tmp_path, "voices:\n  x:\n    description: X.\n    speaker: Ethan\n    voice_model: glm-4-voice\n")
    assert "voices.x: a speaker is a Qwen2.5-Omni voice" in error_of(wrong)


def test_user_preset_is_added_next_to_the_built_in_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "voice: whisper\nvoices:\n  whisper:\n    description: Quiet.\n"
                           "    instruction: Speak softly.\n    generation: {temperature: 0.3}\n")
    config = load_config(path)
    assert config.voice_preset().instruction == "Speak softly."
    assert config.voice_preset().generation.temperature == 0.3
    assert "calm" in config.voices


def test_unknown_preset_lists_the_valid_names(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, ""), voice="shouty")
    assert message.startswith("unknown voice preset 'shouty'; choose one of: default, calm")


def test_preset_without_description_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "voices:\n  x:\n    instruction: hi\n")
    assert error_of(path) == f"{path}: voices.x.description: required key is missing"
