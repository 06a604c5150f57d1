"""Whole-turn latency with the full-size models on a GPU: end of question -> first reply audio.

    python scripts/bench_gpu.py --size full --device cuda            # the GPU run (about 5 minutes)
    python scripts/bench_gpu.py --size tiny --device cpu --turns 2   # the same JSON in a minute

The speech tokenizer, the 9B language model and the decoder are built from their published configs
with random weights drawn directly on the device: the same architectures and the same compute as
the real weights, and nothing large is written to disk. Each turn is a 3-5 s spoken question:
speech tokens; a ~1,000-token prompt (system prompt, four passages, the speech tokens); the LM's
prefill and decoding, teacher-forced with the trained interleaving (13 text then 26 speech tokens),
so that every step costs what a real one does (the sampler still runs on every step's logits); the
decoder on the speech tokens as they come, chunk by chunk (flow, then HiFT). The stages run one
after the other in one thread.

Prints one JSON object: per stage p50/p90 over the turns; the decoder's real-time factor over a
600-token reply; and each speed-up measured in the same run against what it replaces: fp32 against
bf16 (with their differences on the same weights), the dynamic against a static KV cache with the
decode step as a CUDA graph or compiled, the flow estimator with and without CUDA graphs, first
chunk sizes, warm-up at load, 4-bit weights. What cannot run is {"skipped": reason}; what failed is
{"failed": error}; nothing is estimated.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
# the published configs, beside the checkout or inside it (absent: the generator's copies of them)
REFERENCE = next((folder for folder in (REPO.parent / "shared" / "reference", REPO / "shared" / "reference")
                  if folder.is_dir()), REPO.parent / "shared" / "reference")
RATE = 16000
TEXT_RUN, SPEECH_RUN = 13, 26  # the trained interleaving
PASSAGES = 4
PROMPT_TOKENS = 1000



def push_one_at_a_time(session, units: list[int], clock) -> tuple[list[float], int]:
    """A decoder session fed one unit at a time (finished after the last): the milliseconds of
    each push that released audio, and the samples released in all."""
    chunks, samples = [], 0
    for n, unit in enumerate(units):
        start = clock.now()
        out = session.push([unit])
        if n == len(units) - 1:
            out = [*out, *session.finish()]
        spent = clock.now() - start
        if len(out):
            chunks.append(1000 * spent)
            samples += len(out)
    return chunks, samples

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--turns", type=int, default=20, help="turns per configuration")
    parser.add_argument("--steps", type=int, default=2 * (TEXT_RUN + SPEECH_RUN), help="LM steps per turn")
    parser.add_argument("--reply-tokens", type=int, default=600, help="speech tokens of the decoder-only reply")
    parser.add_argument("--max-cache", type=int, default=4096, help="static KV cache length in tokens")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="wall-clock budget: fewer turns, and later variants skipped, to stay within it")
    parser.add_argument("--reference", type=Path, default=REFERENCE,
                        help="folder with the published configs (default: shared/reference beside or "
                             "inside the checkout, if present)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the JSON here, after every part of the run")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    report = Bench(args).run()
    print(json.dumps(report, indent=1))
    return 0


# --- small helpers --------------------------------------------------------------------------------


def stat(values: list[float], digits: int = 3) -> dict[str, Any]:
    """p50/p90 of measured values (milliseconds unless the key says otherwise)."""
    if not values:
        return {"skipped": "nothing was measured"}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"p50": round(statistics.median(ordered), digits), "p90": round(p90, digits), "n": len(ordered)}


def skipped(reason: str) -> dict[str, str]:
    return {"skipped": reason}


def importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def differences(reference: Any, other: Any) -> dict[str, float]:
    """How far ``other`` is from ``reference`` (same shape): max and mean absolute difference, and
    the max relative to the reference's largest magnitude."""
    import torch

    a, b = torch.as_tensor(reference).float().cpu(), torch.as_tensor(other).float().cpu()
    diff = (a - b).abs()
    scale = float(a.abs().max()) or 1.0
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()), "max_rel": float(diff.max()) / scale}


def snr_db(reference: Any, other: Any) -> float | str:
    """Signal to difference ratio in dB; "identical" when there is no difference."""
    import numpy as np

    a, b = np.asarray(reference, dtype=np.float64), np.asarray(other, dtype=np.float64)
    noise = float(((a - b) ** 2).sum())
    return round(10 * math.log10(float((a**2).sum()) / noise), 2) if noise > 0 else "identical"


class Clock:
    def __init__(self, device: Any, budget_s: float):
        self.device = device
        self.budget_s = budget_s
        self.start = time.perf_counter()

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        """Seconds, after the device has finished what was queued."""
        self.sync()
        return time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def left(self) -> float:
        return self.budget_s - self.elapsed


def guarded(function: Callable[[], Any]) -> Any:
    """One variant failing must not lose the others: its error becomes its figure."""
    try:
        return function()
    except Exception as error:  # noqa: BLE001 - reported in the JSON
        return {"failed": f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"}


# --- the language model's decoding, two ways --------------------------------------------------------


class DynamicDecoder:
    """The local backend's calls today: a DynamicCache that grows, logits for every prompt position."""

    mode = "dynamic"

    def __init__(self, model: Any):
        self.model = model
        self.device = model.lm_head.weight.device
        self.reset()

    def reset(self) -> None:
        from transformers import DynamicCache

        self.cache = DynamicCache()

    def prepare(self) -> None:
        self.reset()
        self.prefill([0, 0])
        self.step(0)
        self.reset()

    def prefill(self, ids: list[int]) -> Any:
        return self._forward(ids)

    def step(self, token: int) -> Any:
        return self._forward([token])

    def _forward(self, ids: list[int]) -> Any:
        import torch

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self.device), past_key_values=self.cache,
                             use_cache=True)
        return out.logits[0, -1].float()


def lm_decoder(model: Any, mode: str, max_cache: int) -> Any:
    from voicechat.glm.lm.static_decode import StaticDecoder

    return DynamicDecoder(model) if mode == "dynamic" else StaticDecoder(model, max_cache, mode)


# --- prompts and scripted replies -----------------------------------------------------------------


@dataclass
class Layout:
    """The ids the benchmark feeds the LM."""

    audio_offset: int
    text_ids: list[int]
    gmask: int
    sop: int
    system: int
    user: int
    assistant: int
    begin_of_audio: int
    end_of_audio: int


def generator_layout(size: str) -> Layout:
    """The token layout of the test-model generator's tokenizer files at this size."""
    from voicechat.testing import lm

    ranks = lm.SHAPES[size].ranks
    ids = {name: i for i, name in lm._added_tokens(ranks).items()}
    return Layout(ids["<|audio_0|>"], list(range(300, min(ranks, 900))), ids["[gMASK]"], ids["<sop>"],
                  ids["<|system|>"], ids["<|user|>"], ids["<|assistant|>"], ids["<|begin_of_audio|>"],
                  ids["<|end_of_audio|>"])


def reply_script(layout: Layout, steps: int) -> list[int]:
    """Token ids the LM is fed: 13 text tokens, then 26 speech tokens, repeated."""
    script: list[int] = []
    while len(script) < steps:
        n = len(script)
        script += [layout.text_ids[(n + i) % len(layout.text_ids)] for i in range(TEXT_RUN)]
        script += [layout.audio_offset + (37 * (n + i)) % 16384 for i in range(SPEECH_RUN)]
    return script[:steps]


class Prompts:
    """The product's prompt builder with the test-model generator's text tokenizer (the 1,024-rank
    vocabulary: writing the full 151k one takes half a minute, and the ids' values change no cost),
    four passages sized for a ~1,000-token prompt. Without tiktoken (the text tokenizer needs it) the
    ids are laid out as the builder lays them out, with the same length, and no build time is given."""

    def __init__(self, size: str, scratch: Path, seed: int):
        self.builder = None
        self.passages: list[Any] = []
        if not importable("tiktoken"):
            self.reason = ("tiktoken is not importable: the prompt's ids were laid out directly, as the builder "
                           "lays them out (~1,000 tokens)")
            self.layout = generator_layout(size)
            return
        from voicechat.glm.prompt import PromptBuilder
        from voicechat.glm.text_tokenizer import GlmTextTokenizer
        from voicechat.testing import lm

        self.reason = ""
        lm.write_tokenizer(scratch / "text-tokenizer", "tiny", seed)
        tokenizer = GlmTextTokenizer.from_pretrained(scratch / "text-tokenizer")
        self.builder = PromptBuilder(tokenizer)
        special = tokenizer.special
        self.layout = Layout(special.audio_offset, list(range(300, 900)), special.gmask, special.sop,
                             special.system, special.user, special.assistant, special.begin_of_audio,
                             special.end_of_audio)
        self.passages = self._passages_for(PROMPT_TOKENS - 50)

    def build(self, speech_tokens: list[int]) -> list[int]:
        from voicechat.glm.prompt import Conversation

        if self.builder is None:
            return self._laid_out(speech_tokens)
        return self.builder.build(Conversation(), speech_tokens=speech_tokens, passages=self.passages).ids

    def _passages_for(self, target: int) -> list[Any]:
        """Four passages of about equal length, long enough for a prompt of about ``target`` tokens
        with a 4 s question."""
        from voicechat.glm.prompt import Conversation, Passage
        from voicechat.testing.lm import CORPUS

        sentences = [line.strip() for line in CORPUS.strip().splitlines() if line.strip()]
        passages = [Passage(f"notes.md p.{n + 1}", "") for n in range(PASSAGES)]
        n = 0
        while len(self.builder.build(Conversation(), speech_tokens=[0] * 50, passages=passages).ids) < target:
            k = n % PASSAGES
            passages[k] = Passage(passages[k].source, (passages[k].text + " " + sentences[n % len(sentences)]).strip())
            n += 1
        return passages

    def _laid_out(self, speech_tokens: list[int]) -> list[int]:
        L = self.layout
        body = PROMPT_TOKENS - 50 - 8
        text = [L.text_ids[i % len(L.text_ids)] for i in range(body)]
        return ([L.gmask, L.sop, L.system] + text[: body // 10] + [L.user] + text[body // 10:]
                + [L.begin_of_audio] + [L.audio_offset + t for t in speech_tokens] + [L.end_of_audio, L.assistant])


def question(turn: int, turns: int) -> Any:
    """A 3-5 s voiced test signal, a different length each turn."""
    from voicechat.testing.speech_tokenizer import synthetic_speech

    return synthetic_speech(3.0 + 2.0 * (turn % max(turns, 1)) / max(turns - 1, 1), RATE)


# --- the benchmark ----------------------------------------------------------------------------------

BASELINE_SCHEDULE = (10, 25, 50, 100)  # the product's default chunk schedule


@dataclass
class Models:
    tokenizer: Any
    lm: Any  # LoadedLM
    decoder: Any
    prompts: Prompts


class Bench:
    def __init__(self, args: argparse.Namespace):
        import torch

        from voicechat.placement import resolve_device

        self.args = args
        self.device = resolve_device(args.device)
        self.cuda = self.device.type == "cuda"
        self.clock = Clock(self.device, args.budget_s)
        self.scratch = tempfile.TemporaryDirectory()
        self.lm_dtype = torch.bfloat16 if self.cuda else torch.float32  # the product's "auto"
        self.decoder_config: Path | None = None
        self.tokenizer_config: dict | None = None
        self.report: dict[str, Any] = {}
        self.step_logits: dict[str, list[Any]] = {}  # by step mode, for comparing the others with them

    # --- whole run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Every part in turn; the report is saved after each (--out) so that a run cut short by a
        time limit still leaves what it measured."""
        r = self.report
        r.update(benchmark="gpu_turn", environment=self.environment(), configs=self.configs())
        r["build_s"] = self.build()  # nothing else can run without the models
        r["prompt"] = self.prompt_facts()
        self.save()
        baseline = self.turns("dynamic", graphs=False, schedule=BASELINE_SCHEDULE, warm_up=False, share=0.2)
        r["stages"] = {"configuration": "baseline: what the product does today (dynamic KV cache, "
                                        "estimator without CUDA graphs, no warm-up)", **baseline["stages"]}
        variants = r["variants"] = {"warm_up": {"baseline": baseline["warm_up"]}}
        variants["lm_decode_step"] = self.step_modes(("dynamic", "eager", "cuda-graph"))
        self.save()
        flow = variants["flow_cuda_graphs"] = guarded(self.flow_graphs)
        r["decoder_rtf"] = flow.get("eager", flow)
        self.save()
        mode = best_step_mode(variants["lm_decode_step"])
        graphs = self.cuda and "rtf" in flow.get("cuda_graphs", {})
        fast = guarded(lambda: self.turns(mode, graphs=graphs, schedule=BASELINE_SCHEDULE, warm_up=True,
                                          share=0.15))
        r["stages_fast"] = {"configuration": f"LM step mode {mode!r} (the fastest whose logits match the "
                                             f"dynamic cache's), flow CUDA graphs {graphs}, warm-ups at load",
                            **fast.get("stages", fast)}
        variants["warm_up"]["fast"] = fast.get("warm_up", fast)
        if "failed" in fast:
            mode, graphs = "dynamic", False  # the first-chunk comparison then runs on the baseline paths
        self.save()
        variants["first_chunk"] = self.first_chunk_sizes(mode, graphs)
        self.save()
        variants["precision"] = {"note": "bfloat16 against float32 on the same random weights"}
        for part, measure in (("lm", self.lm_precision), ("decoder", self.decoder_precision),
                              ("speech_tokenizer", self.tokenizer_precision)):
            variants["precision"][part] = guarded(measure)
            self.save()
        variants["sonar"] = guarded(self.sonar_proxy)
        variants["nf4"] = guarded(self.nf4)
        self.save()
        variants["lm_decode_step"].update(self.step_modes(("compile",)))  # last: compiling takes minutes
        r.pop("elapsed_s", None)
        r["elapsed_s"] = round(self.clock.elapsed, 1)
        self.save()
        return r

    def save(self) -> None:
        if self.args.out:
            self.report["elapsed_s"] = round(self.clock.elapsed, 1)
            part = self.args.out.with_name(self.args.out.name + ".part")
            part.write_text(json.dumps(self.report, indent=1), encoding="utf-8")
            part.replace(self.args.out)

    def environment(self) -> dict[str, Any]:
        import torch
        import transformers

        env = {"python": platform.python_version(), "torch": torch.__version__,
               "transformers": transformers.__version__, "device": str(self.device), "size": self.args.size,
               "cpu_threads": torch.get_num_threads(), "budget_s": self.args.budget_s,
               "tiktoken": importable("tiktoken"), "bitsandbytes": importable("bitsandbytes"),
               "fairseq2": importable("fairseq2")}
        env["gpu" if self.cuda else "cpu"] = (torch.cuda.get_device_name(self.device) if self.cuda
                                              else platform.processor() or platform.machine())
        return env

    def configs(self) -> dict[str, str]:
        """At full size, the published configs from the reference folder when it is here, else the
        generator's copies of them (the tests check that the two agree)."""
        from voicechat.testing import lm

        folder = self.args.reference
        if self.args.size != "full":
            return {"source": "the test-model generator's tiny configs"}
        if not folder.is_dir():
            return {"source": f"the test-model generator's copies of the published configs ({folder} is absent)"}
        self.decoder_config = folder / "glm-4-voice-decoder" / "config.yaml"
        self.tokenizer_config = json.loads((folder / "glm-4-voice-tokenizer" / "config.reconstructed.json").read_text())
        partial = json.loads((folder / "glm-4-voice-9b" / "config.partial.json").read_text())
        ours = lm.chatglm_config(lm.SHAPES["full"])
        differing = sorted(key for key, value in partial.items() if ours.get(key) != value)
        if differing:
            raise SystemExit(f"the generator's LM config differs from config.partial.json in {differing}")
        return {"source": str(folder), "lm": "the generator's config.json, equal to config.partial.json in "
                                             "every field that file knows"}

    def build(self) -> dict[str, Any]:
        from voicechat.testing import decoder, lm, speech_tokenizer

        a, times = self.args, {}

        def timed(name: str, make: Callable[[], Any]) -> Any:
            start = self.clock.now()
            made = make()
            times[name] = round(self.clock.now() - start, 2)
            return made

        tokenizer = timed("speech_tokenizer", lambda: speech_tokenizer.build(
            a.size, self.device, "float32", a.seed, self.tokenizer_config))
        loaded = timed("lm", lambda: lm.build(a.size, self.device, self.lm_dtype, seed=a.seed))
        speech_decoder = timed("decoder", lambda: decoder.build(a.size, self.device, "float32", a.seed,
                                                               self.decoder_config))
        prompts = timed("text_tokenizer", lambda: Prompts(a.size, Path(self.scratch.name), a.seed))
        self.models = Models(tokenizer, loaded, speech_decoder, prompts)
        self.layout = prompts.layout
        times["note"] = (f"random weights drawn on the device; LM {str(self.lm_dtype).removeprefix('torch.')}, "
                         "speech tokenizer and decoder float32 (the product's defaults)")
        return times

    def prompt_facts(self) -> dict[str, Any]:
        m = self.models
        speech = m.tokenizer.tokenize(question(0, 1), RATE)
        facts = {"tokens": len(m.prompts.build(speech)), "speech_tokens_of_a_3s_question": len(speech),
                 "passages": PASSAGES, "lm_parameters": sum(p.numel() for p in m.lm.model.parameters()),
                 "lm_dtype": str(self.lm_dtype).removeprefix("torch.")}
        if m.prompts.reason:
            facts["note"] = m.prompts.reason
        return facts

    # --- turns ------------------------------------------------------------------------------------

    def turns(self, mode: str, graphs: bool, schedule: tuple[int, ...], warm_up: bool, share: float,
              steps: int | None = None, turns: int | None = None) -> dict[str, Any]:
        """Turns in one configuration, stopping early (after at least three) once ``share`` of the
        budget is spent. Without warm-up the first turn is the models' first use in this process;
        with it, the product's warm-ups run first, timed."""
        from voicechat.config import DecoderConfig

        m = self.models
        m.decoder.use_cuda_graphs(graphs)
        lm = lm_decoder(m.lm.model, mode, self.args.max_cache)
        warm: dict[str, Any] = {}
        if warm_up:
            start = self.clock.now()
            m.tokenizer.warm_up()
            lm.prepare()
            m.decoder.warm_up(DecoderConfig(chunk_schedule=schedule))
            warm["warm_up_at_load_s"] = round(self.clock.now() - start, 3)
        turns = turns or self.args.turns
        deadline = self.clock.elapsed + share * self.args.budget_s
        results = []
        for turn in range(turns):
            if turn >= 3 and self.clock.elapsed > deadline:
                break
            results.append(self.turn(lm, schedule, question(turn, turns), steps or self.args.steps))
        first, rest = results[0], [r["end_of_question_to_first_audio_ms"] for r in results[1:]]
        warm.update({"turn_1_ms": round(first["end_of_question_to_first_audio_ms"], 3),
                     "median_other_turns_ms": round(statistics.median(rest), 3) if rest else None,
                     "what": "end of question -> first audio; turn 1 " + (
                         "after the warm-ups at load" if warm_up else "is the models' first use")})
        return {"stages": self.stages(results, schedule), "warm_up": warm}

    def turn(self, lm: Any, schedule: tuple[int, ...], audio: Any, steps: int) -> dict[str, Any]:
        """One turn, the stages one after the other; the LM is fed the script, the decoder its
        speech tokens as they come."""
        import torch

        from voicechat.config import DecoderConfig
        from voicechat.glm.lm import SamplingParams
        from voicechat.glm.lm.local import sample

        m, clock, layout = self.models, self.clock, self.layout
        params = SamplingParams(temperature=0.2, top_p=0.8)
        generator = torch.Generator(device=self.device).manual_seed(0)
        lm.reset()
        figures: dict[str, Any] = {"step_ms": []}
        first_audio = None
        spoken = 0
        start = clock.now()
        speech_tokens = m.tokenizer.tokenize(audio, RATE)
        tokenized = clock.now()
        prompt = m.prompts.build(speech_tokens)
        built = clock.now()
        logits = lm.prefill(prompt)
        prefilled = clock.now()
        with m.decoder.session(DecoderConfig(chunk_schedule=schedule)) as session:
            for token in reply_script(layout, max(steps, TEXT_RUN + SPEECH_RUN)):
                sample(logits, params, generator)  # its cost counts; the script decides the token
                if token >= layout.audio_offset:
                    spoken += 1
                    if spoken == 10:
                        figures["first_10_speech_tokens_ms"] = 1000 * (clock.now() - built)
                    before = clock.now()
                    out = session.push([token - layout.audio_offset])
                    if len(out) and first_audio is None:
                        first_audio = clock.now()
                        figures["first_decoder_chunk_ms"] = 1000 * (first_audio - before)
                        figures["first_chunk_audio_ms"] = 1000 * len(out) / m.decoder.sample_rate
                if first_audio is not None and spoken >= 10 and len(figures["step_ms"]) >= steps:
                    break
                step_start = clock.now()
                logits = lm.step(token)
                figures["step_ms"].append(1000 * (clock.now() - step_start))
        if first_audio is None:
            raise RuntimeError("the scripted reply ended before the decoder released audio")
        figures.update({"speech_tokenizer_ms": 1000 * (tokenized - start), "prompt_build_ms": 1000 * (built - tokenized),
                        "prefill_ms": 1000 * (prefilled - built),
                        "end_of_question_to_first_audio_ms": 1000 * (first_audio - start)})
        return figures

    def stages(self, results: list[dict[str, Any]], schedule: tuple[int, ...]) -> dict[str, Any]:
        def each(key: str) -> dict[str, Any]:
            return stat([r[key] for r in results if key in r])

        return {
            "turns": len(results),
            "first_chunk_tokens": schedule[0],
            "speech_tokenizer_ms": each("speech_tokenizer_ms"),
            "prompt_build_ms": skipped(self.models.prompts.reason) if self.models.prompts.reason
            else each("prompt_build_ms"),
            "prefill_ms": each("prefill_ms"),
            "decode_step_ms": stat([s for r in results for s in r["step_ms"]]),
            "first_10_speech_tokens_ms": each("first_10_speech_tokens_ms"),
            "first_decoder_chunk_ms": each("first_decoder_chunk_ms"),
            "first_chunk_audio_ms": each("first_chunk_audio_ms"),
            "end_of_question_to_first_audio_ms": each("end_of_question_to_first_audio_ms"),
            "note": "first_10_speech_tokens_ms runs from the end of the prompt build to the 10th speech "
                    "token (prefill, 13 text and 9 speech steps); end_of_question_to_first_audio_ms is "
                    "tokenizer + prompt + prefill + steps + first decoder chunk; first_chunk_audio_ms is "
                    "the audio that chunk releases",
        }

    def first_chunk_sizes(self, mode: str, graphs: bool) -> dict[str, Any]:
        """End of question to first audio with a first chunk of 10 and of 5 speech tokens."""
        results: dict[str, Any] = {}
        for first in (10, 5):
            if self.clock.left < 20:
                results[f"{first}_tokens"] = skipped("time budget spent")
                continue
            schedule = (first, *BASELINE_SCHEDULE[1:])
            figures = guarded(lambda: self.turns(mode, graphs, schedule, warm_up=True, share=0.03, steps=1,
                                                 turns=min(self.args.turns, 8))["stages"])
            results[f"{first}_tokens"] = figures if "failed" in figures else {
                key: figures[key] for key in ("turns", "first_decoder_chunk_ms", "first_chunk_audio_ms",
                                              "end_of_question_to_first_audio_ms")}
        results["note"] = f"LM step mode {mode!r}, flow CUDA graphs {graphs}, warmed up for the schedule"
        return results

    # --- the language model's decode step -----------------------------------------------------------

    def step_modes(self, modes: tuple[str, ...]) -> dict[str, Any]:
        """The same prompt and teacher-forced steps in each step mode; logits compared with those of
        the dynamic cache."""
        m = self.models
        prompt = m.prompts.build(m.tokenizer.tokenize(question(0, 1), RATE))
        script = reply_script(self.layout, self.args.steps)
        results: dict[str, Any] = {}
        for mode in modes:
            if mode != "dynamic" and mode != "eager" and not self.cuda:
                results[mode] = skipped("cuda only")
            elif mode == "compile" and self.clock.left < 150:
                results[mode] = skipped(f"time budget: {max(self.clock.left, 0):.0f} s left of "
                                        f"{self.args.budget_s:.0f} s, and compiling takes minutes")
            else:
                results[mode] = guarded(lambda: self.step_mode(mode, prompt, script))
        if "dynamic" in modes:
            results["note"] = (f"dynamic: as the local backend today; the others use a static cache of "
                               f"{self.args.max_cache} tokens and compute only the last position's logits "
                               "in the prefill; logits_vs_* compare the prefill's and every step's logits "
                               "(cuda-graph and compile replay the eager static step: expect ~0 against it)")
        return results

    def step_mode(self, mode: str, prompt: list[int], script: list[int]) -> dict[str, Any]:
        lm = lm_decoder(self.models.lm.model, mode, self.args.max_cache)
        start = self.clock.now()
        lm.prepare()
        setup_s = self.clock.now() - start
        prefill, steps = [], []
        for repeat in range(2):  # the second run is the one timed; both give the same logits
            lm.reset()
            steps = []
            start = self.clock.now()
            logits = [lm.prefill(prompt)]
            prefill.append(1000 * (self.clock.now() - start))
            for token in script:
                start = self.clock.now()
                logits.append(lm.step(token))
                steps.append(1000 * (self.clock.now() - start))
        result: dict[str, Any] = {"setup_s": round(setup_s, 3), "prefill_ms": stat(prefill[1:]),
                                  "decode_step_ms": stat(steps)}
        ours = [row.cpu() for row in logits]
        for name, reference in self.step_logits.items():
            result[f"logits_vs_{name}"] = _compare(reference, ours)
        if mode in ("dynamic", "eager"):
            self.step_logits[mode] = ours
        return result

    # --- the decoder ----------------------------------------------------------------------------------

    def flow_graphs(self) -> dict[str, Any]:
        """A long reply decoded chunk by chunk, with and without CUDA graphs for the estimator."""
        d = self.models.decoder
        d.use_cuda_graphs(False)
        d.warm_up()
        results: dict[str, Any] = {"eager": self.decoder_reply()}
        if not self.cuda:
            results["cuda_graphs"] = skipped("cuda only")
            return results
        start = self.clock.now()
        d.use_cuda_graphs(True)
        d.warm_up()
        capture_s = self.clock.now() - start
        results["cuda_graphs"] = {**self.decoder_reply(), "warm_up_with_capture_s": round(capture_s, 3),
                                  "graphs": d.flow.decoder.graphs.shapes,
                                  "audio_vs_eager": self._graphs_against_eager()}
        d.use_cuda_graphs(False)
        return results

    def decoder_reply(self) -> dict[str, Any]:
        """Push a reply's speech tokens one at a time; each push that releases audio is a chunk."""
        d = self.models.decoder
        tokens = [(37 * n) % d.files.flow.vocab_size for n in range(self.args.reply_tokens)]
        with d.session() as session:
            chunks, samples = push_one_at_a_time(session, tokens, self.clock)
        audio_s = samples / d.sample_rate
        return {"reply_tokens": len(tokens), "chunks": len(chunks), "audio_s": round(audio_s, 2),
                "rtf": round(sum(chunks) / 1000 / audio_s, 4), "first_chunk_ms": round(chunks[0], 3),
                "last_chunk_ms": round(chunks[-1], 3), "chunk_ms": stat(chunks)}

    def _graphs_against_eager(self) -> dict[str, Any]:
        """The audio of a reply's first two chunks (shapes the warm-up captured), graphed against eager."""
        d = self.models.decoder
        tokens = [(37 * n) % d.files.flow.vocab_size for n in range(sum(BASELINE_SCHEDULE[:2]))]
        graphs, audio = d.flow.decoder.graphs, []
        for estimator in (None, graphs):
            d.flow.decoder.graphs = estimator
            with d.session() as session:
                audio.append(session.push(tokens))
        d.flow.decoder.graphs = graphs
        return {**differences(audio[0], audio[1]), "snr_db": snr_db(audio[0], audio[1])}

    # --- precision ----------------------------------------------------------------------------------

    def lm_precision(self) -> dict[str, Any]:
        import torch

        from voicechat.testing import lm

        m = self.models
        prompt = m.prompts.build(m.tokenizer.tokenize(question(0, 1), RATE))
        script = reply_script(self.layout, 24)
        logits, timing = {}, {}
        for dtype in (torch.float32, torch.bfloat16):
            if dtype == self.lm_dtype:
                model = m.lm.model
            elif self.clock.left < 30:
                return skipped("time budget spent")
            else:
                model = lm.build(self.args.size, self.device, dtype, seed=self.args.seed).model
            logits[dtype], timing[_name(dtype)] = self._lm_logits(model, prompt, script)
            if model is not m.lm.model:
                del model
                _free()
        agree = (logits[torch.float32].argmax(-1) == logits[torch.bfloat16].argmax(-1)).float().mean()
        return {**differences(logits[torch.float32], logits[torch.bfloat16]), "argmax_agreement": float(agree),
                "positions": int(logits[torch.float32].shape[0]), **timing}

    def _lm_logits(self, model: Any, prompt: list[int], script: list[int]) -> tuple[Any, dict[str, Any]]:
        """Logits of the script's positions in one forward pass, and the dynamic step's time."""
        import torch

        ids = torch.tensor([prompt + script], device=self.device)
        with torch.inference_mode():
            start = self.clock.now()
            logits = model(input_ids=ids, logits_to_keep=len(script)).logits[0].float().cpu()
            forward_ms = 1000 * (self.clock.now() - start)
        lm = DynamicDecoder(model)
        lm.prepare()
        lm.prefill(prompt)
        steps = []
        for token in script:
            start = self.clock.now()
            lm.step(token)
            steps.append(1000 * (self.clock.now() - start))
        return logits, {"prompt_forward_ms": round(forward_ms, 3), "decode_step_ms": stat(steps[2:])}

    def decoder_precision(self) -> dict[str, Any]:
        import torch

        from voicechat.config import DecoderConfig
        from voicechat.testing import decoder

        tokens = [(37 * n) % 16384 for n in range(60)]
        out, timing = {}, {}
        for dtype in (torch.float32, torch.bfloat16):
            d = self.models.decoder if dtype == torch.float32 else \
                decoder.build(self.args.size, self.device, dtype, self.args.seed, self.decoder_config)
            d.use_cuda_graphs(False)
            out[dtype] = (d.decode_mel(tokens, d.noise(42)), d.decode(tokens, seed=42))
            chunks = []
            for _ in range(4):
                with d.session(DecoderConfig()) as session:
                    start = self.clock.now()
                    session.push(tokens[:10])
                    chunks.append(1000 * (self.clock.now() - start))
            timing[_name(dtype)] = {"first_chunk_ms": stat(chunks[1:])}
        (mel32, audio32), (mel16, audio16) = out[torch.float32], out[torch.bfloat16]
        return {"mel": differences(mel32, mel16),
                "audio": {**differences(audio32, audio16), "snr_db": snr_db(audio32, audio16)},
                "reply_tokens": len(tokens), **timing}

    def tokenizer_precision(self) -> dict[str, Any]:
        import torch

        from voicechat.testing import speech_tokenizer

        audios = [question(n, 3) for n in range(3)]
        tokens, timing = {}, {}
        for dtype in (torch.float32, torch.bfloat16):
            t = self.models.tokenizer if dtype == torch.float32 else \
                speech_tokenizer.build(self.args.size, self.device, dtype, self.args.seed, self.tokenizer_config)
            times, tokens[dtype] = [], []
            for audio in audios * 2:
                start = self.clock.now()
                tokens[dtype].append(t.tokenize(audio, RATE))
                times.append(1000 * (self.clock.now() - start))
            timing[_name(dtype)] = {"tokenize_ms": stat(times[len(audios):])}
        pairs = [(a, b) for x, y in zip(tokens[torch.float32], tokens[torch.bfloat16]) for a, b in zip(x, y)]
        return {"token_agreement": round(sum(a == b for a, b in pairs) / len(pairs), 4), "tokens": len(pairs),
                **timing}

    # --- retrieval's speech encoder -----------------------------------------------------------------

    def sonar_proxy(self) -> dict[str, Any]:
        """SONAR's speech encoder needs fairseq2. Its shape of compute, a w2v-BERT 2.0 conformer and a
        small transformer decoder that pools the frames into one vector, is timed with transformers'
        Wav2Vec2BertModel at the same sizes: the forward pass only, on fbank features of the
        question's length (100 frames/s stacked in pairs, as SONAR's front end feeds it)."""
        import torch
        from torch import nn
        from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

        dim, layers, heads, ffn = (1024, 24, 16, 4096) if self.args.size == "full" else (64, 2, 4, 128)
        config = Wav2Vec2BertConfig(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
                                    intermediate_size=ffn, feature_projection_input_dim=160,
                                    conv_depthwise_kernel_size=31, add_adapter=False)
        with torch.device(self.device):
            encoder = Wav2Vec2BertModel(config).eval()
            pooler = nn.TransformerDecoder(nn.TransformerDecoderLayer(dim, heads, ffn, batch_first=True,
                                                                      norm_first=True), 3).eval()
            query = torch.randn(1, 1, dim)
        times = []
        for turn in range(6):
            seconds = 3.0 + 2.0 * (turn % 3) / 2
            features = torch.randn(1, int(seconds * 50), 160, device=self.device)
            start = self.clock.now()
            with torch.inference_mode():
                pooler(query, encoder(input_features=features).last_hidden_state)
            times.append(1000 * (self.clock.now() - start))
        parameters = sum(p.numel() for p in [*encoder.parameters(), *pooler.parameters()])
        del encoder, pooler
        _free()
        return {"forward_ms": stat(times[1:]), "parameters": parameters, "dtype": "float32",
                "what": "a proxy: transformers' Wav2Vec2BertModel (w2v-BERT 2.0, 24 conformer layers of 1024 "
                        "at full size) and a 3-layer transformer decoder pooling to one vector; SONAR's English "
                        "speech encoder has 658M parameters. It runs beside the speech tokenizer (retrieval "
                        "must finish before the prompt is built), so it is not in end_of_question_to_first_audio_ms"}

    # --- 4-bit ----------------------------------------------------------------------------------------

    def nf4(self) -> dict[str, Any]:
        if not self.cuda:
            return skipped("cuda only (bitsandbytes NF4)")
        if not importable("bitsandbytes"):
            return skipped("bitsandbytes is not importable")
        if self.clock.left < 40:
            return skipped("time budget spent")
        import torch

        from voicechat.testing import lm

        _free()
        before = torch.cuda.memory_allocated(self.device)
        start = self.clock.now()
        loaded = lm.build(self.args.size, self.device, self.lm_dtype, quantization="4bit", seed=self.args.seed)
        load_s = self.clock.now() - start
        weights = torch.cuda.memory_allocated(self.device) - before
        m = self.models
        prompt = m.prompts.build(m.tokenizer.tokenize(question(0, 1), RATE))
        script = reply_script(self.layout, 24)
        logits, timing = self._lm_logits(loaded.model, prompt, script)
        reference, _ = self._lm_logits(m.lm.model, prompt, script)
        agree = (reference.argmax(-1) == logits.argmax(-1)).float().mean()
        del loaded
        _free()
        return {"load_s": round(load_s, 2), "weights_gb": round(weights / 1e9, 2), **timing,
                "logits_vs_bf16": {**differences(reference, logits), "argmax_agreement": float(agree)},
                "note": "load: random bf16 tensors drawn on the GPU, quantized one by one by the loader"}


def best_step_mode(results: dict[str, Any], tolerance: float = 0.05) -> str:
    """The fastest measured step mode whose logits stay within ``tolerance`` (relative to the
    largest logit) of the dynamic cache's: the static cache's masked attention and a graph's replay
    may round differently, they must not compute something else."""
    timed = {mode: r["decode_step_ms"]["p50"] for mode, r in results.items()
             if isinstance(r, dict) and "p50" in r.get("decode_step_ms", {})
             and r.get("logits_vs_dynamic", {}).get("max_rel", 0.0) <= tolerance}
    return min(timed, key=timed.get) if timed else "dynamic"


def _compare(reference: list[Any], ours: list[Any]) -> dict[str, float]:
    agree = sum(int(a.argmax()) == int(b.argmax()) for a, b in zip(reference, ours)) / len(ours)
    return {**differences(_stack(reference), _stack(ours)), "argmax_agreement": round(agree, 4)}


def _name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _stack(rows: list[Any]) -> Any:
    import torch

    return torch.stack([row.float().cpu() for row in rows])


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
