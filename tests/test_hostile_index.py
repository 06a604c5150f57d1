"""The knowledge index under hostile conditions: shared index folders, damaged files, impossible
index types, symbolic links out of the folder, killed runs, a busy machine. Each case ends in one
clear line and a non-zero exit, or in the right thing; a refusal writes nothing and loses nothing."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import yaml

from voicechat.cli import main


@pytest.fixture
def config_file(tmp_path: Path, sonar_dir: Path, knowledge: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"sonar_text": {"source": str(sonar_dir / "text_encoder" / "card.yaml"), "device": "cpu"},
                   "sonar_speech": {"source": str(sonar_dir / "speech_encoder" / "card.yaml"), "device": "cpu"}},
        "retrieval": {"knowledge_dir": str(knowledge), "score_threshold": -1.0},
        "offline": True,
    }))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("voicechat:")]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes: what a refusal must leave as it was."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- a busy machine ---------------------------------------------------------------------------------


def test_loading_the_encoder_is_announced_in_a_log_before_the_embedding_starts(capsys, config_file):
    code, _, err = run(capsys, "--config", str(config_file), "index")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0] == "loading the text encoder"
    assert lines[1].startswith("loaded the text encoder in ") and lines[1].endswith(" s")


def test_loading_the_encoder_shows_a_spinner_on_a_terminal():
    from rich.console import Console

    from voicechat.commands.index import ProgressReporter

    reporter = ProgressReporter()
    screen = io.StringIO()
    reporter.console = Console(file=screen, force_terminal=True, color_system=None, width=80)
    with reporter.loading("the text encoder"):
        pass
    shown = screen.getvalue()
    assert "loading the text encoder" in shown and "0:00:00" in shown  # the spinner's line, with the time
    assert "loaded the text encoder in " in shown.rstrip().splitlines()[-1]


@pytest.mark.parametrize("argv", [["--threads", "2", "index"], ["index", "--threads", "2"]])
def test_threads_flag_sets_torch_threads_before_the_encoder_loads(capsys, config_file, monkeypatch, argv):
    import torch

    from voicechat.retrieval.encoders import SonarTextEncoder

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # restored after the test
    real_load = SonarTextEncoder.load.__func__
    seen = []

    def load(cls, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real_load(cls, *args, **kwargs)

    monkeypatch.setattr(SonarTextEncoder, "load", classmethod(load))
    before = torch.get_num_threads()
    try:
        code, _, err = run(capsys, "--config", str(config_file), *argv)
    finally:
        torch.set_num_threads(before)
    assert code == 0, err
    assert seen == [2]


def test_threads_from_the_config_and_a_bad_thread_count(capsys, config_file, monkeypatch):
    import torch

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    data = yaml.safe_load(config_file.read_text())
    config_file.write_text(yaml.safe_dump({**data, "runtime": {"threads": 0}}))
    code, _, err = run(capsys, "--config", str(config_file), "index")
    assert code == 2 and error_lines(err) == [
        f"voicechat: error: {config_file}: runtime.threads: expected an integer 1-1024, got 0"]
    config_file.write_text(yaml.safe_dump({**data, "runtime": {"threads": 1}}))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code, _, err = run(capsys, "--config", str(config_file), "index", "--stats")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit) as exit_:
        main(["--threads", "0", "index"])
    assert exit_.value.code == 2
    assert "argument --threads: expected a number of threads, 1 or more, got '0'" in capsys.readouterr().err
