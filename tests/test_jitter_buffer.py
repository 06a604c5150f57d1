"""The playback jitter buffer, driven the way the device callback drives it."""

from __future__ import annotations

import numpy as np

from voicechat.audio.player import JitterBuffer

BLOCK = 100


def ramp(count: int, start: float = 0.0) -> np.ndarray:
    return (start + np.arange(count, dtype=np.float32)) / 10000.0 + 0.1


def test_playback_waits_for_the_lead_then_plays_everything_in_order():
    buffer = JitterBuffer(lead=250, fade=0)
    audio = ramp(1000)
    buffer.push(audio[:200])
    assert not buffer.read(BLOCK).any()  # below the lead: silence
    buffer.push(audio[200:])
    buffer.end()
    out = np.concatenate([buffer.read(BLOCK) for _ in range(12)])
    np.testing.assert_array_equal(out[:1000], audio)
    assert not out[1000:].any()
    assert buffer.played == 1000 and buffer.underruns == 0 and not buffer.active
    assert buffer.finished.is_set()


def test_gap_in_the_stream_is_zero_filled_counted_and_faded():
    buffer = JitterBuffer(lead=100, fade=20)
    buffer.push(np.ones(150, dtype=np.float32))
    first, second = buffer.read(BLOCK), buffer.read(BLOCK)
    assert first[0] == 0.0 and np.all(first[20:] == 1.0)  # a reply fades in
    assert np.all(second[:30] == 1.0) and second[49] < 0.1 and not second[50:].any()  # faded out
    assert buffer.underruns == 1 and buffer.active
    assert not buffer.read(BLOCK).any()  # waiting for the lead again
    buffer.push(np.ones(150, dtype=np.float32))
    assert not buffer.read(BLOCK).any()  # the lead has grown after the underrun
    buffer.push(np.ones(100, dtype=np.float32))
    resumed = buffer.read(BLOCK)
    assert resumed[0] == 0.0 and np.all(resumed[20:] == 1.0)  # faded in
    buffer.end()
    assert np.all(buffer.read(BLOCK) == 1.0)
    assert np.all(buffer.read(BLOCK)[:50] == 1.0)
    assert not buffer.active and buffer.underruns == 1


def test_flush_silences_within_one_block_and_drops_the_rest():
    buffer = JitterBuffer(lead=0, fade=10)
    buffer.push(np.ones(10000, dtype=np.float32))
    buffer.read(BLOCK)
    buffer.flush()
    after = buffer.read(BLOCK)
    assert after[0] > 0.9 and not after[10:].any()
    assert not buffer.read(BLOCK).any()
    assert buffer.played == BLOCK + 10 and not buffer.active


def test_audio_pushed_after_the_reply_ended_starts_a_new_reply():
    buffer = JitterBuffer(lead=0, fade=0)
    buffer.push(np.ones(50, dtype=np.float32))
    buffer.end()
    buffer.read(BLOCK)
    buffer.push(np.full(50, 0.5, dtype=np.float32))
    assert buffer.active and buffer.played == 0
    np.testing.assert_array_equal(buffer.read(BLOCK)[:50], 0.5)


def test_first_audio_time_is_when_the_first_real_sample_is_read():
    buffer = JitterBuffer(lead=100, fade=0)
    buffer.push(np.ones(50, dtype=np.float32))
    buffer.read(BLOCK, now=1.0)
    buffer.push(np.ones(50, dtype=np.float32))
    buffer.read(BLOCK, now=2.0)
    assert buffer.first_audio_at == 2.0
