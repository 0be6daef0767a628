"""Ctrl-C: `interrupts.CtrlC` counts the presses in a thread, and `exit_now` ends the
process at once, but never while a file is written."""

import os
import signal
import subprocess
import sys
import time

from helpers import REPO_ROOT

from xray_jax import interrupts


def _wait_until(condition, timeout: float = 10) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline
    time.sleep(0.01)


def test_each_press_reaches_the_innermost_listener_then_the_handler_is_restored():
  before = signal.getsignal(signal.SIGINT)
  outer, inner = [], []
  with interrupts.CtrlC(outer.append):
    with interrupts.CtrlC(inner.append):
      for count in (1, 2):
        os.kill(os.getpid(), signal.SIGINT)
        _wait_until(lambda count=count: inner == list(range(1, count + 1)))
    os.kill(os.getpid(), signal.SIGINT)
    _wait_until(lambda: outer == [1])
  assert inner == [1, 2]
  assert signal.getsignal(signal.SIGINT) is before
  assert signal.set_wakeup_fd(-1) == -1  # None left behind.


def test_an_ignored_sigint_stays_ignored():
  before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # As in a script's background job.
  try:
    presses = []
    with interrupts.CtrlC(presses.append):
      assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.3)
    assert presses == []
  finally:
    signal.signal(signal.SIGINT, before)


def test_exit_now_lets_a_write_finish_then_cleans_up_and_exits_130(tmp_path):
  program = """if True:
    import pathlib, sys, threading, time
    from xray_jax import interrupts
    folder = pathlib.Path(sys.argv[1])
    interrupts.clean_up_on_exit_now(lambda: (folder / "cleaned").touch())
    with interrupts.exit_deferred():
      threading.Thread(target=interrupts.exit_now, args=("interrupted: at once",)).start()
      time.sleep(0.5)
      (folder / "written").touch()
    time.sleep(10)
    (folder / "too_late").touch()
  """
  done = subprocess.run([sys.executable, "-c", program, str(tmp_path)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == interrupts.INTERRUPT_EXIT_CODE == 130
  assert done.stderr.strip() == "interrupted: at once"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["cleaned", "written"]
