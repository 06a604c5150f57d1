"""`voicechat models list|pull`: what the configuration needs, and fetching it."""

from __future__ import annotations

import argparse

from voicechat.config import Config

HELP = "list the configured models and their state, or download them (`models pull`)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "pull"], nargs="?", default="list")
    parser.add_argument("--all", action="store_true",
                        help="every configured model, not only those the current modes need")


def run(args: argparse.Namespace, config: Config) -> int:
    from voicechat import models

    needed = models.needed_roles(config)
    roles = list(models.ROLE_NAMES) if args.all else needed + models.optional_roles(config)
    if args.action == "pull":
        for role, path in models.pull(config, roles).items():
            print(f"{models.ROLE_NAMES[role]:<24} {path}")
        return 0
    missing = 0
    for role in roles:
        status = models.model_status(role, getattr(config.models, role), config)
        missing += status.state == "missing" and role in needed
        print(f"{models.ROLE_NAMES[role]:<24} {status.state:<8} {format_size(status.size_bytes):>9}  {status.spec.source}")
    return 1 if missing else 0


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"
