"""`voicechat index` and `voicechat search` from the command line, with the tiny SONAR encoders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from voicechat.audio.files import write_wav
from voicechat.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_index_then_update_then_stats(capsys, config_file, knowledge):
    code, out, err = run(capsys, "--config", str(config_file), "index", str(knowledge))
    assert code == 0, err
    assert "8 added" in out and "flat index" in out
    assert "skipped" not in err
    code, out, _ = run(capsys, "--config", str(config_file), "index", str(knowledge))
    assert code == 0 and "(no changes)" in out
    code, out, _ = run(capsys, "--config", str(config_file), "index", "--stats")
    assert code == 0
    stats = dict(line.split(None, 1) if not line.startswith(("knowledge", "index", "text", "size"))
                 else (line[:16].strip(), line[16:].strip()) for line in out.strip().split("\n"))
    assert stats["files"] == "8" and "zho_Hans" in stats["languages"] and stats["index type"] == "flat"
    code, out, _ = run(capsys, "--config", str(config_file), "index", "--stats", "--json")
    assert json.loads(out)["chunks"] > 0


def test_search_text_prints_the_matching_chunk_first(capsys, config_file, knowledge):
    run(capsys, "--config", str(config_file), "index")
    question = ("Jupiter is the largest planet. Its diameter is about eleven times that of Earth, and its "
                "Great Red Spot is a storm larger than Earth that has been observed for more than 350 years.")
    code, out, err = run(capsys, "--config", str(config_file), "search", question, "-k", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["mode"] == "text" and len(result["hits"]) == 2
    top = result["hits"][0]
    assert top["file"] == "solar-system.txt" and top["text"] == question and top["start"] == 7
    code, out, _ = run(capsys, "--config", str(config_file), "search", question, "-k", "1")
    assert out.startswith("1. 1.000  solar-system.txt (lines 7-8)")


def test_search_audio_file_at_another_rate(capsys, config_file, tmp_path):
    run(capsys, "--config", str(config_file), "index")
    t = np.arange(44100 * 2) / 44100
    wav = tmp_path / "question.wav"
    write_wav(wav, np.stack([np.sin(2 * np.pi * 300 * t)] * 2, axis=1) * 0.3, 44100)
    code, out, err = run(capsys, "--config", str(config_file), "search", "--audio", str(wav), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["mode"] == "e2e" and len(result["hits"]) == 4 and "embed" in result["timings_s"]


@pytest.mark.parametrize("argv, message", [
    (["search", "question", "--audio", "x.wav"], "either a question TEXT or --audio FILE"),
    (["search", "--audio", "x.wav", "--mode", "text"], "--mode text needs a question TEXT"),
    (["search", "question"], "no knowledge index here"),
    (["search", "--audio", "missing.wav"], "no such audio file"),  # checked before the index and encoders
    (["index", "/nonexistent/folder"], "no such knowledge folder"),
])
def test_bad_command_lines_give_one_line_errors(capsys, config_file, argv, message):
    code, out, err = run(capsys, "--config", str(config_file), *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_card_paths_in_the_config_are_relative_to_the_config_file(capsys, tmp_path, sonar_dir, knowledge,
                                                                  monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "sonar").symlink_to(sonar_dir)
    config = tmp_path / "models" / "config.yaml"
    config.write_text(yaml.safe_dump({
        "models": {"sonar_text": {"source": "sonar/text_encoder/card.yaml", "device": "cpu"}},
        "retrieval": {"knowledge_dir": str(knowledge), "index_dir": "index"}, "offline": True}))
    monkeypatch.chdir(knowledge)
    code, out, err = run(capsys, "--config", str(config), "index")
    assert code == 0, err
    assert (tmp_path / "models" / "index" / "manifest.json").is_file()


def test_ctrl_c_while_indexing_prints_one_line_and_tells_how_to_continue(capsys, config_file, knowledge,
                                                                        monkeypatch):
    from voicechat.retrieval import indexer as indexer_module
    from voicechat.retrieval.encoders import SonarTextEncoder

    real_embed = SonarTextEncoder.embed
    calls = []

    def ctrl_c_at_the_second_file(self, texts, langs, progress=None):
        """Test double around the real encoder: Ctrl-C lands while the second file is embedded."""
        calls.append(texts)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_embed(self, texts, langs, progress)

    def voicechat_lines(err: str) -> list[str]:
        return [line for line in err.splitlines() if line.startswith("voicechat:")]

    monkeypatch.setattr(indexer_module, "GROUP_CHUNKS", 1)  # one file per group
    monkeypatch.setattr(SonarTextEncoder, "embed", ctrl_c_at_the_second_file)
    code, _, err = run(capsys, "--config", str(config_file), "index", str(knowledge))
    assert code == 130
    assert voicechat_lines(err) == [
        "voicechat: interrupted; 1 files were saved to the index, run the same command again to continue"]

    # The first build never finished: the folder has a store but no manifest yet.
    for argv in (["index", str(knowledge), "--stats"], ["search", "tea", "--knowledge", str(knowledge)]):
        code, _, err = run(capsys, "--config", str(config_file), *argv)
        assert code == 2
        assert voicechat_lines(err) == [f"voicechat: error: {knowledge / '.voicechat-index'}: building this index "
                                        f"was interrupted before it finished; run `voicechat index {knowledge}` to finish it"]

    calls.clear()
    code, _, err = run(capsys, "--config", str(config_file), "index", str(knowledge), "--rebuild")
    assert code == 130
    assert voicechat_lines(err) == [
        "voicechat: interrupted; 1 files were saved to the index, run the same command without --rebuild to continue"]
    monkeypatch.setattr(SonarTextEncoder, "embed", real_embed)
    code, out, err = run(capsys, "--config", str(config_file), "index", str(knowledge))
    assert code == 0, err
    assert "7 added" in out  # only the files the interrupted rebuild had not saved
    code, out, _ = run(capsys, "--config", str(config_file), "index", "--stats", "--json")
    assert code == 0 and json.loads(out)["files"] == 8
