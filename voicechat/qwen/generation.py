"""Qwen2.5-Omni's thinker and talker, stepped together so the reply streams.

transformers' ``generate`` runs the thinker to the end, then the talker, then token2wav. The
computation here is the same, in another order: the talker's step j reads the thinker's j-th reply
token (its last hidden state plus its embedding), which exists once the thinker has taken that
token as input; so after each thinker step the talker takes one step too, and when the thinker has
finished the talker goes on alone (reading the text-end embedding once, then the pad embedding)
until it emits an end code. Text ids come out as soon as they are sampled; codec codes come out
as ``codec_offset + code`` in the same stream (the engine's demux sends them to the decoder); the
stop id (<|im_end|>) comes last, after the talker has finished.

Question audio enters the prompt as ids at or above ``AudioRows.BASE``: rows of audio-encoder
output kept by AudioRows, so prompts and history stay lists of ints.

The thinker's key/value cache outlives a reply, as the GLM local backend's does: the next prompt
starts with the previous prompt and reply, so only the new turn is computed. With the cache the
thinker's per-position states are kept too (hidden state plus input embedding): the talker reads
them for the whole prompt.
"""

from __future__ import annotations

import threading
from typing import Iterator

import torch

from voicechat.glm.lm import SamplingParams

TALKER_END_CODES = (8292, 8294)  # as transformers' generate: codec pad and codec end
TALKER_SAMPLING = dict(top_k=40, top_p=0.8, temperature=0.9, repetition_penalty=1.05)


class AudioRows:
    """Audio-encoder outputs of questions, one row per <|AUDIO|> position, addressed by id."""

    BASE = 1 << 30

    def __init__(self) -> None:
        self.rows: dict[int, torch.Tensor] = {}
        self.next_id = self.BASE
        self.lock = threading.Lock()

    def add(self, embeddings: torch.Tensor) -> list[int]:
        with self.lock:
            ids = list(range(self.next_id, self.next_id + embeddings.shape[0]))
            self.next_id += embeddings.shape[0]
            for i, row in zip(ids, embeddings):
                self.rows[i] = row
        return ids

    def forget_before(self, first_used: int) -> None:
        """History drops the oldest turns first: rows before the oldest one used are gone for good."""
        with self.lock:
            for i in [i for i in self.rows if i < first_used]:
                del self.rows[i]

    def lookup(self, ids: list[int]) -> torch.Tensor:
        with self.lock:
            return torch.stack([self.rows[i] for i in ids])


class ThinkerMemory:
    """What the thinker computed last, for the next prompt: the ids it took as input, their
    key/value cache and their states for the talker (pieces of (1, n, hidden), joined when used)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        from transformers import DynamicCache

        self.ids: list[int] = []
        self.cache = DynamicCache()
        self.states: list[torch.Tensor] = []

    def reuse(self, prompt_ids: list[int]) -> int:
        """Keep the prefix this prompt shares (all but its last id, which gives the first logits);
        returns its length."""
        shared = 0
        for kept, new in zip(self.ids, prompt_ids[:-1]):
            if kept != new:
                break
            shared += 1
        if shared == 0:
            self.clear()
            return 0
        self.cache.crop(shared)
        self.ids = self.ids[:shared]
        self.states = [torch.cat(self.states, dim=1)[:, :shared]]
        return shared

    def add(self, ids: list[int], states: torch.Tensor) -> None:
        self.ids += ids
        self.states.append(states)

    def prefix_states(self) -> list[torch.Tensor]:
        return list(self.states)


class OmniStream:
    """The thinker and talker of one loaded checkpoint, as a token-id stream (an LMBackend)."""

    def __init__(self, model, audio_rows: AudioRows, codec_offset: int, stop_id: int,
                 talker_max_new_tokens: int, voice_choice, speakers: dict,
                 talker_temperature: float = TALKER_SAMPLING["temperature"]) -> None:
        self.thinker = model.thinker
        self.talker = model.talker
        self.rows = audio_rows
        self.codec_offset = codec_offset
        self.stop_id = stop_id
        self.thinker_stops = {stop_id, model.config.thinker_config.text_config.eos_token_id or stop_id}
        self.talker_max_new_tokens = talker_max_new_tokens
        self.talker_temperature = talker_temperature
        self.voice_choice = voice_choice  # the decoder reads the reply's speaker from it
        self.speakers = speakers
        self.device = next(self.thinker.parameters()).device
        self.memory = ThinkerMemory()
        self._memory_lock = threading.Lock()  # a second stream at the same time computes on its own

    def close(self) -> None:
        self.memory.clear()

    @property
    def cached_tokens(self) -> int:
        """How many prompt tokens the next turn may reuse (for tests and benchmarks)."""
        return len(self.memory.ids)

    def stream(self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event) -> Iterator[int]:
        speaker = params.speaker or self.voice_choice.voice
        if speaker not in self.speakers:
            from voicechat.errors import BackendError

            raise BackendError(f"speaker {speaker!r} is not in this checkpoint; it has: {', '.join(self.speakers)}")
        self.voice_choice.voice = speaker
        audio_ids = [i for i in prompt_ids if i >= AudioRows.BASE]
        if audio_ids:
            self.rows.forget_before(min(audio_ids))
        generator = torch.Generator(self.device).manual_seed(params.seed if params.seed is not None else 0)
        shared = self._memory_lock.acquire(blocking=False)
        memory = self.memory if shared else ThinkerMemory()
        try:
            with torch.inference_mode():
                yield from self._run(prompt_ids, params, speaker, cancel, generator, memory)
        except GeneratorExit:
            raise  # closed between two steps: what the memory holds is whole
        except BaseException:
            if shared:
                self.memory = ThinkerMemory()  # a step cut short leaves a half-updated cache
            raise
        finally:
            if shared:
                self._memory_lock.release()

    # --- the interleaved loop ---------------------------------------------------------------------

    def _run(self, prompt_ids, params, speaker, cancel, generator, memory: ThinkerMemory) -> Iterator[int]:
        thinker = _Thinker(self, prompt_ids, params, generator, memory)
        token = thinker.first_token()
        talker: _Talker | None = None
        text_tokens, stopped = 0, False
        while not cancel.is_set():
            if not stopped:
                if token in self.thinker_stops:
                    stopped = True
                    thinker.finish()
                else:
                    yield token
                    text_tokens += 1
                    if text_tokens >= params.max_new_tokens:
                        stopped = True
                        thinker.finish()  # as generate: the last token is never taken as input
                    else:
                        token = thinker.step(token)
            if talker is None:
                if not thinker.reply_parts:
                    if stopped:
                        return  # nothing to say
                    continue
                talker = _Talker(self, thinker, speaker, generator)
            code = talker.step()
            if code is None:
                if stopped:
                    break
                continue
            yield self.codec_offset + code
        if not cancel.is_set() and token in self.thinker_stops:
            yield self.stop_id


class _Thinker:
    def __init__(self, owner: OmniStream, prompt_ids: list[int], params: SamplingParams, generator,
                 memory: ThinkerMemory) -> None:
        self.owner = owner
        self.model = owner.thinker
        self.params = params
        self.generator = generator
        self.memory = memory
        self.position = memory.reuse(prompt_ids)
        self.cache = memory.cache
        self.prompt_ids = prompt_ids
        self.reply_parts: list[torch.Tensor] = []  # per reply token taken as input: hidden + embedding
        self.finished = False

    def embed(self, ids: list[int]) -> torch.Tensor:
        """Text ids through the embedding table; question-audio ids from their rows."""
        table = self.model.get_input_embeddings()
        text = torch.tensor([[i if i < AudioRows.BASE else 0 for i in ids]], device=self.owner.device)
        embeds = table(text)
        audio_positions = [n for n, i in enumerate(ids) if i >= AudioRows.BASE]
        if audio_positions:
            rows = self.owner.rows.lookup([ids[n] for n in audio_positions]).to(embeds.device, embeds.dtype)
            embeds[0, audio_positions] = rows
        return embeds

    def forward(self, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        embeds = self.embed(ids)
        positions = torch.arange(self.position, self.position + len(ids), device=embeds.device)
        positions = positions.view(1, 1, -1).expand(3, 1, -1)  # audio and text only: M-RoPE is 1-D
        out = self.model.model(inputs_embeds=embeds, position_ids=positions, past_key_values=self.cache,
                               use_cache=True)
        self.position += len(ids)
        hidden = out.last_hidden_state
        return embeds, hidden, self.model.lm_head(hidden[:, -1]).float()

    def first_token(self) -> int:
        new = self.prompt_ids[self.position:]
        embeds, hidden, logits = self.forward(new)
        # The talker reads the prompt with question-audio embeddings zeroed (as generate does).
        audio = torch.tensor([i >= AudioRows.BASE for i in new], device=embeds.device)
        states = hidden + embeds.masked_fill(audio.view(1, -1, 1), 0.0)
        self.prompt_part = torch.cat([*self.memory.prefix_states(), states], dim=1)
        self.memory.add(new, states)
        return self.sample(logits)

    def step(self, token: int) -> int:
        embeds, hidden, logits = self.forward([token])
        self.reply_parts.append(hidden + embeds)
        self.memory.add([token], self.reply_parts[-1])
        return self.sample(logits)

    def finish(self) -> None:
        self.finished = True

    def sample(self, logits: torch.Tensor) -> int:
        return sample(logits, self.params.temperature, self.params.top_p, 0, self.generator)


class _Talker:
    def __init__(self, owner: OmniStream, thinker: _Thinker, speaker: str, generator) -> None:
        from transformers import DynamicCache

        self.owner = owner
        self.thinker = thinker
        self.model = owner.talker
        self.generator = generator
        self.cache = DynamicCache()
        embed_text = thinker.model.get_input_embeddings()
        device = owner.device
        bos = torch.tensor([[owner.speakers[speaker]["bos_token"]]], device=device)
        self.text_eos = embed_text(torch.tensor([[self.model.text_eos_token]], device=device))
        self.text_pad = embed_text(torch.tensor([[self.model.text_pad_token]], device=device))
        codec = self.model.get_input_embeddings()
        prefill = torch.cat([thinker.prompt_part, embed_text(bos), thinker.reply_parts[0]], dim=1).clone()
        prefill[:, -1] += codec(torch.tensor([self.model.codec_bos_token], device=device))
        prefill[:, -2] += codec(torch.tensor([self.model.codec_pad_token], device=device))
        self.pending = prefill
        self.history = [self.model.codec_mask_token] * len(thinker.prompt_ids) + [
            self.model.codec_pad_token, self.model.codec_bos_token]
        self.position = 0
        self.steps = 0  # codes emitted
        self.done = False

    def next_input(self) -> torch.Tensor | None:
        """The next step's input, or None while the thinker has not yet taken the token it reads."""
        if self.pending is not None:
            return self.pending
        index = self.steps  # step j >= 1 reads reply part j, then the text end, then pad
        parts = self.thinker.reply_parts
        if index < len(parts):
            text = parts[index]
        elif not self.thinker.finished:
            return None
        else:
            text = self.text_eos if index == len(parts) else self.text_pad
        code = torch.tensor([[self.history[-1]]], device=self.owner.device)
        return self.model.get_input_embeddings()(code) + text

    def step(self) -> int | None:
        if self.done:
            return None
        embeds = self.next_input()
        if embeds is None:
            return None
        self.pending = None
        positions = torch.arange(self.position, self.position + embeds.shape[1], device=embeds.device)
        positions = positions.view(1, 1, -1).expand(3, 1, -1)
        out = self.model.model(inputs_embeds=self.model.thinker_to_talker_proj(embeds), position_ids=positions,
                               past_key_values=self.cache, use_cache=True)
        self.position += embeds.shape[1]
        logits = self.model.codec_head(out.last_hidden_state[:, -1]).float()
        logits[:, self.model.codec_bos_token] = -float("inf")  # generate suppresses it
        code = sample_talker(logits, self.history, self.generator, self.owner.talker_temperature)
        self.history.append(code)
        self.steps += 1
        if code in TALKER_END_CODES or self.steps >= self.owner.talker_max_new_tokens:
            self.done = True
            return None if code in TALKER_END_CODES else code
        return code


# --- sampling -------------------------------------------------------------------------------------


def sample(logits: torch.Tensor, temperature: float, top_p: float, top_k: int, generator) -> int:
    """Greedy at temperature 0; else temperature, top-k, top-p (nucleus) as transformers' warpers."""
    if temperature <= 0:
        return int(logits.argmax(-1))
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=False)
        cumulative = ordered.softmax(-1).cumsum(-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), -float("inf"))
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def sample_talker(logits: torch.Tensor, history: list[int], generator, temperature: float) -> int:
    """transformers' talker defaults: repetition penalty over every id so far, then sampling
    (greedy at temperature 0)."""
    s = TALKER_SAMPLING
    seen = torch.tensor(sorted(set(history)), device=logits.device)
    picked = logits[0, seen]
    logits[0, seen] = torch.where(picked < 0, picked * s["repetition_penalty"], picked / s["repetition_penalty"])
    return sample(logits, temperature, s["top_p"], s["top_k"], generator)
