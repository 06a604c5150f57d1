"""voicechat serve: host the language model for other machines (reference server protocol)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

HELP = "serve the GLM-4-Voice language model over HTTP so another machine can use backend.kind glm-server"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: loopback only; 0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=10000, help="port (default: 10000, 0 picks a free one)")
    parser.add_argument("--token-env", metavar="VAR",
                        help="environment variable holding a bearer token that clients must send")


def run(args: argparse.Namespace, config) -> int:
    from voicechat.errors import ConfigError

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535 (0 picks a free one), got {args.port}")

    from voicechat.allocator import keep_large_buffers_out_of_the_heap
    from voicechat.glm.lm.local import LocalBackend
    from voicechat.glm.lm.server import LMServer
    from voicechat.glm.text_tokenizer import GlmTextTokenizer
    from voicechat.models import resolve_model

    keep_large_buffers_out_of_the_heap()  # memory stays flat over many requests
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ConfigError(f"--token-env names {args.token_env}, but that environment variable is empty")
    spec = config.models.lm
    path = resolve_model("lm", config)
    tokenizer = GlmTextTokenizer.from_pretrained(path)
    backend = LocalBackend.from_pretrained(path, device=spec.device, dtype=spec.dtype, quantization=spec.quantization)
    try:
        server = LMServer(backend, tokenizer, args.host, args.port, token=token, vocab_size=backend.vocab_size,
                          max_new_tokens=config.serve.max_new_tokens)
    except OSError as error:
        backend.close()
        raise ConfigError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error})") from None
    if token is None and not _is_loopback(args.host):
        print(f"warning: listening on {args.host} without --token-env: anyone who can reach this port can use the model",
              file=sys.stderr)
    print(f"serving {Path(path).name} on {server.url}/generate_stream (Ctrl+C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        backend.close()
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
