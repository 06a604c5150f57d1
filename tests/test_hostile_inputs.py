"""Hostile inputs from the command line: each gives one line on stderr and a non-zero exit (or
does the right thing), and nothing is written or lost on the way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.speech import noise, vowels
from voicechat import cli
from voicechat.cli import main


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its content, to show that nothing was written or lost."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single line a refused command prints, without its "voicechat: error: " prefix."""
    out, err = capsys.readouterr()
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith("voicechat: error: ")
    return err[len("voicechat: error: "):].rstrip("\n")


# --- config ---------------------------------------------------------------------------------------

UNKNOWN_PLACEHOLDER = ("unknown placeholder {answer}; only {question} and {passages} may be used, "
                       "and a literal brace is written twice ({{ or }})")


@pytest.mark.parametrize("yaml_text, message", [
    ('generation:\n  rag_template: "Q: {question}\\nC: {passages}\\nA: {answer}"\n',
     f"generation.rag_template: {UNKNOWN_PLACEHOLDER}"),
    ('generation:\n  rag_template: "{question} {passages} {"\n',
     "generation.rag_template: a brace without its pair; placeholders are {question} and {passages}, "
     "and a literal brace is written twice ({{ or }})"),
    ('generation:\n  passage_template: "{src}: {text}"\n',
     "generation.passage_template: unknown placeholder {src} (did you mean 'source'?); only {source} and {text} "
     "may be used, and a literal brace is written twice ({{ or }})"),
    ("retrieval:\n  top_k: 3\n  rag: asr\n  top_k: 5\n",
     "line 4: retrieval.top_k: duplicate key (first on line 2); give each key once"),
    ("audio:\n  vad:\n    preset: relaxed\naudio:\n  barge_in: true\n",
     "line 4: audio: duplicate key (first on line 1); give each key once"),
    ("voices:\n  x:\n    description: a\n    generation: {temperature: 0.1, temperature: 0.3}\n",
     "line 4: voices.x.generation.temperature: duplicate key (first on line 4); give each key once"),
    ("decoder:\n  chunk_schedule: []\n", "decoder.chunk_schedule: expected a list of at least 1 item, got an empty list"),
    ("decoder:\n  chunk_schedule: [0, -5]\n", "decoder.chunk_schedule[0]: expected an integer 1-1000, got 0"),
    ("decoder:\n  chunk_schedule: [10, -5]\n", "decoder.chunk_schedule[1]: expected an integer 1-1000, got -5"),
    ("decoder:\n  chunk_schedule: 10\n", "decoder.chunk_schedule: expected a list, got 10"),
    ("retrieval:\n  languages: [klingon]\n",
     "retrieval.languages[0]: unknown language 'klingon'; expected a SONAR code such as eng_Latn or zho_Hans"),
    ("retrieval:\n  languages: [eng_Latn, zho_hans]\n",
     "retrieval.languages[1]: unknown language 'zho_hans'; expected a SONAR code such as eng_Latn or zho_Hans "
     "(did you mean 'zho_Hans'?)"),
    ("retrieval:\n  languages: []\n", "retrieval.languages: expected a list of at least 1 item, got an empty list"),
    ("audio:\n  input_device: -1\n", "audio.input_device: expected an integer >= 0, got -1"),
    ("audio:\n  output_device: 1.5\n", "audio.output_device: expected a string or an integer, got 1.5"),
    ("decoder:\n  seed: -1\n", "decoder.seed: expected an integer 0-2147483647, got -1"),
    ("models:\n  lm:\n    device: gpu\n", "models.lm.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("serve:\n  max_new_tokens: 0\n", "serve.max_new_tokens: expected an integer 1-32768, got 0"),
])
def test_bad_config_is_refused_at_load_naming_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           yaml_text: str, message: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml_text, encoding="utf-8")
    before = files_under(tmp_path)
    assert main(["--config", str(config), "models"]) == 2
    assert one_error_line(capsys) == f"{config}: {message}"
    assert files_under(tmp_path) == before


def test_doubled_braces_and_keys_overridden_after_a_yaml_merge_are_accepted(tmp_path: Path) -> None:
    from voicechat.config import load_config

    config = tmp_path / "config.yaml"
    config.write_text('generation:\n  rag_template: "Reply as {{\\"answer\\": ...}}. {passages} Q: {question}"\n'
                      "voices:\n  a: &base {description: A, generation: {temperature: 0.3}}\n"
                      "  b: {<<: *base, description: B}\n", encoding="utf-8")
    loaded = load_config(config)
    assert loaded.generation.rag_template == 'Reply as {{"answer": ...}}. {passages} Q: {question}'
    assert loaded.voice_preset("b").description == "B" and loaded.voice_preset("b").generation.temperature == 0.3


def test_device_index_in_the_config_chooses_that_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from voicechat.audio import devices
    from voicechat.audio.devices import DeviceInfo
    from voicechat.config import load_config

    config = tmp_path / "config.yaml"
    config.write_text("audio:\n  input_device: 1\n  output_device: speakers\n", encoding="utf-8")
    audio = load_config(config).audio
    assert audio.input_device == 1 and audio.output_device == "speakers"
    fake = [DeviceInfo(0, "Built-in mic", "ALSA", 1, 0, 48000, is_default_input=True),
            DeviceInfo(1, "USB mic", "ALSA", 1, 0, 16000),
            DeviceInfo(2, "Desk speakers", "ALSA", 0, 2, 48000, is_default_output=True)]
    monkeypatch.setattr(devices, "list_devices", lambda: fake)
    assert devices.find_device(audio.input_device, "input").name == "USB mic"
    assert devices.find_device(audio.output_device, "output").name == "Desk speakers"
    with pytest.raises(devices.AudioError, match="no input device with index 2"):
        devices.find_device(2, "input")


# --- serve ----------------------------------------------------------------------------------------


@pytest.fixture
def offline_config(tmp_path: Path) -> Path:
    """A config without local models: a command that tried to load one would fail differently."""
    path = tmp_path / "config.yaml"
    path.write_text("offline: true\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_serve_on_an_impossible_port_is_one_line_before_the_model_loads(offline_config: Path, port: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(offline_config), "serve", "--port", port]) == 2
    assert one_error_line(capsys) == f"--port must be 0-65535 (0 picks a free one), got {port}"


class RecordingBackendDouble:
    """Test double of an LM backend: counts the generations it was asked for."""

    def __init__(self) -> None:
        self.calls = 0

    def stream(self, prompt_ids, params, cancel):
        self.calls += 1
        yield from range(3, 3 + min(params.max_new_tokens, 3))

    def close(self) -> None:
        pass


def test_serve_refuses_a_request_for_more_tokens_than_its_limit(tiny_lm: Path) -> None:
    import http.client
    import json
    import threading

    from voicechat.glm.lm.server import LMServer
    from voicechat.glm.text_tokenizer import GlmTextTokenizer

    backend = RecordingBackendDouble()
    server = LMServer(backend, GlmTextTokenizer.from_pretrained(tiny_lm), "127.0.0.1", 0, max_new_tokens=1000)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()

    def ask(max_new_tokens: int) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
        connection.request("POST", "/generate_stream", body=json.dumps({"input_ids": [1, 2, 3],
                                                                         "max_new_tokens": max_new_tokens}))
        response = connection.getresponse()
        return response.status, response.read()

    try:
        status, body = ask(16406)
        assert status == 400 and backend.calls == 0
        assert json.loads(body) == {"error": "max_new_tokens 16406 is above this server's limit of 1000 "
                                             "(serve.max_new_tokens); ask for fewer"}
        status, body = ask(1000)
        assert status == 200 and backend.calls == 1 and len(body.splitlines()) == 3
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- ask ------------------------------------------------------------------------------------------


def _recording(path: Path, samples) -> Path:
    from voicechat.audio.files import write_wav

    write_wav(path, samples, 16000)
    return path


@pytest.mark.parametrize("what, samples", [
    ("5 s of digital silence", lambda: noise(5.0, None)),
    ("5 s of steady noise", lambda: noise(5.0, -30.0)),
    ("a 0.05 s clip", lambda: vowels(0.05)),
])
def test_ask_refuses_a_recording_without_speech_before_any_model_loads(
        tmp_path: Path, offline_config: Path, capsys: pytest.CaptureFixture[str], what: str, samples) -> None:
    question = _recording(tmp_path / "question.wav", samples())
    before = files_under(tmp_path)
    assert main(["--config", str(offline_config), "ask", str(question), "--out", str(tmp_path / "reply.wav")]) == 2
    assert one_error_line(capsys) == (f"{question}: no speech in this recording (silence, noise, or shorter than "
                                      "250 ms); record the question again")
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("name, message", [
    ("reply.mp3", "{out}: cannot write .mp3 files; end the name with .wav, .flac or .ogg"),
    ("reply", "{out}: cannot write a file without an extension; end the name with .wav, .flac or .ogg"),
    ("/proc/reply.wav", "{out}: cannot write in /proc ("),
])
def test_ask_out_that_cannot_be_written_is_refused_before_the_reply_is_generated(
        tmp_path: Path, offline_config: Path, capsys: pytest.CaptureFixture[str], name: str, message: str) -> None:
    out = tmp_path / name
    question = _recording(tmp_path / "question.wav", vowels(1.0))
    before = files_under(tmp_path)
    assert main(["--config", str(offline_config), "ask", str(question), "--out", str(out)]) == 2
    assert one_error_line(capsys).startswith(message.format(out=out))
    assert files_under(tmp_path) == before and not out.exists()


@pytest.mark.parametrize("name, kind", [("reply.wav", "WAV"), ("reply.FLAC", "FLAC"), ("reply.ogg", "OGG")])
def test_audio_output_format_follows_the_file_name(tmp_path: Path, name: str, kind: str) -> None:
    import soundfile

    from voicechat.audio.files import check_output, write_audio

    check_output(tmp_path / name)
    assert list(tmp_path.iterdir()) == []  # the writability check leaves nothing behind
    write_audio(tmp_path / name, vowels(0.5), 16000)
    assert soundfile.info(str(tmp_path / name)).format == kind
    assert [p.name for p in tmp_path.iterdir()] == [name]


# --- eval, and output into a closed pipe ----------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
HOTPOT = str(REPO / "tests" / "data" / "eval" / "hotpot_small.json")


@pytest.mark.parametrize("argv", [
    ["eval", "hotpotqa", HOTPOT, "--synth", "--out", "/proc/voicechat-eval"],
    ["eval", "synth", "hotpotqa", HOTPOT, "--out", "/proc/voicechat-eval/speech"],
])
def test_eval_out_where_nothing_can_be_written_is_one_line_before_anything_runs(
        offline_config: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(["--config", str(offline_config), *argv]) == 2
    out = argv[-1]
    assert one_error_line(capsys) == (f"--out {out}: cannot write in /proc (No such file or directory); "
                                      "choose another folder")


def run_into_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """Runs voicechat with its stdout read by no one: the reader has gone before the first line is
    printed, as `voicechat ... | head -1` does once it has its line."""
    process = subprocess.Popen([sys.executable, "-m", "voicechat", *argv], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    process.stdout.close()
    stderr = process.stderr.read()
    return subprocess.CompletedProcess(argv, process.wait(timeout=300), None, stderr)


def test_output_into_a_closed_pipe_exits_quietly(offline_config: Path) -> None:
    result = run_into_closed_pipe("--config", str(offline_config), "models", "--all")
    assert (result.returncode, result.stderr) == (cli.EXIT_BROKEN_PIPE, "")
    result = run_into_closed_pipe("--help")  # argparse itself ignores the closed pipe
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.slow
def test_search_into_a_closed_pipe_exits_quietly(tmp_path: Path, sonar_dir: Path, knowledge: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "models": {"sonar_text": {"source": str(sonar_dir / "text_encoder" / "card.yaml"), "device": "cpu"}},
        "retrieval": {"knowledge_dir": str(knowledge), "score_threshold": -1.0},
        "offline": True,
    }), encoding="utf-8")
    assert main(["--config", str(config), "index"]) == 0
    capsys.readouterr()
    index = files_under(knowledge)
    result = run_into_closed_pipe("--config", str(config), "search", "the largest planet", "-k", "20")
    assert (result.returncode, result.stderr) == (cli.EXIT_BROKEN_PIPE, "")
    assert files_under(knowledge) == index


@pytest.mark.slow
def test_interrupted_eval_keeps_its_results_and_marks_the_summary_partial(
        tmp_path: Path, tiny_models_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from voicechat.audio.files import write_wav
    from voicechat.evaluation import runner

    for qid in ("q1", "q2"):
        path = tmp_path / "speech" / "hotpotqa" / "reader1" / qid / "question.wav"
        path.parent.mkdir(parents=True)
        write_wav(path, vowels(1.0), 16000)
    real_run_question = runner.run_question

    def ctrl_c_at_the_second_question(config, parts, retriever, question, *rest):
        """Test double around the real runner step: Ctrl-C lands while the second question runs."""
        if question.id != "q1":
            raise KeyboardInterrupt
        return real_run_question(config, parts, retriever, question, *rest)

    monkeypatch.setattr(runner, "run_question", ctrl_c_at_the_second_question)
    out = tmp_path / "run"
    assert main(["--config", str(tiny_models_dir / "config.yaml"), "eval", "hotpotqa", HOTPOT,
                 "--speech", str(tmp_path / "speech"), "--modes", "norag", "--out", str(out)]) == cli.EXIT_INTERRUPTED
    # (blank lines: fairseq2's progress bars, set up by earlier tests in this process before the CLI
    # could turn them off as it does for a command run on its own)
    assert [line for line in capsys.readouterr().err.splitlines() if line.strip()] == ["voicechat: interrupted"]
    assert [json.loads(line)["id"] for line in (out / "results.jsonl").read_text().splitlines()] == ["q1"]
    assert json.loads((out / "summary.json").read_text())["progress"] == {"finished": 1, "expected": 2, "partial": True}
    assert "**Partial run**: 1 of 2 question-mode pairs finished" in (out / "summary.md").read_text()
    assert not list(out.glob("*.png"))  # drawn by the rerun that finishes the run, not while the user waits
