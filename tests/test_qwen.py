"""Qwen2.5-Omni as the voice model, on the tiny random checkpoint the generator writes: loading,
the streamed reply against transformers' own generate, streamed token2wav against its whole-reply
decode, and whole turns through the engine (ask, history, interruption)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from voicechat.config import Config
from voicechat.engine import Components, Engine, EngineConfig, Settings, TurnInput
from voicechat.events import AudioChunk, Event, TurnFinished
from voicechat.glm.lm import SamplingParams
from voicechat.glm.prompt import Conversation
from tests.support.speech import question


@pytest.fixture(scope="module")
def parts(tiny_qwen_config: Config) -> Iterator[Components]:
    from voicechat.assemble import load_components

    loaded = load_components(tiny_qwen_config, on_warning=lambda message: None)  # no index: retrieval off
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def hf_model(tiny_qwen_models_dir: Path):
    from transformers import Qwen2_5OmniForConditionalGeneration

    return Qwen2_5OmniForConditionalGeneration.from_pretrained(tiny_qwen_models_dir / "qwen2.5-omni",
                                                               local_files_only=True).eval()


# --- token2wav, streamed ------------------------------------------------------------------------------

# Tolerance: the DiT windows see 4 blocks before and 2 after each chunk instead of the whole reply;
# through the solver's 40 passes information travels further than that, by ~4e-5 of the mel's
# scale on full-size weights (measured); BigVGAN with 20 frames of context is exact up to float
# rounding. 1e-4 of the reference's peak bounds both; a lost or doubled sample shifts the whole
# rest of the reply and is far outside it.
RELATIVE_TOLERANCE = 1e-4


@pytest.mark.parametrize("count, push_size", [(7, 3), (60, 1), (130, 17)])
def test_streamed_token2wav_equals_transformers_whole_reply_decode(parts: Components, hf_model, count: int,
                                                                   push_size: int) -> None:
    codes = torch.randint(0, 8192, (1, count), generator=torch.Generator().manual_seed(count))
    speaker = hf_model.speaker_map["Chelsie"]
    torch.manual_seed(42)  # transformers draws the noise from the global generator
    with torch.no_grad():
        whole = hf_model.token2wav(codes, conditioning=speaker["cond"].float(),
                                   reference_mel=speaker["ref_mel"].float()).reshape(-1).numpy()
    session = parts.decoder.session()
    pieces = [session.push(codes[0, i:i + push_size].tolist()) for i in range(0, count, push_size)]
    pieces.append(session.finish())
    streamed = np.concatenate(pieces)
    assert streamed.size == whole.size == count * 2 * 240
    assert np.abs(streamed - whole).max() <= RELATIVE_TOLERANCE * np.abs(whole).max()
    if count > 12 * 4:  # two blocks and their look-ahead: the first audio came before the end
        assert next(i for i, p in enumerate(pieces) if p.size) < len(pieces) - 1


def test_first_audio_comes_once_two_blocks_and_their_look_ahead_are_in_then_every_block(
        parts: Components) -> None:
    session = parts.decoder.session()
    assert session.push(list(range(47))).size == 0
    first = session.push([47])  # 48 codes = 2 blocks + 2 blocks of look-ahead
    assert first.size == (48 - 20) * 240  # all but the vocoder's 20 frames of right context: 280 ms
    assert session.push(list(range(48, 59))).size == 0
    assert session.push([59]).size == 24 * 240  # each later block releases one block of audio


# --- the reply stream against transformers' generate --------------------------------------------------


def test_spoken_question_streams_the_same_text_and_codes_as_transformers_generate(
        parts: Components, hf_model, tiny_qwen_models_dir: Path) -> None:
    from transformers import WhisperFeatureExtractor

    audio = question("en")
    ours_ids = parts.speech_tokenizer.tokenize(audio, 16000)
    prompt = parts.prompts.build(Conversation(), speech_tokens=ours_ids, max_tokens=4096)
    backend = parts.backend
    backend.talker_temperature = 0.0
    params = SamplingParams(temperature=0.0, max_new_tokens=8, stop_ids=(parts.text_tokenizer.special.user,))
    try:
        streamed = list(backend.stream(prompt.ids, params, threading.Event()))
    finally:
        backend.talker_temperature = 0.9
    offset = parts.text_tokenizer.special.audio_offset
    text = [i for i in streamed if i < offset]
    codes = [i - offset for i in streamed if offset <= i < offset + 8448]

    extractor = WhisperFeatureExtractor.from_pretrained(tiny_qwen_models_dir / "qwen2.5-omni")
    features = extractor(audio, sampling_rate=16000, return_attention_mask=True, padding="max_length",
                         return_tensors="pt")
    audio_token = parts.text_tokenizer.special.audio
    hf_ids = torch.tensor([[audio_token if i >= 1 << 30 else i for i in prompt.ids]])
    with torch.no_grad():
        thinker = hf_model.generate(hf_ids, input_features=features["input_features"],
                                    feature_attention_mask=features["attention_mask"],
                                    attention_mask=torch.ones_like(hf_ids), thinker_max_new_tokens=8,
                                    thinker_do_sample=False, return_audio=False)
    hf_text = thinker[0, hf_ids.shape[1]:].tolist()
    assert text == [i for i in hf_text if i != parts.text_tokenizer.special.im_end]
    assert len(codes) > 0
    hf_codes = talker_codes(hf_model, hf_ids, features, max_codes=80)
    # generate drops the last code it made (taking it for the end code) when it stops at the cap
    assert codes[:len(hf_codes)] == hf_codes


def talker_codes(model, ids, features, max_codes: int) -> list[int]:
    """The talker's codes inside transformers' generate (greedy), read from the codes token2wav gets."""
    captured = {}
    original = model.token2wav.forward

    def keep(code, **kwargs):
        captured["codes"] = code[0].tolist()
        return original(code, **kwargs)

    model.token2wav.forward = keep
    try:
        with torch.no_grad():
            model.generate(ids, input_features=features["input_features"],
                           feature_attention_mask=features["attention_mask"], attention_mask=torch.ones_like(ids),
                           thinker_max_new_tokens=8, thinker_do_sample=False, talker_do_sample=False,
                           talker_max_new_tokens=max_codes, speaker="Chelsie", return_audio=True)
    finally:
        model.token2wav.forward = original
    return captured["codes"]


# --- loading ------------------------------------------------------------------------------------------


def test_the_published_config_is_read_without_transformers_warning_about_its_mrope_sections(
        tiny_qwen_models_dir: Path) -> None:
    import logging

    from voicechat.qwen.checkpoint import read_config

    folder = tiny_qwen_models_dir / "qwen2.5-omni"
    on_disk = json.loads((folder / "config.json").read_text())["thinker_config"]["text_config"]["rope_scaling"]
    warnings: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        config = read_config(folder)
    finally:
        logger.removeHandler(handler)
    assert [w.getMessage() for w in warnings] == []
    assert config.thinker_config.text_config.rope_scaling["mrope_section"] == on_disk["mrope_section"] == [2, 3, 3]


def broken_copy(source: Path, tmp_path: Path, change) -> Path:
    """A copy of the tiny models' config whose Qwen checkpoint ``change`` breaks."""
    import yaml

    folder = tmp_path / "qwen"
    shutil.copytree(source / "qwen2.5-omni", folder)
    change(folder)
    data = yaml.safe_load((source / "config.yaml").read_text())
    data["models"]["omni"]["source"] = str(folder)
    data["retrieval"] = {"rag": "off"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def rewrite_tensors(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def other_model_type(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "qwen2_audio"
    (folder / "config.json").write_text(json.dumps(config))


BREAKAGES = {
    "missing tensor": (lambda f: rewrite_tensors(f, lambda t: t.pop("talker.codec_head.weight")),
                       "lacks the tensor talker.codec_head.weight"),
    "mis-shaped tensor": (lambda f: rewrite_tensors(f, lambda t: t.update(
        {"thinker.lm_head.weight": torch.zeros(3, 3)})), "tensor thinker.lm_head.weight has shape [3, 3]"),
    "another model type": (other_model_type, "model_type is 'qwen2_audio', not 'qwen2_5_omni'"),
}


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_broken_checkpoint_is_one_clear_line(breakage: str, tiny_qwen_models_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from voicechat.cli import main

    change, message = BREAKAGES[breakage]
    config = broken_copy(tiny_qwen_models_dir, tmp_path, change)
    assert main(["--config", str(config), "ask", "--text", "hello"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


# --- whole turns ------------------------------------------------------------------------------------------


def test_ask_answers_a_spoken_question_with_text_and_24khz_audio(tiny_qwen_models_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    import soundfile

    from voicechat.cli import main

    wav = tmp_path / "question.wav"
    soundfile.write(wav, question("en"), 16000)
    out = tmp_path / "reply.wav"
    code = main(["--config", str(tiny_qwen_models_dir / "config.yaml"), "ask", str(wav), "--out", str(out),
                 "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    reply, rate = soundfile.read(out)
    assert rate == 24000 and reply.size > 0 and report["reply"]


def run_turn(config: Config, parts: Components, turn: TurnInput, history: Conversation, on_event=None):
    events: list[Event] = []

    def emit(event: Event) -> None:
        events.append(event)
        if on_event:
            on_event(event, engine)

    engine = Engine(EngineConfig.from_config(config), parts, emit)
    settings = Settings(rag="off", two_round="off", voice="default")
    return engine.run_turn(turn, settings, history), events


def test_history_carries_the_spoken_question_and_the_reply_text_to_the_next_turn(
        tiny_qwen_config: Config, parts: Components) -> None:
    history = Conversation()
    first, _ = run_turn(tiny_qwen_config, parts, TurnInput(audio=question("en-first")), history)
    history.add(first.prompt, first.heard_ids)
    second, _ = run_turn(tiny_qwen_config, parts, TurnInput(audio=question("en-second")), history)
    special = parts.text_tokenizer.special
    first_text = [i for i in first.heard_ids if not special.is_audio(i)]
    ids = second.prompt.ids
    assert ids[:len(first.prompt.ids)] == first.prompt.ids  # the first turn as it was, spoken question included
    rest = ids[len(first.prompt.ids):]
    assert rest[:len(first_text) + 1] == first_text + [special.im_end]  # then its reply's text, closed
    assert not any(special.is_audio(i) for i in ids)  # the talker's codes are not read again
    assert second.reply_audio.size > 0


def test_interrupting_a_reply_stops_its_text_and_audio(tiny_qwen_config: Config, parts: Components) -> None:
    def interrupt_at_first_audio(event: Event, engine: Engine) -> None:
        if isinstance(event, AudioChunk):
            threading.Thread(target=engine.interrupt).start()

    result, events = run_turn(tiny_qwen_config, parts, TurnInput(text="Where is the library?"), Conversation(),
                              interrupt_at_first_audio)
    assert result.finished.interrupted
    finished = [e for e in events if isinstance(e, TurnFinished)]
    assert len(finished) == 1


# --- voice presets ------------------------------------------------------------------------------------------


def test_the_voice_cycle_offers_only_qwen_presets_and_each_speaks_as_its_speaker(
        tiny_qwen_config: Config, parts: Components) -> None:
    import dataclasses

    from voicechat.session import ConversationSession

    config = dataclasses.replace(tiny_qwen_config, retrieval=dataclasses.replace(tiny_qwen_config.retrieval, rag="off"))
    events: list[Event] = []
    session = ConversationSession(config, events.append, save=False)
    session.ready(parts)
    offered = []
    for _ in range(3):
        session.cycle_voice()
        offered.append(session.settings.voice)
    assert offered == ["chelsie", "ethan", "default"]
    session.set_voice("calm")  # a GLM-4-Voice preset
    assert session.settings.voice == "default"
    session.set_voice("ethan")
    result = session.run_turn(TurnInput(text="Where is the library?"))
    assert result.reply_audio.size > 0 and parts.decoder.voice == "Ethan"


# --- the thinker's cache across turns ----------------------------------------------------------------------


def test_the_next_turn_computes_only_its_own_tokens_and_streams_the_same_ids_as_without_the_cache(
        parts: Components) -> None:
    from voicechat.glm.prompt import Conversation

    backend = parts.backend
    backend.talker_temperature = 0.0
    params = SamplingParams(temperature=0.0, max_new_tokens=6, stop_ids=(parts.text_tokenizer.special.user,))
    computed: list[int] = []
    hook = backend.thinker.model.register_forward_hook(lambda module, args, kwargs, out: computed.append(
        kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        backend.close()
        history = Conversation()
        first = parts.prompts.build(history, text="Where is the library?", max_tokens=4096)
        reply = list(backend.stream(first.ids, params, threading.Event()))
        history.add(first, reply)
        second = parts.prompts.build(history, text="What time does the museum open?", max_tokens=4096)
        assert second.ids[:len(first.ids)] == first.ids
        computed.clear()
        reused = list(backend.stream(second.ids, params, threading.Event()))
        prefill_with_cache = computed[0]
        backend.close()  # forget: the same prompt computed whole
        computed.clear()
        whole = list(backend.stream(second.ids, params, threading.Event()))
        prefill_without = computed[0]
    finally:
        hook.remove()
        backend.talker_temperature = 0.9
    assert reused == whole and any(i >= parts.text_tokenizer.special.audio_offset for i in whole)
    assert prefill_without == len(second.ids)
    assert prefill_with_cache < len(second.ids) - len(first.ids)  # the first turn and its reply were kept
