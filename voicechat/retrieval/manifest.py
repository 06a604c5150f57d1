"""The manifest (``manifest.json``): format version, encoder, dimension, languages, chunking, index
type and its tuned search parameter, per-file size/mtime/hash, the store generation it was exported
from, and a fingerprint of each file the export wrote.

Every file of an export is written under a temporary name and renamed into place; the manifest goes
last, so a folder with a manifest holds a finished export.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from voicechat.errors import KnowledgeIndexError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def read_manifest(index_dir: Path) -> dict[str, Any] | None:
    path = index_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise KnowledgeIndexError.corrupt(path, error) from None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise KnowledgeIndexError.corrupt(path, "not a voicechat index manifest")
    if manifest["format_version"] != FORMAT_VERSION:
        raise KnowledgeIndexError(
            f"{index_dir}: index format {manifest['format_version']} is not supported by this version "
            f"(expects {FORMAT_VERSION}); rebuild it with `voicechat index DIR --rebuild`")
    return manifest


def write_manifest(index_dir: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    atomic_write(index_dir / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_artifacts(index_dir: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists is there, unchanged since it was written."""
    for name, expected in manifest.get("artifacts", {}).items():
        path = index_dir / name
        if not path.is_file():
            raise KnowledgeIndexError(
                f"{path}: index file is missing; rebuild with `voicechat index DIR`")
        actual = file_fingerprint(path)
        if actual != expected:
            what = "truncated" if actual["size"] < expected["size"] else "changed since it was written"
            raise KnowledgeIndexError.corrupt(path, f"file is {what}")


def artifacts_look_intact(index_dir: Path, manifest: dict[str, Any]) -> bool:
    """Every file the manifest lists is there with its recorded size (a quick check: no hashing)."""
    for name, expected in manifest.get("artifacts", {}).items():
        path = index_dir / name
        if not path.is_file() or path.stat().st_size != expected["size"]:
            return False
    return True


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def file_fingerprint(path: Path) -> dict[str, Any]:
    """Size and hash of the first and last MiB: catches truncation without reading gigabytes."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(-(1 << 20), 2)
            digest.update(handle.read())
    return {"size": size, "sha256_ends": digest.hexdigest()}
