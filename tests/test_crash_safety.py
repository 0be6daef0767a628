"""Crash safety: a trainer killed (SIGKILL) at any moment, during a save too, resumes and
ends bit-identical to an uninterrupted run; a second trainer on a busy workdir is refused
at once, and a killed trainer leaves no stale lock."""

import json
import signal
import subprocess

import numpy as np
import pytest
from helpers import (
  REPO_ROOT,
  cpu_env,
  final_variables,
  tiny_config,
  trainer_command,
  wait_for_text,
)

from xray_jax import errors, train
from xray_jax import workdir as workdir_lib

pytestmark = pytest.mark.slow

STEPS = 500
RUN = [f"--config.training.num_train_steps={STEPS}", "--config.training.log_every_steps=1",
       "--config.training.eval_every_steps=250", "--config.training.checkpoint_every_steps=20",
       "--config.training.keep_checkpoints=2"]


def _saves_in_flight(workdir) -> set[str]:
  return {p.name for p in (workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*")}


def _start(workdir, dataset_dir, log) -> subprocess.Popen:
  with log.open("a") as out:
    return subprocess.Popen(trainer_command(workdir, dataset_dir, *RUN), cwd=REPO_ROOT,
                            env=cpu_env(2), stdout=out, stderr=subprocess.STDOUT)


def _kill_during_next_save(proc, workdir, log, first_step: int) -> bool:
  """Waits for the step of the next checkpoint, then kills while its save is in flight;
  says whether it caught one (a save can finish before it looks)."""
  wait_for_text(log, rf"step {(first_step // 20 + 1) * 20}/", process=proc)
  stale = _saves_in_flight(workdir)
  while not (_saves_in_flight(workdir) - stale) and proc.poll() is None:
    pass
  caught = bool(_saves_in_flight(workdir) - stale)
  proc.send_signal(signal.SIGKILL)
  return caught


def test_sigkill_at_random_moments_then_rerun_is_bit_identical(dataset_dir, tmp_path):
  straight = tmp_path / "straight"
  done = subprocess.run(trainer_command(straight, dataset_dir, *RUN), cwd=REPO_ROOT,
                        env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  workdir, rng = tmp_path / "killed", np.random.default_rng(0)
  kills_during_save = 0
  for attempt in range(10):
    log = tmp_path / f"attempt{attempt}.log"
    proc = _start(workdir, dataset_dir, log)
    first_step = int(wait_for_text(log, rf"step (\d+)/{STEPS}", process=proc).group(1))
    if attempt % 3 == 0:
      kills_during_save += _kill_during_next_save(proc, workdir, log, first_step)
    else:  # A seeded random step, anywhere between saves (10 <= 40 steps on: < STEPS in all).
      wait_for_text(log, rf"step {first_step + rng.integers(10, 40)}/", process=proc)
      proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run ended before kill {attempt}"
  assert kills_during_save >= 3
  resumed = [log for log in tmp_path.glob("attempt*.log") if "Resumed from" in log.read_text()]
  assert len(resumed) >= 3  # Kills landed after saves too, not only before the first.

  last = subprocess.run(trainer_command(workdir, dataset_dir, *RUN), cwd=REPO_ROOT,
                        env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert last.returncode == 0, last.stderr[-3000:]
  assert not _saves_in_flight(workdir)  # Saves cut short were cleaned up.
  for a, b in zip(final_variables(straight), final_variables(workdir), strict=True):
    np.testing.assert_array_equal(a, b)
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  train_steps = [r["step"] for r in map(json.loads, lines) if "train/loss" in r]
  assert train_steps == list(range(1, STEPS + 1))  # Replayed steps are not recorded twice.


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
