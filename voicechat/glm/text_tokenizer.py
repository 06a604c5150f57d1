"""GLM-4's text tokenizer, read from the checkpoint's own files without its remote code.

`tokenizer.model` holds the byte-level BPE ranks (one ``base64-token rank`` per line, tiktoken's
format); `tokenizer_config.json` lists the added tokens (``added_tokens_decoder``): the chat
markers, ``[gMASK]``/``<sop>``, ``<|begin_of_audio|>`` and the 16384 ``<|audio_N|>`` tokens. Every
special id is read from those files: nothing about the id layout is assumed here.
"""

from __future__ import annotations

import base64
import codecs
import json
import re
from dataclasses import dataclass
from pathlib import Path

from voicechat.errors import ModelError

# GLM-4's pre-tokenisation pattern (the same split as its remote tokenizer code).
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Shapes an added token can have; a match is special only if the files list that exact string.
_SPECIAL_SHAPE = re.compile(r"<\|[^<>|\s]{1,40}\|>|\[[gs]?MASK\]|<sop>|<eop>")
_AUDIO_NAME = re.compile(r"<\|audio_(\d+)\|>")

VOCAB_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"


@dataclass(frozen=True)
class SpecialIds:
    """The ids the prompt builder and the stream demux need."""

    gmask: int
    sop: int
    system: int
    user: int
    assistant: int
    observation: int
    endoftext: int
    begin_of_audio: int
    end_of_audio: int
    audio_offset: int  # id of <|audio_0|>
    audio_count: int  # 16384 in the published model

    def is_audio(self, token_id: int) -> bool:
        return self.audio_offset <= token_id < self.audio_offset + self.audio_count

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Tokens that end a reply: <|user|> in practice; the model's other eos ids too."""
        return (self.user, self.endoftext, self.observation)


class GlmTextTokenizer:
    def __init__(self, ranks: dict[bytes, int], added: dict[str, int]):
        import tiktoken

        self._encoding = tiktoken.Encoding(
            name="glm4", pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens={}
        )
        self._bytes_of = {rank: token for token, rank in ranks.items()}
        self.added = dict(added)
        self._added_of = {i: name for name, i in added.items()}
        self.special = _special_ids(added)

    @classmethod
    def from_pretrained(cls, path: Path) -> GlmTextTokenizer:
        path = Path(path)
        return cls(_read_ranks(path / VOCAB_FILE), _read_added(path / CONFIG_FILE))

    # --- encoding -----------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ordinary text: markers written in it stay text (a passage cannot inject <|user|>)."""
        return self._encoding.encode_ordinary(text)

    def encode_with_special(self, text: str) -> list[int]:
        """Text in which the tokenizer's own marker strings (<|user|>, <|audio_7|>…) are tokens."""
        ids: list[int] = []
        start = 0
        for match in _SPECIAL_SHAPE.finditer(text):
            token_id = self.added.get(match.group())
            if token_id is None:
                continue
            ids += self.encode(text[start:match.start()])
            ids.append(token_id)
            start = match.end()
        return ids + self.encode(text[start:])

    def token_id(self, name: str) -> int:
        if name not in self.added:
            raise ModelError(f"the tokenizer has no token {name!r}; the tokenizer files do not match GLM-4-Voice")
        return self.added[name]

    def audio_ids(self, speech_tokens: list[int]) -> list[int]:
        """Speech-tokenizer codes (0..16383) as LM token ids, wrapped in begin/end of audio."""
        special = self.special
        bad = [t for t in speech_tokens if not 0 <= t < special.audio_count]
        if bad:
            raise ModelError(f"speech token {bad[0]} is outside the model's {special.audio_count} audio tokens")
        return [special.begin_of_audio, *(special.audio_offset + t for t in speech_tokens), special.end_of_audio]

    # --- decoding -----------------------------------------------------------------------------

    def token_bytes(self, token_id: int) -> bytes:
        """UTF-8 bytes of one id; an added token is its own name."""
        if token_id in self._bytes_of:
            return self._bytes_of[token_id]
        if token_id in self._added_of:
            return self._added_of[token_id].encode()
        return b""  # padding rows of the embedding: never produced by a trained model

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def is_special(self, token_id: int) -> bool:
        return token_id in self._added_of

    @property
    def vocab_size(self) -> int:
        return max(max(self._bytes_of), max(self._added_of)) + 1


class StreamingDetokenizer:
    """Text ids in, text out, as soon as it is whole: a Chinese character split over two tokens
    shows once both have arrived; nothing is repeated or dropped."""

    def __init__(self, tokenizer: GlmTextTokenizer):
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._decoder.decode(self._tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """End of the text: an unfinished character becomes U+FFFD rather than vanishing."""
        return self._decoder.decode(b"", final=True)


# --- reading the files ------------------------------------------------------------------------


def _read_ranks(path: Path) -> dict[bytes, int]:
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise ModelError(f"cannot read the tokenizer vocabulary {path} ({error.strerror or error})") from None
    ranks: dict[bytes, int] = {}
    try:
        for line in lines:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token, validate=True)] = int(rank)
    except ValueError:
        raise ModelError(f"{path} is not a GLM-4 tokenizer vocabulary (expected 'base64 rank' lines)") from None
    if len(ranks) < 256 or sorted(ranks.values()) != list(range(len(ranks))):
        raise ModelError(f"{path} is not a complete BPE vocabulary (ranks must be 0..N-1 with all bytes)")
    return ranks


def _read_added(path: Path) -> dict[str, int]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        decoder = config["added_tokens_decoder"]
        return {entry["content"]: int(token_id) for token_id, entry in decoder.items()}
    except OSError as error:
        raise ModelError(f"cannot read {path} ({error.strerror or error})") from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ModelError(f"{path} has no readable added_tokens_decoder; is this a GLM-4-Voice tokenizer?") from None


def _special_ids(added: dict[str, int]) -> SpecialIds:
    def need(name: str) -> int:
        if name not in added:
            raise ModelError(f"the tokenizer files lack the token {name!r}; they are not GLM-4-Voice's")
        return added[name]

    audio = {int(m.group(1)): i for name, i in added.items() if (m := _AUDIO_NAME.fullmatch(name))}
    count = len(audio)
    offset = audio.get(0, -1)
    if count == 0 or any(audio.get(n) != offset + n for n in range(count)):
        raise ModelError("the tokenizer's <|audio_N|> tokens are missing or not consecutive ids")
    return SpecialIds(
        gmask=need("[gMASK]"), sop=need("<sop>"), system=need("<|system|>"), user=need("<|user|>"),
        assistant=need("<|assistant|>"), observation=need("<|observation|>"),
        endoftext=need("<|endoftext|>"), begin_of_audio=need("<|begin_of_audio|>"),
        end_of_audio=need("<|end_of_audio|>"), audio_offset=offset, audio_count=count,
    )
