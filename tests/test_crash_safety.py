"""Crash safety: a trainer killed (SIGKILL) at any moment, during a save too, resumes and
ends bit-identical to an uninterrupted run; a second trainer on a busy workdir is refused
at once, and a killed trainer leaves no stale lock."""

import itertools
import json
import re
import signal
import subprocess
import time

import grain
import numpy as np
import pytest
from helpers import (
  REPO_ROOT,
  assert_same_final_variables,
  cpu_env,
  tiny_config,
  trainer_command,
  wait_for_text,
)

from xray_jax import checkpointing, errors, train
from xray_jax import workdir as workdir_lib

pytestmark = pytest.mark.slow

STEPS, EVERY = 500, 20
RUN = [f"--config.training.num_train_steps={STEPS}", "--config.training.log_every_steps=1",
       "--config.training.eval_every_steps=250",
       f"--config.training.checkpoint_every_steps={EVERY}", "--config.training.keep_checkpoints=2"]
# Kills that cut a save short, and starts for each: a save may end before its kill lands.
SAVE_KILLS, TRIES = 3, 3


def _saves_in_flight(workdir) -> set[str]:
  return {p.name for p in (workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*")}


def _newest_final_step(workdir) -> int:
  """The step of the newest finished checkpoint (Orbax gives a save's folder its step's
  name once the save is final); 0 without one."""
  folder = workdir / "checkpoints"
  steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
  return max(steps, default=0)


def _tail(log, lines: int = 12) -> str:
  return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _slow_save_warnings(log) -> str:
  return "".join(f"{line}\n" for line in log.read_text(errors="replace").splitlines()
                 if "became final" in line)


def _start(workdir, dataset_dir, log, flags: list[str] = RUN) -> subprocess.Popen:
  with log.open("a") as out:
    return subprocess.Popen(trainer_command(workdir, dataset_dir, *flags), cwd=REPO_ROOT,
                            env=cpu_env(2), stdout=out, stderr=subprocess.STDOUT)


class Attempt:
  """A start of the trainer in the killed run, logging to `log`: it must go on from the
  newest finished checkpoint."""

  def __init__(self, workdir, dataset_dir, log):
    self.workdir, self.log, self.resumed_from = workdir, log, _newest_final_step(workdir)
    self.proc = _start(workdir, dataset_dir, log)
    first = int(wait_for_text(log, rf"step (\d+)/{STEPS}", process=self.proc).group(1))
    assert first == self.resumed_from + 1, (
        f"{log.name}: the newest finished checkpoint was of step {self.resumed_from}, the "
        f"run went on from step {first}:\n{_tail(log)}")

  def kill(self) -> None:
    self.proc.send_signal(signal.SIGKILL)
    code = self.proc.wait()
    assert code == -signal.SIGKILL, (
        f"{self.log.name}: the trainer ended ({code}) before its kill:\n{_tail(self.log)}")

  def kill_in_a_save(self) -> bool:
    """Kills the trainer once a save of its is in flight; says whether the kill cut that
    save short: its temporary folder outlived the trainer (looked at after the kill: no
    race)."""
    stale = _saves_in_flight(self.workdir)  # Of earlier kills, until Orbax removes them.
    while not (new := _saves_in_flight(self.workdir) - stale) and self.proc.poll() is None:
      time.sleep(0.005)
    self.kill()
    return bool(new & _saves_in_flight(self.workdir))

  def kill_at_step(self, step: int) -> None:
    """Kills the trainer once it logged `step` and, if its first save (at the next multiple
    of EVERY) began by then, once that save is final, which the next start must resume from."""
    wait_for_text(self.log, rf"step {step}/", process=self.proc)
    saved, deadline = self.resumed_from + EVERY, time.monotonic() + 300
    while step >= saved and _newest_final_step(self.workdir) < saved:
      assert self.proc.poll() is None and time.monotonic() < deadline, (
          f"{self.log.name}: no finished checkpoint of step {saved}:\n{_tail(self.log)}")
      time.sleep(0.005)
    self.kill()


def _kill_in_a_save(workdir, dataset_dir, logs) -> list[int]:
  """Starts and kills the trainer until a kill cuts a save short (TRIES at most); returns
  the step each start resumed from."""
  tries = []
  for log in itertools.islice(logs, TRIES):
    attempt = Attempt(workdir, dataset_dir, log)
    tries.append(attempt)
    if attempt.kill_in_a_save():
      return [a.resumed_from for a in tries]
  raise AssertionError(f"none of {TRIES} kills cut a save short: every save ended first:\n"
                       + "\n".join(f"--- {a.log.name}:\n{_tail(a.log)}" for a in tries))


def _assert_each_step_recorded_once(workdir) -> None:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  steps = [r["step"] for r in map(json.loads, lines) if "train/loss" in r]
  twice = sorted({s for s in steps if steps.count(s) > 1})
  assert steps == list(range(1, STEPS + 1)), (
      f"metrics.jsonl: train steps recorded twice {twice}, missing "
      f"{sorted(set(range(1, STEPS + 1)) - set(steps))}")


def test_sigkill_at_random_moments_then_rerun_is_bit_identical(dataset_dir, tmp_path):
  straight = tmp_path / "straight"
  done = subprocess.run(trainer_command(straight, dataset_dir, *RUN), cwd=REPO_ROOT,
                        env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  workdir, rng = tmp_path / "killed", np.random.default_rng(0)
  logs = (tmp_path / f"attempt{i}.log" for i in itertools.count())
  resumed_from = []
  for kill in range(SAVE_KILLS):
    resumed_from += _kill_in_a_save(workdir, dataset_dir, logs)
    for _ in range(2 if kill < SAVE_KILLS - 1 else 0):  # At seeded steps, 10 to 39 on.
      attempt = Attempt(workdir, dataset_dir, next(logs))
      resumed_from.append(attempt.resumed_from)
      attempt.kill_at_step(attempt.resumed_from + 1 + int(rng.integers(10, 40)))
  # The seeded steps put 3 of the 4 kills after a save: starts from 4 steps or more.
  assert len(set(resumed_from)) >= 4, f"the starts resumed from steps {resumed_from}"

  last = subprocess.run(trainer_command(workdir, dataset_dir, *RUN), cwd=REPO_ROOT,
                        env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert last.returncode == 0, last.stderr[-3000:]
  assert not _saves_in_flight(workdir), "the saves cut short were not cleaned up"
  assert_same_final_variables(straight, workdir)
  _assert_each_step_recorded_once(workdir)


def test_kills_every_two_and_a_half_checkpoint_intervals_keep_progress(dataset_dir, tmp_path):
  # 100 steps take longer than a save of the tiny model here: each start keeps one or two.
  every, workdir = 100, tmp_path / "run"
  flags = ["--config.training.num_train_steps=1000", "--config.training.log_every_steps=1",
           "--config.training.eval_every_steps=1000",
           f"--config.training.checkpoint_every_steps={every}"]
  resumed_from, logs = [], []
  for start in range(3):
    logs.append(log := tmp_path / f"start{start}.log")
    proc = _start(workdir, dataset_dir, log, flags)
    first = int(wait_for_text(log, r"step (\d+)/1000", process=proc).group(1))
    resumed_from.append(first - 1)
    wait_for_text(log, rf"step {first - 1 + 5 * every // 2}/", process=proc)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"{log.name} ended before its kill:\n{_tail(log)}"
  resumed_from.append(_newest_final_step(workdir))
  assert all(a < b for a, b in itertools.pairwise(resumed_from)), (
      f"the starts resumed from steps {resumed_from}, then checkpoint "
      f"{resumed_from[-1]} was the newest:" + "".join(
          f"\n--- {log.name}:\n{_slow_save_warnings(log)}{_tail(log)}" for log in logs))


def test_second_trainer_is_refused_and_a_killed_one_frees_the_workdir(dataset_dir, tmp_path):
  workdir, log = tmp_path / "run", tmp_path / "first.log"
  first = _start(workdir, dataset_dir, log)
  try:
    wait_for_text(log, rf"step \d+/{STEPS}", process=first)
    config_written = (workdir / "config.json").stat().st_mtime_ns
    with pytest.raises(errors.WorkdirBusyError, match=rf"in use by another trainer \(pid "
                       rf"{first.pid} on .*choose another --workdir"):
      train.train_and_evaluate(tiny_config(dataset_dir), str(workdir))
    assert (workdir / "config.json").stat().st_mtime_ns == config_written
    assert first.poll() is None  # The first trainer is undisturbed.
  finally:
    first.kill()
    first.wait()
  with workdir_lib.hold(workdir):  # The kernel released the dead trainer's lock.
    pass


def test_a_save_outlasting_the_checkpoint_interval_is_warned_of_once(dataset_dir, tmp_path,
                                                                     caplog):
  config = tiny_config(dataset_dir, num_train_steps=8, checkpoint_every_steps=1,
                       eval_every_steps=8)
  with caplog.at_level("WARNING"):  # A save every step: the next begins before one is final.
    train.train_and_evaluate(config, str(tmp_path / "run"))
  warnings = [r.getMessage() for r in caplog.records if "became final" in r.getMessage()]
  assert len(warnings) == 1, caplog.text
  match = re.fullmatch(
      r"The checkpoint of step (\d) became final ([\d.]+) s after its save began, later than "
      r"the next save \(step (\d), ([\d.]+) s after it\): a run killed within \2 s of each "
      r"save keeps none of them\. Raise training\.checkpoint_every_steps \(now 1\) until that "
      r"many steps take longer than a save\.", warnings[0])
  assert match, warnings[0]
  assert int(match[3]) == int(match[1]) + 1 and float(match[2]) >= float(match[4])


def test_early_saves_are_not_compared_with_the_interval(tmp_path, monkeypatch, caplog):
  # Every save counts as still in flight at the next one: only the early one is exempt.
  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "is_saving_in_progress",
                      lambda self: True)
  checkpointer = checkpointing.Checkpointer(tmp_path / "checkpoints")
  state, data = {"w": np.zeros(3)}, iter(grain.MapDataset.range(4).to_iter_dataset())
  with caplog.at_level("WARNING"):
    checkpointer.save(1, state, data)
    checkpointer.save(2, state, data, on_schedule=False)  # At the end, or on preemption.
    assert "became final" not in caplog.text
    for step in (3, 4):
      checkpointer.save(step, state, data)
  checkpointer.close()
  warnings = [r.getMessage() for r in caplog.records if "became final" in r.getMessage()]
  assert len(warnings) == 1 and warnings[0].startswith("The checkpoint of step 2 "), warnings
  assert "(step 3, " in warnings[0] and "(now 1)" in warnings[0]
