"""The prompt Qwen2.5-Omni was trained on (its chat template), as token ids.

    <|im_start|>system\\n{SYSTEM_PROMPT}<|im_end|>\\n                        (first turn only)
    <|im_start|>user\\n{question}<|im_end|>\\n<|im_start|>assistant\\n{reply}<|im_end|>\\n   (each turn)

The question is the spoken audio (<|audio_bos|>, one id per audio-encoder frame, <|audio_eos|>)
or text, inside the retrieval template when passages were found, then the voice preset's
instruction. The system prompt is the one the model card requires for speech output. History
keeps each turn's bare question and the reply's text (the talker's codes are not part of what the
thinker reads again), with GLM's policy: the oldest turns go first, in one block.
"""

from __future__ import annotations

from voicechat.errors import BackendError
from voicechat.glm.prompt import Conversation, Passage, Prompt, PromptTemplates, PASSAGE_SEPARATOR
from voicechat.qwen.tokenizer import QwenTextTokenizer

SYSTEM_PROMPT = ("You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
                 "perceiving auditory and visual inputs, as well as generating text and speech.")


class QwenPromptBuilder:
    def __init__(self, tokenizer: QwenTextTokenizer, templates: PromptTemplates | None = None,
                 refill: float = 0.5) -> None:
        self.tokenizer = tokenizer
        self.templates = templates or PromptTemplates()
        self.refill = refill
        special = tokenizer.special
        self._newline = tokenizer.encode("\n")
        self._end = [special.im_end, *self._newline]
        self._opening = [special.im_start, *tokenizer.encode("assistant\n")]

    def build(self, conversation: Conversation, *, speech_tokens: list[int] | None = None,
              text: str | None = None, passages: list[Passage] = (), instruction: str = "",
              max_tokens: int = 8192) -> Prompt:
        if (speech_tokens is None) == (text is None):
            raise ValueError("give either speech_tokens or text")
        header = conversation.header or self.system_header()
        past = [turn + self.reply_ids(reply) for turn, reply in conversation.turns]
        passages = list(passages)
        for dropped_passages in range(len(passages) + 1):
            turn = self._turn(speech_tokens, text, passages[:len(passages) - dropped_passages], instruction)
            fixed = len(header) + len(turn)
            if fixed > max_tokens:
                continue
            dropped = self._turns_to_drop([len(p) for p in past], fixed, max_tokens)
            ids = list(header) + [i for p in past[dropped:] for i in p]
            remembered = self._turn(speech_tokens, text, [], "")
            return Prompt(ids + turn, list(header), turn, remembered, dropped, dropped_passages)
        raise BackendError(f"the question alone needs {fixed} tokens, more than the context budget "
                           f"of {max_tokens}; raise generation.context_budget")

    def reply_ids(self, reply: list[int]) -> list[int]:
        """A past reply as the thinker reads it again: its text, closed."""
        special = self.tokenizer.special
        return [i for i in reply if not special.is_audio(i)] + self._end

    def system_header(self) -> list[int]:
        special = self.tokenizer.special
        return [special.im_start, *self.tokenizer.encode("system\n" + SYSTEM_PROMPT), *self._end]

    def _turns_to_drop(self, sizes: list[int], fixed: int, max_tokens: int) -> int:
        if fixed + sum(sizes) <= max_tokens:
            return 0
        dropped, total = 0, fixed + sum(sizes)
        while dropped < len(sizes) and total > max_tokens * self.refill:
            total -= sizes[dropped]
            dropped += 1
        return dropped

    def _turn(self, speech_tokens: list[int] | None, text: str | None, passages: list[Passage],
              instruction: str) -> list[int]:
        special = self.tokenizer.special
        encode = self.tokenizer.encode
        if speech_tokens is not None:
            question = [special.audio_bos, *speech_tokens, special.audio_eos]
        else:
            question = encode(text or "")
        if passages:
            context = PASSAGE_SEPARATOR.join(self.templates.passage.format(source=p.source, text=p.text)
                                             for p in passages)
            before, after = self.templates.around_question(context)
            body = encode(before) + question + encode(after)
        else:
            body = question
        if instruction:
            body += encode("\n" + instruction)
        return [special.im_start, *encode("user\n"), *body, *self._end, *self._opening]
