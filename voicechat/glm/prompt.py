"""The prompt GLM-4-Voice was trained on, as token ids.

    [gMASK]<sop><|system|>\\n{system}                      (first turn only)
    <|user|>\\n{question}<|assistant|>streaming_transcription\\n{reply}   (each turn)

The question is the user's speech (<|begin_of_audio|><|audio_N|>…<|end_of_audio|>) or text,
wrapped in the retrieval template when passages were found, followed by the voice preset's
instruction. Markers are inserted by id; passages and instructions are encoded as plain text, so
a document that contains "<|user|>" cannot forge a turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
PASSAGE_TEMPLATE = "[{source}] {text}"
PASSAGE_SEPARATOR = "\n\n"
ASSISTANT_OPENING = "streaming_transcription\n"


@dataclass(frozen=True)
class Passage:
    source: str  # shown to the model and the user, e.g. "handbook.pdf p.3"
    text: str


@dataclass(frozen=True)
class PromptTemplates:
    rag: str = RAG_TEMPLATE
    passage: str = PASSAGE_TEMPLATE

    def __post_init__(self) -> None:
        for key in ("{question}", "{passages}"):
            if self.rag.count(key) != 1:
                raise ConfigError(f"generation.rag_template must contain {key} exactly once")
        try:
            self.passage.format(source="s", text="t")
        except (KeyError, IndexError, ValueError):
            raise ConfigError("generation.passage_template may only use {source} and {text}") from None
        if "{text}" not in self.passage:
            raise ConfigError("generation.passage_template must contain {text}")

    @classmethod
    def from_config(cls, generation: GenerationConfig) -> PromptTemplates:
        return cls(rag=generation.rag_template or RAG_TEMPLATE,
                   passage=generation.passage_template or PASSAGE_TEMPLATE)


@dataclass
class Conversation:
    """Token ids of the conversation so far: the opening (prefix and system prompt, fixed by the
    first turn) and each turn's prompt part with the model's reply."""

    header: list[int] = field(default_factory=list)
    turns: list[tuple[list[int], list[int]]] = field(default_factory=list)

    def add(self, prompt: Prompt, reply_ids: list[int]) -> None:
        """Record a finished turn; the reply excludes the token that ended it (<|user|>)."""
        if not self.header:
            self.header = list(prompt.header)
        self.turns.append((list(prompt.turn_ids), list(reply_ids)))

    def clear(self) -> None:
        self.header = []
        self.turns.clear()


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    header: list[int]  # prefix and system prompt
    turn_ids: list[int]  # this turn: <|user|>\n … <|assistant|>streaming_transcription\n
    dropped_turns: int  # old turns left out to fit the budget
    dropped_passages: int  # passages left out because the turn alone did not fit


class PromptBuilder:
    def __init__(self, tokenizer: GlmTextTokenizer, templates: PromptTemplates | None = None):
        self.tokenizer = tokenizer
        self.templates = templates or PromptTemplates()
        special = tokenizer.special
        self._prefix = [special.gmask, special.sop]
        self._opening = [special.assistant, *tokenizer.encode(ASSISTANT_OPENING)]

    def build(self, conversation: Conversation, *, speech_tokens: list[int] | None = None,
              text: str | None = None, passages: list[Passage] = (), instruction: str = "",
              max_tokens: int = 8192) -> Prompt:
        """The prompt for a new turn, at most max_tokens long. The system prompt and this turn
        stay; old turns are dropped whole, oldest first; if this turn alone is too long, its
        lowest-ranked passages are dropped."""
        if (speech_tokens is None) == (text is None):
            raise ValueError("give either speech_tokens or text")
        header = conversation.header or self.system_header(speech=speech_tokens is not None)
        sizes = [len(t) + len(r) for t, r in conversation.turns]
        passages = list(passages)
        for dropped_passages in range(len(passages) + 1):
            turn = self._turn(speech_tokens, text, passages[:len(passages) - dropped_passages], instruction)
            for kept in range(len(sizes), -1, -1):
                if len(header) + sum(sizes[len(sizes) - kept:]) + len(turn) <= max_tokens:
                    ids = list(header)
                    for turn_ids, reply in conversation.turns[len(sizes) - kept:]:
                        ids += turn_ids + reply
                    return Prompt(ids + turn, list(header), turn, len(sizes) - kept, dropped_passages)
        raise BackendError(
            f"the question alone needs {len(header) + len(turn)} tokens, more than the context budget "
            f"of {max_tokens}; raise generation.context_budget"
        )

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
            before, after = self.templates.rag.split("{question}")
            body = encode(before.replace("{passages}", context)) + question + encode(after.replace("{passages}", context))
        else:
            body = question
        if instruction:
            body += encode("\n" + instruction)
        return [self.tokenizer.special.user, *encode("\n"), *body, *self._opening]
