"""A random-weight Whisper in the Hugging Face format (config.json, model.safetensors,
generation_config.json, tokenizer and feature-extractor files), for the asr retrieval mode.

The tokenizer is byte-level BPE over the 256 byte symbols with Whisper's special tokens
(<|startoftranscript|>, one token per language, <|transcribe|>, <|notimestamps|>, ...), and the
generation config maps languages and tasks to them as the published checkpoints do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def write(out_dir: Path, size: str = "tiny", seed: int = 0) -> dict[str, Any]:
    folder = Path(out_dir).resolve() / "whisper"
    write_whisper(folder, size, seed)
    return {"models": {"asr": {"source": str(folder)}}}


def write_whisper(folder: Path, size: str, seed: int) -> Path:
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    tokenizer = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                 unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                                 eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    languages = [f"<|{code}|>" for code in LANGUAGES]
    specials = (["<|startoftranscript|>"] + languages
                + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                   "<|notimestamps|>"])
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in specials}
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    # "full" is whisper-large-v3's architecture (128 mel bins); "tiny" keeps the 80-bin front end.
    dims = (dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                 decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, num_mel_bins=128)
            if size == "full" else
            dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80))
    config = WhisperConfig(vocab_size=len(tokenizer), max_source_positions=1500,
                           max_target_positions=448, decoder_start_token_id=ids["<|startoftranscript|>"],
                           bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, **dims)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.save_pretrained(folder, safe_serialization=True)
    generation = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=eot, eos_token_id=eot,
        pad_token_id=eot, max_length=448, is_multilingual=True,
        lang_to_id={token: ids[token] for token in languages},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], begin_suppress_tokens=[eot],
        suppress_tokens=[],
    )
    generation.save_pretrained(folder)
    features = WhisperFeatureExtractor(feature_size=dims["num_mel_bins"])
    WhisperProcessor(features, tokenizer).save_pretrained(folder)
    return folder
