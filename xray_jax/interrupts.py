"""Ctrl-C (SIGINT) in the binaries: acted on at once, from a thread, whatever the main thread
is doing; the process ends without a traceback and with the shell's status for an interrupt,
and never while a file is half-written.

Python runs signal handlers in the main thread between bytecodes: one waits for an XLA
compilation or a blocking device call to return, and the KeyboardInterrupt of the default
handler can leave thread pools (grain's) that the interpreter then waits for at exit. Here
the interpreter's C-level handler writes each signal's number to a wakeup fd at once, and a
thread reading it counts the presses.
"""

import contextlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import NoReturn

# Exit status after Ctrl-C: 128 + SIGINT, what a shell reports for an interrupted program.
INTERRUPT_EXIT_CODE = 128 + signal.SIGINT

_WRITING = threading.Lock()  # Held while a file is written and renamed into place.
_WRITE_WAIT_SECONDS = 10.0  # How long `exit_now` waits for a write to finish.
_cleanups: list[Callable[[], object]] = []


@contextlib.contextmanager
def exit_deferred() -> Iterator[None]:
  """`exit_now` waits for the block to end (a file's write and rename)."""
  with _WRITING:
    yield


def clean_up_on_exit_now(cleanup: Callable[[], object]) -> None:
  """Calls `cleanup` (e.g. a `weakref.finalize` that deletes a temporary folder) when
  `exit_now` ends the process; a normal exit runs its own handlers."""
  _cleanups.append(cleanup)


def exit_now(message: str) -> NoReturn:
  """Prints `message` as one line, ends the worker processes, then this process with status
  130, without unwinding the main thread; called from the thread of `CtrlC`."""
  _WRITING.acquire(timeout=_WRITE_WAIT_SECONDS)  # Then ends the process, acquired or not.
  sys.stderr.write(f"\n{message}\n")
  sys.stderr.flush()
  for child in multiprocessing.active_children():
    child.kill()
  for cleanup in _cleanups:
    cleanup()
  os._exit(INTERRUPT_EXIT_CODE)


def ignore_in_worker(worker_index: int, worker_count: int) -> None:
  """grain's `worker_init_fn`: Ctrl-C reaches every process of a terminal's foreground
  group, and only the main process decides what it does, so its workers ignore it."""
  del worker_index, worker_count
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _no_exception(signum: int, frame: types.FrameType | None) -> None:
  """The Python-level handler: only its presence matters (no KeyboardInterrupt, and the
  C-level handler writes to the wakeup fd)."""
  del signum, frame


class CtrlC:
  """Until `close`, the n-th Ctrl-C calls `on_press(n)` at once, from a thread. Where SIGINT
  is ignored (a background job of a script), it stays ignored, as Unix programs leave it.
  Nested ones take over from the outer one until they close."""

  def __init__(self, on_press: Callable[[int], None]):
    self._on_press = on_press
    self._active = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    if not self._active:
      return
    self._reader, self._writer = socket.socketpair()
    self._writer.setblocking(False)
    self._previous_handler = signal.signal(signal.SIGINT, _no_exception)
    self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
    self._thread = threading.Thread(target=self._count_presses, name="ctrl_c", daemon=True)
    self._thread.start()

  def _count_presses(self) -> None:
    presses = 0
    while received := self._reader.recv(64):  # b"" once `close` shuts the writer.
      for _ in range(received.count(signal.SIGINT)):  # Other signals with handlers too.
        presses += 1
        self._on_press(presses)

  def close(self) -> None:
    if not self._active:
      return
    self._active = False
    signal.set_wakeup_fd(self._previous_fd)
    signal.signal(signal.SIGINT, self._previous_handler)
    self._writer.close()
    self._thread.join()
    self._reader.close()

  def __enter__(self) -> "CtrlC":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
