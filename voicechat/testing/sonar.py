"""Random-weight SONAR speech and text encoders as fairseq2 checkpoints with asset cards.

The models are built from sonar's own config and factory classes, so their state dicts are exactly
what fairseq2 loads for the published encoders. Each model gets a folder with ``card.yaml`` (a
fairseq2 asset card naming its family, architecture, configuration overrides and checkpoint),
``model.pt`` and, for the text encoder, ``tokenizer.model``: a SentencePiece unigram model with
byte fallback, written directly in SentencePiece's protobuf format. The cards work both as files
(``models.sonar_text.source: DIR/sonar/text_encoder/card.yaml``) and by name, when the folder is in
``FAIRSEQ2_USER_ASSET_DIR``.
"""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path
from typing import Any

import torch
import yaml

TEXT_CARD_NAME = "voicechat_test_sonar_text_encoder"
SPEECH_CARD_NAME = "voicechat_test_sonar_speech_encoder"

# Words that become whole pieces, so that tokenized English has roughly the length it has with the
# real 256k vocabulary (about one piece per word).
COMMON_WORDS = (
    "the of and to a in is it you that he was for on are with as his they be at one have this from "
    "or had by not word but what some we can out other were all there when up use your how said an "
    "each she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most people my "
    "over know water than call first who may down side been now find any new work part take get "
    "place made live where after back little only round man year came show every good me give our "
    "under name very through just form sentence great think say help low line differ turn cause "
    "much mean before move right boy old too same tell does set three want air well also play small "
    "end put home read hand port large spell add even land here must big high such follow act why "
    "ask men change went light kind off need house picture try us again animal point mother world "
    "near build self earth father head stand own page should country found answer school grow study "
    "still learn plant cover food sun four between state keep eye never last let thought city tree "
    "cross farm hard start might story saw far sea draw left late run while press close night real "
    "life few north open seem together next white children begin got walk example ease paper group "
    "always music those both mark often letter until mile river car feet care second book carry "
    "took science eat room friend began idea fish mountain stop once base hear horse cut sure watch "
    "color face wood main enough plain girl usual young ready above ever red list though feel talk "
    "bird soon body dog family direct pose leave song measure door product black short numeral "
    "class wind question happen complete ship area half rock order fire south problem piece told "
    "knew pass since top whole king space heard best hour better true during hundred five remember "
    "step early hold west ground interest reach fast verb sing listen six table travel less morning "
    "ten simple several vowel toward war lay against pattern slow center love person money serve "
    "appear road map rain rule govern pull cold notice voice unit power town fine certain fly fall "
    "lead cry dark machine note wait plan figure star box noun field rest correct able pound done "
    "beauty drive stood contain front teach week final gave green oh quick develop ocean warm free "
    "minute strong special mind behind clear tail produce fact street inch multiply nothing course "
    "stay wheel full force blue object decide surface deep moon island foot system busy test record "
    "boat common gold possible plane stead dry wonder laugh thousand ago ran check game shape equate "
    "hot miss brought heat snow tire bring yes distant fill east paint language among"
).split()


def write(out_dir: Path, size: str = "tiny", seed: int = 0) -> dict[str, Any]:
    """Writes both encoders under out_dir/sonar/ and returns the config entries that select them."""
    root = Path(out_dir).resolve() / "sonar"
    text_card = write_text_encoder(root / "text_encoder", size, seed)
    speech_card = write_speech_encoder(root / "speech_encoder", size, seed + 1)
    return {
        "models": {
            "sonar_text": {"source": str(text_card)},
            "sonar_speech": {"source": str(speech_card)},
        }
    }


# --- text encoder ---------------------------------------------------------------------------------


def text_encoder_config(size: str, vocab_size: int):
    """The published "basic" architecture, or a tiny one of the same shape of code."""
    from fairseq2.data.tokenizers import VocabularyInfo
    from fairseq2.runtime.config_registry import get_config
    from fairseq2.runtime.dependency import get_dependency_resolver
    from sonar.models.sonar_text import SonarTextEncoderConfig

    config = get_config(get_dependency_resolver(), SonarTextEncoderConfig, "basic")
    vocab = VocabularyInfo(size=vocab_size, unk_idx=1, bos_idx=2, eos_idx=3, pad_idx=1)
    if size == "full":
        return dataclasses.replace(config, vocab_info=vocab)
    return dataclasses.replace(
        config, vocab_info=vocab, model_dim=32, num_encoder_layers=2, num_decoder_layers=2,
        num_encoder_attn_heads=2, num_decoder_attn_heads=2, ffn_inner_dim=64,
    )


def write_text_encoder(folder: Path, size: str, seed: int) -> Path:
    from sonar.models.sonar_text.factory import SonarTextEncoderFactory

    folder.mkdir(parents=True, exist_ok=True)
    langs = published_text_languages()
    pieces = write_sentencepiece_model(folder / "tokenizer.model", full_vocab=size == "full")
    # The NLLB tokenizer adds one control symbol per language, three data tags and <pad>.
    vocab_size = pieces + len(langs) + 4
    config = text_encoder_config(size, vocab_size)
    torch.manual_seed(seed)
    model = SonarTextEncoderFactory(config).create_model()
    _save_state_dict(model, folder / "model.pt")
    card = {
        "name": TEXT_CARD_NAME,
        "model_family": "transformer_encoder",
        "model_arch": "basic",
        "model_config": _unstructure(config),
        "checkpoint": "model.pt",
        "tokenizer": "tokenizer.model",
        "tokenizer_family": "nllb",
        "tokenizer_config": {"_set_": {"default_lang": "eng_Latn", "langs": langs}},
    }
    return _write_card(folder, card)


def published_text_languages() -> list[str]:
    """The languages of the published text encoder's card, read from the installed sonar package."""
    from fairseq2.assets import get_asset_store

    card = get_asset_store().retrieve_card("text_sonar_basic_encoder")
    langs = card.field("tokenizer_config").as_(dict)["_set_"]["langs"]
    return [str(lang) for lang in langs]


# --- speech encoder -------------------------------------------------------------------------------


def speech_encoder_config(size: str, arch: str = "english"):
    from fairseq2.runtime.config_registry import get_config
    from fairseq2.runtime.dependency import get_dependency_resolver
    from sonar.models.sonar_speech import SonarSpeechEncoderConfig

    config = get_config(get_dependency_resolver(), SonarSpeechEncoderConfig, arch)
    if size == "full":
        return config
    w2v2 = dataclasses.replace(
        config.w2v2_encoder_config, model_dim=32, num_encoder_layers=2, num_encoder_attn_heads=2,
        ffn_inner_dim=64, depthwise_conv_kernel_size=7,
    )
    return dataclasses.replace(
        config, w2v2_encoder_config=w2v2, model_dim=32, num_decoder_layers=1,
        num_decoder_attn_heads=2, ffn_inner_dim=64,
    )


def write_speech_encoder(folder: Path, size: str, seed: int) -> Path:
    from sonar.models.sonar_speech import SonarSpeechEncoderFactory

    folder.mkdir(parents=True, exist_ok=True)
    config = speech_encoder_config(size)
    torch.manual_seed(seed)
    model = SonarSpeechEncoderFactory(config).create_model()
    _save_state_dict(model, folder / "model.pt")
    card = {
        "name": SPEECH_CARD_NAME,
        "model_family": "sonar_speech",
        "model_arch": "english",
        "model_config": _unstructure(config),
        "checkpoint": "model.pt",
        "tokenizer_config": {"_set_": {"default_lang": "eng", "langs": ["eng"]}},
    }
    return _write_card(folder, card)


# --- files ----------------------------------------------------------------------------------------


def _save_state_dict(model: torch.nn.Module, path: Path) -> None:
    # A plain state dict with fairseq2's parameter names is fairseq2's checkpoint format.
    tmp = path.with_name(path.name + ".part")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)


def _unstructure(config: Any) -> Any:
    from fairseq2.runtime.dependency import get_dependency_resolver
    from fairseq2.utils.structured import ValueConverter

    return get_dependency_resolver().resolve(ValueConverter).unstructure(config)


def _write_card(folder: Path, card: dict[str, Any]) -> Path:
    path = folder / "card.yaml"
    path.write_text(yaml.safe_dump(card, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


# --- SentencePiece model in its protobuf wire format ----------------------------------------------

_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6
_UNIGRAM = 1


def write_sentencepiece_model(path: Path, full_vocab: bool = False) -> int:
    """A unigram model: <unk> <s> </s>, 256 byte pieces (byte fallback covers every character),
    printable ASCII, common CJK punctuation and English words. ``full_vocab`` pads the vocabulary
    to the published 256,000 pieces with unused synthetic pieces. Returns the piece count."""
    pieces: list[tuple[str, float, int]] = [("<unk>", 0.0, _UNKNOWN), ("<s>", 0.0, _CONTROL),
                                            ("</s>", 0.0, _CONTROL)]
    pieces += [(f"<0x{b:02X}>", 0.0, _BYTE) for b in range(256)]
    seen = {p for p, _, _ in pieces}
    normal: list[tuple[str, float]] = [("\u2581", -2.0)]
    normal += [(chr(c), -8.0) for c in range(33, 127)]
    normal += [(ch, -8.0) for ch in "。，、；：？！「」『』（）《》“”‘’…—"]
    for rank, word in enumerate(COMMON_WORDS):
        normal.append(("\u2581" + word, -1.0 - rank / 10000))
        normal.append(("\u2581" + word.capitalize(), -1.5 - rank / 10000))
    for piece, score in normal:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score, _NORMAL))
    if full_vocab:
        filler = 0
        while len(pieces) < 256_000:
            piece = f"\u2581zz{filler:06d}"
            filler += 1
            pieces.append((piece, -30.0, _NORMAL))
    trainer = (_field_varint(3, _UNIGRAM) + _field_varint(4, len(pieces)) + _field_varint(35, 1)
               + _field_varint(40, 0) + _field_varint(41, 1) + _field_varint(42, 2))
    normalizer = (_field_bytes(1, b"identity") + _field_varint(3, 1) + _field_varint(4, 1)
                  + _field_varint(5, 1))
    body = b"".join(_field_bytes(1, _piece_message(*p)) for p in pieces)
    body += _field_bytes(2, trainer) + _field_bytes(3, normalizer)
    path.write_bytes(body)
    return len(pieces)


def _piece_message(piece: str, score: float, kind: int) -> bytes:
    return (_field_bytes(1, piece.encode("utf-8")) + _key(2, 5) + struct.pack("<f", score)
            + _field_varint(3, kind))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _field_varint(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _field_bytes(number: int, value: bytes) -> bytes:
    return _key(number, 2) + _varint(len(value)) + value
