"""Qwen2.5-Omni's token2wav, streamed: the talker's codec codes to 24 kHz audio, chunk by chunk.

transformers decodes a whole reply at once: the DiT solves an ODE (10 Runge-Kutta steps) from
noise to mel over all codes, then BigVGAN turns the mel into audio. Here the DiT runs over
block-aligned windows of codes: the DiT attends in blocks of ``block_size`` mel frames (2 frames
per code); its layers 0 and 20 see one block back and layer 10 one block ahead, so through the
solver's many passes information travels a few blocks each way. A window holds the chunk's
blocks plus ``look_back`` blocks before and ``look_ahead`` blocks after it; only the chunk's own
frames are kept. Every window slices one noise tensor drawn for the whole reply (as the whole
decode draws it), so a frame sees the same noise however the reply is cut. BigVGAN is a stack of
convolutions: a chunk of mel vocoded with ``vocoder_context`` final frames on each side gives the
same samples as the whole mel. Chunks follow each other with no sample lost or doubled.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch

from voicechat.errors import ModelError

NOISE_FRAMES = 30000  # the noise transformers draws per reply: (1, 30000, mel_dim)


@dataclass(frozen=True)
class StreamSettings:
    """Measured (DESIGN: one DiT pass is exact with 2 blocks back and 1 ahead; through the
    10-step solver 4 back and 2 ahead differ from the whole decode by ~4e-5)."""

    # The vocoder holds back its last vocoder_context frames until their right side is final, so a
    # first chunk of one block would release only 4 of its 24 frames (40 ms) and then wait for a
    # whole later chunk. Two blocks release 280 ms; later chunks of one block then need 12 more codes
    # (240 ms of speech) each, so playback keeps up whenever the talker does.
    first_chunk_blocks: int = 2
    chunk_blocks: int = 1
    look_back: int = 4  # blocks
    look_ahead: int = 2  # blocks
    vocoder_context: int = 20  # mel frames each side of a vocoded chunk
    num_steps: int = 10
    guidance_scale: float = 0.5
    sway_coefficient: float = -1.0


@dataclass(frozen=True)
class Voice:
    """One speaker of spk_dict.pt: the DiT's speaker vector and reference mel."""

    cond: torch.Tensor  # (1, enc_emb_dim)
    ref_mel: torch.Tensor  # (1, frames, mel_dim)


class Token2Wav:
    """The streaming decoder of one loaded checkpoint (DiT + BigVGAN, float32 as the reference)."""

    sample_rate = 24000

    def __init__(self, token2wav, voices: dict[str, Voice], default_voice: str,
                 settings: StreamSettings = StreamSettings(), seed: int = 42) -> None:
        self.dit = token2wav.code2wav_dit_model
        self.vocoder = token2wav.code2wav_bigvgan_model
        self.voices = voices
        self.voice = default_voice  # the reply's speaker: set by the stream that makes its codes
        self.settings = settings
        self.seed = seed
        self.device = next(self.dit.parameters()).device
        self.block_codes = self.dit.block_size // self.dit.repeats
        self.hop = int(np.prod(self.vocoder.config.upsample_rates))  # samples per mel frame
        self.max_code = self.dit.text_embed.codec_embed.num_embeddings - 1

    @property
    def tokens_per_second(self) -> float:
        return self.sample_rate / (self.hop * self.dit.repeats)

    def session(self, config=None, cancel: threading.Event | None = None) -> Token2WavSession:
        """``config`` (the GLM decoder's settings) does not apply; StreamSettings does."""
        return Token2WavSession(self, self.voices[self.voice], cancel)

    def noise(self) -> torch.Tensor:
        """The whole reply's initial noise, as transformers draws it (global RNG after
        torch.manual_seed(seed)), from a generator of its own."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn((1, NOISE_FRAMES, self.dit.mel_dim), generator=generator)

    @torch.no_grad()
    def dit_window(self, codes: torch.Tensor, noise: torch.Tensor, voice: Voice) -> torch.Tensor:
        """Mel (1, mel_dim, 2*len(codes)) of a window of codes from its slice of the noise:
        transformers' Qwen2_5OmniToken2WavDiTModel.sample with the initial state given."""
        s = self.settings
        dit = self.dit
        frames = codes.shape[1] * dit.repeats
        cond = voice.cond.to(self.device).float().unsqueeze(1).repeat(1, frames, 1)
        ref = voice.ref_mel.to(self.device).float()

        def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            out = dit(hidden_states=x, quantized_code=codes, speaker_embedding=cond, condition_vector=ref,
                      time_step=t, apply_cfg=True)
            guided, null = torch.chunk(out, 2, dim=0)
            return guided + (guided - null) * s.guidance_scale

        from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import RungeKutta4ODESolver

        times = torch.linspace(0, 1, s.num_steps, device=self.device, dtype=cond.dtype)
        times = times + s.sway_coefficient * (torch.cos(torch.pi / 2 * times) - 1 + times)
        solution = RungeKutta4ODESolver(function=velocity, initial_value=noise.to(self.device)).integrate(times)
        return solution[-1].permute(0, 2, 1)

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor) -> np.ndarray:
        return self.vocoder(mel).reshape(-1).float().cpu().numpy()


class Token2WavSession:
    """One reply: push codes as they come, get the audio that is final so far; finish() gives
    the rest. The last chunk needs no look-ahead: the reply's end is the whole decode's end."""

    def __init__(self, decoder: Token2Wav, voice: Voice, cancel: threading.Event | None) -> None:
        self.decoder = decoder
        self.voice = voice
        self.cancel_event = cancel
        self.codes: list[int] = []
        self.mel = torch.zeros((1, decoder.dit.mel_dim, 0))  # final mel frames so far
        self.vocoded = 0  # mel frames whose samples were returned
        self.noise: torch.Tensor | None = None
        self.chunks = 0
        self.cancelled = False

    def push(self, codes: list[int]) -> np.ndarray:
        self._check(codes)
        self.codes.extend(codes)
        pieces = []
        while not self.cancelled and self._next_chunk_ready():
            self._decode_chunk(final=False)
            pieces.append(self._vocode(final=False))
        return _joined(pieces)

    def finish(self) -> np.ndarray:
        if self.cancelled or self._cancel_requested():
            return np.zeros(0, np.float32)
        if self._done_codes() < len(self.codes):
            self._decode_chunk(final=True)
        return self._vocode(final=True)

    def cancel(self) -> None:
        self.cancelled = True

    # --- the DiT over windows ----------------------------------------------------------------------

    def _done_codes(self) -> int:
        return self.mel.shape[2] // self.decoder.dit.repeats

    def _chunk_codes(self) -> int:
        s = self.decoder.settings
        return self.decoder.block_codes * (s.first_chunk_blocks if self.chunks == 0 else s.chunk_blocks)

    def _next_chunk_ready(self) -> bool:
        if self._cancel_requested():
            return False
        needed = self._done_codes() + self._chunk_codes() + self.decoder.settings.look_ahead * self.decoder.block_codes
        return len(self.codes) >= needed

    def _decode_chunk(self, final: bool) -> None:
        d = self.decoder
        start = self._done_codes()
        end = len(self.codes) if final else start + self._chunk_codes()
        window_start = max(0, start - d.settings.look_back * d.block_codes)  # block-aligned: start is
        window_end = len(self.codes) if final else min(len(self.codes), end + d.settings.look_ahead * d.block_codes)
        if self.noise is None:
            self.noise = d.noise()
        repeats = d.dit.repeats
        codes = torch.tensor([self.codes[window_start:window_end]], dtype=torch.long, device=d.device)
        noise = self.noise[:, window_start * repeats:window_end * repeats]
        mel = d.dit_window(codes, noise, self.voice).cpu()
        keep = mel[:, :, (start - window_start) * repeats:(end - window_start) * repeats]
        self.mel = torch.cat([self.mel, keep], dim=2)
        self.chunks += 1

    # --- BigVGAN with context ----------------------------------------------------------------------

    def _vocode(self, final: bool) -> np.ndarray:
        d = self.decoder
        context = d.settings.vocoder_context
        total = self.mel.shape[2]
        upto = total if final else total - context  # frames whose right context is final
        if upto <= self.vocoded:
            return np.zeros(0, np.float32)
        left = max(0, self.vocoded - context)
        right = min(total, upto + context)
        audio = d.vocode(self.mel[:, :, left:right].to(d.device))
        samples = audio[(self.vocoded - left) * d.hop:(upto - left) * d.hop]
        self.vocoded = upto
        return samples.astype(np.float32, copy=False)

    def _check(self, codes: list[int]) -> None:
        bad = [c for c in codes if not 0 <= c <= self.decoder.max_code]
        if bad:
            raise ModelError(f"speech decoder: codec code {bad[0]} is outside the DiT's "
                             f"vocabulary (0-{self.decoder.max_code})")

    def _cancel_requested(self) -> bool:
        return self.cancel_event is not None and self.cancel_event.is_set()


def _joined(pieces: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
