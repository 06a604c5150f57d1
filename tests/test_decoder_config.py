"""Reading the decoder's hyperpyyaml config.yaml without importing or calling anything it names."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicechat.errors import ModelError
from voicechat.glm.decoder.config import Tagged, load_decoder_config, read_hyperpyyaml
from voicechat.testing.decoder import config_text


def test_published_config_gives_the_published_architecture(shared_reference: Path) -> None:
    files = load_decoder_config(shared_reference / "glm-4-voice-decoder" / "config.yaml")
    flow, hift = files.flow, files.hift
    assert (flow.input_size, flow.output_size, flow.spk_embed_dim, flow.vocab_size) == (512, 80, 192, 16384)
    assert flow.input_frame_rate == 12.5
    assert (flow.encoder.num_blocks, flow.encoder.output_size, flow.encoder.attention_heads,
            flow.encoder.block_size) == (6, 512, 8, 10)
    assert flow.estimator.channels == (256, 256)
    assert (flow.estimator.n_blocks, flow.estimator.num_mid_blocks) == (4, 12)
    assert (flow.sigma_min, flow.inference_cfg_rate, flow.n_timesteps) == (1e-6, 0.7, 10)
    assert files.sample_rate == hift.sampling_rate == 22050  # through '!ref <sample_rate>'
    assert (hift.base_channels, hift.upsample_rates, hift.n_fft, hift.hop_len) == (512, (8, 8), 16, 4)
    assert hift.samples_per_frame == 256


def test_tags_are_recorded_and_never_executed(tmp_path: Path) -> None:
    victim = tmp_path / "keep-me.txt"
    victim.write_text("still here")
    path = tmp_path / "config.yaml"
    path.write_text(f"cleanup: !apply:os.remove ['{victim}']\n"
                    "thing: !new:no.such.module.Thing\n    size: !ref <size>\n"
                    "fn: !name:shutil.rmtree\nsize: 3\n")
    data = read_hyperpyyaml(path)
    assert victim.read_text() == "still here"
    assert data["cleanup"] == Tagged("apply", "os.remove", {}, (str(victim),))
    assert data["thing"].class_name == "Thing" and data["thing"].kwargs == {"size": 3}
    assert data["fn"].kind == "name"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_unknown_parameter_is_named_in_the_error(tmp_path: Path) -> None:
    text = config_text("tiny").replace("    vocab_size: 16384\n", "    vocab_size: 16384\n    vocab_sise: 3\n")
    with pytest.raises(ModelError, match=r"flow\.vocab_sise: unknown parameter"):
        load_decoder_config(_write(tmp_path, text))


def test_missing_parameter_is_named_in_the_error(tmp_path: Path) -> None:
    text = config_text("tiny").replace("        num_blocks: 2\n", "")
    with pytest.raises(ModelError, match=r"flow\.encoder\.num_blocks: missing parameter"):
        load_decoder_config(_write(tmp_path, text))


def test_unsupported_architecture_choice_is_refused(tmp_path: Path) -> None:
    text = config_text("tiny").replace("solver: 'euler'", "solver: 'midpoint'")
    with pytest.raises(ModelError, match="solver: 'midpoint' is not supported"):
        load_decoder_config(_write(tmp_path, text))


def test_dangling_reference_and_broken_yaml_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="names no key"):
        load_decoder_config(_write(tmp_path, config_text("tiny").replace("<sample_rate>", "<sampling>")))
    with pytest.raises(ModelError, match="not a valid decoder config"):
        load_decoder_config(_write(tmp_path, "flow: [unclosed\n"))
    with pytest.raises(ModelError, match="missing section"):
        load_decoder_config(_write(tmp_path, "sample_rate: 22050\n"))
    with pytest.raises(ModelError, match="not found"):
        load_decoder_config(tmp_path / "absent.yaml")
