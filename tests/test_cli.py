"""The `voicechat` command: instant help, one-line errors, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voicechat import cli
from voicechat.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voicechat", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=120)


def test_help_does_not_import_heavy_libraries() -> None:
    code = ("import sys; from voicechat.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'fairseq2', 'faiss', 'textual', 'sounddevice') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: voicechat {command}")


def test_config_error_is_one_line_on_stderr_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text("audio:\n  vad:\n    aggressiveness: 7\n")
    result = run_cli("--config", str(bad), "models")
    assert result.returncode == 2
    assert result.stderr == f"voicechat: error: {bad}: audio.vad.aggressiveness: expected an integer 0-3, got 7\n"
    assert result.stdout == ""


def test_global_flags_work_after_the_command(tmp_path: Path) -> None:
    result = run_cli("models", "--voice", "nope", cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown voice preset 'nope'; choose one of: default" in result.stderr


def test_debug_log_level_shows_the_traceback(tmp_path: Path) -> None:
    result = run_cli("--log-level", "debug", "--config", str(tmp_path / "missing.yaml"), "models")
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert result.stderr.rstrip().endswith(f"voicechat: error: {tmp_path / 'missing.yaml'}: no such config file")


def test_ctrl_c_exits_130_without_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from voicechat.commands import models

    def interrupted_run(args: object, config: object) -> int:  # test double for a long command
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "run", interrupted_run)
    assert main(["--config", str(REPO / "config.yaml"), "models"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err == "voicechat: interrupted\n"


def test_flags_become_config_overrides(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    args = cli.build_parser().parse_args(["--knowledge", "notes", "--rag", "asr", "--two-round", "rewrite",
                                          "--voice", "calm", "--offline", "models"])
    assert cli.config_overrides(args) == {"retrieval.knowledge_dir": str(tmp_path / "notes"), "retrieval.rag": "asr",
                                          "retrieval.two_round": "rewrite", "voice": "calm", "offline": True}
