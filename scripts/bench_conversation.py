"""A long spoken conversation with the tiny models: prompt size and first-token time per turn, for
the history policy of the product (past turns without their passages, old turns dropped in one
block) and the one before it (passages kept, one old turn dropped per turn), in one run.

Run from the repository root: python scripts/bench_conversation.py [--turns 20] [--budget 8192]
Prints JSON. The questions are spoken by espeak-ng and retrieved end to end over knowledge/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTIONS = [
    "How long should green tea steep?",
    "What temperature is best for black tea?",
    "When did the Solar System form?",
    "Which planet is the largest?",
    "How do I make a good cup of oolong?",
]
POLICIES = {
    "before": {"remember_passages": True, "refill": 1.0},
    "after": {},  # the product's defaults
}


def tiny_rag_config(folder: Path, budget: int):
    import yaml

    from voicechat.cli import main
    from voicechat.config import load_config
    from voicechat.testing.generator import generate

    models = generate(folder / "models", "tiny", seed=0)
    data = yaml.safe_load(Path(models).read_text())
    data["retrieval"] = {"rag": "e2e", "index_dir": str(folder / "index"), "knowledge_dir": str(REPO / "knowledge")}
    data.setdefault("generation", {})["context_budget"] = budget
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        assert main(["--config", str(path), "index", str(REPO / "knowledge")]) == 0
    return load_config(path)


def conversation(config, parts, policy: dict, questions: list) -> list[dict]:
    from voicechat.engine import TurnInput
    from voicechat.glm.prompt import PromptBuilder
    from voicechat.session import ConversationSession

    builder = parts.prompts
    parts = replace(parts, prompts=PromptBuilder(builder.tokenizer, builder.templates, **policy))
    session = ConversationSession(config, lambda event: None, save=False)
    session.ready(parts)
    rows = []
    seen: list[int] = []  # the previous prompt and reply: what the key/value cache holds
    for number, audio in enumerate(questions, 1):
        result = session.run_turn(TurnInput(audio=audio))
        session.turn_over()
        timings = result.finished.timings
        ids = result.prompt.ids
        shared = next((i for i, (a, b) in enumerate(zip(seen, ids)) if a != b), min(len(seen), len(ids)))
        seen = ids + result.heard_ids
        rows.append({"turn": number, "prompt_tokens": timings.prompt_tokens, "computed_tokens": len(ids) - shared,
                     "first_token_ms": round(timings.first_token_ms, 1),
                     "prefill_ms": round(timings.first_token_ms - max(timings.tokenize_ms or 0,
                                                                      timings.retrieve_ms or 0), 1)})
    return rows


def summary(rows: list[dict], turns: range) -> dict:
    picked = [r for r in rows if r["turn"] in turns]
    if not picked:
        return {}
    return {key: round(statistics.median(r[key] for r in picked), 1)
            for key in ("prompt_tokens", "computed_tokens", "first_token_ms", "prefill_ms")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--budget", type=int, default=8192, help="generation.context_budget")
    args = parser.parse_args()
    import torch

    from tests.support.speech import speak
    from voicechat.assemble import load_components

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        config = tiny_rag_config(Path(folder), args.budget)
        spoken = [speak(QUESTIONS[i % len(QUESTIONS)]) for i in range(args.turns)]
        result = {"turns": args.turns, "context_budget": args.budget, "models": "tiny, one torch thread"}
        for name, policy in POLICIES.items():
            parts = load_components(config)  # a cold key/value cache for each policy
            rows = conversation(config, parts, policy, spoken)
            parts.close()
            result[name] = {"turns_2_5": summary(rows, range(2, 6)),
                            "turns_15_20": summary(rows, range(15, 21)),
                            "per_turn": rows}
            early, late = result[name]["turns_2_5"], result[name]["turns_15_20"]
            if early and late:
                result[name]["late_vs_early_first_token"] = round(late["first_token_ms"] / early["first_token_ms"], 2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
