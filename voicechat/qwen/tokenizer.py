"""Qwen's text tokenizer, seen as the engine sees GLM's: ids to text as they stream, which ids of
a reply are speech (the talker's codes, placed after the text vocabulary), and the stop id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from voicechat.errors import ModelError


@dataclass(frozen=True)
class QwenSpecialIds:
    im_start: int
    im_end: int
    endoftext: int
    audio: int  # <|AUDIO|>: one per audio-encoder output frame
    audio_bos: int
    audio_eos: int
    audio_offset: int  # reply ids from here on are talker codes (id - audio_offset)
    audio_count: int  # the codec vocabulary (8448)

    @property
    def user(self) -> int:
        """What ends a reply (the engine's stop id): <|im_end|>."""
        return self.im_end

    def is_audio(self, token_id: int) -> bool:
        return self.audio_offset <= token_id < self.audio_offset + self.audio_count

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return (self.im_end, self.endoftext)


class QwenTextTokenizer:
    def __init__(self, hf_tokenizer, audio_offset: int, audio_count: int) -> None:
        self.hf = hf_tokenizer
        need = {name: hf_tokenizer.convert_tokens_to_ids(name) for name in
                ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>")}
        missing = [name for name, i in need.items() if i is None or i == hf_tokenizer.unk_token_id]
        if missing:
            raise ModelError(f"the Qwen tokenizer lacks the special token {missing[0]}")
        self.special = QwenSpecialIds(need["<|im_start|>"], need["<|im_end|>"], need["<|endoftext|>"],
                                      need["<|AUDIO|>"], need["<|audio_bos|>"], need["<|audio_eos|>"],
                                      audio_offset, audio_count)
        self._added = set(hf_tokenizer.all_special_ids) | set(hf_tokenizer.added_tokens_decoder)
        self._byte_decoder = _byte_decoder()

    @classmethod
    def from_pretrained(cls, folder: Path, audio_offset: int, audio_count: int) -> QwenTextTokenizer:
        from transformers import AutoTokenizer

        try:
            hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as error:
            raise ModelError(f"{folder}: cannot read the Qwen tokenizer ({str(error).splitlines()[0]})") from None
        return cls(hf, audio_offset, audio_count)

    def encode(self, text: str) -> list[int]:
        """Plain text: a document holding "<|im_end|>" cannot forge a turn."""
        return self.hf.encode(text, add_special_tokens=False, split_special_tokens=True)

    def token_bytes(self, token_id: int) -> bytes:
        """UTF-8 bytes of one id (byte-level BPE); an added token is its own name."""
        token = self.hf.convert_ids_to_tokens(token_id)
        if token is None:
            return b""
        if token_id in self._added:
            return token.encode()
        return bytes(self._byte_decoder.get(ch, 0) for ch in token)

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def is_special(self, token_id: int) -> bool:
        return token_id in self._added

    @property
    def vocab_size(self) -> int:
        return len(self.hf)


def _byte_decoder() -> dict[str, int]:
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}
