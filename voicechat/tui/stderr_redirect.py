"""While the conversation screen runs, nothing but the app draws on the terminal.

C libraries (alsa-lib, JACK, PortAudio) write their warnings straight to file descriptor 2, and
Textual draws the screen on ``sys.__stderr__``, which is fd 2 as well: a speaker underrun prints
``ALSA lib pcm.c:…(snd_pcm_recover) underrun occurred`` across the conversation. So, while active:

- fd 2 is the write end of a pipe; a reader thread copies whatever arrives into a log file and
  counts its lines (``on_lines`` hears of each batch);
- ``sys.stderr`` and ``sys.__stderr__`` are a file on a duplicate of the terminal's descriptor:
  Textual's driver takes ``sys.__stderr__`` when the app starts, and draws there;
- Python's logging handlers that wrote to stderr write to the log file, and so do warnings; they
  are not counted.

Everything is put back on exit, exceptions and Ctrl-C included.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import BinaryIO, Callable, TextIO

from voicechat.errors import VoicechatError

log = logging.getLogger(__name__)


class StderrRedirect:
    """``with StderrRedirect(log_path, on_lines): app.run()``.

    ``on_lines(count, latest)`` is called from the reader thread after each batch of lines, with
    the number of lines so far and the last one."""

    def __init__(self, log_path: Path, on_lines: Callable[[int, str], None] | None = None) -> None:
        self.log_path = log_path
        self.on_lines = on_lines or (lambda count, latest: None)
        self.count = 0
        self._terminal: TextIO | None = None
        self._streams: tuple[TextIO, TextIO] | None = None  # sys.stderr and sys.__stderr__ before
        self._python_log: TextIO | None = None
        self._handlers: list[tuple[logging.StreamHandler, TextIO]] = []
        self._reader: threading.Thread | None = None

    def __enter__(self) -> StderrRedirect:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_bytes(b"")
            # Both in append mode: each write lands at the end, whoever wrote last.
            c_log = open(self.log_path, "ab", buffering=0)
            self._python_log = open(self.log_path, "a", encoding="utf-8", buffering=1)
        except OSError as error:
            raise VoicechatError(f"cannot write the log file {self.log_path} ({error.strerror}); "
                                 "check the permissions of its folder, or use --no-save") from None
        stderr = sys.__stderr__
        sys.stderr.flush()
        stderr.flush()
        self._terminal = open(os.dup(2), "w", buffering=1, encoding=stderr.encoding, errors=stderr.errors)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._reader = threading.Thread(target=self._read, args=(read_end, c_log), name="stderr-log", daemon=True)
        self._reader.start()
        self._streams = (sys.stderr, sys.__stderr__)
        sys.stderr = sys.__stderr__ = self._terminal
        self._redirect_logging()
        return self

    def __exit__(self, *exc: object) -> None:
        sys.stderr, sys.__stderr__ = self._streams
        try:
            logging.captureWarnings(False)
            for handler, stream in self._handlers:
                handler.setStream(stream)
            self._handlers = []
            self._python_log.close()
            sys.__stderr__.flush()  # what is still buffered for fd 2 belongs in the log
        finally:
            self._terminal.flush()
            os.dup2(self._terminal.fileno(), 2)  # this closes the pipe's write end: the reader ends
            self._terminal.close()
        # A child process that inherited the pipe would keep it open: do not wait for it.
        self._reader.join(timeout=2.0)

    def _redirect_logging(self) -> None:
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in self._streams:
                self._handlers.append((handler, handler.setStream(self._python_log)))
        logging.captureWarnings(True)  # warnings go through those handlers, not to sys.stderr

    def _read(self, read_end: int, c_log: BinaryIO) -> None:
        partial = b""
        with c_log:
            while chunk := os.read(read_end, 65536):
                try:
                    c_log.write(chunk)
                except OSError:  # a full disk: keep draining the pipe, or the writers would block
                    pass
                *lines, partial = (partial + chunk).split(b"\n")
                lines = [line for line in lines if line.strip()]
                if lines:
                    self.count += len(lines)
                    self._report(lines[-1].decode(errors="replace").strip())
        os.close(read_end)

    def _report(self, latest: str) -> None:
        try:
            self.on_lines(self.count, latest)
        except Exception:  # noqa: BLE001 - the reader must keep draining the pipe, or writers block
            log.exception("reporting stderr lines failed")
