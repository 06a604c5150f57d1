"""The manifest (``manifest.json``): format version, the knowledge folder the index was built for,
encoder, dimension, languages, chunking, index type and its tuned search parameter, per-file
size/mtime/hash, the store generation it was exported from, and the size and checksums of each file
the export wrote.

Every file of an export is written under a temporary name and renamed into place; the manifest goes
last, so a folder with a manifest holds a finished export. A run killed while writing leaves its
temporary file behind; the next run removes it.

Format 2 added the full SHA-256 of each exported file (format 1 hashed the first and last MiB only,
so a damaged middle went unnoticed). A format-1 index is still opened for search, with the checks
it recorded; its knowledge folder, when not recorded, counts as unknown. The next `voicechat index`
rewrites its manifest and search files from the store (nothing is re-embedded) in format 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from voicechat.errors import KnowledgeIndexError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")


def read_manifest(index_dir: Path, folder: object = "DIR") -> dict[str, Any] | None:
    path = index_dir / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise KnowledgeIndexError.damaged(path, error, folder) from None
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise KnowledgeIndexError.damaged(path, "not a voicechat index manifest", folder)
    if manifest["format_version"] not in READABLE_VERSIONS:
        raise KnowledgeIndexError(
            f"{index_dir}: index format {manifest['format_version']} is not supported by this version "
            f"(expects {FORMAT_VERSION}); rebuild it with `voicechat index DIR --rebuild`")
    return manifest


def write_manifest(index_dir: Path, manifest: dict[str, Any]) -> None:
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    atomic_write(index_dir / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def check_artifacts(index_dir: Path, manifest: dict[str, Any], folder: object = "DIR") -> None:
    """Every file the manifest lists is there, with its recorded size and the hash of its first and
    last MiB (quick: done at every opening; ``verify_artifacts`` reads them whole)."""
    for name, expected in manifest.get("artifacts", {}).items():
        path = index_dir / name
        if not path.is_file():
            raise KnowledgeIndexError.damaged(path, "the file is missing", folder)
        actual = file_fingerprint(path)
        if actual["size"] != expected["size"] or actual["sha256_ends"] != expected["sha256_ends"]:
            raise KnowledgeIndexError.damaged(path, _difference(actual["size"], expected["size"]), folder)


def verify_artifacts(index_dir: Path, manifest: dict[str, Any], required: tuple[str, ...]) -> str | None:
    """Why the exported files cannot be trusted, or None: a file missing, of another size, or whose
    SHA-256 differs from the one recorded when it was written."""
    artifacts = manifest.get("artifacts", {})
    for name in required:
        if name not in artifacts:
            return f"{name}: the file is not recorded in the manifest"
    for name, expected in artifacts.items():
        path = index_dir / name
        if not path.is_file():
            return f"{name}: the file is missing"
        size = path.stat().st_size
        if size != expected["size"]:
            return f"{name}: {_difference(size, expected['size'])}"
        if "sha256" not in expected:
            return f"{name}: the file has no checksum (written by an earlier version)"
        if sha256_of(path) != expected["sha256"]:
            return f"{name}: {_difference(size, size)}"
    return None


def _difference(size: int, expected: int) -> str:
    if size < expected:
        return "the file is truncated"
    if size > expected:
        return "the file has grown since it was written"
    return "the file has changed since it was written (its checksum differs)"


def remove_stale_temporaries(index_dir: Path, names: tuple[str, ...]) -> list[str]:
    """Temporary files of ``names`` written by runs that are no longer running (killed while
    writing): removed. One of a live process (another run writing now, or a process that got a
    dead run's number) is left alone."""
    removed = []
    for path in index_dir.glob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match is None or match["name"] not in names or _process_alive(int(match["pid"])):
            continue
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return sorted(removed)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process
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


def file_checksums(path: Path) -> dict[str, Any]:
    """What the manifest records of an exported file: the quick fingerprint and the whole file's
    SHA-256."""
    return {**file_fingerprint(path), "sha256": sha256_of(path)}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
