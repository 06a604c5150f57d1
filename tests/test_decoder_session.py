"""Streaming a reply through the decoder: chunk timing, lengths, agreement with a whole decode, cancel.

Tolerances stated here:
- Length: a reply of n tokens gives F(n) * 256 samples, F(n) = floor(n / 12.5 * 22050 / 256), which
  is n * 1764 samples minus less than one mel frame (256 samples).
- With a flow whose output depends only on the absolute frame (a test double), streaming equals the
  whole decode within 1e-4: every mel frame is used once, none lost or doubled, and the vocoder's
  chunked output equals a single pass.
- With the real (tiny, random) flow, streaming and whole decodes legitimately differ everywhere: each
  mel frame attends over its whole window, which is the chunk plus bounded context in streaming and
  the whole reply in one pass. Outside the cross-fades we require frame-by-frame waveform
  correlation of at least 0.8 (mean at least 0.9) and relative RMS error at most 0.5.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from voicechat.config import DecoderConfig
from voicechat.errors import ConfigError
from voicechat.glm.decoder import SpeechDecoder
from voicechat.glm.decoder.session import VOCODER_CONTEXT

TOKENS = [int(t) for t in np.random.default_rng(0).integers(0, 16384, 400)]


def stream(decoder: SpeechDecoder, tokens: list[int], config: DecoderConfig = DecoderConfig()) -> tuple[np.ndarray, list[int]]:
    """Push one token at a time; returns the audio and after which token counts audio came out."""
    session = decoder.session(config)
    pieces, ready_at = [], []
    for count, token in enumerate(tokens, start=1):
        piece = session.push([token])
        if len(piece):
            ready_at.append(count)
        pieces.append(piece)
    pieces.append(session.finish())
    return np.concatenate(pieces), ready_at


@pytest.fixture()
def local_flow(tiny_decoder: SpeechDecoder, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Test double for the flow: mel = 2 x the solver's noise, which is a function of the absolute frame
    only, so any lost, doubled or misplaced frame shows. Records (tokens, frames) of every call."""
    calls: list[tuple[int, int]] = []

    def mel(tokens, n_frames, noise, cond=None, cancel=None):
        calls.append((tokens.shape[1], n_frames))
        return 2 * noise.clone()

    monkeypatch.setattr(tiny_decoder, "mel", mel)
    return calls


@pytest.mark.parametrize("n", [0, 1, 9, 10, 11, 57])
def test_reply_length_is_the_token_count_times_1764_samples_less_under_one_frame(
        tiny_decoder: SpeechDecoder, n: int) -> None:
    audio, _ = stream(tiny_decoder, TOKENS[:n])
    assert audio.dtype == np.float32
    assert len(audio) == tiny_decoder.frames_for(n) * 256
    assert 0 <= n * 1764 - len(audio) < 256
    assert len(audio) == len(tiny_decoder.decode(TOKENS[:n]))


def test_first_audio_comes_with_the_tenth_token_then_the_schedule_grows(tiny_decoder: SpeechDecoder,
                                                                        local_flow) -> None:
    _, ready_at = stream(tiny_decoder, TOKENS[:300])
    assert ready_at == [10, 35, 85, 185, 285]  # chunks of 10, 25, 50, 100, then 100 again
    _, ready_at = stream(tiny_decoder, TOKENS[:9])
    assert ready_at == []  # fewer than 10 tokens: everything comes from finish()


@pytest.mark.parametrize("schedule, n", [((10, 25, 50, 100), 150), ((1,), 30), ((7, 13), 60), ((3, 200), 150)])
def test_streaming_equals_whole_decode_when_the_flow_is_frame_local(tiny_decoder: SpeechDecoder, local_flow,
                                                                    schedule: tuple[int, ...], n: int) -> None:
    tokens = TOKENS[:n]
    config = DecoderConfig(chunk_schedule=schedule, seed=5)
    streamed, _ = stream(tiny_decoder, tokens, config)
    whole = tiny_decoder.decode(tokens, seed=5)
    assert streamed.shape == whole.shape
    assert np.abs(streamed - whole).max() < 1e-4


def test_streaming_agrees_with_whole_decode_outside_crossfades(tiny_decoder: SpeechDecoder) -> None:
    tokens, config = TOKENS[:120], DecoderConfig(seed=3)
    streamed, ready_at = stream(tiny_decoder, tokens, config)
    whole = tiny_decoder.decode(tokens, seed=3)
    assert streamed.shape == whole.shape
    keep = np.ones(len(whole) // 256, dtype=bool)
    for end in ready_at:  # the held-back frames, cross-faded, and the vocoder's reach around them
        boundary = tiny_decoder.frames_for(end)
        keep[max(0, boundary - config.overlap_frames - VOCODER_CONTEXT):boundary + VOCODER_CONTEXT] = False
    s, w = streamed.reshape(-1, 256)[keep], whole.reshape(-1, 256)[keep]
    correlation = (s * w).sum(1) / np.sqrt((s**2).sum(1) * (w**2).sum(1))
    assert keep.sum() > len(keep) // 3
    assert correlation.min() >= 0.8 and correlation.mean() >= 0.9
    assert np.sqrt(((s - w) ** 2).mean() / (w**2).mean()) <= 0.5


def test_cost_per_chunk_does_not_grow_with_reply_length(tiny_decoder: SpeechDecoder, local_flow) -> None:
    config = DecoderConfig(chunk_schedule=(10, 25, 50, 100), context_tokens=30)
    stream(tiny_decoder, TOKENS[:400], config)
    windows = [tokens for tokens, _ in local_flow]
    later = windows[4:-1]  # the 100-token chunks in the middle of the reply
    assert later and max(later) == min(later) <= 100 + config.context_tokens + 10
    assert max(windows) <= 100 + config.context_tokens + 10


def test_same_seed_same_audio_and_the_global_rng_is_untouched(tiny_decoder: SpeechDecoder) -> None:
    state = torch.random.get_rng_state()
    first, _ = stream(tiny_decoder, TOKENS[:20], DecoderConfig(seed=11))
    second, _ = stream(tiny_decoder, TOKENS[:20], DecoderConfig(seed=11))
    other, _ = stream(tiny_decoder, TOKENS[:20], DecoderConfig(seed=12))
    assert np.array_equal(first, second)
    assert not np.allclose(first, other)
    assert np.array_equal(tiny_decoder.decode(TOKENS[:20]), tiny_decoder.decode(TOKENS[:20]))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_cancel_mid_reply_stops_all_further_audio(tiny_decoder: SpeechDecoder, local_flow) -> None:
    session = tiny_decoder.session()
    assert len(session.push(TOKENS[:10])) > 0
    session.cancel()
    assert len(session.push(TOKENS[10:60])) == 0
    assert len(session.finish()) == 0


def test_cancel_from_another_thread_stops_a_running_chunk(tiny_decoder: SpeechDecoder,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cancel = threading.Event()
    real_mel = tiny_decoder.mel

    def mel_while_user_interrupts(*args, **kwargs):
        threading.Thread(target=cancel.set).start()
        cancel.wait()
        return real_mel(*args, **kwargs)  # the solver sees the event at its next step

    monkeypatch.setattr(tiny_decoder, "mel", mel_while_user_interrupts)
    session = tiny_decoder.session(cancel=cancel)
    assert len(session.push(TOKENS[:40])) == 0
    assert session.cancelled and len(session.finish()) == 0


def test_stream_that_stops_without_end_token_is_finalised(tiny_decoder: SpeechDecoder, local_flow) -> None:
    session = tiny_decoder.session()
    heard = len(session.push(TOKENS[:47]))  # the language model stopped here, mid-chunk
    tail = session.finish()
    assert heard + len(tail) == tiny_decoder.frames_for(47) * 256
    assert len(session.finish()) == 0 and len(session.push(TOKENS[:20])) == 0


def test_bad_schedule_is_a_config_error(tiny_decoder: SpeechDecoder) -> None:
    with pytest.raises(ConfigError, match="chunk_schedule"):
        tiny_decoder.session(DecoderConfig(chunk_schedule=(10, 0)))
