"""Write randomly initialised models in the real on-disk formats, plus DIR/config.yaml.

    python scripts/make_test_models.py --size tiny --out test-models
    python scripts/make_test_models.py --size tiny --voice-model qwen2.5-omni --out test-models-qwen
    voicechat --config test-models/config.yaml doctor

With --lm-size tiny-vllm the language model is one vLLM's CPU build can serve (head size 64).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voicechat.testing.lm import SHAPES


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", metavar="MODEL", help="write only these models")
    parser.add_argument("--voice-model", choices=["glm-4-voice", "qwen2.5-omni"], default="glm-4-voice",
                        help="the voice model to write (with the retrieval models both use)")
    parser.add_argument("--lm-size", choices=sorted(SHAPES), help="the language model's size (default: --size)")
    args = parser.parse_args()
    from voicechat.testing.generator import generate

    path = generate(args.out, args.size, args.seed, args.only, progress=lambda m: print(m, file=sys.stderr),
                    voice_model=args.voice_model, lm_size=args.lm_size)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
