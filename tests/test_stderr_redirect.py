"""While the conversation screen runs, what C libraries write to stderr goes to a log file, and
the app still draws on the terminal. Each case runs in a child process with a pseudo-terminal as
its stdin, stdout and stderr, as `voicechat` has in a real terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

ALSA_LINE = "ALSA lib pcm.c:8570:(snd_pcm_recover) underrun occurred"
JACK_LINE = "Cannot connect to server socket err = No such file or directory"


def run_in_terminal(code: str, *args: str, timeout: float = 60.0) -> str:
    """Everything the child drew on its terminal; fails the test if it exits with an error."""
    main, child_side = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdin=child_side, stdout=child_side,
                               stderr=child_side, env=env)
    os.close(child_side)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while select.select([main], [], [], max(0.0, deadline - time.monotonic()))[0]:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the child has exited and the terminal is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(main)
        if process.poll() is None:
            process.kill()
    drawn = output.decode(errors="replace")
    assert process.wait(timeout=30) == 0, drawn
    return drawn


C_WRITES = f"""
import ctypes, os, sys
from pathlib import Path
from voicechat.tui.stderr_redirect import StderrRedirect

reports = []
with StderrRedirect(Path(sys.argv[1]), on_lines=lambda count, latest: reports.append((count, latest))) as redirect:
    os.write(2, b"{ALSA_LINE}\\n")
    libc = ctypes.CDLL(None)
    stderr = ctypes.c_void_p.in_dll(libc, "stderr")
    libc.fprintf(stderr, b"{JACK_LINE}\\n")
    libc.fflush(stderr)
    sys.__stderr__.write("drawn by the app\\n")
    sys.__stderr__.flush()
count, latest = reports[-1]
print(f"reported: {{count}} lines, the last one from JACK: {{latest == '{JACK_LINE}'}}; counted: {{redirect.count}}")
print("after the app: Python's stderr", file=sys.stderr)
os.write(2, b"after the app: fd 2\\n")
"""


def test_what_c_libraries_write_to_stderr_goes_to_the_log_not_the_terminal(tmp_path: Path) -> None:
    drawn = run_in_terminal(C_WRITES, str(tmp_path / "stderr.log"))
    logged = (tmp_path / "stderr.log").read_text()
    assert ALSA_LINE in logged and JACK_LINE in logged
    assert ALSA_LINE not in drawn and JACK_LINE not in drawn
    assert "drawn by the app" in drawn
    assert "reported: 2 lines, the last one from JACK: True; counted: 2" in drawn
    assert "after the app: Python's stderr" in drawn and "after the app: fd 2" in drawn


TEXTUAL_APP = f"""
import logging, os, sys, warnings
from pathlib import Path
from textual.app import App
from textual.widgets import Label
from voicechat.tui.stderr_redirect import StderrRedirect

logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")  # as the CLI does


class Hello(App):
    def compose(self):
        yield Label("drawn by textual")

    def on_mount(self):
        os.write(2, b"{ALSA_LINE}\\n")
        logging.getLogger("voicechat.test").warning("a logged warning")
        warnings.warn("a Python warning")
        self.call_after_refresh(self.exit)


with StderrRedirect(Path(sys.argv[1])) as redirect:
    Hello().run()
print("counted:", redirect.count)
"""


def test_textual_draws_on_the_terminal_while_stderr_goes_to_the_log(tmp_path: Path) -> None:
    drawn = run_in_terminal(TEXTUAL_APP, str(tmp_path / "stderr.log"))
    logged = (tmp_path / "stderr.log").read_text()
    assert "drawn by textual" in drawn and "\x1b[?1049h" in drawn  # on the alternate screen
    assert ALSA_LINE in logged and ALSA_LINE not in drawn
    assert "WARNING voicechat.test: a logged warning" in logged and "a logged warning" not in drawn
    assert "a Python warning" in logged and "a Python warning" not in drawn
    assert "counted: 1" in drawn  # only what C libraries wrote counts
    assert "\x1b[" not in logged  # none of the screen went to the log


INTERRUPTED = """
import os, signal, sys, time
from pathlib import Path
from voicechat.tui.stderr_redirect import StderrRedirect

try:
    with StderrRedirect(Path(sys.argv[1])):
        if sys.argv[2] == "ctrl-c":
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits it ignored
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)  # Python runs the handler at its next check: here, not after the raise
        raise RuntimeError("a bug")
except (KeyboardInterrupt, RuntimeError) as error:
    print(f"voicechat: {type(error).__name__}", file=sys.stderr)
os.write(2, b"fd 2 is the terminal again\\n")
"""


@pytest.mark.parametrize("how", ["ctrl-c", "exception"])
def test_the_terminal_is_restored_when_the_app_ends_abruptly(tmp_path: Path, how: str) -> None:
    drawn = run_in_terminal(INTERRUPTED, str(tmp_path / "stderr.log"), how)
    expected = "KeyboardInterrupt" if how == "ctrl-c" else "RuntimeError"
    assert f"voicechat: {expected}" in drawn and "fd 2 is the terminal again" in drawn


CRASHING_APP = """
import sys
from pathlib import Path
from textual.app import App
from voicechat.tui.stderr_redirect import StderrRedirect


class Broken(App):
    def on_mount(self):
        raise RuntimeError("a bug in the app")


with StderrRedirect(Path(sys.argv[1])):
    Broken().run()
"""


def test_a_crash_of_the_app_is_shown_on_the_terminal_not_hidden_in_the_log(tmp_path: Path) -> None:
    drawn = run_in_terminal(CRASHING_APP, str(tmp_path / "stderr.log"))
    assert "a bug in the app" in drawn
    assert (tmp_path / "stderr.log").read_text() == ""
