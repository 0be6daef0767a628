"""launch/slurm/train.sbatch on a real single-node SLURM cluster: 2 tasks x 2 CPU devices
train like 1 process with 4 devices, the evaluation step reports on the final checkpoint,
and `scancel --signal=TERM` leads to a checkpoint, a requeue and an exact resume."""

import contextlib
import subprocess
import sys
import time

import pytest
from helpers import (
  REPO_ROOT,
  RUNLOCAL,
  TINY_FLAGS,
  assert_same_final_variables,
  cpu_env,
  make_dataset,
  trainer_command,
  wait_for_text,
)
from slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.slow, pytest.mark.cluster(
    "slurmctld", "slurmd", "sbatch", "/usr/sbin/munged", root=True)]

STEPS = ["--config.training.num_train_steps=200", "--config.training.log_every_steps=1",
         "--config.training.eval_every_steps=100", "--config.training.checkpoint_every_steps=100"]


@pytest.fixture(scope="module")
def slurm():
  cluster = SlurmCluster()
  yield cluster
  cluster.stop()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return make_dataset(tmp_path_factory.mktemp("slurm_data") / "data")


def _submit(slurm, workdir, data, *options: str, **env: str) -> subprocess.CompletedProcess:
  """sbatch of train.sbatch with 2 tasks of 2 CPU devices each on the tiny config."""
  command = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2",
             f"--output={workdir.parent}/batch_%j.out", *options, "launch/slurm/train.sbatch",
             RUNLOCAL, str(workdir), *TINY_FLAGS, f"--config.data.dir={data}", *STEPS]
  return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                        env=cpu_env(2, SLURM_CONF=str(slurm.conf), XRAY_PYTHON=sys.executable,
                                    **env))


def _job_output(workdir, job: str) -> str:
  logs = sorted((workdir / "logs").glob("*.log")) if (workdir / "logs").is_dir() else []
  return "".join(f"\n--- {p.name}:\n{p.read_text()[-2500:]}"
                 for p in [workdir.parent / f"batch_{job}.out", *logs] if p.is_file())


@pytest.fixture(scope="module")
def slurm_run(slurm, data, tmp_path_factory):
  """An uninterrupted 2-task run under `sbatch --wait`, with the evaluation step."""
  workdir = tmp_path_factory.mktemp("slurm_run") / "run"
  result = _submit(slurm, workdir, data, "--wait", XRAY_EVAL_FLAGS="--poll_seconds=1")
  job = result.stdout.strip()
  assert result.returncode == 0, result.stderr + _job_output(workdir, job) + slurm.logs()
  return workdir, job


def test_two_tasks_train_like_one_process_with_four_devices(slurm_run, data, tmp_path):
  workdir, job = slurm_run
  for task in range(2):  # One log per task; each task is one JAX process of two.
    log = (workdir / "logs" / f"train_{job}_r0_{task}.log").read_text()
    assert f"JAX process {task} of 2" in log
  assert "4 devices, 2 processes" in (workdir / "logs" / f"train_{job}_r0_0.log").read_text()
  # The evaluation step beside the trainer reported on every checkpoint, the final one too.
  assert sorted(p.name for p in (workdir / "eval").glob("val_step*.json")) == [
      "val_step100.json", "val_step200.json"]

  single = tmp_path / "single"
  done = subprocess.run(trainer_command(single, data, *STEPS), cwd=REPO_ROOT, env=cpu_env(4),
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert_same_final_variables(single, workdir, rtol=1e-5, atol=1e-6)


@contextlib.contextmanager
def _explained(slurm, workdir, job: str):
  """Adds the job's output and the SLURM daemons' logs to an assertion that fails inside."""
  try:
    yield
  except AssertionError as e:
    raise AssertionError(f"{e}\n=== job {job}:{_job_output(workdir, job)}\n=== SLURM:"
                         f"{slurm.logs()}") from None


def test_scancel_term_checkpoints_requeues_and_resumes_exactly(slurm, slurm_run, data,
                                                                tmp_path):
  workdir = tmp_path / "preempted"
  job = _submit(slurm, workdir, data, XRAY_EVAL_WATCH="0").stdout.strip()
  with _explained(slurm, workdir, job):
    _preempt_and_resume(slurm, workdir, job)
    assert_same_final_variables(slurm_run[0], workdir)


def _preempt_and_resume(slurm, workdir, job: str) -> None:
  """Sends the job SIGTERM early in its run; it must save, requeue itself, and resume from
  that checkpoint to the end."""
  first_log = workdir / "logs" / f"train_{job}_r0_0.log"
  wait_for_text(first_log, r"step 5/200", timeout=300)
  slurm.run("scancel", "--signal=TERM", job)
  wait_for_text(workdir.parent / f"batch_{job}.out", "requeueing job", timeout=300)
  step = int(wait_for_text(first_log, r"preempted: checkpoint of step (\d+) saved").group(1))
  assert 5 <= step < 200, f"the preemption checkpoint is of step {step}, not 5 to 199"

  # SLURM holds a requeued job back for a couple of minutes; let it start now.
  # The controller may list the job as FAILED for a moment while it requeues it (seen twice
  # in about ten runs on a loaded machine, once for over 15 s): only a state that lasts a
  # minute counts.
  deadline = time.monotonic() + 300
  unexpected_since = None
  while (state := slurm.job_state(job)) != "COMPLETED":
    if state in ("REQUEUED", "PENDING", "RUNNING", "COMPLETING"):
      unexpected_since = None
    else:
      unexpected_since = unexpected_since or time.monotonic()
      assert time.monotonic() - unexpected_since < 60, f"the job is {state} for 60 s"
    assert time.monotonic() < deadline, f"the job is {state}, not COMPLETED, after 300 s"
    # Not before the first run's step has ended on the node: slurmd refuses to launch a job
    # whose old step is still finishing ("already killed"), and the job then fails.
    if state == "PENDING" and f"[{job}.0] done with job" in slurm.logs():
      slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now", check=False)
    time.sleep(0.5)
  resumed_log = workdir / "logs" / f"train_{job}_r1_0.log"
  assert resumed_log.is_file(), f"no {resumed_log.name}: the job did not run again"
  assert f"Resumed from the checkpoint of step {step}" in resumed_log.read_text(), (
      f"{resumed_log.name} did not resume from the checkpoint of step {step}")
