"""The GLM-4-Voice speech tokenizer: published format, reference parity, windows, padding, input."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.support.cancellation import CancelledAfterChecks
from tests.support.speech_tokenizer import KEYS, RATE, agreement, speech_like
from voicechat.audio.files import read_audio, write_wav
from voicechat.audio.resample import StreamResampler, to_model_input
from voicechat.cancellation import Cancelled
from voicechat.errors import AudioError, ModelError
from voicechat.glm.speech_tokenizer import SpeechTokenizer
from voicechat.glm.whisper_vq import WhisperVQConfig, WhisperVQEncoder
from voicechat.testing.speech_tokenizer import FULL_CONFIG

SAMPLES_PER_TOKEN = 1280


def expected_count(samples: int) -> int:
    """The reference keeps ceil(n / 1280) tokens for each 30 s window."""
    window = 30 * RATE
    return sum(math.ceil(min(window, samples - start) / SAMPLES_PER_TOKEN) for start in range(0, samples, window))


# --- the published format -------------------------------------------------------------------------


def test_parity_checkpoint_reproduces_the_reference_tokens_for_every_recording(parity_dir: Path) -> None:
    tokenizer = SpeechTokenizer.from_pretrained(parity_dir, device="cpu")
    reference = json.loads((parity_dir / "ref_tokens.json").read_text())
    assert len(reference) >= 6
    for name, expected in reference.items():
        samples, rate = read_audio(parity_dir / "wavs" / name)
        assert tokenizer.tokenize(samples, rate) == expected, name


def test_full_size_layout_is_exactly_the_published_state_dict(shared_reference: Path) -> None:
    published = {}
    for line in KEYS.read_text().splitlines():
        name, shape, dtype = line.split("\t")
        published[name] = (tuple(json.loads(shape)), dtype)
    with torch.device("meta"):
        model = WhisperVQEncoder(WhisperVQConfig.from_dict(FULL_CONFIG))
    ours = {name: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in model.state_dict().items()}
    assert ours == published
    assert sum(p.numel() for p in model.parameters()) == 343_599_360


def test_generated_tiny_checkpoint_is_in_the_published_format(tiny_tokenizer_dir: Path) -> None:
    from safetensors import safe_open

    assert sorted(p.name for p in tiny_tokenizer_dir.iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"
    ]
    config = json.loads((tiny_tokenizer_dir / "config.json").read_text())
    assert config["architectures"] == ["WhisperVQEncoder"]
    assert set(config) == set(FULL_CONFIG)
    with safe_open(str(tiny_tokenizer_dir / "model.safetensors"), "pt") as weights:
        assert weights.metadata() == {"format": "pt"}
        names = set(weights.keys())
    assert {"ema_count", "ema_weight", "codebook.weight", "embed_positions2.weight"} <= names
    with torch.device("meta"):
        model = WhisperVQEncoder(WhisperVQConfig.from_dict(config))
    assert names == set(model.state_dict())


@pytest.mark.slow
def test_generated_full_size_checkpoint_loads_strictly(tmp_path: Path) -> None:
    from voicechat.testing.speech_tokenizer import write

    folder = Path(write(tmp_path, "full", seed=0)["models"]["speech_tokenizer"]["source"])
    tokenizer = SpeechTokenizer.from_pretrained(folder, device="cpu")
    assert sum(p.numel() for p in tokenizer.model.parameters()) == 343_599_360
    tokens = tokenizer.tokenize(speech_like(1.0), RATE)
    assert len(tokens) == 13 and all(0 <= t < 16384 for t in tokens)


def test_pickled_state_dict_loads_like_safetensors(tiny_tokenizer, tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = _copy_without_weights(tiny_tokenizer_dir, tmp_path)
    torch.save(load_file(str(tiny_tokenizer_dir / "model.safetensors")), folder / "pytorch_model.bin")
    audio = speech_like(3.0, seed=1)
    loaded = SpeechTokenizer.from_pretrained(folder, device="cpu")
    assert loaded.tokenize(audio, RATE) == tiny_tokenizer.tokenize(audio, RATE)


# --- broken model folders -------------------------------------------------------------------------


def _copy_without_weights(source: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((source / name).read_bytes())
    return folder


def _with_state(source: Path, tmp_path: Path, change) -> Path:
    from safetensors.torch import load_file, save_file

    folder = _copy_without_weights(source, tmp_path)
    state = load_file(str(source / "model.safetensors"))
    change(state)
    save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("layers.1.fc2.bias"), "missing layers.1.fc2.bias"),
    (lambda s: s.pop("ema_count"), "missing ema_count"),
    (lambda s: s.update({"layer_norm.weight": torch.ones(64)}), "unexpected layer_norm.weight"),
    (lambda s: s.update({"codebook.weight": torch.zeros(100, 64)}), "codebook.weight has shape [100, 64]"),
])
def test_weights_that_do_not_match_the_config_are_refused(tiny_tokenizer_dir: Path, tmp_path: Path,
                                                          change, message: str) -> None:
    folder = _with_state(tiny_tokenizer_dir, tmp_path, change)
    with pytest.raises(ModelError, match=re.escape(message)):
        SpeechTokenizer.from_pretrained(folder, device="cpu")


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "model.safetensors").unlink(), "no model.safetensors or pytorch_model.bin"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
     "cannot read the weights"),
    (lambda f: (f / "config.json").unlink(), "config.json: missing"),
    (lambda f: (f / "config.json").write_text("{ not json"), "not a readable JSON config"),
    (lambda f: (f / "config.json").write_text('{"d_model": "wide", "quantize_vocab_size": 8}'),
     "d_model: expected int"),
    (lambda f: (f / "config.json").write_text('{"d_model": 64}'), "not a speech tokenizer"),
    (lambda f: (f / "preprocessor_config.json").unlink(), "preprocessor_config.json: missing"),
    (lambda f: (f / "preprocessor_config.json").write_text('{"feature_size": 80}'), "does not match"),
])
def test_missing_or_corrupt_files_raise_one_model_error(tiny_tokenizer_dir: Path, tmp_path: Path,
                                                        damage, message: str) -> None:
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for path in tiny_tokenizer_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    damage(folder)
    with pytest.raises(ModelError, match=re.escape(message)):
        SpeechTokenizer.from_pretrained(folder, device="cpu")


def test_pickled_weights_are_loaded_without_running_code(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    folder = _copy_without_weights(tiny_tokenizer_dir, tmp_path)
    torch.save({"not": "tensors", "f": print}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="cannot read the weights"):
        SpeechTokenizer.from_pretrained(folder, device="cpu")


def test_missing_folder_and_unknown_device_or_dtype_are_model_errors(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such speech tokenizer folder"):
        SpeechTokenizer.from_pretrained(tmp_path / "absent")
    with pytest.raises(ModelError, match="unknown dtype"):
        SpeechTokenizer.from_pretrained(tiny_tokenizer_dir, device="cpu", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            SpeechTokenizer.from_pretrained(tiny_tokenizer_dir, device="cuda")


# --- tokens, windows and padding ------------------------------------------------------------------


@pytest.mark.parametrize("seconds, count", [(1.0, 13), (2.0, 25), (4.0, 50), (10.0, 125)])
def test_speech_gives_12_5_tokens_per_second(tiny_tokenizer, seconds: float, count: int) -> None:
    assert tiny_tokenizer.tokens_per_second == 12.5
    tokens = tiny_tokenizer.tokenize(speech_like(seconds), RATE)
    assert len(tokens) == count
    assert all(isinstance(t, int) and 0 <= t < 16384 for t in tokens)


@pytest.mark.parametrize("seconds, count", [(1.0, 13), (29.9, 374), (30.0, 375), (31.0, 388), (65.0, 813)])
def test_padding_is_stripped_exactly_as_the_reference_does(tiny_tokenizer, seconds: float, count: int) -> None:
    samples = int(round(seconds * RATE))
    assert expected_count(samples) == count
    assert len(tiny_tokenizer.tokenize(speech_like(seconds, seed=2), RATE)) == count


@pytest.mark.parametrize("samples", [1280, 1281, 2560, 30 * RATE - 1, 30 * RATE + 1])
def test_token_count_at_token_and_window_boundaries(tiny_tokenizer, samples: int) -> None:
    audio = speech_like(samples / RATE, seed=4)[:samples]
    assert audio.size == samples
    assert len(tiny_tokenizer.tokenize(audio, RATE)) == expected_count(samples)


def test_long_audio_is_tokenized_as_independent_30_s_windows(tiny_tokenizer) -> None:
    audio = speech_like(65.0, seed=5)
    window = 30 * RATE
    pieces = [tiny_tokenizer.tokenize(audio[start : start + window], RATE) for start in range(0, audio.size, window)]
    assert tiny_tokenizer.tokenize(audio, RATE) == pieces[0] + pieces[1] + pieces[2]


def test_cancelling_a_long_recording_stops_it_within_its_first_window(tiny_tokenizer) -> None:
    first_layer_runs = []
    hook = tiny_tokenizer.model.layers[0].register_forward_hook(lambda *args: first_layer_runs.append(1))
    try:
        with pytest.raises(Cancelled):  # four windows; the user cancels after the first layer
            tiny_tokenizer.tokenize(speech_like(95.0), RATE, CancelledAfterChecks(2))
    finally:
        hook.remove()
    assert first_layer_runs == [1]


def test_tokens_follow_the_audio_not_only_the_position(tiny_tokenizer) -> None:
    first = tiny_tokenizer.tokenize(speech_like(5.0, seed=10), RATE)
    noise = np.random.default_rng(0).normal(0, 0.1, 5 * RATE).astype(np.float32)
    assert agreement(first, tiny_tokenizer.tokenize(noise, RATE)) < 0.5
    assert len(set(first)) > 10


def test_batch_gives_the_same_tokens_as_one_utterance_at_a_time(tiny_tokenizer) -> None:
    utterances = [(speech_like(s, seed=i), RATE) for i, s in enumerate([2.0, 0.3, 31.0, 7.77, 12.0])]
    one_by_one = [tiny_tokenizer.tokenize(audio, rate) for audio, rate in utterances]
    assert tiny_tokenizer.tokenize_batch(utterances, batch_windows=2) == one_by_one
    assert tiny_tokenizer.tokenize_batch(utterances, batch_windows=16) == one_by_one


def test_tokenizing_is_deterministic_across_calls_and_loads(tiny_tokenizer, tiny_tokenizer_dir: Path) -> None:
    audio = speech_like(6.0, seed=6)
    first = tiny_tokenizer.tokenize(audio, RATE)
    tiny_tokenizer.warm_up()
    assert tiny_tokenizer.tokenize(audio, RATE) == first
    assert SpeechTokenizer.from_pretrained(tiny_tokenizer_dir, device="cpu").tokenize(audio, RATE) == first


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_gives_nearly_the_same_tokens(tiny_tokenizer, tiny_tokenizer_dir: Path, dtype: str) -> None:
    audio = speech_like(5.0, seed=7)
    half = SpeechTokenizer.from_pretrained(tiny_tokenizer_dir, device="cpu", dtype=dtype)
    assert half.model.conv1.weight.dtype == getattr(torch, dtype)
    assert agreement(half.tokenize(audio, RATE), tiny_tokenizer.tokenize(audio, RATE)) >= 0.9


# --- input handling -------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_sample_rate_is_resampled_to_16_khz(tiny_tokenizer, rate: int) -> None:
    audio16 = speech_like(4.0, seed=8)
    native = speech_like(4.0, seed=8, rate=rate)
    tokens = tiny_tokenizer.tokenize(native, rate)
    assert tokens == tiny_tokenizer.tokenize(to_model_input(native, rate), RATE)
    assert len(tokens) == len(tiny_tokenizer.tokenize(audio16, RATE)) == 50
    if rate > RATE:  # same signal below 8 kHz: nearly the same tokens
        assert agreement(tokens, tiny_tokenizer.tokenize(audio16, RATE)) >= 0.8


def test_speech_resampled_live_gives_the_tokens_of_the_whole_recording(tiny_tokenizer) -> None:
    rate = 44100
    native = speech_like(4.0, seed=8, rate=rate)
    resampler, block = StreamResampler(rate, RATE), rate * 40 // 1000  # the microphone's 40 ms blocks
    live = [resampler.process(native[start : start + block]) for start in range(0, native.size, block)]
    audio = np.concatenate(live + [resampler.flush()])
    assert tiny_tokenizer.tokenize(audio, RATE) == tiny_tokenizer.tokenize(native, rate)


def test_stereo_uses_channel_0_like_the_reference(tiny_tokenizer, tmp_path: Path) -> None:
    left = speech_like(3.0, seed=9)
    right = np.random.default_rng(1).normal(0, 0.2, left.size).astype(np.float32)
    path = tmp_path / "stereo.wav"
    write_wav(path, np.stack([left, right], axis=1), 44100)
    samples, rate = read_audio(path)
    assert samples.shape[1] == 2
    assert tiny_tokenizer.tokenize(samples, rate) == tiny_tokenizer.tokenize(samples[:, 0], rate)
    assert tiny_tokenizer.tokenize(np.stack([left, right], axis=1), RATE) == tiny_tokenizer.tokenize(left, RATE)


def test_int16_input_is_scaled_like_float(tiny_tokenizer) -> None:
    audio = speech_like(2.0, seed=11)
    pcm = np.round(audio * 32767).astype(np.int16)
    assert tiny_tokenizer.tokenize(pcm, RATE) == tiny_tokenizer.tokenize(pcm.astype(np.float32) / 32768.0, RATE)


def test_empty_or_very_short_audio_gives_no_tokens(tiny_tokenizer) -> None:
    assert tiny_tokenizer.tokenize(np.zeros(0, np.float32), RATE) == []
    assert tiny_tokenizer.tokenize(np.zeros((0, 2), np.float32), 48000) == []
    assert tiny_tokenizer.tokenize_batch([]) == []
    assert tiny_tokenizer.tokenize_batch([(np.zeros(0, np.float32), RATE), (speech_like(0.1), RATE)]) == [
        [], tiny_tokenizer.tokenize(speech_like(0.1), RATE)
    ]
    # Under one token's span (80 ms) there is nothing to say; the reference would give one token.
    assert tiny_tokenizer.tokenize(np.full(10, 0.1, np.float32), RATE) == []
    assert tiny_tokenizer.tokenize(np.zeros(1279, np.float32), RATE) == []
    assert len(tiny_tokenizer.tokenize(np.zeros(1280, np.float32), RATE)) == 1


@pytest.mark.parametrize("samples, rate, message", [
    (np.full(1000, np.nan, np.float32), RATE, "NaN or infinite"),
    (np.zeros((10, 2, 2), np.float32), RATE, "shaped"),
    (np.zeros((10, 0), np.float32), RATE, "shaped"),
    (np.array(["a", "b"]), RATE, "shaped"),
    (np.zeros(1000, np.float32), 0, "invalid sample rate"),
])
def test_input_that_cannot_be_audio_raises_audio_error(tiny_tokenizer, samples, rate, message: str) -> None:
    with pytest.raises(AudioError, match=re.escape(message)):
        tiny_tokenizer.tokenize(samples, rate)
