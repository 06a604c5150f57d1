"""Loading a glm-4-voice-decoder folder (config.yaml, flow.pt, hift.pt) and decoding a whole reply."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from voicechat.config import DecoderConfig
from voicechat.errors import ModelError
from voicechat.placement import resolve_device, resolve_dtype
from voicechat.glm.decoder.config import DecoderFiles, load_decoder_config
from voicechat.glm.decoder.flow import MaskedDiffWithXvec, frames_for_tokens
from voicechat.glm.decoder.hift import HiFTGenerator, sine_waves
from voicechat.glm.decoder.noise import REFERENCE_SEED, ReferenceNoise, ReplyNoise

CONFIG_FILE, FLOW_FILE, HIFT_FILE = "config.yaml", "flow.pt", "hift.pt"


Noise = ReplyNoise | ReferenceNoise


class SpeechDecoder:
    """GLM-4-Voice's token-to-speech decoder: flow matching to mel, HiFT to 22.05 kHz audio."""

    def __init__(self, files: DecoderFiles, flow: MaskedDiffWithXvec, hift: HiFTGenerator):
        self.files = files
        self.flow = flow.eval()
        self.hift = hift.eval()
        self.device = flow.input_embedding.weight.device
        self.dtype = flow.input_embedding.weight.dtype

    @classmethod
    def from_pretrained(cls, folder: Path, device: str | torch.device = "auto",
                        dtype: str | torch.dtype = "auto") -> "SpeechDecoder":
        """Strict load of config.yaml, flow.pt and hift.pt. Device "auto": the GPU if there is one;
        dtype "auto": float32 (the decoder is small; half precision is available on request)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ModelError(f"{folder}: no such decoder folder; it should hold {CONFIG_FILE}, {FLOW_FILE} and {HIFT_FILE}")
        files = load_decoder_config(folder / CONFIG_FILE)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        with torch.device("meta"):  # no memory or random init for weights that are loaded next
            flow, hift = MaskedDiffWithXvec(files.flow), HiFTGenerator(files.hift)
        flow = _load(flow, folder / FLOW_FILE, "flow")
        hift = _load(hift, folder / HIFT_FILE, "HiFT")
        return cls(files, flow.to(device=device, dtype=dtype), hift.to(device=device, dtype=dtype))

    # --- facts ------------------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.files.sample_rate

    @property
    def samples_per_frame(self) -> int:
        return self.files.hift.samples_per_frame

    def frames_for(self, n_tokens: int) -> int:
        """Mel frames for a reply of n_tokens speech tokens (the reference's rounding)."""
        return frames_for_tokens(n_tokens, self.files.flow.input_frame_rate, self.sample_rate, self.samples_per_frame)

    def noise(self, seed: int) -> ReplyNoise:
        return ReplyNoise(seed, self.files.flow.output_size, self.files.hift.nb_harmonics + 1, self.samples_per_frame)

    def reference_noise(self, seed: int = REFERENCE_SEED) -> ReferenceNoise:
        return ReferenceNoise(seed, self.files.flow.output_size, self.files.hift.nb_harmonics + 1)

    def check_tokens(self, tokens: Sequence[int]) -> torch.Tensor:
        vocab = self.files.flow.vocab_size
        bad = [t for t in tokens if not 0 <= int(t) < vocab]
        if bad:
            raise ModelError(f"speech token {bad[0]} is outside the decoder's vocabulary (0-{vocab - 1})")
        return torch.tensor([list(tokens)], dtype=torch.long, device=self.device)

    # --- building blocks used by whole decodes and by sessions ------------------------------------

    def mel(self, tokens: torch.Tensor, n_frames: int, noise: torch.Tensor, cond: torch.Tensor | None = None,
            cancel: threading.Event | None = None) -> torch.Tensor:
        """Flow: (1, T) tokens -> (1, mel_bins, n_frames) float32."""
        return self.flow.inference(tokens, n_frames, noise.to(self.device), cond, cancel=cancel).float()

    def f0(self, mel: torch.Tensor) -> torch.Tensor:
        """(1, mel_bins, T) -> (T,) F0 in Hz, float32."""
        with torch.no_grad():
            return self.hift.f0_predictor(mel.to(self.dtype))[0].float()

    def vocode(self, mel: torch.Tensor, f0: torch.Tensor, start_cycles: float, phases: torch.Tensor,
               sine_noise: torch.Tensor) -> tuple[torch.Tensor, float]:
        """HiFT over one span of mel with its source: (1, samples) float32 and the phase carried on."""
        sines, end_cycles = sine_waves(f0, self.files.hift, start_cycles, phases.to(self.device),
                                       sine_noise.to(self.device))
        with torch.no_grad():
            return self.hift(mel, self.hift.excitation(sines)), end_cycles

    # --- whole decode -----------------------------------------------------------------------------

    def decode_mel(self, tokens: Sequence[int], noise: Noise) -> torch.Tensor:
        ids = self.check_tokens(tokens)
        n_frames = self.frames_for(len(tokens))
        if n_frames == 0:
            return torch.zeros(1, self.files.flow.output_size, 0, device=self.device)
        return self.mel(ids, n_frames, noise.flow(0, n_frames))

    def decode(self, tokens: Sequence[int], seed: int = 42, noise: Noise | None = None) -> np.ndarray:
        """All tokens in one pass -> float32 audio at sample_rate.

        With the default noise the result is what a streaming session with the same seed converges
        to; ``reference_noise(seed)`` reproduces the reference implementation's draws instead.
        """
        noise = noise or self.noise(seed)
        mel = self.decode_mel(tokens, noise)
        if mel.shape[-1] == 0:
            return np.zeros(0, dtype=np.float32)
        f0 = self.f0(mel)
        phases = noise.phases()
        audio, _ = self.vocode(mel, f0, 0.0, phases, noise.sine(0, mel.shape[-1] * self.samples_per_frame))
        return audio[0].cpu().numpy()

    # --- speed -------------------------------------------------------------------------------------

    def use_cuda_graphs(self, enabled: bool = True) -> None:
        """Replay the flow's velocity estimator as CUDA graphs, one per chunk shape (CUDA only)."""
        from voicechat.glm.decoder.graphs import GraphedEstimator

        self.flow.decoder.graphs = GraphedEstimator(self.flow.decoder.estimator) if enabled else None

    def warm_up(self, config: DecoderConfig = DecoderConfig()) -> None:
        """Decode a short reply through a session, so that the first real reply pays no one-off
        costs (kernel loading, workspaces). With CUDA graphs the reply is long enough to capture
        the shapes every reply's chunks have, and no more shapes are captured after it."""
        graphs = self.flow.decoder.graphs
        schedule = config.chunk_schedule
        # the first chunk, one with context; with graphs every steady chunk shape (two or three)
        count = sum(schedule) + 5 * schedule[-1] if graphs is not None else sum(schedule[:2])
        with self.session(config) as session:
            session.push([(7 * n) % self.files.flow.vocab_size for n in range(count)])
        if graphs is not None:
            graphs.freeze()

    def session(self, config: DecoderConfig = DecoderConfig(), cancel: threading.Event | None = None):
        """A streaming session for one reply; see DecoderSession."""
        from voicechat.glm.decoder.session import DecoderSession

        return DecoderSession(self, config, cancel)


def _load(model: nn.Module, path: Path, what: str) -> nn.Module:
    if not path.is_file():
        raise ModelError(f"{path}: the decoder's {what} weights are missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and format errors all mean the same to the user
        raise ModelError(f"{path}: not a readable {what} checkpoint ({type(error).__name__}); "
                         "download the decoder again") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a {what} state dict (expected a mapping of names to tensors)")
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    wrong = sorted(k for k in set(ours) & set(state) if ours[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} "
                         f"where config.yaml gives {tuple(ours[k].shape)})")
        raise ModelError(f"{path}: the {what} weights do not match config.yaml: {'; '.join(parts)}")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
