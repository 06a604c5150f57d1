"""Loading published-format checkpoints strictly and reproducing the reference implementation's output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from voicechat.errors import ModelError
from voicechat.glm.decoder import SpeechDecoder
from voicechat.glm.decoder.config import load_decoder_config
from voicechat.glm.decoder.flow import MaskedDiffWithXvec
from voicechat.glm.decoder.hift import HiFTGenerator
from voicechat.testing.decoder import config_text

PUBLISHED_FLOW_PARAMETERS = 111_166_208
PUBLISHED_HIFT_PARAMETERS = 20_460_591


@pytest.fixture(scope="module")
def parity(shared_reference: Path) -> Path:
    return shared_reference / "parity" / "decoder-tiny"


@pytest.fixture(scope="module")
def parity_decoder(parity: Path) -> SpeechDecoder:
    return SpeechDecoder.from_pretrained(parity, device="cpu")  # strict: every name and shape must match


@pytest.fixture(scope="module")
def parity_mel(parity: Path, parity_decoder: SpeechDecoder) -> torch.Tensor:
    tokens = json.loads((parity / "ref_tokens.json").read_text())
    return parity_decoder.decode_mel(tokens, parity_decoder.reference_noise(42))


def test_mel_matches_the_reference_whole_decode(parity: Path, parity_mel: torch.Tensor) -> None:
    reference = np.load(parity / "ref_whole_mel.npy")
    assert parity_mel.shape == reference.shape == (1, 80, 392)
    assert np.abs(parity_mel.numpy() - reference).max() <= 1e-4


def test_audio_matches_the_reference_whole_decode(parity: Path, parity_decoder: SpeechDecoder) -> None:
    tokens = json.loads((parity / "ref_tokens.json").read_text())
    audio = parity_decoder.decode(tokens, noise=parity_decoder.reference_noise(42))
    reference = np.load(parity / "ref_whole.npy")
    assert audio.dtype == np.float32 and audio.shape == reference.shape == (392 * 256,)
    assert np.abs(audio - reference).max() <= 1e-4


def test_vocoder_alone_matches_the_reference_on_its_mel(parity: Path, parity_decoder: SpeechDecoder) -> None:
    mel = torch.from_numpy(np.load(parity / "ref_whole_mel.npy"))
    noise = parity_decoder.reference_noise(42)
    noise.flow(0, mel.shape[-1])  # the reference draws the flow's noise first
    audio, _ = parity_decoder.vocode(mel, parity_decoder.f0(mel), 0.0, noise.phases(),
                                     noise.sine(0, mel.shape[-1] * 256))
    assert np.abs(audio[0].numpy() - np.load(parity / "ref_whole.npy")).max() <= 1e-4


def _keys(path: Path) -> dict[str, list[int]]:
    rows = (line.split("\t") for line in path.read_text().splitlines() if line.strip())
    return {name: json.loads(shape) for name, shape, _dtype in rows}


def test_published_config_builds_the_published_state_dict_layout(shared_reference: Path) -> None:
    files = load_decoder_config(shared_reference / "glm-4-voice-decoder" / "config.yaml")
    with torch.device("meta"):  # shapes only, no memory
        models = (MaskedDiffWithXvec(files.flow), HiFTGenerator(files.hift))
    for model, keys, count in zip(models, ("decoder-full-flow.txt", "decoder-full-hift.txt"),
                                  (PUBLISHED_FLOW_PARAMETERS, PUBLISHED_HIFT_PARAMETERS)):
        ours = {name: list(t.shape) for name, t in model.state_dict().items()}
        assert ours == _keys(shared_reference / "keys" / keys)
        assert sum(p.numel() for p in model.parameters()) == count


def test_generator_full_size_has_the_published_parameter_counts(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(config_text("full"))
    files = load_decoder_config(tmp_path / "config.yaml")
    with torch.device("meta"):
        flow, hift = MaskedDiffWithXvec(files.flow), HiFTGenerator(files.hift)
    assert sum(p.numel() for p in flow.parameters()) == PUBLISHED_FLOW_PARAMETERS
    assert sum(p.numel() for p in hift.parameters()) == PUBLISHED_HIFT_PARAMETERS


def test_generated_tiny_decoder_loads_strictly_and_speaks(tiny_decoder: SpeechDecoder) -> None:
    audio = tiny_decoder.decode(list(range(20)))
    assert audio.dtype == np.float32 and len(audio) == tiny_decoder.frames_for(20) * 256
    assert np.isfinite(audio).all() and 0.001 < np.sqrt(np.mean(audio**2)) < 0.5


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_decodes_close_to_float32(tiny_decoder_folder: Path, tiny_decoder: SpeechDecoder,
                                                 dtype: str) -> None:
    half = SpeechDecoder.from_pretrained(tiny_decoder_folder, device="cpu", dtype=dtype)
    tokens = list(range(100, 130))
    mel, reference = half.decode_mel(tokens, half.noise(1)), tiny_decoder.decode_mel(tokens, half.noise(1))
    assert torch.isfinite(mel).all()
    assert (mel - reference).pow(2).mean().sqrt() < 0.05 * reference.pow(2).mean().sqrt()
    assert np.isfinite(half.decode(tokens)).all()


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "decoder"
    shutil.copytree(folder, target)
    return target


def test_missing_folder_or_file_is_a_model_error(tiny_decoder_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such decoder folder"):
        SpeechDecoder.from_pretrained(tmp_path / "nowhere")
    folder = _copy(tiny_decoder_folder, tmp_path)
    (folder / "hift.pt").unlink()
    with pytest.raises(ModelError, match="HiFT weights are missing"):
        SpeechDecoder.from_pretrained(folder)


def test_truncated_checkpoint_is_a_model_error(tiny_decoder_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_decoder_folder, tmp_path)
    data = (folder / "flow.pt").read_bytes()
    (folder / "flow.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="not a readable flow checkpoint"):
        SpeechDecoder.from_pretrained(folder)


def test_checkpoint_holding_other_objects_than_tensors_is_refused(tiny_decoder_folder: Path, tmp_path: Path) -> None:
    folder = _copy(tiny_decoder_folder, tmp_path)
    torch.save({"weights": Path("/")}, folder / "flow.pt")  # any non-tensor object: weights_only refuses it
    with pytest.raises(ModelError, match="not a readable flow checkpoint"):
        SpeechDecoder.from_pretrained(folder)


def test_checkpoint_that_does_not_match_the_config_is_a_model_error(tiny_decoder_folder: Path,
                                                                   tmp_path: Path) -> None:
    folder = _copy(tiny_decoder_folder, tmp_path)
    state = torch.load(folder / "hift.pt", weights_only=True)
    state.pop("conv_pre.bias")
    state["conv_post.bias"] = torch.zeros(7)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, folder / "hift.pt")
    with pytest.raises(ModelError, match=r"1 missing \(e\.g\. conv_pre\.bias\); 1 unexpected .*conv_post\.bias"):
        SpeechDecoder.from_pretrained(folder)
