"""A random-weight Qwen2.5-Omni in the Hugging Face format: config.json (model_type qwen2_5_omni,
thinker, talker and token2wav configs), model.safetensors with transformers' own parameter names,
spk_dict.pt (the speakers Chelsie and Ethan: talker start token, speaker vector, reference mel),
a byte-level BPE tokenizer with Qwen's special tokens and chat template, and the Whisper feature
extractor's preprocessor_config.json.

"full" is the 7B or 3B architecture for benchmarks (several GB), checked against published facts
(see FULL_SIZES): both thinkers; both talkers; the audio encoder (32 layers of 1280, as
transformers' defaults and a printed 7B model); the vision encoder (1280 wide, 32 blocks: with its
merger that is the 675M parameters the technical report gives); token2wav (transformers' DiT and
BigVGAN defaults; spk_dict.pt's speaker vector of 192 and reference mel of 400 x 80 frames). "tiny"
keeps every size consistent the way the published config does (thinker hidden = audio output = talker
embedding size; half the talker head = sum of the M-RoPE sections; DiT and BigVGAN share the mel
size; codec vocabulary 8448 so the talker's end codes 8292/8294 exist).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FOLDER = "qwen2.5-omni"
SPEAKERS = ("Chelsie", "Ethan")
# Qwen's special tokens in their published order (ids from the end of the BPE vocabulary on).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
                  "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_bos|>", "<|vision_eos|>",
                  "<|vision_pad|>", "<|IMAGE|>", "<|VIDEO|>")
# Ids the talker reads in the thinker's vocabulary: text start/end/pad and one start per speaker.
TTS_TOKENS = ("<tts_text_bos>", "<tts_text_eod>", "<tts_pad>", "<tts_text_bos_single_chelsie>",
              "<tts_text_bos_single_ethan>")
CORPUS = (
    "Where is the library? The library is on the second floor, next to the reading room. "
    "What time does the museum open? It opens at nine in the morning and closes at six. "
    "How do I renew my passport? Fill in the form, bring two photos and pay the fee. "
    "The quick brown fox jumps over the lazy dog. 北京是中国的首都。今天天气很好。"
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Full sizes. Thinkers: Qwen2.5-7B/3B, as transformers' Qwen2_5OmniTextConfig defaults (7B) and
# copies of both published config.json files' text_config; both keep an lm_head of their own (the
# 3B one too, unlike Qwen2.5-3B's tied embeddings). Talkers: copies of the published talker_config
# (7B: 896 wide, 12 heads of 128, 4 KV heads, 24 layers, MLP 18944; 3B: Qwen2.5-0.5B's shape, 896
# wide, 14 heads of 64, 2 KV heads, 24 layers, MLP 4864, M-RoPE sections [16, 16, 0]), each
# head as wide as its rotary dimension; transformers' talker defaults are the thinker's sizes.
FULL_SIZES: dict[str, dict[str, Any]] = {
    "7B": dict(text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4),
               talker=dict(hidden_size=896, intermediate_size=18944, num_hidden_layers=24, num_attention_heads=12,
                           num_key_value_heads=4, head_dim=128),
               talker_mrope=[16, 24, 24]),
    "3B": dict(text=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2),
               talker=dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                           num_key_value_heads=2, head_dim=64),
               talker_mrope=[16, 16, 0]),
}
# Qwen2.5-VL's vision tower (transformers' default hidden_size, 3584, is the language model's)
FULL_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16)
REFERENCE_MEL_FRAMES = {"full": 400, "tiny": 300}


def write(out_dir: Path, size: str = "tiny", seed: int = 0, variant: str = "7B") -> dict[str, Any]:
    folder = Path(out_dir).resolve() / FOLDER
    write_omni(folder, size, seed, variant)
    entry: dict[str, Any] = {"source": str(folder), "dtype": "bfloat16" if size == "full" else "float32"}
    return {"voice_model": "qwen2.5-omni", "models": {"omni": entry}}


def write_omni(folder: Path, size: str = "tiny", seed: int = 0, variant: str = "7B") -> Path:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder)
    config = omni_config(size, ids, variant)
    torch.manual_seed(seed)
    model = build(config)
    config.save_pretrained(folder)
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    torch.save(speakers(config, ids, torch.Generator().manual_seed(seed), size), folder / "spk_dict.pt")
    write_generation_config(folder, ids)
    write_feature_extractor(folder)
    return folder


def build_in_memory(folder: Path, size: str, variant: str, device: Any, dtype: Any,
                    seed: int = 0) -> tuple[Any, dict[str, dict[str, Any]]]:
    """(model, speakers) with random weights drawn directly on ``device`` in ``dtype`` (token2wav in
    float32, as the loader keeps it); only the tokenizer and preprocessor files go to ``folder``.
    For benchmarks: a full-size model is never written to disk."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder)
    write_feature_extractor(folder)
    config = omni_config(size, ids, variant)
    from transformers import Qwen2_5OmniForConditionalGeneration
    from transformers.modeling_utils import no_init_weights

    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), no_init_weights():  # drawn once below, not twice on construction
            model = Qwen2_5OmniForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.02, generator=generator)
            else:  # norm scales 1, biases and the vocoder's log-scale activations 0
                parameter.fill_(1.0 if name.endswith("norm.weight") or "layernorm" in name else 0.0)
        for module in model.token2wav.code2wav_bigvgan_model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                module.reset_parameters()
    model.token2wav.float()
    return model.eval(), speakers(config, ids, torch.Generator().manual_seed(seed), size)


def build(config: Any) -> Any:
    import torch
    from transformers import Qwen2_5OmniForConditionalGeneration

    model = Qwen2_5OmniForConditionalGeneration(config)
    # transformers initialises every weight with std 0.02; through BigVGAN's six upsampling stages
    # that leaves audio near 1e-7, all rounding. PyTorch's own layer initialisation keeps it audible.
    for module in model.token2wav.code2wav_bigvgan_model.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            module.reset_parameters()
    return model.eval()


# --- tokenizer ----------------------------------------------------------------------------------


def write_tokenizer(folder: Path) -> dict[str, int]:
    """A byte-level BPE learned from CORPUS, then the special and TTS tokens; returns their ids."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import Qwen2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([CORPUS] * 4, vocab_size=400, min_frequency=1, show_progress=False,
                            special_tokens=[])
    tokenizer = Qwen2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None, bos_token=None,
                                   errors="replace", add_prefix_space=False)
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS) + list(TTS_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 32768
    tokenizer.save_pretrained(folder)
    return {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS + TTS_TOKENS}


def write_feature_extractor(folder: Path) -> None:
    from transformers import WhisperFeatureExtractor

    # The published preprocessor: 128 mel bins, 300 s windows (Qwen2_5OmniProcessor's audio part).
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=300,
                                        n_fft=400, padding_value=0.0, return_attention_mask=True)
    extractor.save_pretrained(folder)


def write_generation_config(folder: Path, ids: dict[str, int]) -> None:
    data = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"], "transformers_version": "4.57.6"}
    (folder / "generation_config.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


# --- config -------------------------------------------------------------------------------------


def omni_config(size: str, ids: dict[str, int], variant: str = "7B") -> Any:
    from transformers import Qwen2_5OmniConfig

    token_ids = dict(audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"],
                     video_token_index=ids["<|VIDEO|>"], audio_start_token_id=ids["<|audio_bos|>"],
                     audio_end_token_id=ids["<|audio_eos|>"])
    if size == "full":
        dims = FULL_SIZES[variant]
        text = dict(dims["text"], rope_scaling={"type": "default", "mrope_section": [16, 24, 24]},
                    max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=False)
        hidden = text["hidden_size"]
        audio = dict(output_dim=hidden)
        vision = dict(FULL_VISION, out_hidden_size=hidden)
        talker = dict(dims["talker"], embedding_size=hidden, vocab_size=8448,
                      rope_scaling={"type": "default", "mrope_section": dims["talker_mrope"]})
        token2wav: dict[str, Any] = {"dit_config": {}, "bigvgan_config": {}}  # transformers' defaults
    else:
        hidden = 32
        text = dict(vocab_size=448, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                    rope_scaling={"type": "default", "mrope_section": [2, 3, 3]}, rope_theta=1000000.0)
        audio = dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                     d_model=16, output_dim=hidden, max_source_positions=1500, n_window=100)
        vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden,
                      fullatt_block_indexes=[0])
        talker = dict(vocab_size=8448, embedding_size=hidden, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      max_position_embeddings=4096, rope_scaling={"type": "default", "mrope_section": [2, 3, 3]})
        token2wav = {
            # block_size, look-ahead and look-back layers as published: streaming depends on them
            "dit_config": dict(hidden_size=32, num_hidden_layers=22, num_attention_heads=2, head_dim=16, ff_mult=1,
                               emb_dim=16, num_embeds=8448, mel_dim=20, enc_emb_dim=8, enc_dim=8,
                               enc_channels=[8, 8, 8, 8, 24], enc_attention_channels=8, enc_se_channels=8,
                               block_size=24, look_ahead_layers=[10], look_backward_layers=[0, 20], repeats=2),
            "bigvgan_config": dict(mel_dim=20, upsample_initial_channel=128, resblock_kernel_sizes=[3],
                                   resblock_dilation_sizes=[[1, 3, 5]], upsample_rates=[5, 3, 2, 2, 2, 2],
                                   upsample_kernel_sizes=[11, 7, 4, 4, 4, 4]),
        }
    tts = dict(tts_text_start_token_id=ids["<tts_text_bos>"], tts_text_end_token_id=ids["<tts_text_eod>"],
               tts_text_pad_token_id=ids["<tts_pad>"], vision_start_token_id=ids["<|vision_bos|>"],
               vision_end_token_id=ids["<|vision_eos|>"])
    # vision_start_token_id is read even for audio-only input
    thinker = dict(text_config=text, audio_config=audio, vision_config=vision, **token_ids,
                   vision_start_token_id=ids["<|vision_bos|>"])
    # The thinker's M-RoPE sections are set after transformers has validated rope_scaling, which
    # does not know the key and would warn (as the checkpoint reader does).
    sections = text["rope_scaling"].pop("mrope_section")
    config = Qwen2_5OmniConfig(thinker_config=thinker, talker_config=dict(talker, **token_ids, **tts),
                               token2wav_config=token2wav, enable_audio_output=True)
    config.thinker_config.text_config.rope_scaling["mrope_section"] = sections
    return config


def speakers(config: Any, ids: dict[str, int], generator: Any, size: str = "tiny") -> dict[str, dict[str, Any]]:
    """spk_dict.pt: per speaker the talker's start token, the DiT's speaker vector (enc_emb_dim)
    and a reference mel (frames x mel_dim) its ECAPA encoder reads."""
    import torch

    dit = config.token2wav_config.dit_config
    found = {}
    for name in SPEAKERS:
        found[name] = {
            "bos_token": ids[f"<tts_text_bos_single_{name.lower()}>"],
            "cond": torch.randn((1, dit.enc_emb_dim), generator=generator),
            "ref_mel": torch.randn((1, REFERENCE_MEL_FRAMES[size], dit.mel_dim), generator=generator),
        }
    return found
