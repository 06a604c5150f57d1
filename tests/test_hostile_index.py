"""The knowledge index under hostile conditions: shared index folders, damaged files, impossible
index types, symbolic links out of the folder, killed runs, a busy machine. Each case ends in one
clear line and a non-zero exit, or in the right thing; a refusal writes nothing and loses nothing."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from voicechat.cli import main


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


# --- one index folder, two knowledge folders ---------------------------------------------------------


def doctor_index_check(capsys, config_file: Path, *flags: str) -> tuple[int, dict]:
    code, out, _ = run(capsys, "--config", str(config_file), "doctor", "--json", *flags)
    (check,) = [c for c in json.loads(out) if c["area"] == "knowledge index"]
    return code, check


@pytest.fixture
def two_folders(tmp_path: Path, config_file: Path, knowledge: Path) -> tuple[Path, Path, Path]:
    """Folders A (the sample notes) and B (one note about tea) with one shared index folder."""
    tea = tmp_path / "tea"
    tea.mkdir()
    (tea / "tea.txt").write_text("Assam tea is a black tea from India. It is strong and malty.\n")
    data = yaml.safe_load(config_file.read_text())
    data["retrieval"]["index_dir"] = "shared-index"  # relative to the config file
    config_file.write_text(yaml.safe_dump(data))
    return knowledge.resolve(), tea.resolve(), tmp_path / "shared-index"


def other_folder_line(index_dir: Path, built_for: Path, wanted: Path) -> str:
    return (f"{index_dir} holds the index of {built_for}, not of {wanted}; run `voicechat index {wanted} --rebuild` "
            "to replace it, or give each folder its own retrieval.index_dir")


@pytest.mark.parametrize("argv", [
    ["index", "{B}"],
    ["index", "{B}", "--stats"],
    ["search", "Assam tea", "--knowledge", "{B}"],
    ["search", "Assam tea", "--knowledge", "{B}", "--mode", "text"],
])
def test_an_index_built_for_one_folder_is_refused_for_another(capsys, config_file, two_folders, argv):
    folder_a, folder_b, index_dir = two_folders
    code, _, err = run(capsys, "--config", str(config_file), "index", str(folder_a))
    assert code == 0, err
    before = snapshot(index_dir)
    code, out, err = run(capsys, "--config", str(config_file), *[a.format(B=folder_b) for a in argv])
    assert code == 2 and out == ""
    assert error_lines(err) == [f"voicechat: error: {other_folder_line(index_dir, folder_a, folder_b)}"]
    assert snapshot(index_dir) == before


def test_doctor_and_retrieval_refuse_another_folders_index_and_rebuild_replaces_it(capsys, config_file,
                                                                                  two_folders):
    from voicechat.config import load_config
    from voicechat.errors import KnowledgeIndexError
    from voicechat.retrieval.retriever import load_retriever

    folder_a, folder_b, index_dir = two_folders
    run(capsys, "--config", str(config_file), "index", str(folder_a))
    code, check = doctor_index_check(capsys, config_file, "--knowledge", str(folder_b))
    assert code != 0 and not check["ok"]
    assert check["detail"] == other_folder_line(index_dir, folder_a, folder_b)
    code, check = doctor_index_check(capsys, config_file, "--knowledge", str(folder_a))
    assert check["ok"] and check["detail"].startswith("8 files")
    config = load_config(config_file)
    with pytest.raises(KnowledgeIndexError) as refused:  # what ask and chat open
        load_retriever(config, {"text"}, knowledge_dir=str(folder_b))
    assert str(refused.value) == other_folder_line(index_dir, folder_a, folder_b)

    code, out, err = run(capsys, "--config", str(config_file), "index", str(folder_b), "--rebuild")
    assert code == 0, err
    assert "1 files, 1 chunks (1 added" in out
    code, check = doctor_index_check(capsys, config_file, "--knowledge", str(folder_a))
    assert check["detail"] == other_folder_line(index_dir, folder_b, folder_a)
    code, out, err = run(capsys, "--config", str(config_file), "search", "Assam tea", "--knowledge", str(folder_b),
                         "--json")
    assert code == 0, err
    assert {hit["file"] for hit in json.loads(out)["hits"]} == {"tea.txt"}


def test_a_folder_moved_with_its_index_inside_keeps_it_without_reembedding(capsys, config_file, knowledge,
                                                                          tmp_path):
    run(capsys, "--config", str(config_file), "index", str(knowledge))
    moved = tmp_path / "moved-notes"
    knowledge.rename(moved)
    code, out, err = run(capsys, "--config", str(config_file), "search", "Jupiter", "--knowledge", str(moved),
                         "-k", "1")
    assert code == 0, err
    code, out, err = run(capsys, "--config", str(config_file), "index", str(moved))
    assert code == 0, err
    assert f"the knowledge folder moved here from {knowledge.resolve()}" in err
    assert "(no changes)" in out and "loading the text encoder" not in err
    manifest = json.loads((moved / ".voicechat-index" / "manifest.json").read_text())
    assert manifest["knowledge_dir"] == str(moved.resolve())


def downgrade_to_format_1(index_dir: Path) -> None:
    """The manifest as the previous version wrote it: no whole-file checksums; and, as a
    hand-made or damaged record might be, no knowledge folder."""
    path = index_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 1
    manifest.pop("knowledge_dir")
    for record in manifest["artifacts"].values():
        record.pop("sha256")
    path.write_text(json.dumps(manifest))


def test_an_index_of_the_previous_format_is_searched_and_upgraded_without_the_encoder(capsys, config_file,
                                                                                    knowledge):
    run(capsys, "--config", str(config_file), "index", str(knowledge))
    index_dir = knowledge / ".voicechat-index"
    downgrade_to_format_1(index_dir)
    code, _, err = run(capsys, "--config", str(config_file), "search", "Jupiter", "-k", "1")
    assert code == 0, err
    code, check = doctor_index_check(capsys, config_file)
    assert check["ok"] and "written by an earlier version (format 1)" in check["detail"]
    code, out, err = run(capsys, "--config", str(config_file), "index")
    assert code == 0, err
    assert "(no changes)" in out and "loading the text encoder" not in err
    manifest = json.loads((index_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and manifest["knowledge_dir"] == str(knowledge.resolve())
    assert all("sha256" in record for record in manifest["artifacts"].values())


def test_a_previous_format_index_without_its_folder_is_still_refused_by_the_store_record(capsys, config_file,
                                                                                       two_folders):
    folder_a, folder_b, index_dir = two_folders
    run(capsys, "--config", str(config_file), "index", str(folder_a))
    downgrade_to_format_1(index_dir)
    code, _, err = run(capsys, "--config", str(config_file), "search", "tea", "--knowledge", str(folder_b))
    assert code == 2
    assert error_lines(err) == [f"voicechat: error: {other_folder_line(index_dir, folder_a, folder_b)}"]


# --- damaged files ----------------------------------------------------------------------------------


def flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


def stored_chunks(index_dir: Path) -> list[tuple]:
    db = sqlite3.connect(index_dir / "store.sqlite")
    try:
        return db.execute("SELECT id, file, text, vector, live FROM chunks ORDER BY id").fetchall()
    finally:
        db.close()


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("name, damage, what", [
    ("embeddings.npy", flip_bytes, "the file has changed since it was written (its checksum differs)"),
    ("ids.npy", flip_bytes, "the file has changed since it was written (its checksum differs)"),
    ("vectors.faiss", flip_bytes, "the file has changed since it was written (its checksum differs)"),
    ("embeddings.npy", truncate, "the file is truncated"),
    ("vectors.faiss", Path.unlink, "the file is missing"),
])
def test_a_damaged_search_file_is_found_by_search_doctor_and_index_and_repaired_from_the_store(
        capsys, config_file, knowledge, name, damage, what):
    run(capsys, "--config", str(config_file), "index")
    index_dir = knowledge / ".voicechat-index"
    chunks_before = stored_chunks(index_dir)
    damage(index_dir / name)
    folder = knowledge.resolve()

    code, out, err = run(capsys, "--config", str(config_file), "search", "Jupiter")
    assert code == 2 and out == ""
    assert error_lines(err) == [
        f"voicechat: error: {index_dir / name}: the knowledge index is corrupt ({what}); repair it with "
        f"`voicechat index {folder}` (rewrites the search files from the index store, re-embeds nothing)"]
    code, check = doctor_index_check(capsys, config_file)
    assert code != 0 and not check["ok"]
    assert check["detail"] == f"{index_dir}/{name}: {what}"
    assert check["fix"] == (f"run `voicechat index {folder}` (rewrites the search files from the index store; "
                            "nothing is re-embedded)")

    code, out, err = run(capsys, "--config", str(config_file), "index")
    assert code == 0, err
    assert f"repairing the search files from the index store: {name}: {what}" in err
    assert "loading the text encoder" not in err
    assert "(no changes); damaged search files rewritten from the index store; flat index" in out
    assert stored_chunks(index_dir) == chunks_before  # the source of truth is untouched
    code, out, err = run(capsys, "--config", str(config_file), "search", "Jupiter", "--json")
    assert code == 0, err
    code, check = doctor_index_check(capsys, config_file)
    assert check["ok"]
    code, out, _ = run(capsys, "--config", str(config_file), "index")
    assert "(no changes); flat index" in out  # no loop: repaired once


def damage_store(path: Path) -> None:
    """Turn the root page of one of the store's indexes into a table page: SQLite's check finds it."""
    db = sqlite3.connect(path)
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'chunks_file'").fetchone()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size] = 0x0D
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [damage_store, lambda path: path.write_bytes(b"garbage" * 1000)])
def test_a_damaged_store_is_not_repaired_silently_index_and_doctor_say_rebuild(capsys, config_file, knowledge,
                                                                             damage):
    run(capsys, "--config", str(config_file), "index")
    index_dir = knowledge / ".voicechat-index"
    damage(index_dir / "store.sqlite")
    flip_bytes(index_dir / "embeddings.npy")
    before = snapshot(index_dir)
    code, out, err = run(capsys, "--config", str(config_file), "index")
    assert code == 2 and out == ""
    (line,) = error_lines(err)
    assert line.startswith(f"voicechat: error: {index_dir / 'store.sqlite'}: the knowledge index is corrupt (")
    assert line.endswith(f"); rebuild it with `voicechat index {knowledge.resolve()} --rebuild`")
    assert snapshot(index_dir) == before
    code, check = doctor_index_check(capsys, config_file)
    assert not check["ok"] and f"voicechat: error: {check['detail']}" == line
    assert snapshot(index_dir) == before
    code, out, err = run(capsys, "--config", str(config_file), "index", "--rebuild")
    assert code == 0, err
    assert "8 added" in out
    code, check = doctor_index_check(capsys, config_file)
    assert check["ok"]


def test_a_change_in_the_middle_of_a_large_search_file_is_found_by_the_whole_file_checksum(tmp_path):
    from voicechat.retrieval.manifest import check_artifacts, file_checksums, verify_artifacts

    path = tmp_path / "embeddings.npy"
    path.write_bytes(bytes(5 << 20))
    manifest = {"artifacts": {"embeddings.npy": file_checksums(path)}}
    flip_bytes(path)
    check_artifacts(tmp_path, manifest)  # the quick check at every opening reads the ends only
    assert verify_artifacts(tmp_path, manifest, ("embeddings.npy",)) == (
        "embeddings.npy: the file has changed since it was written (its checksum differs)")


# --- index types --------------------------------------------------------------------------------------


def ivf_refusal(folder: Path, chunks: int) -> str:
    return (f"voicechat: error: {folder}: an ivf index needs at least 640 chunks to train its 16 lists and this "
            f"folder has {chunks}; use --index-type auto, flat or hnsw")


def test_hnsw_requested_on_a_small_folder_is_built_as_hnsw(capsys, config_file, knowledge):
    code, out, err = run(capsys, "--config", str(config_file), "index", "--index-type", "hnsw")
    assert code == 0, err
    assert out.rstrip().endswith("s") and "; hnsw index," in out
    code, out, _ = run(capsys, "--config", str(config_file), "index", "--stats", "--json")
    stats = json.loads(out)
    assert stats["index"]["type"] == "hnsw" and stats["index"]["tuned_recall_at_10"] == 1.0
    chunk = ("Jupiter is the largest planet. Its diameter is about eleven times that of Earth, and its Great Red "
             "Spot is a storm larger than Earth that has been observed for more than 350 years.")
    code, out, err = run(capsys, "--config", str(config_file), "search", chunk, "-k", "1", "--json")
    assert code == 0 and json.loads(out)["hits"][0]["text"] == chunk


def test_ivf_requested_on_a_small_folder_is_refused_with_the_reason_before_anything_is_written(
        capsys, config_file, knowledge):
    folder = knowledge.resolve()
    before = snapshot(knowledge)
    code, out, err = run(capsys, "--config", str(config_file), "index", "--index-type", "ivf")
    assert code == 2 and out == "" and error_lines(err) == [ivf_refusal(folder, 37)]
    assert "loading" not in err  # refused before the encoder is loaded
    assert snapshot(knowledge) == before and not (knowledge / ".voicechat-index").exists()

    run(capsys, "--config", str(config_file), "index")  # a flat index; then ivf is asked for again
    index_dir = knowledge / ".voicechat-index"
    before = snapshot(index_dir)
    (knowledge / "more.txt").write_text("One more note about the Moon. It has no air.\n")
    code, out, err = run(capsys, "--config", str(config_file), "index", "--index-type", "ivf")
    assert code == 2 and error_lines(err) == [ivf_refusal(folder, 38)]  # counted with the new file
    assert snapshot(index_dir) == before

    data = yaml.safe_load(config_file.read_text())
    data["retrieval"]["index_type"] = "ivf"
    config_file.write_text(yaml.safe_dump(data))
    code, check = doctor_index_check(capsys, config_file)
    assert not check["ok"] and f"voicechat: error: {check['detail']}" == ivf_refusal(folder, 37)


def test_ivf_is_trained_from_640_chunks_and_refused_below():
    import numpy as np

    from voicechat.errors import KnowledgeIndexError
    from voicechat.retrieval.faiss_index import build_faiss

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((640, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    _, params = build_faiss(vectors, "ivf")
    assert params["type"] == "ivf" and params["nlist"] == 16
    with pytest.raises(KnowledgeIndexError, match="needs at least 640 chunks .* has 639"):
        build_faiss(vectors[:639], "ivf")


# --- symbolic links -----------------------------------------------------------------------------------


def indexed_files(index_dir: Path) -> list[str]:
    db = sqlite3.connect(index_dir / "store.sqlite")
    try:
        return [row[0] for row in db.execute("SELECT DISTINCT file FROM chunks WHERE live = 1 ORDER BY file")]
    finally:
        db.close()


def test_symbolic_links_out_of_the_folder_are_skipped_and_links_inside_are_followed_once(
        capsys, config_file, knowledge, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("The outside secret is swordfish.\n")
    (knowledge / "elsewhere").symlink_to(outside)  # a folder out of the knowledge folder
    (knowledge / "secret.txt").symlink_to(outside / "secret.txt")  # a file out of it
    (knowledge / "system").symlink_to("/etc")  # as in the report: /etc/hostname reached the prompts
    (knowledge / ".drafts").mkdir()
    (knowledge / ".drafts" / "draft.txt").write_text("A draft about comets. Comets have tails.\n")
    (knowledge / "drafts").symlink_to(".drafts")  # a hidden folder, linked on purpose: followed
    (knowledge / "pandas").symlink_to("zh")  # the same folder twice: indexed once
    (knowledge / "planets.txt").symlink_to("solar-system.txt")  # the same file twice: indexed once
    (knowledge / "zh" / "up").symlink_to("..")  # a loop
    code, out, err = run(capsys, "--config", str(config_file), "index")
    assert code == 0, err
    warnings = sorted(line for line in err.splitlines() if line.startswith("skipped"))
    assert warnings == sorted([
        f"skipped elsewhere: symbolic link to {outside.resolve()}, outside the knowledge folder",
        f"skipped secret.txt: symbolic link to {(outside / 'secret.txt').resolve()}, outside the knowledge folder",
        "skipped system: symbolic link to /etc, outside the knowledge folder",
        "skipped pandas: symbolic link to zh, indexed under that name",
        "skipped planets.txt: symbolic link to solar-system.txt, indexed under that name",
        "skipped zh/up: symbolic link loop (folder already indexed)",
    ])
    assert "9 files" in out and "; 6 skipped (3 symbolic links out of the folder);" in out
    files = indexed_files(knowledge / ".voicechat-index")
    assert files == sorted([
        "README.md", "bicycle-maintenance.md", "coffee-roasting.pdf", "drafts/draft.txt", "faq.jsonl",
        "solar-system.txt", "tea-brewing.html", "zh/giant-panda.md", "zh/traditional-festivals.txt"])
    db = sqlite3.connect(knowledge / ".voicechat-index" / "store.sqlite")
    texts = " ".join(row[0] for row in db.execute("SELECT text FROM passages"))
    db.close()
    assert "swordfish" not in texts


def test_a_link_turned_outward_after_discovery_is_not_read(knowledge, tmp_path, text_spec, text_encoder,
                                                            monkeypatch):
    from voicechat.config import ChunkingConfig
    from voicechat.retrieval import indexer as indexer_module
    from voicechat.retrieval.encoders import encoder_identity

    outside = tmp_path / "outside.txt"
    outside.write_text("The outside secret is swordfish.\n")
    (knowledge / "notes.txt").write_text("An ordinary note.\n")
    real_discover = indexer_module.discover

    def discover_then_swap(root, exclude=None):
        """The link is replaced between discovery and reading."""
        files, skipped = real_discover(root, exclude)
        (knowledge / "notes.txt").unlink()
        (knowledge / "notes.txt").symlink_to(outside)
        return files, skipped

    warnings = []

    class Reporter(indexer_module.SilentReporter):
        def skipped(self, path, reason):
            warnings.append(f"{path}: {reason}")

    settings = indexer_module.Settings(encoder_identity(text_spec), ("eng_Latn", "zho_Hans"), ChunkingConfig())
    indexer = indexer_module.Indexer(knowledge, knowledge / ".voicechat-index", settings, lambda: text_encoder,
                                     Reporter())
    monkeypatch.setattr(indexer_module, "discover", discover_then_swap)
    report = indexer.update()
    assert warnings == [f"notes.txt: symbolic link to {outside.resolve()}, outside the knowledge folder"]
    assert report.outside_links == 1 and "notes.txt" not in indexed_files(knowledge / ".voicechat-index")


# --- killed runs --------------------------------------------------------------------------------------

KILLED_WHILE_WRITING = """
import os, signal, sys
from pathlib import Path
from voicechat.retrieval.manifest import atomic_write

def write_half_then_die(tmp):
    tmp.write_bytes(b"half of an index")
    os.kill(os.getpid(), signal.SIGKILL)

atomic_write(Path(sys.argv[1]), write_half_then_die)
"""


def test_temporary_files_of_a_killed_export_are_removed_by_the_next_run(capsys, config_file, knowledge):
    import subprocess
    import sys

    run(capsys, "--config", str(config_file), "index")
    index_dir = knowledge / ".voicechat-index"
    killed = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, str(index_dir / "vectors.faiss")],
                            cwd=Path(__file__).resolve().parents[1])
    assert killed.returncode == -9
    (left,) = index_dir.glob(".vectors.faiss.*.tmp")
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as alive:
        writing = index_dir / f".embeddings.npy.{alive.pid}.tmp"  # a run still writing: kept
        writing.write_bytes(b"being written")
        code, out, err = run(capsys, "--config", str(config_file), "index")
        assert writing.exists()
        alive.communicate(b"")
    assert code == 0, err
    assert "removed 1 temporary file left by an interrupted run" in err and "(no changes)" in out
    assert not left.exists()
    code, _, err = run(capsys, "--config", str(config_file), "search", "Jupiter")
    assert code == 0, err
