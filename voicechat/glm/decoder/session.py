"""Streaming one reply: push(tokens) -> audio as soon as a chunk is due, finish() -> the rest.

How a chunk is made (positions are absolute in the reply: token n starts at mel frame F(n), the
reference's rounding of n / 12.5 s * 22050 / 256):

1. Flow over a window of tokens [c, b): the new tokens [a, b) plus a bounded left context that starts
   on an encoder block boundary (so the block-causal encoder sees the same blocks as in a whole
   decode). It makes mel frames [F(c), F(b)); the final mel already known for the context frames is
   given as the flow's prompt condition, the solver's noise comes from the reply's noise source by
   absolute frame.
2. Mel bookkeeping: frames before ``final_end`` are final. The first ``overlap`` new frames were held
   back last time; they are cross-faded from the held-back version into the new one (weights sum to
   one). The last ``overlap`` frames of this chunk are held back in turn, except at the end.
   Every frame is made final exactly once: none lost, none doubled.
3. Vocoder over the newly final frames with ``VOCODER_CONTEXT`` frames of final mel on the left and,
   until the end, as many held-back frames on the right: HiFT's receptive field is smaller than
   that, so the samples equal those of a single pass over the whole mel except for the little the
   cross-fade later changes in the lookahead. The sine source's phase is carried across chunks, its
   noise is drawn by absolute sample.

Cost per chunk depends on the chunk size and the fixed context, not on the reply length.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

from voicechat.config import DecoderConfig
from voicechat.errors import ConfigError
from voicechat.glm.decoder.flow import DecodingCancelled

if TYPE_CHECKING:
    from voicechat.glm.decoder.model import SpeechDecoder

VOCODER_CONTEXT = 16  # mel frames; HiFT's receptive field is about 13 frames to either side


def crossfade_weights(length: int) -> torch.Tensor:
    """Rising raised-cosine weights for the new version; the old one gets 1 - w."""
    position = (torch.arange(length, dtype=torch.float32) + 0.5) / max(length, 1)
    return torch.sin(0.5 * torch.pi * position) ** 2


class DecoderSession:
    """Per-reply streaming state. Not thread-safe; ``cancel`` may be set from any thread."""

    def __init__(self, decoder: "SpeechDecoder", config: DecoderConfig = DecoderConfig(),
                 cancel: threading.Event | None = None):
        if not config.chunk_schedule or any(n < 1 for n in config.chunk_schedule):
            raise ConfigError("decoder.chunk_schedule: expected a list of positive speech-token counts, "
                              f"got {list(config.chunk_schedule)}")
        self.decoder = decoder
        self.schedule = tuple(config.chunk_schedule)
        self.overlap = config.overlap_frames
        self.context_tokens = config.context_tokens
        self.cancel_event = cancel or threading.Event()
        self.noise = decoder.noise(config.seed)
        self.block_size = decoder.files.flow.encoder.block_size
        self.finished = False
        self.chunks = 0
        # tokens[0] is reply token number token_offset; decoded up to decoded_tokens
        self._tokens: list[int] = []
        self._token_offset = 0
        self.decoded_tokens = 0
        # final mel frames [mel_offset, final_end) and the held-back frames that follow them
        self._mel = torch.zeros(1, decoder.files.flow.output_size, 0)
        self._mel_offset = 0
        self.final_end = 0
        self._pending: torch.Tensor | None = None
        # vocoder: audio is out up to frame voiced_end; f0 of the frames before it, and the phase
        self.voiced_end = 0
        self._f0 = torch.zeros(0)
        self._f0_offset = 0
        self._cycles_at_f0_offset = 0.0

    # --- public -----------------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def total_tokens(self) -> int:
        return self._token_offset + len(self._tokens)

    def next_chunk_size(self) -> int:
        return self.schedule[min(self.chunks, len(self.schedule) - 1)]

    def push(self, tokens: Iterable[int]) -> np.ndarray:
        """Add speech tokens; returns the audio that became ready (often none), float32."""
        if self.finished or self.cancelled:
            return _empty()
        new = [int(t) for t in tokens]
        self.decoder.check_tokens(new)
        self._tokens.extend(new)
        pieces = []
        while not self.cancelled and self.total_tokens - self.decoded_tokens >= self.next_chunk_size():
            pieces.append(self._chunk(self.decoded_tokens + self.next_chunk_size(), last=False))
        return _join(pieces)

    def finish(self) -> np.ndarray:
        """Decode what is left and release the state; returns the tail. Safe to call twice."""
        if self.finished or self.cancelled:
            self._release()
            return _empty()
        pieces = []
        if self.total_tokens > self.decoded_tokens or self._pending is not None or self.voiced_end < self.final_end:
            pieces.append(self._chunk(self.total_tokens, last=True))
        self._release()
        return _join(pieces)

    def cancel(self) -> None:
        """Stop: a running chunk stops at its next solver step; later calls return no audio."""
        self.cancel_event.set()

    def __enter__(self) -> "DecoderSession":
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    # --- one chunk --------------------------------------------------------------------------------

    def _chunk(self, end_token: int, last: bool) -> np.ndarray:
        try:
            if end_token > self.decoded_tokens:
                self._add_mel(end_token, last)
            elif last and self._pending is not None:  # nothing new: the held-back frames are final as they are
                self._make_final(self._pending)
                self._pending = None
            audio = self._vocode(last)
        except DecodingCancelled:
            self._release()
            return _empty()
        self.chunks += 1
        return audio

    def _add_mel(self, end_token: int, last: bool) -> None:
        d = self.decoder
        start = self._context_start(self.decoded_tokens)
        first_frame, end_frame = d.frames_for(start), d.frames_for(end_token)
        tokens = torch.tensor([self._tokens[start - self._token_offset:end_token - self._token_offset]],
                              dtype=torch.long, device=d.device)
        n_frames = end_frame - first_frame
        cond = torch.zeros(1, self._mel.shape[1], n_frames)
        known = self._mel[:, :, max(0, first_frame - self._mel_offset):]
        cond[:, :, :known.shape[-1]] = known[:, :, :n_frames]
        mel = d.mel(tokens, n_frames, self.noise.flow(first_frame, n_frames), cond.to(d.device),
                    cancel=self.cancel_event).cpu()
        new = mel[:, :, self.final_end - first_frame:]
        if self._pending is not None:
            k = min(self._pending.shape[-1], new.shape[-1])
            w = crossfade_weights(k)
            new[:, :, :k] = self._pending[:, :, :k] * (1 - w) + new[:, :, :k] * w
            self._pending = None
        hold = 0 if last else min(self.overlap, new.shape[-1])
        self._make_final(new[:, :, :new.shape[-1] - hold])
        self._pending = new[:, :, new.shape[-1] - hold:] if hold else None
        self.decoded_tokens = end_token
        self._forget_before(self._context_start(end_token))

    def _context_start(self, token: int) -> int:
        """First token of the window whose new tokens start at ``token``: on a block boundary."""
        start = max(0, token - self.context_tokens)
        start -= start % self.block_size
        while start > 0 and self.decoder.frames_for(start) > self.final_end:  # cover the held-back frames
            start -= self.block_size
        return start

    def _make_final(self, mel: torch.Tensor) -> None:
        self._mel = torch.cat([self._mel, mel], dim=-1)
        self.final_end += mel.shape[-1]

    def _forget_before(self, token: int) -> None:
        """Drop tokens and mel that no later chunk can need."""
        token = max(self._token_offset, token)
        del self._tokens[:token - self._token_offset]
        self._token_offset = token
        keep_from = min(self.decoder.frames_for(token), self.voiced_end - VOCODER_CONTEXT)
        drop = max(0, keep_from - self._mel_offset)
        self._mel = self._mel[:, :, drop:]
        self._mel_offset += drop

    def _vocode(self, last: bool) -> np.ndarray:
        """Audio for frames [voiced_end, ready): all final frames, with VOCODER_CONTEXT frames of
        lookahead taken from the held-back frames (they change only by the cross-fade) or, where
        those are too few, kept back from the final ones."""
        d = self.decoder
        lookahead = self._pending[:, :, :VOCODER_CONTEXT] if self._pending is not None else self._mel[:, :, :0]
        ready = self.final_end if last else self.final_end - (VOCODER_CONTEXT - lookahead.shape[-1])
        if ready <= self.voiced_end:
            return _empty()
        first = max(self._mel_offset, self.voiced_end - VOCODER_CONTEXT)
        mel = torch.cat([self._mel[:, :, first - self._mel_offset:], lookahead], dim=-1).to(d.device)
        f0 = d.f0(mel).cpu()
        # frames before voiced_end keep the F0 they had when they were made (the window's left edge
        # sees zero padding); the source's phase starts from the value carried for them
        known = self._f0[first - self._f0_offset:]
        f0[:known.shape[0]] = known
        hop = d.samples_per_frame
        cycles = self._cycles_at_f0_offset + float(self._f0[:first - self._f0_offset].double().sum()) * hop / d.sample_rate
        audio, _ = d.vocode(mel, f0.to(d.device), cycles, self.noise.phases(),
                            self.noise.sine(first * hop, mel.shape[-1] * hop))
        # remember F0 for frames up to `ready`, keeping only the vocoder's left context of them
        self._f0 = torch.cat([self._f0[:first - self._f0_offset], f0[:ready - first]])
        drop = max(0, ready - VOCODER_CONTEXT - self._f0_offset)
        self._cycles_at_f0_offset += float(self._f0[:drop].double().sum()) * hop / d.sample_rate
        self._f0 = self._f0[drop:]
        self._f0_offset += drop
        out = audio[0, (self.voiced_end - first) * hop:(ready - first) * hop]
        self.voiced_end = ready
        if not last:
            self._forget_before(self._token_offset)
        return out.cpu().numpy()

    def _release(self) -> None:
        self.finished = True
        self._tokens = []
        self._mel = self._mel[:, :, :0]
        self._pending = None
        self._f0 = self._f0[:0]


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


def _join(pieces: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else _empty()
