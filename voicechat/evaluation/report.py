"""The summary of a run: one row per mode (answer quality, retrieval quality, recognition errors,
latency percentiles), written as markdown and JSON with the run's models, settings and slice,
and plots when matplotlib is installed. A run with several voice models has these rows per voice
model, side by side."""

from __future__ import annotations

import json
from pathlib import Path

from voicechat.evaluation.metrics import mean, percentiles
from voicechat.evaluation.runner import EARLIER_VOICE_MODEL, voice_model_of

LATENCIES = ("retrieve_ms", "embed_ms", "search_ms", "tokenize_ms", "first_audio_ms", "total_ms")
LENGTHS = ((0.0, 3.0, "< 3 s"), (3.0, 6.0, "3-6 s"), (6.0, 10.0, "6-10 s"), (10.0, float("inf"), ">= 10 s"))
QUALITY = {"hotpotqa": ["em", "f1"], "rgb": ["accuracy", "rejected"], "folder": ["accuracy"]}


def headline_metric(dataset: str) -> str:
    return "f1" if dataset == "hotpotqa" else "accuracy"


def summarise(records: list[dict], modes: list[str]) -> dict[str, dict]:
    rows = {}
    for mode in modes:
        mine = [r for r in records if r["mode"] == mode]
        if not mine:
            continue
        names = sorted({name for r in mine for name in r["metrics"]})
        row: dict = {"questions": len(mine)}
        row.update({name: mean(r["metrics"].get(name) for r in mine) for name in names})
        for name in LATENCIES:
            row[name] = percentiles(r["timings"].get(name) for r in mine)
        row["failed_turns"] = sum(1 for r in mine if r["problems"])
        rows[mode] = row
    return rows


def by_length(records: list[dict], modes: list[str]) -> dict[str, dict[str, dict]]:
    """Retrieval time percentiles per mode and question audio length."""
    table: dict[str, dict[str, dict]] = {}
    for mode in modes:
        for low, high, label in LENGTHS:
            times = [r["timings"]["retrieve_ms"] for r in records
                     if r["mode"] == mode and low <= r.get("audio_s", -1.0) < high
                     and r["timings"].get("retrieve_ms") is not None]
            if times:
                table.setdefault(mode, {})[label] = {"questions": len(times), **percentiles(times)}
    return table


def e2e_asr_ratio(rows: dict[str, dict]) -> float | None:
    """How many times faster e2e retrieval is than asr retrieval (median retrieval times)."""
    try:
        return rows["asr"]["retrieve_ms"]["p50"] / rows["e2e"]["retrieve_ms"]["p50"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def voice_models(info: dict) -> list[str]:
    return info.get("voice_models") or [EARLIER_VOICE_MODEL]


def progress(info: dict, records: list[dict]) -> dict:
    """How many of the run's (question, mode, voice model) triples have a result; fewer than
    expected after an interruption (Ctrl+C, a crash), until a rerun finishes them."""
    wanted = {(qid, mode, model) for qid in info["questions"] for mode in info["modes"] for model in voice_models(info)}
    finished = wanted & {(r["id"], r["mode"], voice_model_of(r)) for r in records}
    return {"finished": len(finished), "expected": len(wanted), "partial": len(finished) < len(wanted)}


def write_summary(out_dir: Path, info: dict, records: list[dict]) -> dict:
    """``modes``: the rows of the first voice model; ``voice_models``: the rows of each."""
    per_model = {model: summarise([r for r in records if voice_model_of(r) == model], info["modes"])
                 for model in voice_models(info)}
    rows = next(iter(per_model.values()))
    summary = {"run": info, "progress": progress(info, records), "modes": rows, "voice_models": per_model,
               "asr_over_e2e_retrieval_time": e2e_asr_ratio(rows),
               "retrieval_ms_by_length": by_length(records, info["modes"])}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    (out_dir / "summary.md").write_text(markdown(summary), encoding="utf-8")
    return summary


def _fmt(value, scale: float = 1.0, digits: int = 3) -> str:
    return "–" if value is None else f"{value * scale:.{digits}f}"


def markdown(summary: dict) -> str:
    info, rows = summary["run"], summary["modes"]
    columns = QUALITY[info["dataset"]] + ["recall", "mrr", "wer", "cer"]
    lines = [f"# voicechat eval: {info['dataset']}", ""]
    done = summary.get("progress") or {"partial": False}
    if done["partial"]:
        lines += [f"**Partial run**: {done['finished']} of {done['expected']} question-mode pairs finished "
                  "(interrupted); run the same command again to finish it.", ""]
    if info["speech"]["synthetic"]:
        lines += ["**Synthetic speech**: questions spoken by espeak-ng, not by people.", ""]
    lines += [
        f"- data: {info['data']} ({len(info['questions'])} questions; limit {info['limit']}, seed {info['seed']})",
        f"- speech: {info['speech']['description']} ({info['speech']['kind']})",
        f"- options: {json.dumps(info['options'], ensure_ascii=False)}",
        "- models: " + "; ".join(f"{role} {spec['source']}" for role, spec in info["models"].items()),
    ]
    per_model = summary.get("voice_models") or {voice_models(info)[0]: rows}
    lines += [f"- voice model{'s' if len(per_model) > 1 else ''}: {', '.join(per_model)}", ""]
    lines += mode_table(per_model, columns)
    if len(per_model) > 1:
        lines += side_by_side(per_model, headline_metric(info["dataset"]))
    ratio = summary["asr_over_e2e_retrieval_time"]
    if ratio is not None:
        lines += ["", f"asr / e2e median retrieval time: {ratio:.2f}x"]
    lines += length_table(summary.get("retrieval_ms_by_length") or {})
    recall_k = info["options"].get("top_k")
    lines += ["", f"recall is recall@{recall_k}; MRR over the retrieved passages; WER/CER of the asr transcript."]
    return "\n".join(lines) + "\n"


def mode_table(per_model: dict[str, dict[str, dict]], columns: list[str]) -> list[str]:
    several = len(per_model) > 1
    first = "| voice model | mode | n | " if several else "| mode | n | "
    lines = [first + " | ".join(columns) + " | retrieval ms p50 / p90 | first audio ms p50 | failed |",
             "|" + "---|" * (len(columns) + 5 + several)]
    for model, rows in per_model.items():
        for mode, row in rows.items():
            cells = [_fmt(row.get(c)) for c in columns]
            retrieve = row["retrieve_ms"]
            lines.append(f"| {model + ' | ' if several else ''}{mode} | {row['questions']} | " + " | ".join(cells)
                         + f" | {_fmt(retrieve['p50'], digits=1)} / {_fmt(retrieve['p90'], digits=1)}"
                         + f" | {_fmt(row['first_audio_ms']['p50'], digits=1)} | {row['failed_turns']} |")
    return lines


def side_by_side(per_model: dict[str, dict[str, dict]], metric: str) -> list[str]:
    """Each mode's answer quality and first audio, one column per voice model, on the same questions."""
    models = list(per_model)
    modes = list(dict.fromkeys(mode for rows in per_model.values() for mode in rows))
    lines = ["", f"Voice models side by side ({metric}; first audio ms p50):", "",
             "| mode | " + " | ".join(f"{m} {metric} | {m} first audio" for m in models) + " |",
             "|" + "---|" * (2 * len(models) + 1)]
    for mode in modes:
        cells = []
        for model in models:
            row = per_model[model].get(mode)
            cells += [_fmt(row.get(metric)) if row else "–",
                      _fmt(row["first_audio_ms"]["p50"], digits=1) if row else "–"]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def length_table(table: dict[str, dict[str, dict]]) -> list[str]:
    labels = [label for _, _, label in LENGTHS if any(label in row for row in table.values())]
    if not labels:
        return []
    lines = ["", "Retrieval ms p50 by question audio length (questions):", "",
             "| mode | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
    for mode, row in table.items():
        cells = [f"{_fmt(row[label]['p50'], digits=1)} ({row[label]['questions']})" if label in row else "–"
                 for label in labels]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def write_plots(out_dir: Path, summary: dict) -> list[Path]:
    """accuracy.png and retrieval_time.png per mode; nothing when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = summary["modes"]
    modes = list(rows)
    metric = headline_metric(summary["run"]["dataset"])
    suffix = " (synthetic speech)" if summary["run"]["speech"]["synthetic"] else ""
    written = []
    for name, values, label in (
        ("accuracy.png", [rows[m].get(metric) or 0.0 for m in modes], metric),
        ("retrieval_time.png", [rows[m]["retrieve_ms"]["p50"] or 0.0 for m in modes], "retrieval ms (p50)"),
    ):
        figure, axes = plt.subplots(figsize=(6, 3.5))
        axes.bar(modes, values)
        axes.set_ylabel(label)
        axes.set_title(f"{summary['run']['dataset']}: {label} per mode{suffix}")
        figure.tight_layout()
        figure.savefig(out_dir / name, dpi=100)
        plt.close(figure)
        written.append(out_dir / name)
    return written
