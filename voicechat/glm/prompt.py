"""The prompt GLM-4-Voice was trained on, as token ids.

    [gMASK]<sop><|system|>\\n{system}                      (first turn only)
    <|user|>\\n{question}<|assistant|>streaming_transcription\\n{reply}   (each turn)

The question is the user's speech (<|begin_of_audio|><|audio_N|>…<|end_of_audio|>) or text,
wrapped in the retrieval template when passages were found, followed by the voice preset's
instruction. Markers are inserted by id; passages and instructions are encoded as plain text, so
a document that contains "<|user|>" cannot forge a turn.

History policy: past turns are remembered as the bare question and the reply, without their
passages and instruction, so a turn costs the same few hundred tokens however much was retrieved
for it. When the next prompt would exceed the budget, the oldest turns are dropped in one block,
down to half the budget, and the conversation forgets them; the prompt's beginning then stays the
same for many turns and the model's key/value cache keeps being reused.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from voicechat.config import PASSAGE_TEMPLATE_FIELDS, RAG_TEMPLATE_FIELDS, template_problem
from voicechat.errors import BackendError, ConfigError
from voicechat.glm.text_tokenizer import GlmTextTokenizer

if TYPE_CHECKING:
    from voicechat.config import GenerationConfig

# The trained system prompts (reference web demo); the speech one ends with a space.
SPEECH_SYSTEM_PROMPT = (
    "User will provide you with a speech instruction. Do it step by step. First, think about the "
    "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens. "
)
TEXT_SYSTEM_PROMPT = (
    "User will provide you with a text instruction. Do it step by step. First, think about the "
    "instruction and respond in a interleaved manner, with 13 text token followed by 26 audio tokens."
)
# The study's retrieval template; {question} is where the speech (or text) goes.
RAG_TEMPLATE = (
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved "
    "context to answer the question. If you don't know the answer, just say that you don't know. "
    "Use three sentences maximum and keep the answer concise.\nQuestion: {question} \n"
    "Context: {passages} \nAnswer:"
)
# The fallback round's prompt line, and the reply check that reads its answer.
FALLBACK_INSTRUCTION = 'If the text information is insufficient, answer "insufficient information".'
_INSUFFICIENT = re.compile(
    r"insufficient\s+information|not\s+(?:entirely\s+|quite\s+|really\s+)?sure|"
    r"信息不足|不确定|不太确定|无法确定", re.IGNORECASE)
PASSAGE_TEMPLATE = "[{source}] {text}"
PASSAGE_SEPARATOR = "\n\n"
ASSISTANT_OPENING = "streaming_transcription\n"


def needs_fallback(reply_text: str, lead_chars: int = 200) -> bool:
    """True when the reply's leading text says the retrieved information is insufficient (the
    phrases FALLBACK_INSTRUCTION asks for), so the caller should retrieve again."""
    return bool(_INSUFFICIENT.search(reply_text[:lead_chars]))


@dataclass(frozen=True)
class Passage:
    source: str  # shown to the model and the user, e.g. "handbook.pdf p.3"
    text: str


@dataclass(frozen=True)
class PromptTemplates:
    rag: str = RAG_TEMPLATE
    passage: str = PASSAGE_TEMPLATE

    def __post_init__(self) -> None:
        for key, text, fields in (("rag_template", self.rag, RAG_TEMPLATE_FIELDS),
                                  ("passage_template", self.passage, PASSAGE_TEMPLATE_FIELDS)):
            problem = template_problem(text, fields)
            if problem:
                raise ConfigError(f"generation.{key}: {problem}")

    def around_question(self, passages: str) -> tuple[str, str]:
        """The user turn's text before and after the question, with the passages filled in and
        doubled braces made single (str.format syntax; the question itself is token ids)."""
        before: list[str] = []
        after: list[str] = []
        side = before
        for literal, name, _, _ in string.Formatter().parse(self.rag):
            side.append(literal)
            if name == "passages":
                side.append(passages)
            elif name == "question":
                side = after
        return "".join(before), "".join(after)

    @classmethod
    def from_config(cls, generation: GenerationConfig) -> PromptTemplates:
        return cls(rag=generation.rag_template or RAG_TEMPLATE,
                   passage=generation.passage_template or PASSAGE_TEMPLATE)


@dataclass
class Conversation:
    """Token ids of the conversation as the model will see it again: the opening (prefix and
    system prompt, fixed by the first turn) and each remembered turn with the model's reply."""

    header: list[int] = field(default_factory=list)
    turns: list[tuple[list[int], list[int]]] = field(default_factory=list)

    def add(self, prompt: Prompt, reply_ids: list[int]) -> None:
        """Record a finished turn; the reply excludes the token that ended it (<|user|>). The
        turns the prompt left out are forgotten, so the next prompt starts the same way."""
        if not self.header:
            self.header = list(prompt.header)
        del self.turns[:prompt.dropped_turns]
        self.turns.append((list(prompt.remembered_ids), list(reply_ids)))

    def clear(self) -> None:
        self.header = []
        self.turns.clear()


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    header: list[int]  # prefix and system prompt
    turn_ids: list[int]  # this turn: <|user|>\n … <|assistant|>streaming_transcription\n
    remembered_ids: list[int]  # this turn as the history keeps it (no passages, no instruction)
    dropped_turns: int  # old turns left out to fit the budget
    dropped_passages: int  # passages left out because the turn alone did not fit


class PromptBuilder:
    """``remember_passages`` and ``refill`` (the share of the budget the history is cut down to
    when it overflows) exist to measure other history policies against the product's."""

    def __init__(self, tokenizer: GlmTextTokenizer, templates: PromptTemplates | None = None, *,
                 remember_passages: bool = False, refill: float = 0.5):
        self.tokenizer = tokenizer
        self.templates = templates or PromptTemplates()
        self.remember_passages = remember_passages
        self.refill = refill
        special = tokenizer.special
        self._prefix = [special.gmask, special.sop]
        self._opening = [special.assistant, *tokenizer.encode(ASSISTANT_OPENING)]

    def build(self, conversation: Conversation, *, speech_tokens: list[int] | None = None,
              text: str | None = None, passages: list[Passage] = (), instruction: str = "",
              max_tokens: int = 8192) -> Prompt:
        """The prompt for a new turn, at most max_tokens long. The system prompt and this turn
        stay; when the history does not fit, its oldest turns are dropped in one block (see the
        module's history policy); if this turn alone is too long, its lowest-ranked passages are
        dropped."""
        if (speech_tokens is None) == (text is None):
            raise ValueError("give either speech_tokens or text")
        header = conversation.header or self.system_header(speech=speech_tokens is not None)
        sizes = [len(t) + len(r) for t, r in conversation.turns]
        passages = list(passages)
        for dropped_passages in range(len(passages) + 1):
            turn = self._turn(speech_tokens, text, passages[:len(passages) - dropped_passages], instruction)
            fixed = len(header) + len(turn)
            if fixed > max_tokens:
                continue
            dropped = self._turns_to_drop(sizes, fixed, max_tokens)
            ids = list(header)
            for turn_ids, reply in conversation.turns[dropped:]:
                ids += turn_ids + reply
            remembered = turn if self.remember_passages else self._turn(speech_tokens, text, [], "")
            return Prompt(ids + turn, list(header), turn, remembered, dropped, dropped_passages)
        raise BackendError(
            f"the question alone needs {fixed} tokens, more than the context budget "
            f"of {max_tokens}; raise generation.context_budget"
        )

    def _turns_to_drop(self, sizes: list[int], fixed: int, max_tokens: int) -> int:
        if fixed + sum(sizes) <= max_tokens:
            return 0
        target = max_tokens * self.refill
        dropped, total = 0, fixed + sum(sizes)
        while dropped < len(sizes) and total > target:
            total -= sizes[dropped]
            dropped += 1
        return dropped

    def system_header(self, speech: bool = True) -> list[int]:
        system = SPEECH_SYSTEM_PROMPT if speech else TEXT_SYSTEM_PROMPT
        return [*self._prefix, self.tokenizer.special.system, *self.tokenizer.encode("\n" + system)]

    def _turn(self, speech_tokens: list[int] | None, text: str | None, passages: list[Passage],
              instruction: str) -> list[int]:
        encode = self.tokenizer.encode
        question = self.tokenizer.audio_ids(speech_tokens) if speech_tokens is not None else encode(text or "")
        if passages:
            context = PASSAGE_SEPARATOR.join(
                self.templates.passage.format(source=p.source, text=p.text) for p in passages
            )
            before, after = self.templates.around_question(context)
            body = encode(before) + question + encode(after)
        else:
            body = question
        if instruction:
            body += encode("\n" + instruction)
        return [self.tokenizer.special.user, *encode("\n"), *body, *self._opening]
