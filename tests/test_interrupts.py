"""Ctrl-C: `interrupts.CtrlC` counts the presses in a thread, and `exit_now` ends the
process at once, but never while a file is written; typed in the terminal of a trainer, it
saves at the next step and exits 130, or, pressed twice, stops at once; SIGINT to one of two
trainer processes stops both at one step; `evaluate --watch` and `predict` stop with one
line and status 130, leaving no partial file."""

import csv
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import PIL.Image
import pytest
from helpers import (
  REPO_ROOT,
  Terminal,
  cpu_env,
  make_dataset,
  recorded_train_steps,
  trainer_command,
  wait_for_text,
  write_image,
)

from xray_jax import checkpointing, interrupts, trained

STEPS = 100
TRAINING = [f"--config.training.num_train_steps={STEPS}", "--config.training.log_every_steps=1",
            "--config.training.eval_every_steps=1000"]  # Evaluation only at the end.
WORKERS = "--config.data.num_workers=2"  # In a terminal, Ctrl-C reaches them too.
SAVED = r"interrupted \(Ctrl-C\): checkpoint of step (\d+) saved; run the same command again"
BAR_AT_20 = rf"\| ([2-9]\d)/{STEPS} \["  # The progress bar at steps 20 to 99.


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


def _saved_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
  return make_dataset(tmp_path_factory.mktemp("ctrl_c") / "data")


@pytest.mark.slow
def test_ctrl_c_saves_at_the_next_step_and_the_same_command_resumes(data, tmp_path):
  workdir = tmp_path / "run"
  command = trainer_command(workdir, data, *TRAINING, WORKERS,
                            f"--config.training.checkpoint_every_steps={STEPS}")
  terminal = Terminal(command)
  pressed_at = int(terminal.wait_for(BAR_AT_20).group(1))
  terminal.press_ctrl_c()
  assert terminal.wait() == interrupts.INTERRUPT_EXIT_CODE
  screen = terminal.screen
  assert "Traceback" not in screen and "KeyboardInterrupt" not in screen, screen[-3000:]
  assert len(re.findall(SAVED, screen)) == 1
  step = int(re.search(SAVED, screen).group(1))
  assert pressed_at <= step < STEPS  # The step after the press, not a regular checkpoint.
  assert _saved_steps(workdir) == [step]
  assert checkpointing.has_digests(workdir / "checkpoints" / str(step))
  assert recorded_train_steps(workdir)[-1] == step

  resumed = subprocess.run(command, cwd=REPO_ROOT, env=cpu_env(2), capture_output=True,
                           text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from the checkpoint of step {step} " in resumed.stderr
  assert recorded_train_steps(workdir) == list(range(1, STEPS + 1))  # Each step recorded once.


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(data, tmp_path):
  workdir = tmp_path / "run"
  command = trainer_command(workdir, data, *TRAINING, WORKERS,
                            "--config.training.checkpoint_every_steps=5")
  terminal = Terminal(command)
  terminal.wait_for(BAR_AT_20)
  terminal.press_ctrl_c()
  terminal.wait_for("Ctrl-C: stopping after this step with a checkpoint")
  terminal.press_ctrl_c()  # While the loop finishes its step and saves.
  pressed = time.monotonic()
  assert terminal.wait() == interrupts.INTERRUPT_EXIT_CODE
  assert time.monotonic() - pressed < 3  # Stopping with a save takes longer (save, teardown).
  screen = terminal.screen
  assert "interrupted again (Ctrl-C): stopped at once, without a checkpoint" in screen
  assert not re.search(SAVED, screen)
  assert "Traceback" not in screen and "KeyboardInterrupt" not in screen, screen[-3000:]
  assert trained.load(workdir).step == _saved_steps(workdir)[-1] >= 5  # Intact: it restores.


@pytest.mark.slow
def test_sigint_to_one_of_two_processes_stops_both_at_one_step(data, tmp_path):
  workdir, port = tmp_path / "run", _free_port()
  logs = [tmp_path / f"process_{i}.log" for i in range(2)]
  processes = [subprocess.Popen(
      trainer_command(workdir, data, *TRAINING, f"--coordinator_address=127.0.0.1:{port}",
                      "--num_processes=2", f"--process_id={i}"),
      cwd=REPO_ROOT, env=cpu_env(2), stdout=log.open("w"), stderr=subprocess.STDOUT)
      for i, log in enumerate(logs)]
  wait_for_text(logs[1], rf"step 5/{STEPS}", process=processes[1])
  processes[1].send_signal(signal.SIGINT)  # Only process 1 is told.
  assert [p.wait(timeout=300) for p in processes] == [interrupts.INTERRUPT_EXIT_CODE] * 2
  steps = {int(wait_for_text(log, SAVED).group(1)) for log in logs}
  assert len(steps) == 1
  data_dir = workdir / "checkpoints" / str(steps.pop()) / "data"
  assert sorted(p.name for p in data_dir.glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]


def _assert_all_whole(folder: pathlib.Path) -> None:
  """Every file under `folder` is complete (it parses), and no temporary file is left."""
  for path in folder.rglob("*"):
    if path.suffix == ".json":
      json.loads(path.read_text())
    elif path.suffix == ".csv":
      assert list(csv.reader(path.open()))
    elif path.suffix == ".png":
      with PIL.Image.open(path) as image:
        image.load()
    else:
      assert path.is_dir(), f"unexpected file {path}"


def _interrupt_at(command: list[str], pattern: str, line: str) -> None:
  """Runs `command` in a terminal and types Ctrl-C once `pattern` shows: it ends with status
  130 and `line` as its one line about it, without a traceback."""
  terminal = Terminal(command)
  terminal.wait_for(pattern)
  terminal.press_ctrl_c()
  assert terminal.wait() == interrupts.INTERRUPT_EXIT_CODE
  shown = terminal.screen
  assert [text for text in shown.splitlines() if "interrupted" in text] == [line], shown[-3000:]
  assert "Traceback" not in shown


@pytest.mark.slow
@pytest.mark.parametrize("press_at, reported", [
    ("predicting", []),  # During the first evaluation.
    (r"val step 4 intervals", [2, 4]),  # While waiting for step 6.
])
def test_evaluate_watch_stops_with_one_line_and_whole_files(trained_workdir, tmp_path,
                                                            press_at, reported):
  workdir = tmp_path / "work"
  shutil.copytree(trained_workdir, workdir)
  shutil.rmtree(workdir / "checkpoints" / "6")  # The run goes on: the watcher waits.
  _interrupt_at([sys.executable, "-m", "xray_jax.evaluate", f"--workdir={workdir}", "--watch",
                 "--poll_seconds=0.1"], press_at,
                "interrupted: reports are written whole or not at all; the evaluation in "
                "progress wrote none")
  assert sorted(int(p.stem.removeprefix("val_step")) for p in workdir.glob("eval/val_step?.json")
                ) == reported
  _assert_all_whole(workdir / "eval")


@pytest.mark.slow
def test_predict_stops_with_one_line_and_no_output(trained_workdir, tmp_path):
  images, rng = tmp_path / "many", np.random.default_rng(3)
  for i in range(64):
    write_image(images / f"x{i:02d}.png", i % 2, rng)
  output, saliency = tmp_path / "out" / "preds.csv", tmp_path / "out" / "saliency"
  _interrupt_at([sys.executable, "-m", "xray_jax.predict", f"--workdir={trained_workdir}",
                 f"--output={output}", f"--saliency_dir={saliency}", "--batch_size=1",
                 str(images)], "predicting",
                "interrupted: --output is written only once every image is classified, and "
                "each overlay whole or not at all")
  assert not output.exists()
  _assert_all_whole(tmp_path / "out")
