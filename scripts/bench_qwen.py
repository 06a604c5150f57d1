"""Qwen2.5-Omni next to GLM-4-Voice in one run: end of question -> first audio per stage, and each
speech decoder's real-time factor; prints JSON.

    python scripts/bench_qwen.py --size full --variant 3B --dtype bfloat16 --glm decoder   # a CPU
    python scripts/bench_qwen.py --size full --variant 7B --device cuda --glm full          # a GPU
    python scripts/bench_qwen.py --size tiny --glm tiny --turns 2                           # a minute

Qwen2.5-Omni is built from the test-model generator's config of that size with random weights
drawn directly on the device (nothing large is written), and runs through the product's own parts:
the audio encoder on a 3-5 s question, the prompt (system prompt, four passages, the question's
audio rows), the thinker and talker stepped together as the engine streams them (sampling; random
weights never choose to stop early), token2wav fed each code as it comes. The stages run one after
the other in one thread. Per turn: audio encoder, prompt build, first text token (thinker prefill),
first talker code, the codes token2wav needs before its first audio, the first token2wav chunk, and
end of question -> first audio; the thinker's and talker's forward passes are timed apart.
token2wav's real-time factor: a 10 s reply pushed code by code.

GLM-4-Voice in the same run (--glm): "full" or "tiny" runs scripts/bench_gpu.py's turns (speech
tokenizer, 9B LM teacher-forced with the trained interleaving, decoder) and its decoder reply;
"decoder" only its speech decoder (flow + HiFT) at full size, for the real-time factor next to
token2wav's when the 9B LM does not fit beside Qwen; "off" nothing. What cannot run is
{"skipped": reason}; what failed is {"failed": error}; nothing is estimated.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import platform
import sys
import tempfile
import threading
import time
from argparse import Namespace
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RATE = 16000
PASSAGE_WORDS = 90  # four passages: a prompt of ~1,000 tokens with a 3-5 s question
REPLY_CODES = 500  # token2wav's real-time factor: 10 s of audio (50 codes per second)


def bench_gpu_module():
    """scripts/bench_gpu.py, for GLM-4-Voice's turns and decoder reply and its small helpers."""
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "scripts" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_gpu"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


BENCH_GPU = bench_gpu_module()
stat, guarded, skipped, Clock, question = (BENCH_GPU.stat, BENCH_GPU.guarded, BENCH_GPU.skipped, BENCH_GPU.Clock,
                                           BENCH_GPU.question)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--variant", choices=["3B", "7B"], default="7B", help="Qwen2.5-Omni size (full only)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto",
                        help="thinker and talker dtype: auto (the product's: float32 on a CPU, bfloat16 on a GPU), "
                             "float32 or bfloat16; token2wav is float32")
    parser.add_argument("--glm", choices=["full", "tiny", "decoder", "off"], default="decoder",
                        help="GLM-4-Voice in the same run (see above)")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--text-tokens", type=int, default=60, help="thinker tokens per reply at most")
    parser.add_argument("--reply-codes", type=int, default=REPLY_CODES,
                        help="codes of the reply token2wav's real-time factor is measured on (50 per second)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON here, after every part of the run")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"benchmark": "qwen_turn", "environment": environment(args)}

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(report, indent=1), encoding="utf-8")

    if args.glm != "off":  # first: its decoder is small, and a GLM LM must have the memory to itself
        report["glm_4_voice"] = guarded(lambda: glm(args))
        gc.collect()
        save()
    qwen = report["qwen2_5_omni"] = {}
    failed = guarded(lambda: QwenBench(args).run(qwen, save))
    if failed:
        qwen.update(failed)
    print(json.dumps(report, indent=1))
    return 0


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "device": args.device, "size": args.size,
            "variant": args.variant if args.size == "full" else "tiny", "cpu_threads": args.threads,
            "machine": platform.processor() or platform.machine()}


# --- GLM-4-Voice -------------------------------------------------------------------------------------


def glm(args: argparse.Namespace) -> dict[str, Any]:
    size = "full" if args.glm in ("full", "decoder") else "tiny"
    options = Namespace(size=size, device=args.device, turns=args.turns,
                        steps=2 * (BENCH_GPU.TEXT_RUN + BENCH_GPU.SPEECH_RUN),
                        reply_tokens=round(args.reply_codes / 50 * 12.5),  # as long: 12.5 tokens per second
                        max_cache=4096, budget_s=1e9, reference=BENCH_GPU.REFERENCE, threads=args.threads,
                        seed=args.seed, out=None)
    bench = BENCH_GPU.Bench(options)
    result: dict[str, Any] = {"configs": bench.configs()}
    if args.glm == "decoder":
        from voicechat.testing import decoder

        start = time.perf_counter()
        bench.models = BENCH_GPU.Models(None, None, decoder.build("full", bench.device, "float32", args.seed,
                                                                  bench.decoder_config), None)
        result["build_s"] = round(time.perf_counter() - start, 2)
        result["turns"] = skipped("--glm decoder: the 9B LM is not built (it does not fit beside Qwen here)")
    else:
        result["build_s"] = bench.build()
        turns = bench.turns("dynamic", graphs=False, schedule=BENCH_GPU.BASELINE_SCHEDULE, warm_up=False, share=1.0)
        result["turns"] = turns["stages"]
    bench.models.decoder.warm_up()
    result["decoder_reply"] = bench.decoder_reply()
    result["decoder_reply"]["note"] = "flow + HiFT in float32 (the product's default), tokens pushed one at a time"
    del bench
    return result


# --- Qwen2.5-Omni -----------------------------------------------------------------------------------


class ForwardTimer:
    """Wall time of each forward pass of a module (after the device has finished it)."""

    def __init__(self, module: Any, clock: Clock) -> None:
        self.clock = clock
        self.times: list[float] = []
        self._start = 0.0
        module.register_forward_pre_hook(self._before)
        module.register_forward_hook(self._after)

    def _before(self, module: Any, inputs: Any) -> None:
        self._start = self.clock.now()

    def _after(self, module: Any, inputs: Any, output: Any) -> None:
        self.times.append(1000 * (self.clock.now() - self._start))

    def take(self) -> list[float]:
        taken, self.times = self.times, []
        return taken


def speakable_codes_only(model: Any, max_code: int) -> None:
    """Random weights choose any of the talker's 8448 ids; a trained talker only the codes token2wav
    speaks (0-8192) and its end codes. The talker's head is masked to those, for this benchmark only."""
    import torch

    from voicechat.qwen.generation import TALKER_END_CODES

    vocab = model.talker.codec_head.out_features
    banned = torch.ones(vocab, dtype=torch.bool)
    banned[: max_code + 1] = False
    banned[list(TALKER_END_CODES)] = False

    def mask(module: Any, inputs: Any, logits: Any) -> Any:
        return logits.masked_fill(banned.to(logits.device), -float("inf"))

    model.talker.codec_head.register_forward_hook(mask)


class QwenBench:
    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        from voicechat.placement import resolve_device, resolve_dtype

        self.args = args
        self.device = resolve_device(args.device)
        self.dtype = resolve_dtype(args.dtype, self.device, gpu_default="bfloat16")
        self.clock = Clock(self.device, 1e9)
        self.scratch = tempfile.TemporaryDirectory()
        self.torch = torch

    def run(self, result: dict[str, Any], save) -> None:
        """Fills ``result`` part by part, saving after each: a run cut short keeps what it measured."""
        result["build"] = self.build()
        save()
        result["turns"] = self.turns()
        save()
        result["token2wav_first_chunk"] = self.first_chunks()
        save()
        result["token2wav_reply"] = self.token2wav_reply()
        save()

    def build(self) -> dict[str, Any]:
        from voicechat.config import GenerationConfig, QwenConfig
        from voicechat.qwen.voice_model import qwen_parts
        from voicechat.testing import qwen

        a = self.args
        start = self.clock.now()
        model, speakers = qwen.build_in_memory(Path(self.scratch.name), a.size, a.variant, self.device, self.dtype,
                                               a.seed)
        built = self.clock.now() - start
        self.model = model.eval()
        self.parts = qwen_parts(model, speakers, Path(self.scratch.name), QwenConfig(talker_temperature=0.9),
                                GenerationConfig())
        speakable_codes_only(model, self.parts.decoder.max_code)
        self.thinker_timer = ForwardTimer(model.thinker.model, self.clock)
        self.talker_timer = ForwardTimer(model.talker.model, self.clock)
        count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
        return {"build_s": round(built, 2), "thinker_dtype": str(self.dtype).removeprefix("torch."),
                "token2wav_dtype": "float32",
                "parameters_m": {"thinker_text": round(count(model.thinker.model) / 1e6),
                                 "audio_encoder": round(count(model.thinker.audio_tower) / 1e6),
                                 "vision_encoder_unused": round(count(model.thinker.visual) / 1e6),
                                 "talker": round(count(model.talker) / 1e6),
                                 "token2wav": round(count(model.token2wav) / 1e6)},
                "note": "random weights drawn on the device; the parts are the product's (qwen_parts)"}

    # --- turns ------------------------------------------------------------------------------------

    def passages(self) -> list[Any]:
        from voicechat.glm.prompt import Passage
        from voicechat.testing.qwen import CORPUS

        words = CORPUS.split()
        return [Passage(f"notes.md p.{n + 1}", " ".join(words[(n * 37 + i) % len(words)] for i in range(PASSAGE_WORDS)))
                for n in range(BENCH_GPU.PASSAGES)]

    def turns(self) -> dict[str, Any]:
        results = [self.turn(question(n, self.args.turns)) for n in range(self.args.turns)]
        each = lambda key: stat([r[key] for r in results if key in r])  # noqa: E731
        return {
            "turns": len(results),
            "prompt_tokens": stat([r["prompt_tokens"] for r in results], 0),
            "audio_encoder_ms": each("audio_encoder_ms"),
            "prompt_build_ms": each("prompt_build_ms"),
            "first_text_ms": each("first_text_ms"),
            "first_code_ms": each("first_code_ms"),
            "codes_before_first_audio": stat([r["codes_before_first_audio"] for r in results], 0),
            "first_token2wav_chunk_ms": each("first_token2wav_chunk_ms"),
            "first_chunk_audio_ms": each("first_chunk_audio_ms"),
            "end_of_question_to_first_audio_ms": each("end_of_question_to_first_audio_ms"),
            "thinker_prefill_ms": each("thinker_prefill_ms"),
            "thinker_step_ms": stat([s for r in results for s in r["thinker_step_ms"]]),
            "talker_prefill_ms": each("talker_prefill_ms"),
            "talker_step_ms": stat([s for r in results for s in r["talker_step_ms"]]),
            "note": "times from the end of the question: audio encoder, then prompt, then first_text_ms (thinker "
                    "prefill and its first token), first_code_ms (one thinker step, the talker's prefill), then "
                    "thinker and talker steps until token2wav has its first chunk and look-ahead; "
                    "end_of_question_to_first_audio_ms ends when token2wav releases audio",
        }

    def turn(self, audio: Any) -> dict[str, Any]:
        from voicechat.glm.lm import SamplingParams
        from voicechat.glm.prompt import Conversation

        p, clock = self.parts, self.clock
        params = SamplingParams(temperature=0.9, top_p=0.8, max_new_tokens=self.args.text_tokens)
        offset = p.text_tokenizer.special.audio_offset
        self.thinker_timer.take(), self.talker_timer.take()
        figures: dict[str, Any] = {}
        start = clock.now()
        rows = p.speech_tokenizer.tokenize(audio, RATE)
        encoded = clock.now()
        prompt = p.prompts.build(Conversation(), speech_tokens=rows, passages=self.passages(), max_tokens=8192)
        built = clock.now()
        session = p.decoder.session()
        codes, first_audio = 0, None
        cancel = threading.Event()
        for token in p.backend.stream(prompt.ids, params, cancel):
            now = clock.now()
            if token < offset:
                figures.setdefault("first_text_ms", 1000 * (now - built))
                continue
            if not offset <= token < offset + p.text_tokenizer.special.audio_count:
                continue
            figures.setdefault("first_code_ms", 1000 * (now - built))
            codes += 1
            before = clock.now()
            out = session.push([token - offset])
            if len(out):
                first_audio = clock.now()
                figures["first_token2wav_chunk_ms"] = 1000 * (first_audio - before)
                figures["first_chunk_audio_ms"] = 1000 * len(out) / p.decoder.sample_rate
                figures["codes_before_first_audio"] = codes
                cancel.set()
        if first_audio is None:
            raise RuntimeError(f"the reply ended after {codes} codes, before token2wav released audio")
        thinker, talker = self.thinker_timer.take(), self.talker_timer.take()
        figures.update({
            "prompt_tokens": len(prompt.ids), "audio_encoder_ms": 1000 * (encoded - start),
            "prompt_build_ms": 1000 * (built - encoded),
            "end_of_question_to_first_audio_ms": 1000 * (first_audio - start),
            "thinker_prefill_ms": thinker[0], "thinker_step_ms": thinker[1:],
            "talker_prefill_ms": talker[0], "talker_step_ms": talker[1:]})
        return figures

    # --- token2wav ---------------------------------------------------------------------------------

    def token2wav_reply(self) -> dict[str, Any]:
        """A reply's codes (10 s by default) pushed one at a time; each push that releases audio is a chunk."""
        d = self.parts.decoder
        codes = [(37 * n) % 8192 for n in range(self.args.reply_codes)]
        chunks, samples = BENCH_GPU.push_one_at_a_time(d.session(), codes, self.clock)
        audio_s = samples / d.sample_rate
        s = d.settings
        return {"reply_codes": len(codes), "chunks": len(chunks), "audio_s": round(audio_s, 2),
                "rtf": round(sum(chunks) / 1000 / audio_s, 4), "first_chunk_ms": round(chunks[0], 3),
                "chunk_ms": stat(chunks),
                "settings": {"first_chunk_blocks": s.first_chunk_blocks, "chunk_blocks": s.chunk_blocks,
                             "look_back_blocks": s.look_back, "look_ahead_blocks": s.look_ahead,
                             "vocoder_context_frames": s.vocoder_context, "ode_steps": s.num_steps}}

    def first_chunks(self) -> dict[str, Any]:
        """The first chunk with 1 and 2 blocks: codes it waits for, its time, the audio it releases
        (BigVGAN keeps vocoder_context frames back until their right context is final)."""
        from voicechat.qwen.token2wav import Token2Wav

        d = self.parts.decoder
        results = {}
        for blocks in (1, 2):
            decoder = Token2Wav(self.model.token2wav, d.voices, d.voice,
                                replace(d.settings, first_chunk_blocks=blocks), d.seed)
            session = decoder.session()
            needed = (blocks + d.settings.look_ahead) * d.block_codes
            session.push([(37 * n) % 8192 for n in range(needed - 1)])
            start = self.clock.now()
            out = session.push([0])
            results[f"{blocks}_block"] = {"codes_waited_for": needed, "ms": round(1000 * (self.clock.now() - start), 3),
                                          "audio_ms": round(1000 * len(out) / d.sample_rate, 1)}
        return results


if __name__ == "__main__":
    sys.exit(main())
