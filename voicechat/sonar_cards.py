"""The fairseq2 asset cards of the SONAR models: where their files come from.

A model source is either a fairseq2 card name (``sonar_speech_encoder_eng``,
``text_sonar_basic_encoder``; downloaded into or read from fairseq2's cache) or the path of a card
file (YAML) whose ``checkpoint:``/``tokenizer:`` name local files, relative to the card's folder.
fairseq2 is imported only when a card is read.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

from voicechat.errors import ModelError

log = logging.getLogger(__name__)

CardState = Literal["cached", "missing", "local"]


def is_card_file(source: str) -> bool:
    return source.endswith((".yaml", ".yml")) or Path(source).expanduser().is_dir()


def card_file_path(source: str) -> Path:
    path = Path(source).expanduser()
    return path / "card.yaml" if path.is_dir() else path


def load_card(source: str):
    """A fairseq2 AssetCard from a card name or a card file."""
    from fairseq2.assets import AssetCard, get_asset_store

    if not is_card_file(source):
        card = get_asset_store().maybe_retrieve_card(source)
        if card is None:
            raise ModelError(
                f"unknown SONAR model {source!r}: give a fairseq2 card name such as "
                "sonar_speech_encoder_eng or text_sonar_basic_encoder, or the path of a card file"
            )
        return card
    metadata = read_card_file(card_file_path(source))
    base = None
    if isinstance(metadata.get("base"), str):
        base = get_asset_store().maybe_retrieve_card(metadata["base"])
        if base is None:
            raise ModelError(f"{source}: base card {metadata['base']!r} is not known to fairseq2")
    return AssetCard(str(metadata["name"]), metadata, base)


def read_card_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        metadata = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: no such model card file") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ModelError(f"{path}: cannot read model card ({str(error).splitlines()[0]})") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
        raise ModelError(f"{path}: not a fairseq2 asset card (expected a mapping with a name)")
    metadata["__base_path__"] = path.parent.resolve()
    metadata["__source__"] = str(path)
    return metadata


def _card_uris(card) -> list[str]:
    uris = [str(card.field("checkpoint").as_uri())]
    if card.maybe_get_field("tokenizer") is not None:
        uris.append(str(card.field("tokenizer").as_uri()))
    return uris


def sonar_model_status(source: str, cache_dir: Path | None = None) -> tuple[CardState, Path | None]:
    """Whether a SONAR model can be loaded without downloading, and where its checkpoint is:
    "local" for card files whose files exist, "cached" when every remote file of the card is in
    fairseq2's cache, else "missing". Never downloads."""
    try:
        card = load_card(source)
        uris = _card_uris(card)
    except ModelError:
        return "missing", None
    except Exception as error:  # a malformed card: fairseq2 raises its own errors
        log.debug("card %s unreadable: %s", source, error)
        return "missing", None
    if cache_dir is None:
        cache_dir = fairseq2_cache_dir()
    paths: list[Path | None] = []
    for uri in uris:
        if uri.startswith("file:"):
            path = _file_uri_path(uri)
            paths.append(path if path.exists() else None)
        else:
            paths.append(next((cache_dir / _cache_key(uri)).glob("*"), None))
    if any(path is None for path in paths):
        return "missing", None
    state: CardState = "local" if all(u.startswith("file:") for u in uris) else "cached"
    return state, paths[0]


def download_sonar_model(source: str) -> Path:
    """Fetch a card's checkpoint (and tokenizer) into fairseq2's cache; returns the checkpoint."""
    from fairseq2.assets import AssetDownloadError, AssetDownloadManager
    from fairseq2.runtime.dependency import get_dependency_resolver

    card = load_card(source)
    manager = get_dependency_resolver().resolve(AssetDownloadManager)
    try:
        checkpoint = manager.download_model(card.field("checkpoint").as_uri(), card.name)
        if card.maybe_get_field("tokenizer") is not None:
            manager.download_tokenizer(card.field("tokenizer").as_uri(), card.name)
    except AssetDownloadError as error:
        raise ModelError(f"cannot download SONAR model {source!r} ({error}); check the network and retry") from None
    return Path(checkpoint)


def fairseq2_cache_dir() -> Path:
    from fairseq2.assets import AssetDirectoryAccessor
    from fairseq2.runtime.dependency import get_dependency_resolver

    return get_dependency_resolver().resolve(AssetDirectoryAccessor).get_cache_dir()


def _cache_key(uri: str) -> str:
    # fairseq2 keeps each downloaded asset in a folder named by the SHA-1 of its URI (24 digits).
    return hashlib.sha1(uri.encode()).hexdigest()[:24]


def _file_uri_path(uri: str) -> Path:
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))
