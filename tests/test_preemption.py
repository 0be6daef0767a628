"""Preemption: SIGTERM makes the trainer save a checkpoint and exit for a resubmit, on one
process and on two; the resumed run ends exactly where an uninterrupted one does."""

import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import (
  REPO_ROOT,
  RUNLOCAL,
  TINY_FLAGS,
  cpu_env,
  final_variables,
  recorded_train_steps,
  trainer_command,
  wait_for_text,
)

from xray_jax import checkpointing, preemption

pytestmark = pytest.mark.slow

LONG = ["--config.training.num_train_steps=300", "--config.training.log_every_steps=1",
        "--config.training.eval_every_steps=100", "--config.training.checkpoint_every_steps=100"]
PREEMPTED = r"preempted: checkpoint of step (\d+) saved"


def test_sigterm_saves_then_resume_is_exact(dataset_dir, tmp_path):
  straight = tmp_path / "straight"
  done = subprocess.run(trainer_command(straight, dataset_dir, *LONG), cwd=REPO_ROOT,
                        env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  workdir, log = tmp_path / "preempted", tmp_path / "trainer.log"
  with log.open("w") as out:
    proc = subprocess.Popen(trainer_command(workdir, dataset_dir, *LONG), cwd=REPO_ROOT,
                            env=cpu_env(2), stdout=out, stderr=subprocess.STDOUT)
  wait_for_text(log, r"step 5/300", process=proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == preemption.RESUBMIT_EXIT_CODE
  step = int(wait_for_text(log, PREEMPTED).group(1))
  assert 5 <= step < 300 and step % 100  # Saved at the notice, not at a regular checkpoint.
  assert checkpointing.has_digests(workdir / "checkpoints" / str(step))
  assert recorded_train_steps(workdir)[-1] == step

  resumed = subprocess.run(trainer_command(workdir, dataset_dir, *LONG), cwd=REPO_ROOT,
                           env=cpu_env(2), capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resumed from the checkpoint of step {step}" in resumed.stderr
  for a, b in zip(final_variables(straight), final_variables(workdir), strict=True):
    np.testing.assert_array_equal(a, b)
  assert recorded_train_steps(workdir) == list(range(1, 301))  # Each step recorded once.


def test_sigterm_to_one_of_two_processes_stops_both_at_one_step(dataset_dir, tmp_path):
  workdir = tmp_path / "run"
  command = ["bash", "launch/local.sh", "2", f"--workdir={workdir}", f"--config={RUNLOCAL}",
             *TINY_FLAGS, f"--config.data.dir={dataset_dir}", *LONG]
  env = cpu_env(2, XRAY_PYTHON=sys.executable)
  launcher = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
  pids = [int(p) for p in launcher.stdout.readline().split("(pids ")[1].split(")")[0].split()]
  logs = [workdir / "logs" / f"local_process_{i}.log" for i in range(2)]
  wait_for_text(logs[1], r"step 5/300", process=launcher)
  subprocess.run(["kill", "-TERM", str(pids[1])], check=True)  # Only process 1 is told.
  output = launcher.communicate(timeout=300)[0]
  assert launcher.returncode == preemption.RESUBMIT_EXIT_CODE, output
  steps = {int(wait_for_text(log, PREEMPTED).group(1)) for log in logs}
  assert len(steps) == 1
  step = steps.pop()
  data = workdir / "checkpoints" / str(step) / "data"
  assert sorted(p.name for p in data.glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]

  # The same command resumes both processes from that step and finishes.
  rerun = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert f"Resumed from the checkpoint of step {step}" in logs[0].read_text()
  assert recorded_train_steps(workdir) == list(range(1, 301))
