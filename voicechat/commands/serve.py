"""voicechat serve: host the language model for other machines (reference server protocol), or
with --engine the whole engine: speech tokenizer, SONAR, the index of this machine's knowledge
folder, the LM and the decoder, for terminals elsewhere (`--engine-url` there)."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

HELP = ("serve the GLM-4-Voice language model over HTTP so another machine can use backend.kind glm-server; "
        "with --engine, the whole engine over WebSocket for clients with --engine-url")
LM_PORT, ENGINE_PORT = 10000, 10001


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: loopback only; 0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port (default: {LM_PORT}, with --engine {ENGINE_PORT}; 0 picks a free one)")
    parser.add_argument("--token-env", metavar="VAR",
                        help="environment variable holding a bearer token that clients must send")
    parser.add_argument("--engine", action="store_true",
                        help="serve the whole engine (one WebSocket per conversation) instead of the LM alone; "
                             "needs --token-env unless it listens on loopback")


def run(args: argparse.Namespace, config) -> int:
    from voicechat.errors import ConfigError

    if args.port is None:
        args.port = ENGINE_PORT if args.engine else LM_PORT
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535 (0 picks a free one), got {args.port}")
    if args.engine:
        return run_engine(args, config)

    from voicechat.allocator import keep_large_buffers_out_of_the_heap
    from voicechat.glm.lm.local import LocalBackend
    from voicechat.glm.lm.server import LMServer
    from voicechat.glm.text_tokenizer import GlmTextTokenizer
    from voicechat.models import resolve_model

    keep_large_buffers_out_of_the_heap()  # memory stays flat over many requests
    token = _token(args)
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


def run_engine(args: argparse.Namespace, config) -> int:
    from voicechat.allocator import keep_large_buffers_out_of_the_heap
    from voicechat.assemble import load_components
    from voicechat.errors import ConfigError

    token = _token(args)
    if token is None and not _is_loopback(args.host):
        raise ConfigError(f"refusing to serve the engine on {args.host} without a token: anyone who can reach it "
                          "could use it; set --token-env VAR (clients: --engine-token-env) or listen on 127.0.0.1")
    from voicechat.remote.server import EngineServer

    keep_large_buffers_out_of_the_heap()  # memory stays flat over many conversations
    parts = load_components(config, _report_loading, on_warning=lambda line: print(f"warning: {line}",
                                                                                   file=sys.stderr))
    try:
        try:
            server = EngineServer(config, parts, args.host, args.port, token=token)
        except OSError as error:
            raise ConfigError(f"cannot listen on {args.host}:{args.port} ({error.strerror or error})") from None
        modes = ", ".join(sorted(parts.retriever.modes)) if parts.retriever is not None else "none"
        print(f"serving the engine on {server.url} (retrieval modes: {modes}; Ctrl+C stops)", flush=True)
        try:
            server.serve_forever()
        finally:
            server.shutdown()
    finally:
        parts.close()
    return 0


def _report_loading(step: str, done: int, total: int) -> None:
    print(f"loading {step} ({done}/{total})", file=sys.stderr, flush=True)


def _token(args: argparse.Namespace) -> str | None:
    from voicechat.errors import ConfigError

    if not args.token_env:
        return None
    token = os.environ.get(args.token_env)
    if not token:
        raise ConfigError(f"--token-env names {args.token_env}, but that environment variable is empty")
    return token


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
