"""A question spoken over the reply's echo against the same question spoken into a quiet room: what
reaches the speech tokenizer, and the tokens it makes; prints JSON.

Each question (espeak-ng voices) is heard by voicechat's Listener with WebRTC AEC3 and the
double-talk detector (tests/support/echo_room.py: the reply played on open speakers in a simulated
room, 80 ms late, 250 ms of reverberation, its echo made from what was actually played, so it stops
when the reply is cut):

- ``clean``: nothing plays;
- ``0 dB`` / ``-5 dB``: the question starts 3 s into a reply, that loud against the reply's echo; the
  listener cuts the reply when it hears the user, and the utterance it passes on is what the models get;
- ``raw microphone``, for reference: the same mixture without the canceller, over the span of the
  clean utterance (what a half-duplex-free microphone would pass on).

Per condition, with the captured utterance cut to the clean capture's span (aligned by
cross-correlation): ``captured``: share of questions passed on as one utterance; ``span_kept``: how
much of that span the utterance holds (a late start loses the question's beginning);
``speech_to_residual_db``: the question against everything else there (least-squares fit of the
clean capture; the larger the better); ``token_agreement``: 1 - the edit distance between its speech
tokens and the clean capture's, over the longer sequence. The tokenizer is
GLM-4-Voice's WhisperVQ: a folder given with --model, else the full-size architecture with random
weights (its agreement then shows how much the input changed, not how a trained model hears it).

    python scripts/bench_echo_tokens.py [--model DIR] [--questions 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.echo_room import converse, room_echo, voice_at  # noqa: E402
from tests.support.speech import RATE, speak  # noqa: E402

QUESTION_AT = 3 * RATE
REPLY = ("Green tea should steep for two to three minutes in water just below boiling, then the leaves "
         "come out so that the cup does not turn bitter. Black tea takes longer, four or five minutes.")
QUESTIONS = [("Wait, what about oolong tea?", "en-gb+f3"), ("Hold on, how tall is it?", "en-gb+f2"),
             ("Excuse me, can you repeat that?", "en-us+f2"), ("No, I meant the other one.", "en-gb+m4"),
             ("Sorry, what was the first step?", "en-us+m5"), ("Stop, which river is longer?", "en-us+m3"),
             ("And how many people live there?", "en-gb+f4"), ("Can I freeze it instead?", "en-us+f3")]
LEVELS = (0.0, -5.0)


def captured(events: list) -> np.ndarray | None:
    """The utterance passed on, if exactly one was."""
    from voicechat.audio.events import UtteranceEnded

    ended = [e for e in events if isinstance(e, UtteranceEnded)]
    return ended[0].audio.astype(np.float32) / 32768 if len(ended) == 1 else None


def aligned(audio: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, float]:
    """``audio`` cut (or padded with silence) to the span of the clean capture, at the lag where
    they match best; and the share of that span the capture holds."""
    from scipy.signal import correlate

    scores = correlate(audio, clean, mode="full", method="fft")
    lag = int(np.argmax(np.abs(scores))) - (clean.size - 1)  # clean[i] ~ audio[i + lag]
    span = np.zeros_like(clean)
    lo, hi = max(0, -lag), min(clean.size, audio.size - lag)
    if lo < hi:
        span[lo:hi] = audio[lo + lag:hi + lag]
    return span, max(0, hi - lo) / clean.size


def speech_to_residual_db(span: np.ndarray, clean: np.ndarray) -> float:
    """The clean capture (least-squares gain) against what else the aligned span holds."""
    gain = float(np.dot(span, clean) / (np.dot(clean, clean) + 1e-20))
    residual = span - gain * clean
    return round(10 * np.log10(np.sum((gain * clean) ** 2) / (np.sum(residual**2) + 1e-20)), 1)


def agreement(tokens: list[int], reference: list[int]) -> float:
    """1 - Levenshtein distance over the longer sequence."""
    previous = list(range(len(reference) + 1))
    for i, token in enumerate(tokens, start=1):
        current = [i]
        for j, other in enumerate(reference, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (token != other)))
        previous = current
    return round(1 - previous[-1] / max(len(tokens), len(reference), 1), 3)


def conditions(question: np.ndarray, reply: np.ndarray) -> dict[str, np.ndarray | None]:
    length = QUESTION_AT + question.size + 2 * RATE
    reply = np.concatenate([reply, np.zeros(max(0, length - reply.size))])[:length]
    echo = room_echo(reply)
    quiet, _ = voice_at(question, echo, QUESTION_AT, 0.0, length)  # as loud as at 0 dB
    clean = captured(converse(np.zeros(length), quiet)[0])
    audio: dict[str, np.ndarray | None] = {"clean": clean}
    for level in LEVELS:
        voice, _ = voice_at(question, echo, QUESTION_AT, level, length)
        audio[f"{level:g} dB"] = captured(converse(reply, voice)[0])
        if level == LEVELS[-1] and clean is not None:
            mixture = echo + voice
            start = QUESTION_AT - int(0.3 * RATE)  # the clean capture's pre-roll, roughly
            audio[f"raw microphone, {level:g} dB"] = mixture[start:start + clean.size].astype(np.float32)
    return audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a speech tokenizer folder (default: random full-size)")
    parser.add_argument("--questions", type=int, default=len(QUESTIONS))
    args = parser.parse_args()

    import torch

    from voicechat.glm.speech_tokenizer import SpeechTokenizer
    from voicechat.testing.speech_tokenizer import write

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.model or Path(write(Path(scratch), "full", seed=0)["models"]["speech_tokenizer"]["source"])
        tokenizer = SpeechTokenizer.from_pretrained(folder, "cpu")
        reply = speak(REPLY, "en-us", 150)
        results: dict[str, dict[str, list]] = {}
        for index, (text, voice) in enumerate(QUESTIONS[:args.questions]):
            audio = conditions(speak(text, voice, 170), reply)
            clean = audio["clean"]
            reference = tokenizer.tokenize(clean, RATE) if clean is not None else None
            for name, samples in audio.items():
                entry = results.setdefault(name, {"captured": [], "span_kept": [], "speech_to_residual_db": [],
                                                  "token_agreement": []})
                entry["captured"].append(samples is not None)
                if samples is None or clean is None:
                    continue
                span, kept = aligned(samples, clean)
                entry["span_kept"].append(kept)
                entry["speech_to_residual_db"].append(speech_to_residual_db(span, clean))
                entry["token_agreement"].append(agreement(tokenizer.tokenize(span, RATE), reference))
            print(f"echo tokens: {index + 1}/{args.questions}", file=sys.stderr, flush=True)
    report = {
        "tokenizer": str(args.model) if args.model else "WhisperVQ, full-size architecture, random weights",
        "questions": args.questions,
        "conditions": {name: {"captured": round(float(np.mean(e["captured"])), 3),
                              "span_kept_median": _median(e["span_kept"]),
                              "speech_to_residual_db_median": _median(e["speech_to_residual_db"]),
                              "token_agreement_median": _median(e["token_agreement"]),
                              "token_agreement": e["token_agreement"]}
                       for name, e in results.items()},
    }
    print(json.dumps(report, indent=2))


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 3) if values else None


if __name__ == "__main__":
    main()
